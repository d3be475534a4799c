/**
 * IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed (told apart by the gzip magic bytes):
 * two zero bytes, a type byte (0x08 ubyte, 0x09 sbyte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the
 * number of dimensions, one big-endian uint32 per dimension, then the big-endian data, row-major.
 *
 * fashionMnist() reads the four files of Zalando's Fashion-MNIST (train-images-idx3-ubyte[.gz], ...). Its default
 * folder is where Debian's dataset-fashion-mnist package installs them; METAFORMER_FASHION_MNIST overrides it.
 */
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { expectation } from '../tensor.js';

export type IdxArray = Uint8Array | Int8Array | Int16Array | Int32Array | Float32Array | Float64Array;

export interface IdxData {
  shape: number[];
  data: IdxArray;
}

const TYPES: Record<number, { name: string; size: number }> = {
  0x08: { name: 'ubyte', size: 1 }, 0x09: { name: 'sbyte', size: 1 }, 0x0b: { name: 'int16', size: 2 },
  0x0c: { name: 'int32', size: 4 }, 0x0d: { name: 'float32', size: 4 }, 0x0e: { name: 'float64', size: 8 },
};

/** Largest accepted decompressed size (guards against gzip bombs and corrupt headers). */
export const MAX_IDX_BYTES = 2 ** 31 - 1;

/** Decodes IDX bytes (gzip or plain). `shared`: place the data in a SharedArrayBuffer (for worker threads). */
export function parseIdx(bytes: Uint8Array, opts: { shared?: boolean; name?: string } = {}): IdxData {
  const name = opts.name ?? 'IDX data';
  if (!(bytes instanceof Uint8Array)) throw new TypeError(expectation('bytes (Uint8Array)', name, bytes));
  let b = bytes;
  if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) b = gunzipSync(b, { maxOutputLength: MAX_IDX_BYTES });
  if (b.length < 4 || b[0] !== 0 || b[1] !== 0) throw new RangeError(expectation('an IDX header (two zero bytes first)', name, `bytes ${Array.from(b.subarray(0, 4)).join(',')}`));
  const type = TYPES[b[2]!];
  if (!type) throw new RangeError(expectation('an IDX type byte (0x08, 0x09, 0x0B, 0x0C, 0x0D or 0x0E)', name, `0x${b[2]!.toString(16)}`));
  const ndim = b[3]!;
  if (ndim < 1) throw new RangeError(expectation('at least one dimension', name, ndim));
  const start = 4 + 4 * ndim;
  if (b.length < start) throw new RangeError(expectation(`${start} header bytes`, name, `${b.length} bytes`));
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const shape: number[] = [];
  let count = 1;
  for (let i = 0; i < ndim; ++i) {
    const d = dv.getUint32(4 + 4 * i, false);
    shape.push(d);
    count *= d;
  }
  const need = start + count * type.size;
  if (b.length !== need) throw new RangeError(expectation(`${need} bytes for shape [${shape.join(', ')}] (${type.name})`, name, `${b.length} bytes`));
  const buf = opts.shared ? new SharedArrayBuffer(count * type.size) : new ArrayBuffer(count * type.size);
  let data: IdxArray;
  switch (type.name) {
    case 'ubyte': data = new Uint8Array(buf); data.set(b.subarray(start)); break;
    case 'sbyte': data = new Int8Array(buf); data.set(new Int8Array(b.buffer, b.byteOffset + start, count)); break;
    case 'int16': data = new Int16Array(buf); for (let i = 0; i < count; ++i) data[i] = dv.getInt16(start + 2 * i, false); break;
    case 'int32': data = new Int32Array(buf); for (let i = 0; i < count; ++i) data[i] = dv.getInt32(start + 4 * i, false); break;
    case 'float32': data = new Float32Array(buf); for (let i = 0; i < count; ++i) data[i] = dv.getFloat32(start + 4 * i, false); break;
    default: data = new Float64Array(buf); for (let i = 0; i < count; ++i) data[i] = dv.getFloat64(start + 8 * i, false); break;
  }
  return { shape, data };
}

/** Reads an IDX file (plain or .gz). */
export function readIdx(file: string, opts: { shared?: boolean } = {}): IdxData {
  if (typeof file !== 'string' || file.length === 0) throw new TypeError(expectation('a file path', 'file', file));
  return parseIdx(readFileSync(file), { ...opts, name: file });
}

/** Encodes an IDX file (uncompressed). */
export function encodeIdx(data: IdxArray, shape: readonly number[]): Uint8Array {
  const code = data instanceof Uint8Array ? 0x08 : data instanceof Int8Array ? 0x09 : data instanceof Int16Array ? 0x0b
    : data instanceof Int32Array ? 0x0c : data instanceof Float32Array ? 0x0d : data instanceof Float64Array ? 0x0e : -1;
  if (code < 0) throw new TypeError(expectation('a Uint8/Int8/Int16/Int32/Float32/Float64 array', 'data', data));
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== data.length) throw new RangeError(expectation(`${count} elements for shape [${shape.join(', ')}]`, 'data', data.length));
  const size = TYPES[code]!.size;
  const out = new Uint8Array(4 + 4 * shape.length + count * size);
  const dv = new DataView(out.buffer);
  out[2] = code;
  out[3] = shape.length;
  shape.forEach((d, i) => dv.setUint32(4 + 4 * i, d, false));
  const start = 4 + 4 * shape.length;
  for (let i = 0; i < count; ++i) {
    const v = data[i]!;
    switch (code) {
      case 0x08: dv.setUint8(start + i, v); break;
      case 0x09: dv.setInt8(start + i, v); break;
      case 0x0b: dv.setInt16(start + 2 * i, v, false); break;
      case 0x0c: dv.setInt32(start + 4 * i, v, false); break;
      case 0x0d: dv.setFloat32(start + 4 * i, v, false); break;
      default: dv.setFloat64(start + 8 * i, v, false); break;
    }
  }
  return out;
}

/** Where Debian's dataset-fashion-mnist package installs the files. */
export const DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';

/** The Fashion-MNIST folder: $METAFORMER_FASHION_MNIST, else the Debian location. */
export function fashionMnistDir(): string {
  return process.env.METAFORMER_FASHION_MNIST || DEFAULT_FASHION_MNIST_DIR;
}

export const FASHION_MNIST_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];

/** Fashion-MNIST statistics of the training images (0..1 scale). */
export const FASHION_MNIST_MEAN = 0.2860;
export const FASHION_MNIST_STD = 0.3530;

/** The path of one of the files, with or without .gz (null when absent). */
export function findIdxFile(dir: string, stem: string): string | null {
  for (const f of [stem, `${stem}.gz`]) {
    const p = path.join(dir, f);
    if (existsSync(p)) return p;
  }
  return null;
}

/** Whether the four Fashion-MNIST files are present in `dir`. */
export function hasFashionMnist(dir = fashionMnistDir()): boolean {
  return ['train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte']
    .every((s) => findIdxFile(dir, s) !== null);
}
