/**
 * safetensors reader and writer.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON mapping each tensor name to
 * {dtype, shape, data_offsets: [begin, end]} (offsets relative to the data section, which starts at 8 + N), plus an
 * optional "__metadata__" string->string map; then the raw little-endian row-major tensor data.
 *
 * The header is validated strictly before any tensor byte is read. Tensors are read with positional reads straight
 * into the buffer the caller's `alloc` returns, so peak memory stays near the size of the tensors themselves.
 * The writer pads the header with spaces to a multiple of 8 and lays tensors out by element size (largest first),
 * then name, so every tensor is naturally aligned; it replaces the target atomically.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import { DTYPE_SIZE, SAFETENSORS_DTYPE, type DType, type RawTensor } from '../dtype.js';
import { writeFileAtomic } from './atomic.js';
import {
  allocChecked, checkRawTensor, checkTensorData, defaultAlloc, IO_CHUNK, preview, runPlan, runPlanSync, tensorBytes, writeAll,
  type Alloc, type ReadPlan,
} from './fileio.js';

/** Largest header accepted (the reference implementation uses the same bound). */
export const MAX_HEADER_BYTES = 100_000_000;

export interface SafetensorsEntry {
  dtype: DType;
  shape: number[];
  /** Byte offsets relative to the start of the data section. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** Tensors in file order (ascending `begin`). */
  tensors: Map<string, SafetensorsEntry>;
  metadata: Record<string, string>;
  /** Absolute file offset of the data section (8 + header length). */
  dataStart: number;
  fileSize: number;
}

export interface ReadSafetensorsOptions {
  /** Read only these tensors (in this order); a missing name is an error. Default: all, in file order. */
  names?: string[];
  /** Where each tensor's bytes go. Default: a new Uint8Array. */
  alloc?: Alloc;
}

const DTYPE_BY_NAME: ReadonlyMap<string, DType> = new Map(
  (Object.entries(SAFETENSORS_DTYPE) as [DType, string][]).map(([dtype, name]) => [name, dtype]),
);

const utf8 = new TextDecoder('utf-8', { fatal: true });

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isOffset(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Validates a parsed header JSON object against the file's data section. */
function parseHeaderJson(file: string, json: unknown, dataStart: number, fileSize: number): SafetensorsHeader {
  if (!isPlainObject(json)) {
    throw new Error(`${file}: expected the safetensors header to be a JSON object but found ${preview(json)}`);
  }
  const dataSize = fileSize - dataStart;
  let metadata: Record<string, string> = {};
  const list: [string, SafetensorsEntry][] = [];
  for (const [name, info] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isPlainObject(info)) {
        throw new Error(`${file}: expected __metadata__ to be an object of strings but found ${preview(info)}`);
      }
      for (const [k, v] of Object.entries(info)) {
        if (typeof v !== 'string') {
          throw new Error(`${file}: expected __metadata__ value '${k}' to be a string but found ${preview(v)}`);
        }
      }
      metadata = info as Record<string, string>;
      continue;
    }
    const where = `${file}: tensor '${name}'`;
    if (!isPlainObject(info)) throw new Error(`${where}: expected an object but found ${preview(info)}`);
    const dtypeName = info.dtype;
    const dtype = typeof dtypeName === 'string' ? DTYPE_BY_NAME.get(dtypeName) : undefined;
    if (!dtype) {
      throw new Error(`${where}: expected a dtype among ${[...DTYPE_BY_NAME.keys()].join(', ')} but found ` +
        `${typeof dtypeName === 'string' ? `unknown dtype '${dtypeName}'` : preview(dtypeName)}`);
    }
    const shape = info.shape;
    if (!Array.isArray(shape) || !shape.every(isOffset)) {
      throw new Error(`${where}: expected shape to be an array of non-negative integers but found ${preview(shape)}`);
    }
    const offsets = info.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isOffset) || offsets[0] > offsets[1]) {
      throw new Error(`${where}: expected data_offsets [begin, end] with integers 0 <= begin <= end but found ` +
        `${preview(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    let bytes = DTYPE_SIZE[dtype];
    for (const d of shape as number[]) {
      bytes *= d;
      if (!Number.isSafeInteger(bytes)) throw new Error(`${where}: shape ${preview(shape)} is too large`);
    }
    if (end - begin !== bytes) {
      throw new Error(`${where}: expected ${bytes} bytes for ${dtypeName} ${preview(shape)} but data_offsets ` +
        `[${begin}, ${end}] span ${end - begin}`);
    }
    if (end > dataSize) {
      throw new Error(`${where}: expected data_offsets within the ${dataSize}-byte data section but found ` +
        `[${begin}, ${end}]`);
    }
    list.push([name, { dtype, shape: [...(shape as number[])], begin, end }]);
  }
  list.sort((a, b) => a[1].begin - b[1].begin || a[1].end - b[1].end);
  for (let i = 1; i < list.length; i++) {
    const [prevName, prev] = list[i - 1];
    const [name, cur] = list[i];
    if (cur.begin < prev.end) {
      throw new Error(`${file}: expected non-overlapping tensors but '${name}' [${cur.begin}, ${cur.end}] overlaps ` +
        `'${prevName}' [${prev.begin}, ${prev.end}]`);
    }
  }
  return { tensors: new Map(list), metadata, dataStart, fileSize };
}

function* headerPlan(file: string, fileSize: number): ReadPlan<SafetensorsHeader> {
  if (fileSize < 8) {
    throw new Error(`${file}: expected a safetensors file of at least 8 bytes but found ${fileSize} bytes`);
  }
  const lenBuf = new Uint8Array(8);
  yield { buf: lenBuf, position: 0 };
  const n = new DataView(lenBuf.buffer).getBigUint64(0, true);
  if (n === 0n) throw new Error(`${file}: expected a non-empty safetensors header but the header length is 0`);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new Error(`${file}: expected a header length of at most ${MAX_HEADER_BYTES} bytes but found ${n}`);
  }
  const len = Number(n);
  if (8 + len > fileSize) {
    throw new Error(`${file}: expected a header of ${len} bytes but the file has only ${fileSize - 8} bytes after ` +
      `the length field`);
  }
  const headerBytes = new Uint8Array(len);
  yield { buf: headerBytes, position: 8 };
  let text: string;
  try {
    text = utf8.decode(headerBytes);
  } catch {
    throw new Error(`${file}: expected a UTF-8 JSON header but found invalid UTF-8`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file}: expected a JSON header but found invalid JSON (${(err as Error).message})`);
  }
  return parseHeaderJson(file, json, 8 + len, fileSize);
}

function* tensorsPlan(file: string, fileSize: number, opts: ReadSafetensorsOptions): ReadPlan<Map<string, RawTensor>> {
  const header = yield* headerPlan(file, fileSize);
  const names = opts.names ?? [...header.tensors.keys()];
  const alloc = opts.alloc ?? defaultAlloc;
  const out = new Map<string, RawTensor>();
  for (const name of names) {
    const entry = header.tensors.get(name);
    if (!entry) throw new Error(`${file}: expected a tensor named '${name}' but the file has none`);
    const length = entry.end - entry.begin;
    const data = allocChecked(file, name, alloc, entry.dtype, entry.shape, length);
    for (let done = 0; done < length; done += IO_CHUNK) {
      const n = Math.min(IO_CHUNK, length - done);
      yield { buf: data.subarray(done, done + n), position: header.dataStart + entry.begin + done };
    }
    out.set(name, { dtype: entry.dtype, shape: [...entry.shape], data });
  }
  return out;
}

export async function readSafetensorsHeader(file: string): Promise<SafetensorsHeader> {
  const handle = await fsp.open(file, 'r');
  try {
    return await runPlan(file, handle, headerPlan(file, (await handle.stat()).size));
  } finally {
    await handle.close();
  }
}

export async function readSafetensors(file: string, opts: ReadSafetensorsOptions = {}): Promise<Map<string, RawTensor>> {
  const handle = await fsp.open(file, 'r');
  try {
    return await runPlan(file, handle, tensorsPlan(file, (await handle.stat()).size, opts));
  } finally {
    await handle.close();
  }
}

export function readSafetensorsSync(file: string, opts: ReadSafetensorsOptions = {}): Map<string, RawTensor> {
  const fd = fs.openSync(file, 'r');
  try {
    return runPlanSync(file, fd, tensorsPlan(file, fs.fstatSync(fd).size, opts));
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A tensor to write whose bytes are made when the writer reaches it, so a large state is never held
 * twice (e.g. a copy of a native tensor, or of a GPU tensor through the host, one at a time).
 */
export interface PendingTensor {
  dtype: DType;
  shape: number[];
  bytes: () => Uint8Array;
}

export interface WriteSafetensorsOptions {
  /** @internal called before the header (index 0) and before each tensor (tests throw here to simulate a crash) */
  beforeChunk?: (index: number, total: number) => void | Promise<void>;
}

type Entry = RawTensor | PendingTensor;

const isPending = (t: Entry): t is PendingTensor => typeof (t as PendingTensor).bytes === 'function';

/**
 * Checks the tensors and returns the padded header bytes plus the tensors in layout order (element size
 * descending, then name) with their byte sizes.
 */
function layout(file: string, entries: Iterable<[string, Entry]>, metadata: Record<string, string> | undefined):
  { header: Uint8Array; order: [string, Entry, number][] } {
  const seen = new Set<string>();
  const list: [string, Entry, number][] = [];
  for (const [name, t] of entries) {
    if (typeof name !== 'string' || name === '__metadata__' || seen.has(name)) {
      throw new Error(`${file}: expected unique tensor names other than __metadata__ but found ${preview(name)}`);
    }
    seen.add(name);
    const bytes = isPending(t) ? tensorBytes(file, name, t.dtype, t.shape) : checkRawTensor(file, name, t);
    list.push([name, t, bytes]);
  }
  for (const [k, v] of Object.entries(metadata ?? {})) {
    if (typeof v !== 'string') throw new Error(`${file}: expected metadata '${k}' to be a string but found ${preview(v)}`);
  }
  list.sort(([an, a], [bn, b]) => DTYPE_SIZE[b.dtype] - DTYPE_SIZE[a.dtype] || (an < bn ? -1 : an > bn ? 1 : 0));
  const parts: string[] = [];
  if (metadata) parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  let offset = 0;
  for (const [name, t, bytes] of list) {
    const end = offset + bytes;
    parts.push(`${JSON.stringify(name)}:{"dtype":"${SAFETENSORS_DTYPE[t.dtype]}","shape":[${t.shape.join(',')}],` +
      `"data_offsets":[${offset},${end}]}`);
    offset = end;
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const header = new Uint8Array(8 + padded).fill(0x20);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(json, 8);
  return { header, order: list };
}

/**
 * Writes a safetensors file atomically (temp file in the same directory, fsync, rename): an earlier file
 * survives any failure. Pending tensors are made one at a time as the writer reaches them.
 */
export async function writeSafetensors(file: string, entries: Map<string, Entry> | Iterable<[string, Entry]>,
  metadata?: Record<string, string>, opts: WriteSafetensorsOptions = {}): Promise<void> {
  const { header, order } = layout(file, entries, metadata);
  const total = order.length + 1;
  await writeFileAtomic(file, async (handle) => {
    await opts.beforeChunk?.(0, total);
    await writeAll(handle, header);
    for (let i = 0; i < order.length; ++i) {
      const [name, t, bytes] = order[i]!;
      await opts.beforeChunk?.(i + 1, total);
      const data = isPending(t) ? t.bytes() : t.data;
      checkTensorData(file, name, { dtype: t.dtype, shape: t.shape, data }, bytes);
      await writeAll(handle, data);
    }
  });
}
