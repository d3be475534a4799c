/**
 * Malformed and malicious inputs: every one must be rejected quickly with an Error that names the file (or pickle
 * source) and the problem, and failed writes must never leave a partial file or damage an existing one.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RawTensor } from '../../lib/dtype.js';
import { writeFileAtomic } from '../../lib/io/atomic.js';
import {
  PyGlobal, PyObject, PyPersistentId, PyTuple, pickleDump, unpickle, type PyKey, type PyValue,
} from '../../lib/io/pickle.js';
import { readPth, readPthObject, writePth } from '../../lib/io/pth.js';
import { readSafetensors, readSafetensorsHeader, readSafetensorsSync, writeSafetensors } from '../../lib/io/safetensors.js';
import { writeSafetensors as writeTensors } from '../../lib/io/tensors.js';
import { ZipReader } from '../../lib/io/zip.js';
import { Tensor } from '../../lib/tensor.js';
import { fixturePath } from '../helpers/fixtures.js';
import { craftZip, type CraftEntry } from '../helpers/zipcraft.js';

let dir: string;
let counter = 0;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mf-hostile-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function put(bytes: Uint8Array | string, ext: string): string {
  const file = path.join(dir, `f${counter++}${ext}`);
  fs.writeFileSync(file, bytes);
  return file;
}

const bin = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0));
const esc = (s: string): RegExp => new RegExp(s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));

// ---------------------------------------------------------------------------------------------------------------

/** A safetensors file from a header (object or raw text) and `dataLen` data bytes; `len` overrides the length field. */
function st(header: unknown, dataLen = 0, len?: bigint): string {
  const json = typeof header === 'string' ? Buffer.from(header, 'latin1') : Buffer.from(JSON.stringify(header));
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(len ?? BigInt(json.byteLength));
  return put(Buffer.concat([n, json, Buffer.alloc(dataLen, 7)]), '.safetensors');
}

describe('hostile safetensors', () => {
  const cases: [string, () => string, RegExp][] = [
    ['a file shorter than 8 bytes', () => put(bin('\x10\x00\x00'), '.safetensors'), /at least 8 bytes but found 3 bytes/],
    ['a header length beyond the file', () => st({}, 0, 1000n), /header of 1000 bytes but the file has only 2 bytes after/],
    ['a header length of 0', () => st('', 16, 0n), /header length is 0/],
    ['an absurd header length', () => st({}, 0, 1n << 40n), /header length of at most 100000000 bytes but found 1099511627776/],
    ['invalid UTF-8', () => st('{"a\xff":1}'), /invalid UTF-8/],
    ['invalid JSON', () => st('{"a": [1, 2'), /invalid JSON/],
    ['a header that is not an object', () => st([1, 2]), /header to be a JSON object but found \[1,2\]/],
    ['an unknown dtype', () => st({ w: { dtype: 'F8_E4M3', shape: [1], data_offsets: [0, 1] } }, 1),
      /tensor 'w': .*unknown dtype 'F8_E4M3'/],
    ['a negative dimension', () => st({ w: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, 4),
      /tensor 'w': expected shape to be an array of non-negative integers but found \[-1\]/],
    ['a fractional dimension', () => st({ w: { dtype: 'U8', shape: [1.5], data_offsets: [0, 1] } }, 1), /shape/],
    ['a shape that is not an array', () => st({ w: { dtype: 'U8', shape: '3', data_offsets: [0, 3] } }, 3), /shape/],
    ['reversed offsets', () => st({ w: { dtype: 'U8', shape: [0], data_offsets: [4, 0] } }, 4), /data_offsets \[begin, end\]/],
    ['offsets that are not a pair', () => st({ w: { dtype: 'U8', shape: [1], data_offsets: [0] } }, 1), /data_offsets/],
    ['a size mismatch', () => st({ w: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, 8),
      /tensor 'w': expected 8 bytes for F32 \[2\] but data_offsets \[0, 4\] span 4/],
    ['out-of-range offsets (truncated data)', () => st({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, 10),
      /tensor 'w': expected data_offsets within the 10-byte data section but found \[0, 16\]/],
    ['overlapping tensors', () => st({
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    }, 12), /non-overlapping tensors but 'b' \[4, 12\] overlaps 'a' \[0, 8\]/],
    ['a non-string metadata value', () => st({ __metadata__: { epoch: 3 } }), /__metadata__ value 'epoch' to be a string/],
  ];
  it.each(cases)('rejects %s', async (_what, make, message) => {
    const file = make();
    await expect(readSafetensorsHeader(file)).rejects.toThrow(message);
    await expect(readSafetensors(file)).rejects.toThrow(esc(file));
    expect(() => readSafetensorsSync(file)).toThrow(message);
  });

  it('accepts holes between tensors', async () => {
    const file = st({
      a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] }, b: { dtype: 'U8', shape: [2], data_offsets: [6, 8] },
    }, 8);
    const t = await readSafetensors(file);
    expect([...t.keys()]).toEqual(['a', 'b']);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('hostile pickles', () => {
  const source = 'evil.pkl';
  const run = (s: string): PyValue => unpickle(bin(s), { source }).value;

  it.each([
    ['os system', '\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsq\x00\x85R.'],
    ['posix system', '\x80\x02cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.'],
    ['subprocess Popen', '\x80\x02csubprocess\nPopen\n]\x85R.'],
    ['builtins eval', '\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R.'],
    ['torch load', '\x80\x02ctorch\nload\n.'],
  ])('refuses the global %s', (name, pickle) => {
    expect(() => run(pickle)).toThrow(
      `Refusing to unpickle global '${name}' in ${source}: only tensor containers are allowed`);
  });

  it.each([
    ['stack underflow', '\x80\x02R.', /expected a stack item but the stack is empty at pickle offset 2/],
    ['an unknown opcode', '\x80\x02\xff.', /supported pickle opcode but found 0xff at pickle offset 2/],
    ['a truncated string', '\x80\x02X\xff\x00\x00\x00ab', /expected 255 more pickle bytes/],
    ['a missing STOP', '\x80\x02N', /expected 1 more pickle bytes/],
    ['an undefined memo entry', '\x80\x02h\x05.', /memo entry 5 to exist/],
    ['a SETITEM on a list', '\x80\x02]K\x01K\x02s.', /expected a dict to set items on but found list/],
    ['an unhashable key', '\x80\x02}]K\x01s.', /dict key but found list/],
    ['a call of a non-global', '\x80\x02K\x01)R.', /expected a global to call/],
    ['a persistent id without a loader', '\x80\x02K\x01Q.', /no persistent ids/],
    ['runaway MARK nesting', `\x80\x02${'('.repeat(20_000)}.`, /MARKs nested at most 10000 deep/],
  ])('rejects %s', (_what, pickle, message) => {
    expect(() => run(pickle)).toThrow(message);
  });

  /** A zip-format checkpoint whose data.pkl is `pickle` and whose storages are `storages`. */
  const pthWith = (pickle: Uint8Array, storages: Record<string, Uint8Array> = {}, extra: CraftEntry[] = []): string =>
    put(craftZip([{ name: 'archive/data.pkl', data: pickle },
      ...Object.entries(storages).map(([k, data]) => ({ name: `archive/data/${k}`, data })), ...extra]), '.pth');

  it('refuses a malicious global inside a .pth, naming the file', async () => {
    const file = pthWith(bin('\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsq\x00\x85R.'));
    await expect(readPth(file)).rejects.toThrow(`Refusing to unpickle global 'os system' in ${file}`);
  });

  it('refuses a malicious global inside a legacy checkpoint', async () => {
    const head = [pickleDump(0x1950a86a20f9469cfc6cn), pickleDump(1001),
      pickleDump(new Map<PyKey, PyValue>([['little_endian', true]]))];
    const file = put(Buffer.concat([...head, bin('\x80\x02cbuiltins\nexec\nX\x01\x00\x00\x001\x85R.')]), '.pth');
    await expect(readPth(file)).rejects.toThrow(`Refusing to unpickle global 'builtins exec' in ${file}`);
    const bigEndian = put(Buffer.concat([...head.slice(0, 2),
      pickleDump(new Map<PyKey, PyValue>([['little_endian', false]]))]), '.pth');
    await expect(readPth(bigEndian)).rejects.toThrow(/expected a little-endian checkpoint/);
  });

  it('rejects reference cycles and runaway nesting, and does not blow up on shared sub-objects', async () => {
    await expect(readPthObject(pthWith(bin('\x80\x02]q\x00h\x00a.')))).rejects.toThrow(/contains itself/);
    const deep = `\x80\x02${']'.repeat(300)}${'a'.repeat(299)}.`;
    await expect(readPthObject(pthWith(bin(deep)))).rejects.toThrow(/nested at most 100 deep/);
    // 60 levels of [x, x]: 2^60 paths, 61 distinct objects.
    let dag = '\x80\x02]q\x00';
    for (let i = 1; i <= 60; i++) dag += `](h${String.fromCharCode(i - 1)}h${String.fromCharCode(i - 1)}eq${String.fromCharCode(i)}`;
    const t0 = performance.now();
    const root = await readPthObject(pthWith(bin(`${dag}.`)));
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(Array.isArray(root)).toBe(true);
  });

  const G = (m: string, n: string): PyGlobal => new PyGlobal(m, n);
  const tensorDict = (numel: number, size: number[], stride: number[], offset = 0): Uint8Array => pickleDump(
    new PyObject(G('collections', 'OrderedDict'), [], undefined, new Map<PyKey, PyValue>([['w',
      new PyObject(G('torch._utils', '_rebuild_tensor_v2'), [
        new PyPersistentId(new PyTuple(['storage', G('torch', 'FloatStorage'), '0', 'cpu', numel])),
        offset, new PyTuple(size), new PyTuple(stride), false, new PyObject(G('collections', 'OrderedDict'), [])])]])));

  it('rejects tensor views that are too large, out of range, or lack their storage', async () => {
    const four = new Uint8Array(16);
    await expect(readPth(pthWith(tensorDict(4, [1e9], [0]), { 0: four })))
      .rejects.toThrow(/'w': expected tensors totalling at most maxTotalBytes but this \[1000000000\] float32 view/);
    await expect(readPth(pthWith(tensorDict(4, [10], [1]), { 0: four })))
      .rejects.toThrow(/'w': expected a view within storage '0' of 4 elements but .* reach element 9/);
    await expect(readPth(pthWith(tensorDict(4, [2], [1], 3), { 0: four }))).rejects.toThrow(/reach element 4/);
    await expect(readPth(pthWith(tensorDict(4, [4], [1]), { 0: new Uint8Array(8) })))
      .rejects.toThrow(/record 'archive\/data\/0' to hold 16 bytes \(4 float32\) but it holds 8/);
    await expect(readPth(pthWith(tensorDict(4, [4], [1])))).rejects.toThrow(/record 'archive\/data\/0' for storage '0'/);
    await expect(readPth(pthWith(pickleDump([1, 2])))).rejects.toThrow(/expected a dict of tensors at the top but found list/);
    await expect(readPth(pthWith(tensorDict(4, [4], [1]), { 0: four },
      [{ name: 'archive/byteorder', data: bin('big') }]))).rejects.toThrow(/byteorder 'little' but found 'big'/);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('hostile zips', () => {
  const zeros = new Uint8Array(50 * 1024 * 1024);
  const bomb = new Uint8Array(zlib.deflateRawSync(zeros, { level: 9 }));
  const open = async (entries: CraftEntry[], opts?: Parameters<typeof craftZip>[1], maxEntrySize?: number) => {
    const file = put(craftZip(entries, opts), '.zip');
    return { file, zip: () => ZipReader.open(file, { maxEntrySize }) };
  };

  it('stops a deflate bomb (declares 1 KiB, inflates to 50 MiB) quickly', async () => {
    expect(bomb.byteLength).toBeLessThan(100_000);
    // Splice the precompressed bomb in as a deflate entry whose headers declare 1 KiB.
    const file = put(craftZip([{ name: 'archive/data/0', data: zeros.subarray(0, 1024), method: 8 }]), '.zip');
    const honest = fs.readFileSync(file);
    const honestPayload = zlib.deflateRawSync(zeros.subarray(0, 1024));
    const start = 30 + 'archive/data/0'.length;
    const rebuilt = craftZipWithPayload(honest, start, honestPayload.byteLength, bomb);
    fs.writeFileSync(file, rebuilt);
    const zip = await ZipReader.open(file);
    const t0 = performance.now();
    await expect(zip.read('archive/data/0')).rejects
      .toThrow(/entry 'archive\/data\/0': expected at most its declared 1024 bytes when inflated but it inflates to more/);
    expect(performance.now() - t0).toBeLessThan(2000);
    await zip.close();
  });

  it('rejects declared sizes beyond what deflate can produce, or over the cap', async () => {
    const { zip } = await open([{ name: 'a', data: zeros.subarray(0, 1000), method: 8, declaredSize: 1 << 30 }]);
    await expect(zip()).rejects.toThrow(/entry 'a': expected at most 1032:1 deflate expansion but it declares 1073741824/);
    const capped = await open([{ name: 'a', data: new Uint8Array(2048) }], undefined, 1024);
    await expect(capped.zip()).rejects.toThrow(/entry 'a': expected a size of at most 1024 bytes but it declares 2048/);
  });

  it.each([
    ['a ../ name', [{ name: 'archive/../../etc/passwd', data: bin('x') }], /relative entry names without '\.\.' but found "archive\/\.\.\/\.\.\/etc\/passwd"/],
    ['an absolute name', [{ name: '/etc/passwd', data: bin('x') }], /relative entry names/],
    ['a drive-letter name', [{ name: 'C:\\x', data: bin('x') }], /relative entry names/],
    ['an encrypted entry', [{ name: 'a', data: bin('x'), flags: 1 }], /entry 'a': expected an unencrypted entry/],
    ['an unknown method', [{ name: 'a', data: bin('x'), method: 12 }], /entry 'a': expected compression method 0 \(stored\) or 8 \(deflate\) but found 12/],
    ['an offset out of range', [{ name: 'a', data: bin('xyz'), offset: 1 << 20 }], /entry 'a': expected its data .* to lie before the central directory/],
    ['a stored entry with unequal sizes', [{ name: 'a', data: bin('xyz'), declaredSize: 9 }], /equal sizes for a stored entry/],
    ['duplicate names', [{ name: 'a', data: bin('x') }, { name: 'a', data: bin('y') }], /unique entry names but 'a' appears twice/],
  ] as [string, CraftEntry[], RegExp][])('rejects %s', async (_what, entries, message) => {
    const { file, zip } = await open(entries);
    await expect(zip()).rejects.toThrow(message);
    await expect(zip()).rejects.toThrow(esc(file));
  });

  it('rejects more entries than the central directory could hold', async () => {
    const { zip } = await open([{ name: 'a', data: bin('x') }], { count: 5000 });
    await expect(zip()).rejects.toThrow(/expected at most 1 entries in a 47-byte central directory but the archive declares 5000/);
    const { zip: zip64 } = await open([{ name: 'a', data: bin('x') }], { count: 2 ** 40, zip64: true });
    await expect(zip64()).rejects.toThrow(/declares 1099511627776/);
  });

  it('rejects a CRC mismatch and a deflate stream shorter than declared', async () => {
    const bad = await open([{ name: 'a', data: bin('hello'), crc: 1234 }]);
    const z1 = await bad.zip();
    await expect(z1.read('a')).rejects.toThrow(/entry 'a': expected CRC-32 0x000004d2 but the data has 0x3610a686/);
    await z1.close();
    const short = await open([{ name: 'a', data: new Uint8Array(1024), method: 8, declaredSize: 2048 }]);
    const z2 = await short.zip();
    await expect(z2.read('a')).rejects.toThrow(/entry 'a': expected 2048 bytes when inflated but found 1024/);
    await z2.close();
  });

  it('reads a valid ZIP64-style archive with a comment', async () => {
    const { zip } = await open([{ name: 'dir/a', data: bin('hello') }, { name: 'dir/b', data: bin('x'.repeat(999)), method: 8 }],
      { zip64: true, comment: bin('a comment with PK\x05\x06 inside') });
    const z = await zip();
    expect(new TextDecoder().decode(await z.read('dir/a'))).toBe('hello');
    expect((await z.read('dir/b')).byteLength).toBe(999);
    await z.close();
  });

  it('rejects truncated archives and checkpoints', async () => {
    const full = fs.readFileSync(fixturePath('checkpoints', 'caformer_tiny.pth'));
    const file = put(full.subarray(0, full.byteLength >> 1), '.pth');
    await expect(ZipReader.open(file)).rejects.toThrow(/expected a zip end-of-central-directory record but found none/);
    await expect(readPth(file)).rejects.toThrow(esc(file));
    const legacy = fs.readFileSync(fixturePath('checkpoints', 'caformer_tiny_legacy.pth'));
    const cut = put(legacy.subarray(0, legacy.byteLength - 100), '.pth');
    await expect(readPth(cut)).rejects.toThrow(/to end within the file|expected \d+ bytes at offset/);
  });
});

/** Replaces the `oldLen`-byte payload at `start` of a single-entry archive and fixes up the later offsets. */
function craftZipWithPayload(zip: Uint8Array, start: number, oldLen: number, payload: Uint8Array): Uint8Array {
  const b = Buffer.from(zip);
  const out = Buffer.concat([b.subarray(0, start), payload, b.subarray(start + oldLen)]);
  const delta = payload.byteLength - oldLen;
  out.writeUInt32LE(payload.byteLength, 18); // local compressed size
  const cd = start + payload.byteLength;
  out.writeUInt32LE(payload.byteLength, cd + 20); // central compressed size
  const eocd = out.byteLength - 22;
  out.writeUInt32LE(out.readUInt32LE(eocd + 16) + delta, eocd + 16); // central directory offset
  return new Uint8Array(out);
}

// ---------------------------------------------------------------------------------------------------------------

describe('random bytes', () => {
  let seed = 12345;
  const random = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed >>> 24;
  });
  it.each(['', '\x00', '\x80', '\x80\x02', '\xff', 'PK\x03\x04'])('are rejected by every reader (prefix %j)', async (prefix) => {
    const bytes = random(4096);
    bytes.set(bin(prefix));
    const file = put(bytes, '.bin');
    await expect(readSafetensors(file)).rejects.toThrow(esc(file));
    await expect(readPth(file)).rejects.toThrow(esc(file));
    await expect(ZipReader.open(file)).rejects.toThrow(esc(file));
  });
  it('an empty file is rejected', async () => {
    const file = put('', '.pth');
    await expect(readPth(file)).rejects.toThrow(`${file}: expected a PyTorch checkpoint (zip or legacy format) but found an empty file`);
    await expect(readSafetensors(file)).rejects.toThrow(/at least 8 bytes but found 0 bytes/);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('failed writes', () => {
  const leftovers = (): string[] => fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'));
  const good: RawTensor = { dtype: 'float32', shape: [2], data: new Uint8Array(8).fill(1) };

  it('a writer that throws midway leaves no target and no temporary file', async () => {
    const target = path.join(dir, 'never.bin');
    await expect(writeFileAtomic(target, async (h) => {
      await h.write(new Uint8Array(1 << 20));
      throw new Error('disk on fire');
    })).rejects.toThrow('disk on fire');
    expect(fs.existsSync(target)).toBe(false);
    expect(leftovers()).toEqual([]);
  });

  it('a failed write never destroys an earlier good file', async () => {
    const target = path.join(dir, 'model.safetensors');
    await writeSafetensors(target, [['w', good]]);
    const before = fs.readFileSync(target);
    await expect(writeFileAtomic(target, async (h) => {
      await h.write(new Uint8Array(4096));
      throw new Error('interrupted');
    })).rejects.toThrow('interrupted');
    expect(fs.readFileSync(target).equals(before)).toBe(true);

    const bad: RawTensor = { dtype: 'float32', shape: [3], data: new Uint8Array(8) };
    await expect(writeSafetensors(target, [['w', good], ['bad', bad]]))
      .rejects.toThrow(`${target}: tensor 'bad': expected 12 bytes of data for float32 [3] but found 8 bytes`);
    function* midway(): Generator<[string, RawTensor]> {
      yield ['w', good];
      throw new Error('producer failed');
    }
    await expect(writeSafetensors(target, midway())).rejects.toThrow('producer failed');
    expect(fs.readFileSync(target).equals(before)).toBe(true);
    // pending tensors are made as the writer reaches them: one that throws, or makes the wrong size, fails
    // the write midway (after the header and earlier tensors went to the temp file)
    const made: string[] = [];
    const pending = (name: string, bytes: () => Uint8Array) => [name, { dtype: 'float32', shape: [3], bytes: () => { made.push(name); return bytes(); } }] as const;
    await expect(writeSafetensors(target, [pending('a', () => new Uint8Array(12)), pending('b', () => { throw new Error('copy failed'); })]))
      .rejects.toThrow('copy failed');
    await expect(writeSafetensors(target, [pending('a', () => new Uint8Array(12)), pending('b', () => new Uint8Array(4))]))
      .rejects.toThrow(`${target}: tensor 'b': expected 12 bytes of data for float32 [3] but found 4 bytes`);
    expect(made).toEqual(['a', 'b', 'a', 'b']);
    expect(fs.readFileSync(target).equals(before)).toBe(true);
    // the Tensor writer (checkpoints, trainer weights) refuses a disposed tensor or a repeated name before
    // the file is touched
    const live = Tensor.from([1, 2, 3]), gone = Tensor.from([4, 5]);
    gone.dispose();
    await expect(writeTensors(target, [['w', live], ['gone', gone]])).rejects.toThrow(/Expected a live tensor for gone/);
    await expect(writeTensors(target, [['w', live], ['w', live]])).rejects.toThrow(/expected unique tensor names/);
    live.dispose();
    expect(fs.readFileSync(target).equals(before)).toBe(true);

    const pth = path.join(dir, 'model.pth');
    await writePth(pth, [['w', good]]);
    const pthBefore = fs.readFileSync(pth);
    await expect(writePth(pth, [['w', good], ['bad', bad]])).rejects.toThrow(/tensor 'bad'/);
    await expect(writePth(pth, midway())).rejects.toThrow('producer failed');
    expect(fs.readFileSync(pth).equals(pthBefore)).toBe(true);
    expect((await readPth(pth)).get('w')).toEqual(good);
    expect(leftovers()).toEqual([]);
  });
});
