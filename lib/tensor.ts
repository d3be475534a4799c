/**
 * Tensor: a shape, a dtype, a device and native-owned, 64-byte-aligned memory.
 *
 * Memory is freed by dispose() (at once) or, as a safety net, when the garbage collector collects the
 * native handle. `tidy(fn)` disposes every tensor created inside fn except those it returns. Zero-copy
 * views (`view()`) keep the memory alive on their own, so a view never points at freed memory.
 */
import { DTYPE_CODE, DTYPE_SIZE, type DType, isDType, numelOf } from './dtype.js';
import { addon, type NativeTensorHandle, OP, BACKEND_ID } from './native.js';
import type { Node } from './autograd/node.js';
import { activeTrace } from './trace.js';
import { backward as runBackward, type BackwardOptions } from './autograd/engine.js';

export type Device = 'cpu' | 'cuda';

export type TypedArrayOf<D extends DType> = D extends 'float32'
  ? Float32Array
  : D extends 'float64'
    ? Float64Array
    : D extends 'int64'
      ? BigInt64Array
      : D extends 'int32'
        ? Int32Array
        : D extends 'int16'
          ? Int16Array
          : D extends 'int8'
            ? Int8Array
            : D extends 'float16' | 'bfloat16'
              ? Uint16Array
              : Uint8Array;

export type AnyTypedArray =
  | Float32Array | Float64Array | BigInt64Array | Int32Array | Int16Array | Int8Array | Uint16Array | Uint8Array;

const MAX_DIMS = 8;

/** Native device ids (native/core/memory.h). */
const DEVICE_ID: Readonly<Record<Device, number>> = { cpu: 0, cuda: 1 };

function checkDevice(device: unknown): asserts device is Device {
  if (device !== 'cpu' && device !== 'cuda') throw new TypeError(expectation("'cpu' or 'cuda'", 'device', device));
}

// --- scopes ---------------------------------------------------------------------------------------

const scopes: Set<Tensor>[] = [];
// Per open scope, the tensors keep() took out of it (roots of graphs that outlive the scope).
const scopeKept: Tensor[][] = [];

/** Autograd nodes reachable from `roots` (through each node's inputs). */
function graphNodes(roots: Iterable<Tensor>): Set<Node> {
  const seen = new Set<Node>();
  const stack = [...roots];
  while (stack.length > 0) {
    const n = stack.pop()!._node;
    if (!n || seen.has(n)) continue;
    seen.add(n);
    for (const t of n.inputs) if (t) stack.push(t);
  }
  return seen;
}

/**
 * Runs fn and disposes every tensor created during it, except the tensors found in its result
 * (a Tensor, or arrays / plain objects / Maps holding tensors). Works with async functions too.
 * Autograd graphs that die with the scope (a forward pass without backward) release their saved
 * tensors at once instead of waiting for the garbage collector; graphs reachable from the result or
 * from keep()-ed tensors stay intact for a later backward().
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Tensor>();
  const keptHere: Tensor[] = [];
  scopes.push(scope);
  scopeKept.push(keptHere);
  const close = (): void => {
    const i = scopes.lastIndexOf(scope);
    scopes.splice(i, 1);
    scopeKept.splice(i, 1);
  };
  let result: T;
  try {
    result = fn();
  } catch (e) {
    close();
    for (const t of scope) t.dispose();
    throw e;
  }
  const finish = (value: unknown): void => {
    close();
    const kept = new Set<Tensor>();
    collectTensors(value, kept, 0);
    const parent = scopes[scopes.length - 1];
    let live: Set<Node> | null = null;  // nodes still reachable, computed when first needed
    for (const t of scope) {
      if (!kept.has(t)) {
        const n = t._node;
        if (n && !n.released) {
          live ??= graphNodes([...kept, ...keptHere]);
          if (!live.has(n)) n.release();
        }
        t.dispose();
      } else if (parent) {
        parent.add(t);
      } else {
        t._h.track();  // escapes every scope: the garbage collector decides its lifetime now
      }
    }
  };
  if (result instanceof Promise) {
    return result.then(
      (v) => {
        finish(v);
        return v;
      },
      (e: unknown) => {
        finish(undefined);
        throw e;
      },
    ) as T;
  }
  finish(result);
  return result;
}

/**
 * t on `device`: t itself when it is already there, else a copy there (inside tidy() the original is
 * released with the scope).
 */
export function onDevice(t: Tensor, device: Device): Tensor {
  return t.device === device ? t : t.to(device);
}

/** Removes tensors from every open tidy scope, so they survive it. Returns its argument. */
export function keep<T extends Tensor>(t: T): T {
  scopes.forEach((s, i) => {
    if (s.delete(t)) scopeKept[i]!.push(t);
  });
  t._h.track();
  return t;
}

/**
 * @internal keep() for tensors whose release the library itself guarantees (autograd's saved tensors
 * and intermediate gradients, freed when backward() finishes or the graph is collected): their memory
 * is not reported to V8, so it does not trigger garbage collections.
 */
export function keepUntracked<T extends Tensor>(t: T): T {
  for (const s of scopes) s.delete(t);
  return t;
}

function collectTensors(v: unknown, out: Set<Tensor>, depth: number): void {
  if (depth > 8 || v === null || typeof v !== 'object') return;
  if (v instanceof Tensor) {
    out.add(v);
    return;
  }
  if (Array.isArray(v)) for (const x of v) collectTensors(x, out, depth + 1);
  else if (v instanceof Map) for (const x of v.values()) collectTensors(x, out, depth + 1);
  else if (Object.getPrototypeOf(v) === Object.prototype) for (const x of Object.values(v)) collectTensors(x, out, depth + 1);
}

// Tensors collected by the GC without dispose(): counted, so leaks can be diagnosed (the native handle
// frees the memory itself when it is collected).
let leaked = 0;
const leakRegistry = new FinalizationRegistry<number>(() => {
  leaked += 1;
});
export function leakedTensorCount(): number {
  return leaked;
}

// --- validation helpers ---------------------------------------------------------------------------

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '...' : v);
  if (Array.isArray(v)) return `an array of length ${v.length}`;
  if (v instanceof Tensor) return v.toString();
  return (v as object).constructor?.name ?? typeof v;
}

/**
 * The project's one error style: "Expected <what> for <name> but received <value>". Strings given as
 * value are user input and shown quoted; use expectationText for a description of what was received.
 */
export function expectation(what: string, name: string, value: unknown): string {
  return `Expected ${what} for ${name} but received ${describe(value)}`;
}

/** Same style, with a description (not a value) of what was received. */
export function expectationText(what: string, name: string, received: string): string {
  return `Expected ${what} for ${name} but received ${received}`;
}

export function checkShape(shape: unknown, name = 'shape'): number[] {
  if (!Array.isArray(shape)) throw new TypeError(expectation('an array of dimensions', name, shape));
  if (shape.length > MAX_DIMS) throw new RangeError(expectation(`at most ${MAX_DIMS} dimensions`, name, shape));
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw new RangeError(expectationText('non-negative integer dimensions', name, `[${shape.join(', ')}]`));
    }
  }
  return [...(shape as number[])];
}

function dtypeOfArray(a: AnyTypedArray): DType | null {
  if (a instanceof Float32Array) return 'float32';
  if (a instanceof Float64Array) return 'float64';
  if (a instanceof BigInt64Array) return 'int64';
  if (a instanceof Int32Array) return 'int32';
  if (a instanceof Int16Array) return 'int16';
  if (a instanceof Int8Array) return 'int8';
  if (a instanceof Uint8Array) return 'uint8';
  return null;
}

// --- Tensor ---------------------------------------------------------------------------------------

export class Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: Device;
  /** Whether gradients flow to this tensor. Set it on leaves; ops set it on their outputs. */
  requiresGrad = false;
  /** The accumulated gradient after backward(), for leaves that require grad. */
  grad: Tensor | null = null;
  /** @internal the autograd node that produced this tensor */
  _node: Node | null = null;
  /** @internal */
  _h: NativeTensorHandle;

  /** @internal use the static constructors */
  constructor(handle: NativeTensorHandle, shape: readonly number[], dtype: DType, device: Device = 'cpu') {
    this._h = handle;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.device = device;
    // Inside a tidy() scope the memory is freed when the scope ends; outside, V8 must know its size
    // (external memory) to collect a forgotten tensor in time.
    const scope = scopes[scopes.length - 1];
    if (scope) scope.add(this);
    else handle.track();
    leakRegistry.register(this, 0, this);
  }

  /** Uninitialised memory (fast); use zeros() when the contents matter. */
  static empty(shape: readonly number[], dtype: DType = 'float32', device: Device = 'cpu'): Tensor {
    const s = checkShape(shape as number[]);
    if (!isDType(dtype)) throw new TypeError(expectation('a dtype', 'dtype', dtype));
    checkDevice(device);
    const trace = activeTrace();
    if (trace) {  // a traced tensor: a shape without memory
      const t = new Tensor(new addon.NativeTensor(DTYPE_CODE[dtype], [0], false), s, dtype);
      trace.created.add(t);
      return t;
    }
    return new Tensor(new addon.NativeTensor(DTYPE_CODE[dtype], s, false, DEVICE_ID[device]), s, dtype, device);
  }

  static zeros(shape: readonly number[], dtype: DType = 'float32', device: Device = 'cpu'): Tensor {
    const s = checkShape(shape as number[]);
    if (!isDType(dtype)) throw new TypeError(expectation('a dtype', 'dtype', dtype));
    checkDevice(device);
    const trace = activeTrace();
    if (trace) {
      const t = Tensor.empty(s, dtype);
      trace.steps.push({ op: 'fill', dir: 0, ins: [], outs: [t], attrs: [0] });
      return t;
    }
    return new Tensor(new addon.NativeTensor(DTYPE_CODE[dtype], s, true, DEVICE_ID[device]), s, dtype, device);
  }

  static full(shape: readonly number[], value: number, dtype: DType = 'float32', device: Device = 'cpu'): Tensor {
    checkDevice(device);
    if (device === 'cuda' && dtype !== 'float32') {  // other dtypes are filled on the host, then copied
      const h = Tensor.full(shape, value, dtype);
      const d = h.to('cuda');
      h.dispose();
      return d;
    }
    const t = Tensor.empty(shape, dtype, device);
    if (device === 'cuda') {
      addon.run(OP.fill, 0, BACKEND_ID.cuda, [], [t._h], [value]);
    } else if (dtype === 'float32' || dtype === 'float64') {
      addon.run(OP.fill, 0, BACKEND_ID.ref, [], [t._h], [value]);
    } else {
      const v = t.view();
      if (v instanceof BigInt64Array) v.fill(BigInt(value));
      else (v as Float32Array).fill(value);
    }
    return t;
  }

  static ones(shape: readonly number[], dtype: DType = 'float32', device: Device = 'cpu'): Tensor {
    return Tensor.full(shape, 1, dtype, device);
  }

  /**
   * A tensor holding a copy of `data`. The dtype follows the array type (Float32Array -> float32,
   * number[] -> float32, Int32Array -> int32, BigInt64Array -> int64, ...); Uint16Array needs an explicit
   * 'float16' or 'bfloat16'. With an explicit dtype different from the array's, values are converted.
   */
  static from(data: AnyTypedArray | readonly number[], shape?: readonly number[], dtype?: DType): Tensor {
    let src: AnyTypedArray;
    if (Array.isArray(data)) {
      for (let i = 0; i < data.length; ++i) {
        if (typeof data[i] !== 'number') throw new TypeError(expectation('an array of numbers', 'data', data[i]));
      }
      src = Float32Array.from(data as number[]);
    } else if (ArrayBuffer.isView(data)) {
      src = data as AnyTypedArray;
    } else {
      throw new TypeError(expectation('a typed array or an array of numbers', 'data', data));
    }
    const s = shape === undefined ? [src.length] : checkShape(shape as number[]);
    if (numelOf(s) !== src.length) {
      throw new RangeError(expectationText(`${numelOf(s)} elements for shape [${s.join(', ')}]`, 'data', `${src.length} elements`));
    }
    let srcType = dtypeOfArray(src);
    if (src instanceof Uint16Array) {
      if (dtype !== 'float16' && dtype !== 'bfloat16') {
        throw new TypeError(expectation("dtype 'float16' or 'bfloat16' with a Uint16Array", 'dtype', dtype));
      }
      srcType = dtype;
    }
    if (srcType === null) throw new TypeError(expectation('a supported typed array', 'data', data));
    const target = dtype ?? srcType;
    if (!isDType(target)) throw new TypeError(expectation('a dtype', 'dtype', target));
    const t = Tensor.empty(s, srcType);
    t._h.write(new Uint8Array(src.buffer, src.byteOffset, src.byteLength));
    if (target === srcType) return t;
    const c = t.to(target);
    t.dispose();
    return c;
  }

  /** @internal wraps raw little-endian bytes */
  static fromBytes(bytes: Uint8Array, shape: readonly number[], dtype: DType): Tensor {
    const t = Tensor.empty(shape, dtype);
    if (bytes.byteLength !== t.numel * DTYPE_SIZE[dtype]) {
      t.dispose();
      throw new RangeError(expectationText(`${t.numel * DTYPE_SIZE[dtype]} bytes`, 'data', `${bytes.byteLength} bytes`));
    }
    t._h.write(bytes);
    return t;
  }

  get numel(): number {
    return numelOf(this.shape as number[]);
  }

  get ndim(): number {
    return this.shape.length;
  }

  get disposed(): boolean {
    return this._h.disposed;
  }

  /** @internal throws if disposed */
  _live(op: string, name: string): NativeTensorHandle {
    if (this._h.disposed) throw new TypeError(`${op}: ${expectationText('a live tensor', name, 'a disposed tensor')}`);
    return this._h;
  }

  /**
   * A zero-copy typed-array view of the memory (CPU tensors). Do not use it after dispose(). Writes
   * through it are seen by everything, including bf16 plans: while a view of a weight is alive, their
   * bf16 copy of that weight is remade on every call (toFloat32Array() and friends copy instead).
   */
  view<D extends DType = DType>(): TypedArrayOf<D> {
    if (this.device !== 'cpu') {
      throw new TypeError(expectation("a cpu tensor (copy it with .to('cpu'))", 'view()', this));
    }
    const buf = this._live('view', 'this').view();
    switch (this.dtype) {
      case 'float32': return new Float32Array(buf) as TypedArrayOf<D>;
      case 'float64': return new Float64Array(buf) as TypedArrayOf<D>;
      case 'int64': return new BigInt64Array(buf) as TypedArrayOf<D>;
      case 'int32': return new Int32Array(buf) as TypedArrayOf<D>;
      case 'int16': return new Int16Array(buf) as TypedArrayOf<D>;
      case 'int8': return new Int8Array(buf) as TypedArrayOf<D>;
      case 'float16':
      case 'bfloat16': return new Uint16Array(buf) as TypedArrayOf<D>;
      default: return new Uint8Array(buf) as TypedArrayOf<D>;
    }
  }

  /** A float32 copy of the values, converting from any dtype. */
  toFloat32Array(): Float32Array {
    this._live('toFloat32Array', 'this');
    if (this.device !== 'cpu') return this._viaHost((h) => h.toFloat32Array());
    if (this.dtype === 'float32') return new Float32Array(this._h.read());
    const c = this.to('float32');
    const out = new Float32Array(c._h.read());
    c.dispose();
    return out;
  }

  /** A float64 copy of the values. */
  toFloat64Array(): Float64Array {
    this._live('toFloat64Array', 'this');
    if (this.device !== 'cpu') return this._viaHost((h) => h.toFloat64Array());
    if (this.dtype === 'float64') return new Float64Array(this._h.read());
    const c = this.to('float64');
    const out = new Float64Array(c._h.read());
    c.dispose();
    return out;
  }

  /** The value of a one-element tensor. */
  item(): number {
    if (this.numel !== 1) throw new RangeError(expectation('a one-element tensor', 'item()', this));
    return this.toFloat64Array()[0]!;
  }

  /** Raw bytes (a copy). */
  toBytes(): Uint8Array {
    if (this.device !== 'cpu') return this._viaHost((h) => h.toBytes());
    return new Uint8Array(this._live('toBytes', 'this').read());
  }

  /** @internal runs fn on a temporary host copy of this device tensor */
  _viaHost<R>(fn: (host: Tensor) => R): R {
    const h = this.to('cpu');
    try {
      return fn(h);
    } finally {
      h.dispose();
    }
  }

  /**
   * Converts to another dtype (always a new tensor, on the same device), or copies to a device
   * ('cpu' or 'cuda'; a copy even when already there). A CUDA build without a usable device, or a build
   * without CUDA, throws an Error saying why; running out of device memory throws a RangeError.
   */
  to(target: DType | Device): Tensor {
    if (target === 'cpu' || target === 'cuda') {
      if (target === this.device) return this.clone();
      return new Tensor(this.copyHandleTo(target), this.shape, this.dtype, target);
    }
    if (!isDType(target)) throw new TypeError(expectation('a dtype or a device', 'to()', target));
    const out = Tensor.empty(this.shape, target, this.device);
    const backend = this.device === 'cuda' ? BACKEND_ID.cuda : BACKEND_ID.ref;
    addon.run(OP.cast, 0, backend, [this._live('to', 'this')], [out._h], []);
    return out;
  }

  /**
   * Copies to a device like to(device), off the main thread: the bytes move on a worker thread, and a
   * copy to or from the GPU waits there (not on the event loop) for the GPU work queued before it.
   * Same device: a copy, as with to().
   */
  async toAsync(device: Device): Promise<Tensor> {
    if (device !== 'cpu' && device !== 'cuda') throw new TypeError(expectation("'cpu' or 'cuda'", 'toAsync()', device));
    if (device === this.device) return this.clone();
    const src = this._live('toAsync', 'this');
    const h = new addon.NativeTensor(DTYPE_CODE[this.dtype], [...this.shape], false, DEVICE_ID[device]);
    try {
      await src.copyToAsync(h);
    } catch (e) {
      h.dispose();
      throw e;
    }
    return new Tensor(h, this.shape, this.dtype, device);
  }

  /**
   * @internal Moves this tensor's memory to `device` in place (the object, its autograd flags and every
   * reference to it stay valid): a copy, then the old memory is released. Used by Module.to().
   */
  _moveTo(device: Device): void {
    if (device === this.device) return;
    const h = this.copyHandleTo(device);
    h.track();
    this._h.dispose();
    this._h = h;
    (this as { device: Device }).device = device;
  }

  /** A new native handle on `device` holding a copy of this tensor's bytes (freed again if the copy fails). */
  private copyHandleTo(device: Device): NativeTensorHandle {
    const src = this._live('to', 'this');
    const h = new addon.NativeTensor(DTYPE_CODE[this.dtype], [...this.shape], false, DEVICE_ID[device]);
    try {
      src.copyTo(h);
    } catch (e) {
      h.dispose();
      throw e;
    }
    return h;
  }

  /** A copy with its own memory, on the same device (not connected to autograd). */
  clone(): Tensor {
    const out = Tensor.empty(this.shape, this.dtype, this.device);
    const backend = this.device === 'cuda' ? BACKEND_ID.cuda : BACKEND_ID.ref;
    addon.run(OP.cast, 0, backend, [this._live('clone', 'this')], [out._h], []);
    return out;
  }

  /** @internal a second handle on the same memory, with its own reference */
  _share(shape: readonly number[] = this.shape): Tensor {
    const trace = activeTrace();
    if (trace && trace.created.has(this)) {
      const t = Tensor.empty(shape, this.dtype);
      trace.aliases.set(t, this);
      return t;
    }
    const h = this._live('reshape', 'this').share([...shape]);
    return new Tensor(h, shape, this.dtype, this.device);
  }

  /** A tensor detached from autograd sharing this memory. */
  detach(): Tensor {
    return this._share();
  }

  /** Backpropagates from this tensor (a scalar, or pass the gradient) into every leaf's .grad. */
  backward(gradient?: Tensor, opts?: BackwardOptions): void {
    runBackward(this, gradient, opts);
  }

  dispose(): void {
    if (!this._h.disposed) {
      this._h.dispose();
      leakRegistry.unregister(this);
    }
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}]${this._h.disposed ? ', disposed' : ''})`;
  }
}
