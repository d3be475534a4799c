/**
 * Element types known to metaformer. Compute happens in float32 (float64 on the reference backend for
 * gradient checks); the other types exist for stored weights, labels and checkpoint interchange.
 */
export type DType =
  | 'float32'
  | 'float64'
  | 'float16'
  | 'bfloat16'
  | 'int64'
  | 'int32'
  | 'int16'
  | 'int8'
  | 'uint8'
  | 'bool';

export const DTYPES: readonly DType[] = [
  'float32', 'float64', 'float16', 'bfloat16', 'int64', 'int32', 'int16', 'int8', 'uint8', 'bool',
];

/** Bytes per element. */
export const DTYPE_SIZE: Readonly<Record<DType, number>> = {
  float32: 4, float64: 8, float16: 2, bfloat16: 2, int64: 8, int32: 4, int16: 2, int8: 1, uint8: 1, bool: 1,
};

/** Numeric code shared with the native addon (native/core/tensor.h `enum class DType`). */
export const DTYPE_CODE: Readonly<Record<DType, number>> = {
  float32: 0, float64: 1, float16: 2, bfloat16: 3, int64: 4, int32: 5, int16: 6, int8: 7, uint8: 8, bool: 9,
};

/** safetensors dtype strings. */
export const SAFETENSORS_DTYPE: Readonly<Record<DType, string>> = {
  float32: 'F32', float64: 'F64', float16: 'F16', bfloat16: 'BF16', int64: 'I64', int32: 'I32', int16: 'I16',
  int8: 'I8', uint8: 'U8', bool: 'BOOL',
};

export function isDType(x: unknown): x is DType {
  return typeof x === 'string' && (DTYPES as readonly string[]).includes(x);
}

export function isFloatDType(d: DType): boolean {
  return d === 'float32' || d === 'float64' || d === 'float16' || d === 'bfloat16';
}

/** A tensor as raw little-endian bytes: the interchange form of the file readers and writers. */
export interface RawTensor {
  dtype: DType;
  shape: number[];
  /** Row-major little-endian bytes, exactly numel * DTYPE_SIZE[dtype] long. */
  data: Uint8Array;
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}
