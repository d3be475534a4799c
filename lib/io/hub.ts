/**
 * Pretrained weights: download by registry name or URL into a local cache, and build pretrained models.
 *
 * Cache: `cacheDir` option, else $METAFORMER_CACHE, else $XDG_CACHE_HOME/metaformer, else ~/.cache/metaformer.
 * A cached file is `<cacheDir>/<file name of the URL>`, next to a sidecar `<file>.sha256` (sha256sum format)
 * written at download time and checked on every later cache hit.
 *
 * Download (node:http / node:https, no other dependency): up to 5 redirects; the body goes to `<file>.part`
 * (with `<file>.part.json` naming its URL, size and ETag); an interrupted transfer is resumed with an HTTP Range
 * request guarded by If-Range (automatically `retries` times, and by any later call, which finds the .part); the size is checked against Content-Length / the Content-Range total, the
 * sha256 against the `sha256` option when given; then the sidecar is written and the .part renamed into place.
 * So a file under the final name is always complete, and a failure never leaves one behind.
 * Offline mode (`offline` option or METAFORMER_OFFLINE=1) never touches the network.
 * A progress bar (bytes, %, speed) goes to stderr when it is a terminal.
 * Downloads of one file are serialised: within a process by sharing the promise, across processes by a
 * `<file>.lock` file holding the owner's pid (a lock whose process is gone is taken over).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as http from 'node:http';
import * as https from 'node:https';
import * as os from 'node:os';
import * as path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createModel } from '../models/index.js';
import { withoutInit } from '../nn/init.js';
import { MetaFormer, resolveConfig, type CustomModelConfig, type ModelOptions } from '../models/metaformer.js';
import { getModelConfig, type ModelConfig } from '../models/zoo.js';
import { expectation } from '../tensor.js';
import { writeFileAtomic } from './atomic.js';
import { loadWeights } from './checkpoint.js';

export const MAX_REDIRECTS = 5;

export interface DownloadProgress {
  url: string;
  /** Bytes in the .part file so far (including a resumed prefix). */
  received: number;
  /** The full size, when the server said. */
  total: number | null;
  /** Average speed of this transfer. */
  bytesPerSecond: number;
}

export interface FetchOptions {
  /** Cache folder (default: $METAFORMER_CACHE, $XDG_CACHE_HOME/metaformer or ~/.cache/metaformer). */
  cacheDir?: string;
  /** Never touch the network; a file not in the cache is an error. Default: METAFORMER_OFFLINE=1. */
  offline?: boolean;
  /** The expected sha256 (64 hex digits) of the file; checked after download and on cache hits. */
  sha256?: string;
  /** Draw a progress bar on stderr. Default: when stderr is a terminal. */
  progress?: boolean;
  /** Called as bytes arrive (at most every 100 ms, and once at the end). */
  onProgress?: (p: DownloadProgress) => void;
  /** Automatic resumes after a dropped connection or a server error (default 3). */
  retries?: number;
  /** Give up on a connection idle this long (default 30 000 ms). */
  timeoutMs?: number;
  /** Download again even when the file is cached. */
  force?: boolean;
}

/** A download failure worth another (resumed) attempt. */
class RetryableError extends Error {}

const inflight = new Map<string, Promise<string>>();

/** The cache folder the options and environment select. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.METAFORMER_CACHE) return path.resolve(env.METAFORMER_CACHE);
  if (env.XDG_CACHE_HOME) return path.join(path.resolve(env.XDG_CACHE_HOME), 'metaformer');
  return path.join(os.homedir(), '.cache', 'metaformer');
}

function envOffline(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = (env.METAFORMER_OFFLINE ?? '').trim().toLowerCase();
  return v === '1' || v === 'true' || v === 'yes' || v === 'on';
}

function isUrl(s: string): boolean {
  return /^https?:\/\//i.test(s);
}

function checkOptions(opts: FetchOptions): void {
  if (opts === null || typeof opts !== 'object') throw new TypeError(expectation('an options object', 'options', opts));
  if (opts.cacheDir !== undefined && (typeof opts.cacheDir !== 'string' || opts.cacheDir === '')) {
    throw new TypeError(expectation('a folder path', 'cacheDir', opts.cacheDir));
  }
  if (opts.sha256 !== undefined && (typeof opts.sha256 !== 'string' || !/^[0-9a-fA-F]{64}$/.test(opts.sha256))) {
    throw new TypeError(expectation('64 hexadecimal digits', 'sha256', opts.sha256));
  }
  if (opts.retries !== undefined && !(Number.isSafeInteger(opts.retries) && opts.retries >= 0)) {
    throw new TypeError(expectation('a non-negative integer', 'retries', opts.retries));
  }
  if (opts.timeoutMs !== undefined && !(typeof opts.timeoutMs === 'number' && opts.timeoutMs > 0)) {
    throw new TypeError(expectation('a positive number of milliseconds', 'timeoutMs', opts.timeoutMs));
  }
  if (opts.onProgress !== undefined && typeof opts.onProgress !== 'function') {
    throw new TypeError(expectation('a function', 'onProgress', opts.onProgress));
  }
}

/** The URL behind a registry name (or the URL itself) and the cache file it maps to. */
export function resolveWeights(nameOrUrl: string, opts: FetchOptions = {}): { url: string; file: string } {
  if (typeof nameOrUrl !== 'string' || nameOrUrl === '') {
    throw new TypeError(expectation('a model name or an http(s) URL', 'weights', nameOrUrl));
  }
  checkOptions(opts);
  let url: string;
  if (isUrl(nameOrUrl)) {
    url = nameOrUrl;
  } else {
    const config = getModelConfig(nameOrUrl);  // throws with suggestions for unknown names
    if (!config.url) throw new RangeError(expectation('a model with pretrained weights', 'name', nameOrUrl));
    url = config.url;
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new TypeError(expectation('a valid http(s) URL', 'url', url));
  }
  const base = decodeURIComponent(parsed.pathname.split('/').pop() ?? '').replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '');
  if (!base) throw new TypeError(expectation('a URL ending in a file name', 'url', url));
  return { url, file: path.join(opts.cacheDir !== undefined ? path.resolve(opts.cacheDir) : defaultCacheDir(), base) };
}

async function sha256Of(file: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(fs.createReadStream(file), h);
  return h.digest('hex');
}

async function readSidecar(file: string): Promise<string | null> {
  try {
    const m = (await fsp.readFile(`${file}.sha256`, 'utf8')).match(/^([0-9a-f]{64})\b/i);
    return m ? m[1]!.toLowerCase() : null;
  } catch {
    return null;
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    return (await fsp.stat(file)).isFile();
  } catch {
    return false;
  }
}

async function sizeOf(file: string): Promise<number> {
  try {
    return (await fsp.stat(file)).size;
  } catch {
    return 0;
  }
}

/**
 * A cached file that passes its checks, or null. A cached file with no sidecar (placed there by hand) is
 * accepted and its hash recorded. Problems are returned as a reason so offline mode can report them.
 */
async function checkCached(file: string, pinned: string | undefined): Promise<{ ok: true } | { ok: false; reason: string }> {
  if (!(await exists(file))) return { ok: false, reason: 'not in the cache' };
  const actual = await sha256Of(file);
  const recorded = await readSidecar(file);
  if (recorded !== null && recorded !== actual) {
    return { ok: false, reason: `the cached file's sha256 ${actual} differs from the one recorded at download, ${recorded}` };
  }
  if (pinned !== undefined && pinned.toLowerCase() !== actual) {
    return { ok: false, reason: `the cached file's sha256 ${actual} differs from the expected ${pinned.toLowerCase()}` };
  }
  if (recorded === null) await writeSidecar(file, actual);
  return { ok: true };
}

async function writeSidecar(file: string, hash: string): Promise<void> {
  await writeFileAtomic(`${file}.sha256`, async (h) => {
    await h.writeFile(`${hash}  ${path.basename(file)}\n`);
  });
}

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    ++i;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

/** A one-line progress bar on stderr. */
function progressBar(label: string): { update: (p: DownloadProgress) => void; done: () => void } {
  let drawn = false;
  const update = (p: DownloadProgress): void => {
    const pct = p.total ? Math.min(100, (100 * p.received) / p.total) : null;
    const width = 24;
    const bar = pct === null ? '' : `[${'#'.repeat(Math.round((pct / 100) * width)).padEnd(width, '.')}] ${pct.toFixed(1).padStart(5)}% `;
    const size = p.total ? `${formatBytes(p.received)} / ${formatBytes(p.total)}` : formatBytes(p.received);
    process.stderr.write(`\r${label} ${bar}${size}  ${formatBytes(Math.round(p.bytesPerSecond))}/s\x1b[K`);
    drawn = true;
  };
  return { update, done: () => { if (drawn) process.stderr.write('\n'); } };
}

/** GET with redirects; resolves with the final response (status not yet checked). */
function get(url: string, headers: Record<string, string>, timeoutMs: number, redirects = 0): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      reject(new Error(expectation('a valid http(s) URL', 'url', url)));
      return;
    }
    const mod = parsed.protocol === 'https:' ? https : parsed.protocol === 'http:' ? http : null;
    if (!mod) {
      reject(new Error(expectation('an http(s) URL', 'url', url)));
      return;
    }
    const req = mod.get(parsed, { headers: { 'user-agent': 'metaformer (node)', ...headers } }, (res) => {
      const status = res.statusCode ?? 0;
      if ([301, 302, 303, 307, 308].includes(status) && res.headers.location) {
        res.resume();
        if (redirects >= MAX_REDIRECTS) {
          reject(new Error(`${url}: too many redirects (more than ${MAX_REDIRECTS})`));
          return;
        }
        let next: string;
        try {
          next = new URL(res.headers.location, parsed).toString();
        } catch {
          reject(new Error(`${url}: redirect to an invalid location ${JSON.stringify(res.headers.location)}`));
          return;
        }
        get(next, headers, timeoutMs, redirects + 1).then(resolve, reject);
        return;
      }
      res.setTimeout(timeoutMs, () => res.destroy(new RetryableError(`${url}: no data for ${timeoutMs} ms`)));
      resolve(res);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new RetryableError(`${url}: no response for ${timeoutMs} ms`)));
    req.on('error', (e) => reject(e instanceof RetryableError ? e : new RetryableError(`${url}: ${e.message}`, { cause: e })));
  });
}

/** What a .part file was downloaded from, kept beside it (`<part>.json`) so a resume only ever extends the same file. */
interface PartInfo {
  url: string;
  total: number | null;
  /** The server's validator (ETag, else Last-Modified), sent as If-Range when resuming. */
  validator: string | null;
}

async function readPartInfo(part: string): Promise<PartInfo | null> {
  try {
    const v = JSON.parse(await fsp.readFile(`${part}.json`, 'utf8')) as Partial<PartInfo>;
    if (typeof v.url !== 'string') return null;
    return { url: v.url, total: typeof v.total === 'number' ? v.total : null, validator: typeof v.validator === 'string' ? v.validator : null };
  } catch {
    return null;
  }
}

async function removePart(part: string): Promise<void> {
  await fsp.rm(part, { force: true });
  await fsp.rm(`${part}.json`, { force: true });
}

/** One download attempt into `part`, resuming from its current size. Returns the expected total size (or null). */
async function attempt(url: string, part: string, opts: FetchOptions, report: (p: DownloadProgress) => void): Promise<number | null> {
  let offset = await sizeOf(part);
  const info = offset > 0 ? await readPartInfo(part) : null;
  if (offset > 0 && (info === null || info.url !== url || (info.total !== null && offset > info.total))) {
    await removePart(part);  // not a prefix of this download: start over
    offset = 0;
  }
  const headers: Record<string, string> = {};
  if (offset > 0) {
    headers.range = `bytes=${offset}-`;
    if (info?.validator) headers['if-range'] = info.validator;
  }
  const res = await get(url, headers, opts.timeoutMs ?? 30_000);
  const status = res.statusCode ?? 0;
  let total: number | null = null;
  let flags = 'w';
  if (status === 416) {
    res.resume();
    const m = /^bytes \*\/(\d+)$/.exec(res.headers['content-range'] ?? '');
    if (m && Number(m[1]) === offset && info?.total === offset) return offset;  // the .part already holds everything
    await removePart(part);
    throw new RetryableError(`${url}: the server refused to resume at byte ${offset}; starting over`);
  } else if (status === 206) {
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers['content-range'] ?? '');
    total = m && m[3] !== '*' ? Number(m[3]) : null;
    if (!m || Number(m[1]) !== offset || (info?.total != null && total !== info.total)) {
      res.resume();
      await removePart(part);
      throw new RetryableError(`${url}: expected content from byte ${offset} of ${info?.total ?? 'the file'} but the server sent range ` +
        `${JSON.stringify(res.headers['content-range'] ?? null)}; starting over`);
    }
    flags = 'a';
  } else if (status === 200) {
    offset = 0;  // the server ignored the range, or the file changed (If-Range), or none was asked: start from scratch
    const len = res.headers['content-length'];
    total = len !== undefined && /^\d+$/.test(len) ? Number(len) : null;
    const etag = res.headers.etag;
    const validator = etag && !etag.startsWith('W/') ? etag : res.headers['last-modified'] ?? null;
    await fsp.writeFile(`${part}.json`, JSON.stringify({ url, total, validator } satisfies PartInfo));
  } else {
    res.resume();
    const msg = `${url}: HTTP ${status} ${res.statusMessage ?? ''}`.trim();
    if (status >= 500 || status === 408 || status === 429) throw new RetryableError(msg);
    throw new Error(msg);
  }
  const started = Date.now();
  let received = offset;
  let last = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      received += chunk.length;
      const now = Date.now();
      if (now - last >= 100) {
        last = now;
        report({ url, received, total, bytesPerSecond: ((received - offset) * 1000) / Math.max(1, now - started) });
      }
      cb(null, chunk);
    },
  });
  try {
    await pipeline(res, meter, fs.createWriteStream(part, { flags }));
  } catch (e) {
    const got = await sizeOf(part);
    throw new RetryableError(`${url}: the transfer broke off after ${got}${total !== null ? ` of ${total}` : ''} bytes ` +
      `(${(e as Error).message})`, { cause: e });
  }
  report({ url, received, total, bytesPerSecond: ((received - offset) * 1000) / Math.max(1, Date.now() - started) });
  const size = await sizeOf(part);
  if (total !== null && size < total) throw new RetryableError(`${url}: expected ${total} bytes but received ${size}`);
  if (total !== null && size > total) {
    await removePart(part);
    throw new Error(`${url}: expected ${total} bytes but received ${size}`);
  }
  return total;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes `<file>.lock` (waiting while another live process holds it); returns the release function. */
async function lock(file: string): Promise<() => Promise<void>> {
  const lockFile = `${file}.lock`;
  for (;;) {
    try {
      const h = await fsp.open(lockFile, 'wx');
      await h.writeFile(String(process.pid));
      await h.close();
      return () => fsp.rm(lockFile, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const owner = Number.parseInt(await fsp.readFile(lockFile, 'utf8').catch(() => ''), 10);
    const st = await fsp.stat(lockFile).catch(() => null);
    if (st === null) continue;  // released meanwhile
    // Stale: its process is gone, or it has no pid long after creation (its owner died while writing it).
    const stale = Number.isSafeInteger(owner) && owner > 0 ? !alive(owner) : Date.now() - st.mtimeMs > 10_000;
    if (stale) {
      await fsp.rm(lockFile, { force: true });
      continue;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function download(url: string, file: string, opts: FetchOptions): Promise<void> {
  const part = `${file}.part`;
  const retries = opts.retries ?? 3;
  const showBar = opts.progress ?? process.stderr.isTTY === true;
  const bar = showBar ? progressBar(path.basename(file)) : null;
  const report = (p: DownloadProgress): void => {
    bar?.update(p);
    opts.onProgress?.(p);
  };
  try {
    let lastError: Error | null = null;
    for (let i = 0; i <= retries; ++i) {
      if (i > 0) await new Promise((r) => setTimeout(r, 100 * i));
      try {
        await attempt(url, part, opts, report);
        lastError = null;
        break;
      } catch (e) {
        if (!(e instanceof RetryableError)) throw e;
        lastError = e;
      }
    }
    if (lastError) {
      const kept = (await sizeOf(part)) > 0 ? `; the ${await sizeOf(part)} bytes received are kept in ${part} and the next call resumes` : '';
      throw new Error(`download failed after ${retries + 1} attempt${retries ? 's' : ''}: ${lastError.message}${kept}`, { cause: lastError });
    }
  } finally {
    bar?.done();
  }
  const hash = await sha256Of(part);
  if (opts.sha256 !== undefined && hash !== opts.sha256.toLowerCase()) {
    await removePart(part);
    throw new Error(`${url}: sha256 mismatch: expected ${opts.sha256.toLowerCase()} but the download has ${hash}; the file was discarded`);
  }
  await writeSidecar(file, hash);
  await fsp.rename(part, file);
  await fsp.rm(`${part}.json`, { force: true });
}

/**
 * The local path of a model's pretrained weights (by registry name) or of any http(s) URL, downloading it
 * into the cache when needed.
 */
export async function fetchWeights(nameOrUrl: string, opts: FetchOptions = {}): Promise<string> {
  const { url, file } = resolveWeights(nameOrUrl, opts);
  const offline = opts.offline ?? envOffline();
  if (typeof offline !== 'boolean') throw new TypeError(expectation('a boolean', 'offline', opts.offline));
  const key = `${file}\n${url}`;
  const running = inflight.get(key);
  if (running) return running;
  const job = (async (): Promise<string> => {
    if (!opts.force) {
      const cached = await checkCached(file, opts.sha256);
      if (cached.ok) return file;
      if (offline) {
        throw new Error(`offline mode: the weights for ${nameOrUrl} are not usable from the cache (${cached.reason}): ${file}. ` +
          'Download them once with network access (offline mode is on through the offline option or METAFORMER_OFFLINE=1)');
      }
    } else if (offline) {
      throw new Error(`offline mode: cannot download ${url} again (force was asked)`);
    }
    await fsp.mkdir(path.dirname(file), { recursive: true });
    const release = await lock(file);
    try {
      // Another process may have finished it while this one waited for the lock.
      if (!opts.force && (await checkCached(file, opts.sha256)).ok) return file;
      await fsp.rm(file, { force: true });
      await download(url, file, opts);
      return file;
    } finally {
      await release();
    }
  })();
  inflight.set(key, job);
  try {
    return await job;
  } finally {
    inflight.delete(key);
  }
}

export interface PretrainedOptions extends FetchOptions, ModelOptions {
  /** Weights to load instead of the registry's: a local checkpoint path or an http(s) URL. */
  weights?: string;
  /** Missing / unexpected keys are errors (default true). */
  strict?: boolean;
}

/**
 * A model with its pretrained weights, in eval mode. With `numClasses` different from the checkpoint's, the
 * head is replaced by a fresh one after loading (fine-tuning). Custom configurations need `weights`.
 */
export async function createPretrained(nameOrConfig: string | CustomModelConfig | ModelConfig, opts: PretrainedOptions = {}): Promise<MetaFormer> {
  checkOptions(opts);
  if (opts.weights !== undefined && (typeof opts.weights !== 'string' || opts.weights === '')) {
    throw new TypeError(expectation('a checkpoint path or an http(s) URL', 'weights', opts.weights));
  }
  const config = resolveConfig(nameOrConfig);
  const source = opts.weights ?? config.url;
  if (source === undefined) {
    throw new RangeError(expectation('a registry model with pretrained weights, or the weights option', 'model', nameOrConfig));
  }
  const local = isUrl(source) ? await fetchWeights(source, opts) : source;
  // A strict load sets every parameter (or fails): the model is built without drawing random values.
  const strict = opts.strict ?? true;
  const build = () => createModel(config, { dropPathRate: opts.dropPathRate, headDropout: opts.headDropout });
  const model = strict ? withoutInit(build) : build();
  try {
    await loadWeights(model, local, { strict });
    if (opts.numClasses !== undefined && opts.numClasses !== model.numClasses) model.resetClassifier(opts.numClasses, opts.headDropout ?? 0);
    if (opts.device !== undefined && opts.device !== 'cpu') model.to(opts.device);  // after loading: host reads, one copy
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model.eval();
}
