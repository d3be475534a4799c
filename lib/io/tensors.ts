/**
 * Checkpoint files as Tensors: the file readers (safetensors, .pth) read straight into native tensor
 * memory through their `alloc` hook, so loading needs no second copy.
 */
import type { DType, RawTensor } from '../dtype.js';
import { expectation, Tensor } from '../tensor.js';
import type { Alloc } from './fileio.js';
import * as st from './safetensors.js';

export interface ReadTensorsOptions {
  /** Read only these names. */
  names?: string[];
  /** Convert every floating-point tensor to this dtype (e.g. 'float32' for float16 weights). */
  dtype?: DType;
}

/** An Alloc that hands out native tensor memory, remembering the tensor behind each buffer. */
export function tensorAllocator(): { alloc: Alloc; take: (raw: RawTensor) => Tensor; disposeAll: () => void } {
  const byBuffer = new Map<ArrayBufferLike, Tensor>();
  const alloc: Alloc = (dtype, shape) => {
    const t = Tensor.empty(shape, dtype);
    const bytes = new Uint8Array(t._h.view());
    byBuffer.set(bytes.buffer, t);
    return bytes;
  };
  const take = (raw: RawTensor): Tensor => {
    const t = byBuffer.get(raw.data.buffer);
    if (t) {
      byBuffer.delete(raw.data.buffer);
      return t;
    }
    return Tensor.fromBytes(raw.data, raw.shape, raw.dtype);  // the reader built this one itself
  };
  const disposeAll = (): void => {
    for (const t of byBuffer.values()) t.dispose();
    byBuffer.clear();
  };
  return { alloc, take, disposeAll };
}

export function convertDTypes(map: Map<string, Tensor>, dtype: DType | undefined): Map<string, Tensor> {
  if (!dtype) return map;
  for (const [k, t] of map) {
    const isFloat = t.dtype === 'float16' || t.dtype === 'bfloat16' || t.dtype === 'float32' || t.dtype === 'float64';
    if (isFloat && t.dtype !== dtype) {
      map.set(k, t.to(dtype));
      t.dispose();
    }
  }
  return map;
}

function wrap(raw: Map<string, RawTensor>, take: (r: RawTensor) => Tensor): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [k, r] of raw) out.set(k, take(r));
  return out;
}

/** Reads a .safetensors file into tensors (Map in file order). */
export async function readSafetensors(file: string, opts: ReadTensorsOptions = {}): Promise<Map<string, Tensor>> {
  const a = tensorAllocator();
  try {
    const raw = await st.readSafetensors(file, { names: opts.names, alloc: a.alloc });
    return convertDTypes(wrap(raw, a.take), opts.dtype);
  } catch (e) {
    a.disposeAll();
    throw e;
  }
}

export function readSafetensorsSync(file: string, opts: ReadTensorsOptions = {}): Map<string, Tensor> {
  const a = tensorAllocator();
  try {
    const raw = st.readSafetensorsSync(file, { names: opts.names, alloc: a.alloc });
    return convertDTypes(wrap(raw, a.take), opts.dtype);
  } catch (e) {
    a.disposeAll();
    throw e;
  }
}

export function toRaw(t: Tensor): RawTensor {
  return { dtype: t.dtype, shape: [...t.shape], data: new Uint8Array(t._live('write', 'tensor').view()) };
}

/**
 * Writes tensors to a .safetensors file, atomically (an existing file survives any failure). Each tensor
 * is copied out when the writer reaches it (through the host for a GPU tensor): no view of a weight is
 * left behind, and only one tensor's copy exists at a time.
 */
export async function writeSafetensors(file: string, tensors: Map<string, Tensor> | Iterable<[string, Tensor]>,
  metadata?: Record<string, string>, opts: st.WriteSafetensorsOptions = {}): Promise<void> {
  const entries: [string, st.PendingTensor][] = [];
  for (const [k, t] of tensors) {
    if (!(t instanceof Tensor)) throw new TypeError(expectation('a Tensor', k, t));
    t._live('write', k);
    entries.push([k, {
      dtype: t.dtype, shape: [...t.shape],
      bytes: () => {
        t._live('write', k);
        return t.toBytes();
      },
    }]);
  }
  await st.writeSafetensors(file, entries, metadata, opts);
}
