/**
 * A minimal Protocol Buffers wire-format writer (encoding only), enough to write ONNX models.
 *
 * Wire format (https://protobuf.dev/programming-guides/encoding/): every field is a key varint
 * `(field_number << 3) | wire_type` followed by its payload:
 *   0 VARINT  base-128 little-endian groups, high bit = more follows; negative int32/int64 are written
 *             as their 64-bit two's complement (always 10 bytes)
 *   1 I64     8 bytes little-endian (fixed64, sfixed64, double)
 *   2 LEN     a varint byte length, then the bytes (strings, bytes, nested messages, packed repeated)
 *   5 I32     4 bytes little-endian (fixed32, sfixed32, float)
 *
 * The writer keeps a list of chunks instead of one growing buffer: large byte fields (tensor data) are
 * referenced, not copied, and a nested message is appended by reference to its own chunks. Its length is
 * always known, so a parent can write the length prefix before the nested bytes. `finish()` joins the
 * chunks once; `chunks()` hands them out for streaming to a file. Referenced byte arrays must not change
 * until the output has been produced.
 */
import { expectation } from '../tensor.js';

export const WireType = { Varint: 0, I64: 1, Len: 2, I32: 5 } as const;
export type WireType = (typeof WireType)[keyof typeof WireType];

/** Bytes at least this long are referenced instead of copied. */
const REFERENCE_THRESHOLD = 512;
const BLOCK = 4096;
const MAX_FIELD = 2 ** 29 - 1;
const TWO64 = 1n << 64n;

const scratch = new DataView(new ArrayBuffer(8));
const utf8 = new TextEncoder();

/** The number of bytes the varint encoding of a non-negative safe integer takes. */
export function varintSize(v: number): number {
  let n = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    n += 1;
  }
  return n;
}

export class ProtoWriter {
  private readonly parts: Uint8Array[] = [];
  private block = new Uint8Array(BLOCK);
  private pos = 0;
  private total = 0;
  private sealed = false;

  /** Bytes written so far. */
  get length(): number {
    return this.total;
  }

  // --- raw encoding ---------------------------------------------------------------------------------

  private room(n: number): void {
    if (this.sealed) throw new Error('ProtoWriter: this writer was already appended to another message or finished');
    if (this.pos + n <= this.block.length) return;
    this.flushBlock();
    if (n > this.block.length) this.block = new Uint8Array(n);
  }

  private flushBlock(): void {
    if (this.pos > 0) {
      this.parts.push(this.block.subarray(0, this.pos));
      this.block = new Uint8Array(BLOCK);
      this.pos = 0;
    }
  }

  private putByte(b: number): void {
    this.block[this.pos++] = b;
    this.total += 1;
  }

  /** A varint of a non-negative safe integer. */
  private putVarint(v: number): void {
    this.room(10);
    while (v >= 128) {
      this.putByte((v % 128) | 128);
      v = Math.floor(v / 128);
    }
    this.putByte(v);
  }

  /** A varint of a 64-bit value given as a bigint (negative: two's complement). */
  private putVarint64(v: bigint): void {
    let u = v < 0n ? v + TWO64 : v;
    this.room(10);
    while (u >= 128n) {
      this.putByte(Number(u & 127n) | 128);
      u >>= 7n;
    }
    this.putByte(Number(u));
  }

  /** A varint for an int32/int64 value (negative numbers take 10 bytes, as protobuf writes them). */
  private putSigned(v: number | bigint): void {
    if (typeof v === 'bigint') this.putVarint64(v);
    else if (v >= 0) this.putVarint(v);
    else this.putVarint64(BigInt(v));
  }

  private putBytes(data: Uint8Array): void {
    if (data.length >= REFERENCE_THRESHOLD) {
      this.room(0);
      this.flushBlock();
      this.parts.push(data);
    } else {
      this.room(data.length);
      this.block.set(data, this.pos);
      this.pos += data.length;
    }
    this.total += data.length;
  }

  private key(field: number, wire: WireType): void {
    if (!Number.isSafeInteger(field) || field < 1 || field > MAX_FIELD) {
      throw new RangeError(expectation(`a field number in [1, ${MAX_FIELD}]`, 'field', field));
    }
    this.putVarint(field * 8 + wire);
  }

  // --- scalar fields --------------------------------------------------------------------------------

  /** int64 / int32 / enum / bool field (varint). */
  int(field: number, v: number | bigint | boolean): this {
    const x = typeof v === 'boolean' ? (v ? 1 : 0) : v;
    if (typeof x === 'number' && !Number.isSafeInteger(x)) throw new RangeError(expectation('a safe integer', 'value', x));
    if (typeof x === 'bigint' && (x < -(1n << 63n) || x >= TWO64)) throw new RangeError(expectation('a 64-bit integer', 'value', x));
    this.key(field, WireType.Varint);
    this.putSigned(x);
    return this;
  }

  /** float field (32-bit IEEE, little-endian). */
  float(field: number, v: number): this {
    this.key(field, WireType.I32);
    this.room(4);
    scratch.setFloat32(0, v, true);
    for (let i = 0; i < 4; ++i) this.putByte(scratch.getUint8(i));
    return this;
  }

  /** double field (64-bit IEEE, little-endian). */
  double(field: number, v: number): this {
    this.key(field, WireType.I64);
    this.room(8);
    scratch.setFloat64(0, v, true);
    for (let i = 0; i < 8; ++i) this.putByte(scratch.getUint8(i));
    return this;
  }

  /** fixed32 / sfixed32 field. */
  fixed32(field: number, v: number): this {
    if (!Number.isInteger(v) || v < -(2 ** 31) || v >= 2 ** 32) throw new RangeError(expectation('a 32-bit integer', 'value', v));
    this.key(field, WireType.I32);
    this.room(4);
    scratch.setUint32(0, v >>> 0, true);
    for (let i = 0; i < 4; ++i) this.putByte(scratch.getUint8(i));
    return this;
  }

  /** fixed64 / sfixed64 field. */
  fixed64(field: number, v: number | bigint): this {
    const b = typeof v === 'bigint' ? v : BigInt(v);
    if (b < -(1n << 63n) || b >= TWO64) throw new RangeError(expectation('a 64-bit integer', 'value', v));
    this.key(field, WireType.I64);
    this.room(8);
    scratch.setBigUint64(0, BigInt.asUintN(64, b), true);
    for (let i = 0; i < 8; ++i) this.putByte(scratch.getUint8(i));
    return this;
  }

  // --- length-delimited fields ----------------------------------------------------------------------

  /** bytes field. Arrays of 512 bytes or more are referenced, not copied. */
  bytes(field: number, data: Uint8Array): this {
    if (!(data instanceof Uint8Array)) throw new TypeError(expectation('a Uint8Array', 'data', data));
    this.key(field, WireType.Len);
    this.putVarint(data.length);
    this.putBytes(data);
    return this;
  }

  /** string field (UTF-8). */
  string(field: number, s: string): this {
    if (typeof s !== 'string') throw new TypeError(expectation('a string', 'value', s));
    return this.bytes(field, utf8.encode(s));
  }

  /** A nested message. `sub` is appended by reference and can no longer be written to. */
  message(field: number, sub: ProtoWriter): this {
    if (!(sub instanceof ProtoWriter)) throw new TypeError(expectation('a ProtoWriter', 'sub', sub));
    if (sub === this) throw new RangeError(expectation('another writer', 'sub', 'the writer itself'));
    this.key(field, WireType.Len);
    this.putVarint(sub.length);
    this.room(0);
    this.flushBlock();
    for (const c of sub.chunks()) this.parts.push(c);
    this.total += sub.length;
    return this;
  }

  /** packed repeated int32 / int64 / enum / bool (varints). An empty list writes nothing. */
  packedInts(field: number, values: ArrayLike<number | bigint>): this {
    if (values.length === 0) return this;
    const inner = new ProtoWriter();
    for (let i = 0; i < values.length; ++i) {
      const v = values[i]!;
      if (typeof v === 'number' && !Number.isSafeInteger(v)) throw new RangeError(expectation('safe integers', 'values', v));
      inner.putSigned(v);
    }
    return this.packed(field, inner);
  }

  /** packed repeated float (4 bytes each). */
  packedFloats(field: number, values: ArrayLike<number>): this {
    if (values.length === 0) return this;
    const data = new Uint8Array(values.length * 4);
    const dv = new DataView(data.buffer);
    for (let i = 0; i < values.length; ++i) dv.setFloat32(i * 4, values[i]!, true);
    this.key(field, WireType.Len);
    this.putVarint(data.length);
    this.putBytes(data);
    return this;
  }

  /** packed repeated double (8 bytes each). */
  packedDoubles(field: number, values: ArrayLike<number>): this {
    if (values.length === 0) return this;
    const data = new Uint8Array(values.length * 8);
    const dv = new DataView(data.buffer);
    for (let i = 0; i < values.length; ++i) dv.setFloat64(i * 8, values[i]!, true);
    this.key(field, WireType.Len);
    this.putVarint(data.length);
    this.putBytes(data);
    return this;
  }

  /** packed repeated fixed64 / sfixed64 (8 bytes each). */
  packedFixed64(field: number, values: ArrayLike<number | bigint>): this {
    if (values.length === 0) return this;
    const data = new Uint8Array(values.length * 8);
    const dv = new DataView(data.buffer);
    for (let i = 0; i < values.length; ++i) {
      const v = values[i]!;
      dv.setBigUint64(i * 8, BigInt.asUintN(64, typeof v === 'bigint' ? v : BigInt(v)), true);
    }
    this.key(field, WireType.Len);
    this.putVarint(data.length);
    this.putBytes(data);
    return this;
  }

  private packed(field: number, inner: ProtoWriter): this {
    return this.message(field, inner);
  }

  // --- output ---------------------------------------------------------------------------------------

  /** The encoded chunks, in order (seals the writer). */
  chunks(): Uint8Array[] {
    if (!this.sealed) {
      this.flushBlock();
      this.sealed = true;
    }
    return this.parts;
  }

  /** The encoded message as one array (seals the writer). */
  finish(): Uint8Array {
    const parts = this.chunks();
    if (parts.length === 1) return parts[0]!;
    const out = new Uint8Array(this.total);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}
