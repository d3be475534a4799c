/**
 * Builds zip archives byte by byte for reader tests, including ones that lie (wrong sizes, CRCs, counts, flags),
 * and ZIP64 variants. Independent of lib/io/zip.ts's writer on purpose.
 */
import * as zlib from 'node:zlib';
import { crc32 } from '../../lib/io/zip.js';

export interface CraftEntry {
  name: string;
  data: Uint8Array;
  /** 0 = stored (default), 8 = deflate, anything else is written as given. */
  method?: number;
  /** Uncompressed size written in the headers (default: the real one). */
  declaredSize?: number;
  crc?: number;
  flags?: number;
  /** Local header offset written in the central directory (default: the real one). */
  offset?: number;
}

export interface CraftOptions {
  /** Entry count written in the end records (default: the real one). */
  count?: number;
  /** Write ZIP64 end records and ZIP64 extra fields with saturated 32-bit fields. */
  zip64?: boolean;
  /** Bytes appended after the end record, as an archive comment. */
  comment?: Uint8Array;
}

export function craftZip(entries: CraftEntry[], opts: CraftOptions = {}): Uint8Array {
  const chunks: Uint8Array[] = [];
  let pos = 0;
  const emit = (b: Uint8Array): void => {
    chunks.push(b);
    pos += b.byteLength;
  };
  const central: Uint8Array[] = [];
  for (const e of entries) {
    const method = e.method ?? 0;
    const payload = method === 8 ? new Uint8Array(zlib.deflateRawSync(e.data)) : e.data;
    const size = e.declaredSize ?? e.data.byteLength;
    const crc = e.crc ?? crc32(e.data);
    const name = new TextEncoder().encode(e.name);
    const offset = pos;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(45, 4);
    local.writeUInt16LE(e.flags ?? 0, 6);
    local.writeUInt16LE(method, 8);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(opts.zip64 ? 0xffffffff : payload.byteLength, 18);
    local.writeUInt32LE(opts.zip64 ? 0xffffffff : size, 22);
    local.writeUInt16LE(name.byteLength, 26);
    emit(local);
    emit(name);
    emit(payload);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(45, 4);
    c.writeUInt16LE(45, 6);
    c.writeUInt16LE(e.flags ?? 0, 8);
    c.writeUInt16LE(method, 10);
    c.writeUInt32LE(crc, 16);
    c.writeUInt16LE(name.byteLength, 28);
    let extra = Buffer.alloc(0);
    if (opts.zip64) {
      c.writeUInt32LE(0xffffffff, 20);
      c.writeUInt32LE(0xffffffff, 24);
      c.writeUInt32LE(0xffffffff, 42);
      extra = Buffer.alloc(28);
      extra.writeUInt16LE(0x0001, 0);
      extra.writeUInt16LE(24, 2);
      extra.writeBigUInt64LE(BigInt(size), 4);
      extra.writeBigUInt64LE(BigInt(payload.byteLength), 12);
      extra.writeBigUInt64LE(BigInt(e.offset ?? offset), 20);
    } else {
      c.writeUInt32LE(payload.byteLength, 20);
      c.writeUInt32LE(size, 24);
      c.writeUInt32LE(e.offset ?? offset, 42);
    }
    c.writeUInt16LE(extra.byteLength, 30);
    central.push(c, name, extra);
  }
  const cdOffset = pos;
  for (const b of central) emit(b);
  const cdSize = pos - cdOffset;
  const count = opts.count ?? entries.length;
  if (opts.zip64) {
    const rec = Buffer.alloc(56);
    const recOffset = pos;
    rec.writeUInt32LE(0x06064b50, 0);
    rec.writeBigUInt64LE(44n, 4);
    rec.writeUInt16LE(45, 12);
    rec.writeUInt16LE(45, 14);
    rec.writeBigUInt64LE(BigInt(count), 24);
    rec.writeBigUInt64LE(BigInt(count), 32);
    rec.writeBigUInt64LE(BigInt(cdSize), 40);
    rec.writeBigUInt64LE(BigInt(cdOffset), 48);
    emit(rec);
    const loc = Buffer.alloc(20);
    loc.writeUInt32LE(0x07064b50, 0);
    loc.writeBigUInt64LE(BigInt(recOffset), 8);
    loc.writeUInt32LE(1, 16);
    emit(loc);
  }
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(opts.zip64 ? 0xffff : count, 8);
  eocd.writeUInt16LE(opts.zip64 ? 0xffff : count, 10);
  eocd.writeUInt32LE(opts.zip64 ? 0xffffffff : cdSize, 12);
  eocd.writeUInt32LE(opts.zip64 ? 0xffffffff : cdOffset, 16);
  eocd.writeUInt16LE(opts.comment?.byteLength ?? 0, 20);
  emit(eocd);
  if (opts.comment) emit(opts.comment);
  return new Uint8Array(Buffer.concat(chunks));
}
