/**
 * Atomic file replacement: the content is written to a fresh temporary file in the target's directory, flushed to
 * disk, then renamed over the target. Readers see either the old file or the complete new one, never a partial
 * write; on any error the temporary file is removed and an existing target is left untouched.
 */
import * as fsp from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';

/**
 * Creates `target` (or replaces it) with the bytes that `writer` writes to the handle it is given. The handle is
 * opened for writing at position 0 of an empty file; `writer` must not close it.
 */
export async function writeFileAtomic(target: string, writer: (handle: FileHandle) => Promise<void>): Promise<void> {
  const dir = path.dirname(path.resolve(target));
  const tmp = path.join(dir, `.${path.basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let handle: FileHandle | undefined = await fsp.open(tmp, 'wx');
  try {
    await writer(handle);
    await handle.sync();
    await handle.close();
    handle = undefined;
    await fsp.rename(tmp, target);
  } catch (err) {
    if (handle) await handle.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
  await syncDirectory(dir);
}

/** Makes the rename durable. Not every platform can fsync a directory (Windows cannot); that is not an error. */
async function syncDirectory(dir: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await fsp.open(dir, 'r');
    await handle.sync();
  } catch {
    // best effort
  } finally {
    await handle?.close().catch(() => undefined);
  }
}
