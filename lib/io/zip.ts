/**
 * Minimal, defensive ZIP reader and a STORED-only ZIP writer (PKWARE APPNOTE 6.3), enough for PyTorch checkpoints.
 *
 * Reader: finds the End Of Central Directory record (and the ZIP64 locator/record when present), parses the central
 * directory and ZIP64 extra fields, and reads entries with positional reads. STORED entries go straight into the
 * caller's buffer; DEFLATE entries are inflated with an output limit equal to the declared size. CRC-32 is verified.
 * Every size and offset is checked against the file before it is used, so a hostile archive (zip bomb, path
 * traversal, bogus offsets or counts) fails fast with a clear error instead of hanging or exhausting memory.
 *
 * Writer: STORED entries with CRC-32, data aligned like PyTorch's writer does (an extra field padded with 'Z' so each
 * entry's data starts at a multiple of 64 bytes). No ZIP64: archives must stay below 4 GiB.
 */
import * as fsp from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import * as zlib from 'node:zlib';
import { readFullyAt } from './fileio.js';

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const EOCD_SIZE = 22;
const CENTRAL_SIZE = 46;
const LOCAL_SIZE = 30;
const U32_MAX = 0xffffffff;
/** Deflate cannot expand data by more than about 1032:1. */
const MAX_DEFLATE_RATIO = 1032;

// ---------------------------------------------------------------------------------------------------------------
// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), slice-by-8.

const CRC_TABLE = (() => {
  const t = new Uint32Array(256 * 8);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[i] = c;
  }
  for (let s = 1; s < 8; s++) {
    for (let i = 0; i < 256; i++) {
      const p = t[(s - 1) * 256 + i];
      t[s * 256 + i] = (p >>> 8) ^ t[p & 0xff];
    }
  }
  return t;
})();

/** CRC-32 of `data`, continuing from `crc` (the CRC of the bytes before it). */
export function crc32(data: Uint8Array, crc = 0): number {
  const t = CRC_TABLE;
  let c = ~crc;
  let i = 0;
  const n8 = data.length & ~7;
  for (; i < n8; i += 8) {
    c ^= data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24);
    c = t[1792 + (c & 0xff)] ^ t[1536 + ((c >>> 8) & 0xff)] ^ t[1280 + ((c >>> 16) & 0xff)] ^ t[1024 + (c >>> 24)] ^
      t[768 + data[i + 4]] ^ t[512 + data[i + 5]] ^ t[256 + data[i + 6]] ^ t[data[i + 7]];
  }
  for (; i < data.length; i++) c = t[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Reader

export interface ZipEntry {
  readonly name: string;
  /** 0 = STORED, 8 = DEFLATE. */
  readonly method: number;
  readonly compressedSize: number;
  /** Declared uncompressed size. */
  readonly size: number;
  readonly crc32: number;
  readonly localHeaderOffset: number;
}

export interface ZipReadOptions {
  /** Largest declared uncompressed entry size accepted. Default 4 GiB. */
  maxEntrySize?: number;
}

/** Reads little-endian integers from a byte range, failing with a clear message past its end. */
class Cursor {
  private readonly view: DataView;
  constructor(private readonly file: string, private readonly what: string, private readonly bytes: Uint8Array,
    public pos = 0) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  private need(n: number): void {
    if (this.pos + n > this.bytes.byteLength) {
      throw new Error(`${this.file}: expected ${n} more bytes in the ${this.what} at offset ${this.pos} but it ends ` +
        `at ${this.bytes.byteLength}`);
    }
  }
  u16(): number { this.need(2); const v = this.view.getUint16(this.pos, true); this.pos += 2; return v; }
  u32(): number { this.need(4); const v = this.view.getUint32(this.pos, true); this.pos += 4; return v; }
  u64(): number {
    this.need(8);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new Error(`${this.file}: expected a 64-bit size or offset below 2^53 in the ${this.what} but found ${v}`);
    }
    return Number(v);
  }
  bytesOf(n: number): Uint8Array { this.need(n); const b = this.bytes.subarray(this.pos, this.pos + n); this.pos += n; return b; }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function checkName(file: string, name: string): void {
  const parts = name.split(/[/\\]/);
  if (name === '' || name.includes('\0') || /^([/\\]|[A-Za-z]:)/.test(name) || parts.includes('..')) {
    throw new Error(`${file}: expected relative entry names without '..' but found ${JSON.stringify(name)}`);
  }
}

export class ZipReader {
  private constructor(
    readonly file: string,
    private readonly handle: FileHandle,
    private readonly owned: boolean,
    readonly fileSize: number,
    /** Start of the central directory: every entry's data must end before it. */
    private readonly dataLimit: number,
    readonly entries: ReadonlyMap<string, ZipEntry>,
  ) {}

  /** Opens and indexes `file`; call close() when done. */
  static async open(file: string, opts: ZipReadOptions = {}): Promise<ZipReader> {
    const handle = await fsp.open(file, 'r');
    try {
      return await ZipReader.parse(file, handle, true, opts);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /** Indexes an archive through a handle the caller keeps ownership of. */
  static fromHandle(file: string, handle: FileHandle, opts: ZipReadOptions = {}): Promise<ZipReader> {
    return ZipReader.parse(file, handle, false, opts);
  }

  private static async parse(file: string, handle: FileHandle, owned: boolean, opts: ZipReadOptions): Promise<ZipReader> {
    const maxEntrySize = opts.maxEntrySize ?? 4 * 1024 ** 3;
    const fileSize = (await handle.stat()).size;
    if (fileSize < EOCD_SIZE) {
      throw new Error(`${file}: expected a zip archive of at least ${EOCD_SIZE} bytes but found ${fileSize} bytes`);
    }
    // The EOCD record sits at the very end, followed only by a comment of at most 65535 bytes.
    const tailLen = Math.min(fileSize, EOCD_SIZE + 0xffff);
    const tailStart = fileSize - tailLen;
    const tail = new Uint8Array(tailLen);
    await readFullyAt(file, handle, tail, tailStart);
    const tv = new DataView(tail.buffer);
    let eocd = -1;
    for (let i = tailLen - EOCD_SIZE; i >= 0; i--) {
      if (tv.getUint32(i, true) === SIG_EOCD && i + EOCD_SIZE + tv.getUint16(i + 20, true) <= tailLen) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw new Error(`${file}: expected a zip end-of-central-directory record but found none`);
    const e = new Cursor(file, 'end-of-central-directory record', tail.subarray(eocd, eocd + EOCD_SIZE), 4);
    const disk = e.u16(), cdDisk = e.u16(), diskEntries = e.u16();
    let count = e.u16(), cdSize = e.u32(), cdOffset = e.u32();
    let cdEnd = tailStart + eocd; // the central directory must end before this
    if (disk !== 0 || cdDisk !== 0 || diskEntries !== count) {
      throw new Error(`${file}: expected a single-disk zip archive but found a multi-disk one`);
    }
    const locatorPos = eocd - 20;
    if (locatorPos >= 0 && tv.getUint32(locatorPos, true) === SIG_ZIP64_LOCATOR) {
      const l = new Cursor(file, 'ZIP64 locator', tail.subarray(locatorPos, eocd), 8);
      const recordOffset = l.u64();
      if (recordOffset + 56 > tailStart + locatorPos) {
        throw new Error(`${file}: expected the ZIP64 end-of-central-directory record before offset ` +
          `${tailStart + locatorPos} but the locator points to ${recordOffset}`);
      }
      const rec = new Uint8Array(56);
      await readFullyAt(file, handle, rec, recordOffset);
      const r = new Cursor(file, 'ZIP64 end-of-central-directory record', rec);
      if (r.u32() !== SIG_ZIP64_EOCD) {
        throw new Error(`${file}: expected a ZIP64 end-of-central-directory record at offset ${recordOffset} but ` +
          `found another signature`);
      }
      r.pos = 24;
      const diskEntries64 = r.u64();
      count = r.u64();
      cdSize = r.u64();
      cdOffset = r.u64();
      if (diskEntries64 !== count) throw new Error(`${file}: expected a single-disk zip archive but found a multi-disk one`);
      cdEnd = recordOffset;
    } else if (count === 0xffff || cdSize === U32_MAX || cdOffset === U32_MAX) {
      throw new Error(`${file}: expected a ZIP64 locator for the saturated end-of-central-directory fields but found none`);
    }
    if (cdOffset + cdSize > cdEnd) {
      throw new Error(`${file}: expected the central directory (${cdSize} bytes at ${cdOffset}) to end before ` +
        `offset ${cdEnd} but it does not`);
    }
    if (count * CENTRAL_SIZE > cdSize) {
      throw new Error(`${file}: expected at most ${Math.floor(cdSize / CENTRAL_SIZE)} entries in a ${cdSize}-byte ` +
        `central directory but the archive declares ${count}`);
    }
    const cdBytes = new Uint8Array(cdSize);
    await readFullyAt(file, handle, cdBytes, cdOffset);
    const c = new Cursor(file, 'central directory', cdBytes);
    const entries = new Map<string, ZipEntry>();
    for (let i = 0; i < count; i++) {
      const at = cdOffset + c.pos;
      if (c.u32() !== SIG_CENTRAL) {
        throw new Error(`${file}: expected a central directory header at offset ${at} but found another signature`);
      }
      c.pos += 4; // version made by, version needed
      const flags = c.u16(), method = c.u16();
      c.pos += 4; // time, date
      const crc = c.u32();
      let compressedSize = c.u32(), size = c.u32();
      const nameLen = c.u16(), extraLen = c.u16(), commentLen = c.u16();
      c.pos += 8; // disk number start, internal attributes, external attributes
      let localHeaderOffset = c.u32();
      const rawName = c.bytesOf(nameLen);
      const extra = new Cursor(file, 'central directory extra field', c.bytesOf(extraLen));
      c.pos += commentLen;
      let name: string;
      try {
        name = utf8.decode(rawName); // flag bit 11 marks UTF-8; other encodings (CP437) are not accepted
      } catch {
        throw new Error(`${file}: expected a UTF-8 entry name at offset ${at} but found invalid UTF-8`);
      }
      checkName(file, name);
      // ZIP64 extended information: present fields are those saturated in the fixed header, in this order.
      while (extra.pos + 4 <= extraLen) {
        const id = extra.u16(), len = extra.u16();
        const body = new Cursor(file, `ZIP64 extra field of '${name}'`, extra.bytesOf(len));
        if (id !== 0x0001) continue;
        if (size === U32_MAX) size = body.u64();
        if (compressedSize === U32_MAX) compressedSize = body.u64();
        if (localHeaderOffset === U32_MAX) localHeaderOffset = body.u64();
      }
      const where = `${file}: entry '${name}'`;
      if (flags & 0x41) throw new Error(`${where}: expected an unencrypted entry but found an encrypted one`);
      if (method !== 0 && method !== 8) {
        throw new Error(`${where}: expected compression method 0 (stored) or 8 (deflate) but found ${method}`);
      }
      if (localHeaderOffset + LOCAL_SIZE + compressedSize > cdOffset) {
        throw new Error(`${where}: expected its data (${compressedSize} bytes at ${localHeaderOffset}) to lie before ` +
          `the central directory at ${cdOffset} but it does not`);
      }
      if (size > maxEntrySize) {
        throw new Error(`${where}: expected a size of at most ${maxEntrySize} bytes but it declares ${size}`);
      }
      if (method === 0 && size !== compressedSize) {
        throw new Error(`${where}: expected equal sizes for a stored entry but found ${compressedSize} compressed ` +
          `and ${size} uncompressed`);
      }
      if (method === 8 && size > compressedSize * MAX_DEFLATE_RATIO + 64) {
        throw new Error(`${where}: expected at most ${MAX_DEFLATE_RATIO}:1 deflate expansion but it declares ${size} ` +
          `bytes from ${compressedSize}`);
      }
      if (entries.has(name)) throw new Error(`${file}: expected unique entry names but '${name}' appears twice`);
      entries.set(name, { name, method, compressedSize, size, crc32: crc, localHeaderOffset });
    }
    return new ZipReader(file, handle, owned, fileSize, cdOffset, entries);
  }

  /**
   * Reads an entry's uncompressed bytes, into `into` when given (it must be exactly the entry's size). STORED
   * entries are read straight into the destination; DEFLATE entries are inflated with a limit of the declared size.
   */
  async read(name: string, into?: Uint8Array, opts: { verifyCrc?: boolean } = {}): Promise<Uint8Array> {
    const entry = this.entries.get(name);
    if (!entry) throw new Error(`${this.file}: expected an entry named '${name}' but the archive has none`);
    const where = `${this.file}: entry '${name}'`;
    if (into && into.byteLength !== entry.size) {
      throw new Error(`${where}: expected a destination of ${entry.size} bytes but got ${into.byteLength}`);
    }
    const local = new Uint8Array(LOCAL_SIZE);
    await readFullyAt(this.file, this.handle, local, entry.localHeaderOffset);
    const h = new Cursor(this.file, `local header of '${name}'`, local);
    if (h.u32() !== SIG_LOCAL) {
      throw new Error(`${where}: expected a local file header at offset ${entry.localHeaderOffset} but found ` +
        `another signature`);
    }
    h.pos = 26;
    const nameLen = h.u16(), extraLen = h.u16();
    const dataStart = entry.localHeaderOffset + LOCAL_SIZE + nameLen + extraLen;
    if (dataStart + entry.compressedSize > this.dataLimit) {
      throw new Error(`${where}: expected its data (${entry.compressedSize} bytes at ${dataStart}) to end before the ` +
        `central directory at ${this.dataLimit} but it does not`);
    }
    let out: Uint8Array;
    if (entry.method === 0) {
      out = into ?? new Uint8Array(entry.size);
      await readFullyAt(this.file, this.handle, out, dataStart);
    } else {
      const compressed = new Uint8Array(entry.compressedSize);
      await readFullyAt(this.file, this.handle, compressed, dataStart);
      let inflated: Uint8Array;
      try {
        inflated = zlib.inflateRawSync(compressed, { maxOutputLength: Math.max(1, entry.size) });
      } catch (err) {
        if ((err as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') {
          throw new Error(`${where}: expected at most its declared ${entry.size} bytes when inflated but it inflates ` +
            `to more (zip bomb?)`);
        }
        throw new Error(`${where}: expected valid deflate data but inflating failed (${(err as Error).message})`);
      }
      if (inflated.byteLength !== entry.size) {
        throw new Error(`${where}: expected ${entry.size} bytes when inflated but found ${inflated.byteLength}`);
      }
      if (into) into.set(inflated);
      out = into ?? inflated;
    }
    if (opts.verifyCrc !== false) {
      const crc = crc32(out);
      if (crc !== entry.crc32) {
        throw new Error(`${where}: expected CRC-32 ${hex(entry.crc32)} but the data has ${hex(crc)}`);
      }
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.owned) await this.handle.close();
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Writer

interface WrittenEntry {
  name: Uint8Array;
  crc: number;
  size: number;
  offset: number;
}

/** Streams a STORED zip archive to `sink`, which receives the archive's bytes in order. */
export class ZipWriter {
  private offset = 0;
  private readonly written: WrittenEntry[] = [];
  private readonly names = new Set<string>();

  /** `align`: each entry's data starts at a multiple of this many bytes (PyTorch uses 64). */
  constructor(private readonly sink: (bytes: Uint8Array) => Promise<void>, private readonly align = 64) {}

  private async emit(bytes: Uint8Array): Promise<void> {
    if (this.offset + bytes.byteLength > U32_MAX) {
      throw new Error(`zip writer: expected an archive below 4 GiB (ZIP64 is not supported) but it grows past that`);
    }
    await this.sink(bytes);
    this.offset += bytes.byteLength;
  }

  async add(name: string, data: Uint8Array): Promise<void> {
    checkName('zip writer', name);
    if (this.names.has(name)) throw new Error(`zip writer: expected unique entry names but '${name}' was added twice`);
    this.names.add(name);
    const nameBytes = new TextEncoder().encode(name);
    // Extra field 'FB' (as PyTorch writes it): 4-byte header plus 'Z' padding up to the alignment.
    const start = this.offset + LOCAL_SIZE + nameBytes.byteLength + 4;
    const pad = (this.align - (start % this.align)) % this.align;
    const header = new Uint8Array(LOCAL_SIZE + nameBytes.byteLength + 4 + pad);
    const v = new DataView(header.buffer);
    const crc = crc32(data);
    v.setUint32(0, SIG_LOCAL, true);
    v.setUint16(4, 20, true); // version needed: 2.0
    v.setUint16(6, 0, true); // flags
    v.setUint16(8, 0, true); // STORED
    v.setUint16(10, 0, true); // time 00:00:00
    v.setUint16(12, 0x21, true); // date 1980-01-01
    v.setUint32(14, crc, true);
    v.setUint32(18, data.byteLength, true);
    v.setUint32(22, data.byteLength, true);
    v.setUint16(26, nameBytes.byteLength, true);
    v.setUint16(28, 4 + pad, true);
    header.set(nameBytes, LOCAL_SIZE);
    const x = LOCAL_SIZE + nameBytes.byteLength;
    v.setUint16(x, 0x4246, true); // "FB"
    v.setUint16(x + 2, pad, true);
    header.fill(0x5a, x + 4); // 'Z'
    this.written.push({ name: nameBytes, crc, size: data.byteLength, offset: this.offset });
    await this.emit(header);
    await this.emit(data);
  }

  /** Writes the central directory and end record. */
  async finish(): Promise<void> {
    const cdOffset = this.offset;
    const cdSize = this.written.reduce((a, e) => a + CENTRAL_SIZE + e.name.byteLength, 0);
    const out = new Uint8Array(cdSize + EOCD_SIZE);
    const v = new DataView(out.buffer);
    let p = 0;
    for (const e of this.written) {
      v.setUint32(p, SIG_CENTRAL, true);
      v.setUint16(p + 4, 20, true); // version made by
      v.setUint16(p + 6, 20, true); // version needed
      v.setUint16(p + 12, 0, true); // time
      v.setUint16(p + 14, 0x21, true); // date
      v.setUint32(p + 16, e.crc, true);
      v.setUint32(p + 20, e.size, true);
      v.setUint32(p + 24, e.size, true);
      v.setUint16(p + 28, e.name.byteLength, true);
      v.setUint32(p + 42, e.offset, true);
      out.set(e.name, p + CENTRAL_SIZE);
      p += CENTRAL_SIZE + e.name.byteLength;
    }
    if (this.written.length > 0xffff) throw new Error(`zip writer: more than 65535 entries needs ZIP64 (unsupported)`);
    v.setUint32(p, SIG_EOCD, true);
    v.setUint16(p + 8, this.written.length, true);
    v.setUint16(p + 10, this.written.length, true);
    v.setUint32(p + 12, cdSize, true);
    v.setUint32(p + 16, cdOffset, true);
    await this.emit(out);
  }
}
