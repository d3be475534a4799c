/**
 * PyTorch checkpoint (`torch.save`) reader and writer.
 *
 * Reads both container formats:
 *  - zip (PyTorch >= 1.6): `<prefix>/data.pkl` holds the object pickle, `<prefix>/data/<key>` the raw storages,
 *    optional `<prefix>/byteorder` must say "little". `<prefix>` is whatever single top folder the archive uses.
 *  - legacy: consecutive pickles (magic number, protocol version, system info, the object, the storage key list),
 *    then for each listed storage an 8-byte little-endian element count and its raw bytes.
 *
 * The object pickle goes through the restricted unpickler; tensors are `_rebuild_tensor_v2(storage, offset, size,
 * stride, ...)` calls (optionally wrapped in `_rebuild_parameter*`) whose storages arrive as persistent ids. Tensors
 * may be strided views sharing storages: each is gathered into its own contiguous buffer. A storage used by a single
 * contiguous tensor covering all of it is read straight into that tensor's buffer; others are read once and shared.
 *
 * The writer produces the zip format (protocol 2 pickle of an OrderedDict, 64-byte aligned records) atomically.
 */
import * as fsp from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { DTYPE_SIZE, numelOf, type DType, type RawTensor } from '../dtype.js';
import { writeFileAtomic } from './atomic.js';
import { allocChecked, checkRawTensor, defaultAlloc, preview, readFullyAt, writeAll, type Alloc } from './fileio.js';
import {
  PickleError, PyExternal, PyGlobal, PyObject, PyPersistentId, PyTuple, pickleDump, pyTypeName, unpickle,
  type PyKey, type PyValue,
} from './pickle.js';
import { ZipReader, ZipWriter } from './zip.js';

export interface ReadPthOptions {
  /** Where each tensor's bytes go. Default: a new Uint8Array. */
  alloc?: Alloc;
  /** Largest zip entry accepted (see ZipReader). Default 4 GiB. */
  maxEntrySize?: number;
  /**
   * Largest total size of the tensors produced. Stride-0 views can make a tiny storage look huge, so this guards
   * memory. Default: 4 x the file size + 256 MiB.
   */
  maxTotalBytes?: number;
}

/** A tensor inside the object tree returned by readPthObject. */
export class PthTensor extends PyExternal implements RawTensor {
  constructor(readonly dtype: DType, readonly shape: number[], readonly data: Uint8Array) {
    super();
  }
}

const STORAGE_DTYPE: Readonly<Record<string, DType>> = {
  FloatStorage: 'float32', HalfStorage: 'float16', BFloat16Storage: 'bfloat16', DoubleStorage: 'float64',
  LongStorage: 'int64', IntStorage: 'int32', ShortStorage: 'int16', CharStorage: 'int8', ByteStorage: 'uint8',
  BoolStorage: 'bool',
};
const STORAGE_NAME = Object.fromEntries(Object.entries(STORAGE_DTYPE).map(([k, v]) => [v, k])) as Record<DType, string>;

const REBUILD_TENSOR = 'torch._utils._rebuild_tensor_v2';
const REBUILD_PARAMETER = new Set(['torch._utils._rebuild_parameter', 'torch._utils._rebuild_parameter_with_state']);
const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const LEGACY_PROTOCOL = 1001;
/** Deepest object nesting materialized (real checkpoints nest fewer than 10 levels). */
const MAX_DEPTH = 100;

/** A storage named by a persistent id: `key`, element type and element count. */
class StorageRef extends PyExternal {
  constructor(readonly key: string, readonly dtype: DType, readonly numel: number) {
    super();
  }
  get byteLength(): number {
    return this.numel * DTYPE_SIZE[this.dtype];
  }
}

/** An opened checkpoint: its parsed object tree and a way to read any referenced storage. */
interface Checkpoint {
  root: PyValue;
  fileSize: number;
  readStorage(ref: StorageRef, into: Uint8Array): Promise<void>;
}

function isNat(v: PyValue): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function describe(v: PyValue): string {
  return v !== null && typeof v === 'object' ? pyTypeName(v) : preview(v);
}

/** Persistent-id resolver: ('storage', <torch.XStorage>, key, location, numel[, view_metadata]). */
function storageLoader(file: string, storages: Map<string, StorageRef>): (pid: PyValue) => PyValue {
  return (pid) => {
    const items = pid instanceof PyTuple ? pid.items : [];
    const [tag, type, key, , numel] = items;
    if (!(items.length === 5 || (items.length === 6 && items[5] === null)) || tag !== 'storage' ||
      !(type instanceof PyGlobal) || typeof key !== 'string' || !isNat(numel)) {
      throw new Error(`${file}: expected a persistent id ('storage', type, key, location, numel) but found ` +
        `${describe(pid)}${items.length === 6 && items[5] !== null ? ' (storage views are not supported)' : ''}`);
    }
    const dtype = type.module === 'torch' ? STORAGE_DTYPE[type.name] : undefined;
    if (!dtype) throw new Error(`${file}: expected a supported storage type but found ${type.qualname}`);
    const known = storages.get(key);
    if (known && (known.dtype !== dtype || known.numel !== numel)) {
      throw new Error(`${file}: storage '${key}' is declared as ${known.numel} ${known.dtype} and as ${numel} ${dtype}`);
    }
    const ref = known ?? new StorageRef(key, dtype, numel);
    storages.set(key, ref);
    return ref;
  };
}

async function openZip(file: string, fileSize: number, opts: ReadPthOptions):
  Promise<Checkpoint & { close(): Promise<void> }> {
  const zip = await ZipReader.open(file, { maxEntrySize: opts.maxEntrySize });
  try {
    const pkls = [...zip.entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
    if (pkls.length !== 1) {
      throw new Error(`${file}: expected exactly one '<prefix>/data.pkl' record but found ${pkls.length}`);
    }
    const prefix = pkls[0].slice(0, -'/data.pkl'.length);
    if (zip.entries.has(`${prefix}/byteorder`)) {
      const order = new TextDecoder().decode(await zip.read(`${prefix}/byteorder`)).trim();
      if (order !== 'little') throw new Error(`${file}: expected byteorder 'little' but found '${order}'`);
    }
    const storages = new Map<string, StorageRef>();
    const { value: root } = unpickle(await zip.read(pkls[0]), { source: file, persistentLoad: storageLoader(file, storages) });
    return {
      root,
      fileSize,
      async readStorage(ref, into) {
        const name = `${prefix}/data/${ref.key}`;
        const entry = zip.entries.get(name);
        if (!entry) throw new Error(`${file}: expected a record '${name}' for storage '${ref.key}' but found none`);
        if (entry.size !== ref.byteLength) {
          throw new Error(`${file}: expected record '${name}' to hold ${ref.byteLength} bytes (${ref.numel} ` +
            `${ref.dtype}) but it holds ${entry.size}`);
        }
        await zip.read(name, into);
      },
      close: () => zip.close(),
    };
  } catch (err) {
    await zip.close();
    throw err;
  }
}

/** Unpickles the pickle starting at `pos`, reading more of the file until it is complete. */
async function readPickleAt(file: string, handle: FileHandle, pos: number, fileSize: number,
  persistentLoad?: (pid: PyValue) => PyValue): Promise<{ value: PyValue; end: number }> {
  for (let len = Math.min(1 << 20, fileSize - pos); ; len = Math.min(len * 4, fileSize - pos)) {
    const buf = new Uint8Array(len);
    await readFullyAt(file, handle, buf, pos);
    try {
      const { value, end } = unpickle(buf, { source: file, persistentLoad });
      return { value, end: pos + end };
    } catch (err) {
      if (!(err instanceof PickleError && err.truncated && pos + len < fileSize)) throw err;
    }
  }
}

async function openLegacy(file: string, handle: FileHandle, fileSize: number): Promise<Checkpoint> {
  const magic = await readPickleAt(file, handle, 0, fileSize);
  if (magic.value !== LEGACY_MAGIC) {
    throw new Error(`${file}: expected a PyTorch checkpoint (zip or legacy format) but found a pickle without ` +
      `torch's magic number`);
  }
  const proto = await readPickleAt(file, handle, magic.end, fileSize);
  if (proto.value !== LEGACY_PROTOCOL) {
    throw new Error(`${file}: expected legacy protocol version ${LEGACY_PROTOCOL} but found ${describe(proto.value)}`);
  }
  const sys = await readPickleAt(file, handle, proto.end, fileSize);
  if (!(sys.value instanceof Map) || sys.value.get('little_endian') !== true) {
    throw new Error(`${file}: expected a little-endian checkpoint but its system info says otherwise`);
  }
  const storages = new Map<string, StorageRef>();
  const main = await readPickleAt(file, handle, sys.end, fileSize, storageLoader(file, storages));
  const keys = await readPickleAt(file, handle, main.end, fileSize);
  if (!Array.isArray(keys.value) || !keys.value.every((k) => typeof k === 'string')) {
    throw new Error(`${file}: expected a list of storage keys but found ${describe(keys.value)}`);
  }
  // Each storage: u64 element count, then the bytes. Only the count's position tells where the next one starts.
  const offsets = new Map<string, number>();
  let pos = keys.end;
  const count = new Uint8Array(8);
  for (const key of keys.value as string[]) {
    const ref = storages.get(key);
    if (!ref) throw new Error(`${file}: expected storage '${key}' to be referenced by the pickle but it is not`);
    await readFullyAt(file, handle, count, pos);
    const n = new DataView(count.buffer).getBigUint64(0, true);
    if (n !== BigInt(ref.numel)) {
      throw new Error(`${file}: expected storage '${key}' to hold ${ref.numel} elements but its record says ${n}`);
    }
    offsets.set(key, pos + 8);
    pos += 8 + ref.byteLength;
    if (pos > fileSize) {
      throw new Error(`${file}: expected storage '${key}' to end within the file but it ends at ${pos} of ${fileSize}`);
    }
  }
  return {
    root: main.value,
    fileSize,
    async readStorage(ref, into) {
      const at = offsets.get(ref.key);
      if (at === undefined) throw new Error(`${file}: expected storage '${ref.key}' in the storage list but it is missing`);
      await readFullyAt(file, handle, into, at);
    },
  };
}

/** Opens either format and runs `use` on it, closing the file afterwards. */
async function withCheckpoint<T>(file: string, opts: ReadPthOptions, use: (c: Checkpoint) => Promise<T>): Promise<T> {
  const handle = await fsp.open(file, 'r');
  try {
    const fileSize = (await handle.stat()).size;
    const head = new Uint8Array(Math.min(4, fileSize));
    await readFullyAt(file, handle, head, 0);
    if (head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04) {
      const zip = await openZip(file, fileSize, opts);
      try {
        return await use(zip);
      } finally {
        await zip.close();
      }
    }
    if (head[0] === 0x80) return await use(await openLegacy(file, handle, fileSize));
    const found = fileSize === 0 ? 'an empty file'
      : `neither (first bytes ${[...head].map((b) => b.toString(16).padStart(2, '0')).join(' ')})`;
    throw new Error(`${file}: expected a PyTorch checkpoint (zip or legacy format) but found ${found}`);
  } finally {
    await handle.close();
  }
}

interface PendingTensor {
  tensor: PthTensor;
  storage: StorageRef;
  offset: number;
  stride: number[];
}

function isTensorCall(v: PyValue): v is PyObject {
  return v instanceof PyObject && (v.fn.qualname === REBUILD_TENSOR || REBUILD_PARAMETER.has(v.fn.qualname));
}

function contiguous(shape: readonly number[], stride: readonly number[]): boolean {
  let expected = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && stride[d] !== expected) return false;
    expected *= shape[d];
  }
  return true;
}

/** Copies the strided view (`offset`, `stride` in elements) of `src` into the contiguous `dst`. */
function gather(src: Uint8Array, elem: number, offset: number, shape: readonly number[], stride: readonly number[],
  dst: Uint8Array): void {
  const n = numelOf(shape);
  if (n === 0) return;
  if (contiguous(shape, stride)) {
    dst.set(src.subarray(offset * elem, (offset + n) * elem));
    return;
  }
  const nd = shape.length;
  const inner = shape[nd - 1];
  const innerStride = stride[nd - 1];
  const idx = new Array<number>(nd - 1).fill(0);
  let base = offset;
  let out = 0;
  for (;;) {
    if (innerStride === 1) {
      dst.set(src.subarray(base * elem, (base + inner) * elem), out);
      out += inner * elem;
    } else {
      for (let j = 0; j < inner; j++) {
        const at = (base + j * innerStride) * elem;
        for (let b = 0; b < elem; b++) dst[out++] = src[at + b];
      }
    }
    let d = nd - 2;
    for (; d >= 0; d--) {
      base += stride[d];
      if (++idx[d] < shape[d]) break;
      base -= stride[d] * shape[d];
      idx[d] = 0;
    }
    if (d < 0) return;
  }
}

/**
 * Turns a parsed object tree into its final form: tensor calls become PthTensors (allocated now, filled by
 * `fill()`), containers are copied, shared sub-objects stay shared, cycles and excessive nesting are errors.
 */
class Materializer {
  private readonly done = new Map<object, PyValue>();
  private readonly active = new Set<object>();
  private readonly pending: PendingTensor[] = [];
  private readonly alloc: Alloc;
  private budget: number;

  constructor(private readonly file: string, checkpoint: Checkpoint, opts: ReadPthOptions) {
    this.alloc = opts.alloc ?? defaultAlloc;
    this.budget = opts.maxTotalBytes ?? 4 * checkpoint.fileSize + 256 * 1024 * 1024;
  }

  value(v: PyValue, where: string, depth = 0): PyValue {
    if (v === null || typeof v !== 'object' || v instanceof Uint8Array || v instanceof PyGlobal ||
      v instanceof PyExternal) {
      return v;
    }
    const cached = this.done.get(v);
    if (cached !== undefined) return cached;
    if (this.active.has(v)) throw new Error(`${this.file}: expected an acyclic object tree but '${where}' contains itself`);
    if (depth >= MAX_DEPTH) throw new Error(`${this.file}: expected objects nested at most ${MAX_DEPTH} deep but '${where}' is deeper`);
    this.active.add(v);
    let out: PyValue;
    if (Array.isArray(v)) {
      out = v.map((x, i) => this.value(x, `${where}[${i}]`, depth + 1));
    } else if (v instanceof PyTuple) {
      out = new PyTuple(v.items.map((x, i) => this.value(x, `${where}[${i}]`, depth + 1)));
    } else if (v instanceof Map) {
      const m = new Map<PyKey, PyValue>();
      for (const [k, x] of v) m.set(k, this.value(x, where ? `${where}.${String(k)}` : String(k), depth + 1));
      out = m;
    } else if (v.fn.qualname === REBUILD_TENSOR) {
      out = this.tensor(v, where);
    } else if (REBUILD_PARAMETER.has(v.fn.qualname)) {
      out = this.value(v.args[0] ?? null, where, depth + 1);
      if (!(out instanceof PthTensor)) {
        throw new Error(`${this.file}: '${where}': expected ${v.fn.qualname} of a tensor but found ${describe(v.args[0] ?? null)}`);
      }
    } else {
      const args = v.args.map((x, i) => this.value(x, `${where}(${i})`, depth + 1));
      out = new PyObject(v.fn, args, v.state === undefined ? undefined : this.value(v.state, where, depth + 1));
    }
    this.active.delete(v);
    this.done.set(v, out);
    return out;
  }

  private tensor(call: PyObject, where: string): PthTensor {
    const [storage, offset, size, stride] = call.args;
    const nats = (t: PyValue | undefined): number[] | undefined =>
      t instanceof PyTuple && t.items.every(isNat) ? (t.items as number[]) : undefined;
    const shape = nats(size);
    const strides = nats(stride);
    if (!(storage instanceof StorageRef) || !isNat(offset ?? null) || !shape || !strides ||
      shape.length !== strides.length) {
      throw new Error(`${this.file}: '${where}': expected _rebuild_tensor_v2(storage, offset, size, stride, ...) ` +
        `but found arguments (${call.args.slice(0, 4).map(describe).join(', ')})`);
    }
    const n = numelOf(shape);
    const last = n === 0 ? (offset as number) : shape.reduce((a, d, i) => a + (d - 1) * strides[i], offset as number);
    if (!Number.isSafeInteger(n) || last > storage.numel - (n === 0 ? 0 : 1)) {
      throw new Error(`${this.file}: '${where}': expected a view within storage '${storage.key}' of ${storage.numel} ` +
        `elements but shape ${preview(shape)}, stride ${preview(strides)}, offset ${offset} reach element ${last}`);
    }
    const dtype = storage.dtype;
    const bytes = n * DTYPE_SIZE[dtype];
    if (bytes > this.budget) {
      throw new Error(`${this.file}: '${where}': expected tensors totalling at most maxTotalBytes but this ` +
        `${preview(shape)} ${dtype} view of a ${storage.numel}-element storage exceeds it`);
    }
    this.budget -= bytes;
    const data = allocChecked(this.file, where, this.alloc, dtype, shape, bytes);
    const tensor = new PthTensor(dtype, [...shape], data);
    this.pending.push({ tensor, storage, offset: offset as number, stride: [...strides] });
    return tensor;
  }

  /** Reads every storage the materialized tensors use, once each, and fills the tensors. */
  async fill(checkpoint: Checkpoint): Promise<void> {
    const byStorage = new Map<StorageRef, PendingTensor[]>();
    for (const p of this.pending) {
      const users = byStorage.get(p.storage) ?? [];
      users.push(p);
      byStorage.set(p.storage, users);
    }
    for (const [storage, users] of byStorage) {
      const only = users.length === 1 ? users[0] : undefined;
      if (only && only.offset === 0 && only.tensor.data.byteLength === storage.byteLength &&
        contiguous(only.tensor.shape, only.stride)) {
        await checkpoint.readStorage(storage, only.tensor.data);
        continue;
      }
      const buf = new Uint8Array(storage.byteLength);
      await checkpoint.readStorage(storage, buf);
      for (const u of users) gather(buf, DTYPE_SIZE[storage.dtype], u.offset, u.tensor.shape, u.stride, u.tensor.data);
    }
  }
}

/**
 * Reads a checkpoint's whole object tree: dicts become Maps, tuples PyTuples, tensors PthTensors, other allowed
 * objects (e.g. torch.device) stay inert PyObjects. Non-tensor entries such as `epoch` are kept.
 */
export async function readPthObject(file: string, opts: ReadPthOptions = {}): Promise<PyValue> {
  return withCheckpoint(file, opts, async (checkpoint) => {
    const m = new Materializer(file, checkpoint, opts);
    const root = m.value(checkpoint.root, '');
    await m.fill(checkpoint);
    return root;
  });
}

/**
 * Reads the tensors of a checkpoint's state dict. A top-level dict whose `state_dict` or `model` entry is a dict
 * holding tensors is unwrapped to that entry. Entries that are not tensors are dropped.
 */
export async function readPth(file: string, opts: ReadPthOptions = {}): Promise<Map<string, RawTensor>> {
  return withCheckpoint(file, opts, async (checkpoint) => {
    const top = checkpoint.root;
    if (!(top instanceof Map)) throw new Error(`${file}: expected a dict of tensors at the top but found ${describe(top)}`);
    const holdsTensors = (v: PyValue | undefined): v is Map<PyKey, PyValue> =>
      v instanceof Map && [...v.values()].some(isTensorCall);
    const inner = [top.get('state_dict'), top.get('model')].find(holdsTensors);
    const dict = inner ?? top;
    const m = new Materializer(file, checkpoint, opts);
    const out = new Map<string, RawTensor>();
    for (const [k, v] of dict) {
      if (typeof k !== 'string' || !isTensorCall(v)) continue;
      const t = m.value(v, k) as PthTensor;
      out.set(k, { dtype: t.dtype, shape: t.shape, data: t.data });
    }
    await m.fill(checkpoint);
    return out;
  });
}

/**
 * Writes tensors as a zip-format checkpoint that `torch.load` reads as an OrderedDict (a state dict), atomically.
 */
export async function writePth(file: string, entries: Map<string, RawTensor> | Iterable<[string, RawTensor]>): Promise<void> {
  const list = [...entries];
  const items = new Map<PyKey, PyValue>();
  const orderedDict = new PyGlobal('collections', 'OrderedDict');
  list.forEach(([name, t], i) => {
    checkRawTensor(file, name, t);
    if (typeof name !== 'string' || items.has(name)) {
      throw new Error(`${file}: expected unique string tensor names but found ${preview(name)} twice or not a string`);
    }
    const strides = t.shape.map((_, d) => t.shape.slice(d + 1).reduce((a, x) => a * x, 1));
    const storage = new PyPersistentId(new PyTuple(['storage', new PyGlobal('torch', STORAGE_NAME[t.dtype]), String(i),
      'cpu', numelOf(t.shape)]));
    items.set(name, new PyObject(new PyGlobal('torch._utils', '_rebuild_tensor_v2'),
      [storage, 0, new PyTuple(t.shape), new PyTuple(strides), false, new PyObject(orderedDict, [])]));
  });
  const pickle = pickleDump(new PyObject(orderedDict, [], undefined, items));
  const text = (s: string): Uint8Array => new TextEncoder().encode(s);
  await writeFileAtomic(file, async (handle) => {
    const zip = new ZipWriter((bytes) => writeAll(handle, bytes));
    await zip.add('archive/data.pkl', pickle);
    await zip.add('archive/byteorder', text('little'));
    for (let i = 0; i < list.length; i++) await zip.add(`archive/data/${i}`, list[i][1].data);
    await zip.add('archive/version', text('3\n'));
    await zip.finish();
  });
}
