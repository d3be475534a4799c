/**
 * Restricted Python unpickler and a small pickle writer, covering what `torch.save` emits (protocol 2, plus the
 * protocol 3/4 opcodes a newer pickler may use for the same data).
 *
 * The unpickler never executes anything: GLOBAL/STACK_GLOBAL resolve only names on an allow-list (tensor
 * containers: OrderedDict, torch's tensor rebuild functions, storage classes, dtypes, torch.device) and any other
 * global is refused. Calls (REDUCE/NEWOBJ) of allowed globals become inert `PyObject` records for the caller to
 * interpret, except OrderedDict, which becomes a Map. Persistent ids (BINPERSID) are resolved by a callback. The
 * stack, mark nesting and memo are bounded, and the machine is iterative, so hostile input cannot blow the JS stack.
 *
 * Value model: None -> null, bool -> boolean, int -> number (bigint when beyond 2^53), float -> number,
 * str -> string, bytes -> Uint8Array, list -> array, tuple -> PyTuple, dict/OrderedDict -> Map.
 */

export type PyKey = string | number | bigint | boolean | null;
export type PyValue = PyKey | Uint8Array | PyValue[] | PyTuple | Map<PyKey, PyValue> | PyGlobal | PyObject | PyExternal;

export class PyTuple {
  constructor(readonly items: readonly PyValue[]) {}
}

/** A resolved (allow-listed) global such as `torch.FloatStorage`. */
export class PyGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get qualname(): string {
    return `${this.module}.${this.name}`;
  }
}

/** The inert result of calling an allowed global: `fn(*args)`, plus `state` from BUILD and, when writing, dict items. */
export class PyObject {
  constructor(readonly fn: PyGlobal, readonly args: readonly PyValue[], public state?: PyValue,
    readonly dictItems?: Map<PyKey, PyValue>) {}
}

/** Base class for host objects placed in the value tree, e.g. what a persistent-id callback returns. */
export abstract class PyExternal {}

/** Writer only: `value` is emitted as a persistent id (BINPERSID). */
export class PyPersistentId extends PyExternal {
  constructor(readonly value: PyValue) {
    super();
  }
}

export class PickleError extends Error {
  /** True when the input ended before STOP (more bytes might make it valid). */
  readonly truncated: boolean;
  constructor(message: string, truncated = false) {
    super(message);
    this.name = 'PickleError';
    this.truncated = truncated;
  }
}

const STORAGE_TYPES = ['Float', 'Half', 'BFloat16', 'Double', 'Long', 'Int', 'Short', 'Char', 'Byte', 'Bool'];
const DTYPE_NAMES = ['float32', 'float16', 'bfloat16', 'float64', 'int64', 'int32', 'int16', 'int8', 'uint8', 'bool'];

/** Globals a tensor checkpoint may reference, as 'module name'. */
export const ALLOWED_GLOBALS: ReadonlySet<string> = new Set([
  'collections OrderedDict',
  'torch._utils _rebuild_tensor_v2',
  'torch._utils _rebuild_parameter',
  'torch._utils _rebuild_parameter_with_state',
  'torch device',
  ...STORAGE_TYPES.map((t) => `torch ${t}Storage`),
  ...DTYPE_NAMES.map((d) => `torch ${d}`),
]);

export interface UnpickleOptions {
  /** Names the input in error messages (usually the file). */
  source: string;
  /** Resolves a persistent id; without it BINPERSID is an error. */
  persistentLoad?: (pid: PyValue) => PyValue;
  /** Byte offset of the pickle in `data`. Default 0. */
  offset?: number;
}

const MAX_STACK = 1 << 20;
const MAX_MARK_DEPTH = 10_000;
const MAX_MEMO = 1 << 24;
const MAX_GLOBAL_LINE = 512;

const utf8 = new TextDecoder('utf-8', { fatal: true });

function isKey(v: PyValue): v is PyKey {
  return v === null || ['string', 'number', 'bigint', 'boolean'].includes(typeof v);
}

/** Python-style type name of a value, for error messages. */
export function pyTypeName(v: PyValue): string {
  if (v === null) return 'None';
  if (Array.isArray(v)) return 'list';
  if (v instanceof Map) return 'dict';
  if (v instanceof PyTuple) return 'tuple';
  if (v instanceof Uint8Array) return 'bytes';
  if (v instanceof PyGlobal) return `global ${v.qualname}`;
  if (v instanceof PyObject) return `${v.fn.qualname}(...)`;
  if (v instanceof PyExternal) return 'external object';
  return typeof v === 'string' ? 'str' : typeof v === 'boolean' ? 'bool' : 'number';
}

/** Converts a little-endian two's-complement integer to a number when exact, else a bigint. */
function decodeLong(b: Uint8Array): number | bigint {
  if (b.length === 0) return 0;
  let v = 0n;
  for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
  if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** Runs the pickle in `data` from `opts.offset` to its STOP opcode; `end` is the offset just after STOP. */
export function unpickle(data: Uint8Array, opts: UnpickleOptions): { value: PyValue; end: number } {
  const src = opts.source;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let pos = opts.offset ?? 0;
  let stack: PyValue[] = [];
  const marks: PyValue[][] = [];
  const memo = new Map<number, PyValue>();
  let opAt = pos;

  const fail = (what: string): never => {
    throw new PickleError(`${src}: ${what} at pickle offset ${opAt}`);
  };
  const need = (n: number): void => {
    if (pos + n > data.length) {
      throw new PickleError(`${src}: expected ${n} more pickle bytes at offset ${pos} but the data ends at ` +
        `${data.length}`, true);
    }
  };
  const u8 = (): number => { need(1); return data[pos++]; };
  const u16 = (): number => { need(2); const v = view.getUint16(pos, true); pos += 2; return v; };
  const i32 = (): number => { need(4); const v = view.getInt32(pos, true); pos += 4; return v; };
  const u32 = (): number => { need(4); const v = view.getUint32(pos, true); pos += 4; return v; };
  const u64 = (): number => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(data.length)) fail(`expected a length within the data but found ${v}`);
    return Number(v);
  };
  const bytes = (n: number): Uint8Array => { need(n); const b = data.subarray(pos, pos + n); pos += n; return b; };
  const text = (n: number): string => {
    try {
      return utf8.decode(bytes(n));
    } catch (err) {
      if (err instanceof PickleError) throw err;
      return fail('expected a UTF-8 string but found invalid UTF-8');
    }
  };
  const line = (): string => {
    const limit = Math.min(data.length, pos + MAX_GLOBAL_LINE + 1);
    const len = data.subarray(pos, limit).indexOf(0x0a);
    if (len < 0) {
      if (limit === data.length) need(limit - pos + 1); // ran out of data: report truncation
      fail(`expected a newline-terminated name of at most ${MAX_GLOBAL_LINE} bytes`);
    }
    return text(len + 1).slice(0, -1);
  };
  const push = (v: PyValue): void => {
    if (stack.length >= MAX_STACK) fail(`expected at most ${MAX_STACK} stack items but the pickle needs more`);
    stack.push(v);
  };
  const pop = (): PyValue => (stack.length ? stack.pop()! : fail('expected a stack item but the stack is empty'));
  const top = (): PyValue => (stack.length ? stack[stack.length - 1] : fail('expected a stack item but the stack is empty'));
  const popMark = (): PyValue[] => {
    const items = stack;
    const prev = marks.pop();
    if (!prev) return fail('expected a MARK but found none');
    stack = prev;
    return items;
  };
  const memoPut = (idx: number): void => {
    if (!memo.has(idx) && memo.size >= MAX_MEMO) fail(`expected at most ${MAX_MEMO} memo entries but the pickle needs more`);
    memo.set(idx, top());
  };
  const memoGet = (idx: number): void => {
    const v = memo.get(idx);
    if (v === undefined) fail(`expected memo entry ${idx} to exist but it does not`);
    push(v!);
  };
  const resolve = (module: string, name: string): PyGlobal => {
    if (!ALLOWED_GLOBALS.has(`${module} ${name}`)) {
      throw new PickleError(`Refusing to unpickle global '${module} ${name}' in ${src}: only tensor containers are allowed`);
    }
    return new PyGlobal(module, name);
  };
  const call = (fn: PyValue, args: PyValue): PyValue => {
    if (!(fn instanceof PyGlobal)) return fail(`expected a global to call but found ${pyTypeName(fn)}`);
    if (!(args instanceof PyTuple)) return fail(`expected an argument tuple but found ${pyTypeName(args)}`);
    if (fn.module === 'collections' && fn.name === 'OrderedDict') {
      const dict = new Map<PyKey, PyValue>();
      if (args.items.length === 0) return dict;
      const pairs = args.items[0];
      if (args.items.length !== 1 || !Array.isArray(pairs)) return fail('expected OrderedDict() or OrderedDict(list)');
      for (const p of pairs) {
        if (!(p instanceof PyTuple) || p.items.length !== 2 || !isKey(p.items[0])) {
          fail('expected OrderedDict items to be (key, value) tuples');
        }
        dict.set((p as PyTuple).items[0] as PyKey, (p as PyTuple).items[1]);
      }
      return dict;
    }
    return new PyObject(fn, args.items);
  };
  const setItems = (dict: PyValue, items: PyValue[]): void => {
    if (!(dict instanceof Map)) return fail(`expected a dict to set items on but found ${pyTypeName(dict)}`);
    if (items.length % 2) fail('expected key/value pairs but found an odd number of items');
    for (let i = 0; i < items.length; i += 2) {
      const k = items[i];
      if (!isKey(k)) fail(`expected a str, int, bool or None dict key but found ${pyTypeName(k)}`);
      dict.set(k as PyKey, items[i + 1]);
    }
  };
  const appendItems = (list: PyValue, items: PyValue[]): void => {
    if (!Array.isArray(list)) return fail(`expected a list to append to but found ${pyTypeName(list)}`);
    for (const item of items) list.push(item);
  };

  for (;;) {
    opAt = pos;
    const op = u8();
    switch (op) {
      case 0x80: u8(); break; // PROTO
      case 0x95: u64(); break; // FRAME: framing is only a buffering hint
      case 0x2e: { // STOP
        const value = pop();
        return { value, end: pos };
      }
      case 0x28: // MARK
        if (marks.length >= MAX_MARK_DEPTH) fail(`expected MARKs nested at most ${MAX_MARK_DEPTH} deep`);
        marks.push(stack);
        stack = [];
        break;
      case 0x30: pop(); break; // POP
      case 0x31: popMark(); break; // POP_MARK
      case 0x32: push(top()); break; // DUP
      case 0x7d: push(new Map()); break; // EMPTY_DICT
      case 0x5d: push([]); break; // EMPTY_LIST
      case 0x29: push(new PyTuple([])); break; // EMPTY_TUPLE
      case 0x4e: push(null); break; // NONE
      case 0x88: push(true); break; // NEWTRUE
      case 0x89: push(false); break; // NEWFALSE
      case 0x4b: push(u8()); break; // BININT1
      case 0x4d: push(u16()); break; // BININT2
      case 0x4a: push(i32()); break; // BININT
      case 0x8a: push(decodeLong(bytes(u8()))); break; // LONG1
      case 0x8b: { // LONG4
        const n = i32();
        if (n < 0 || n > 4096) fail(`expected a LONG4 of at most 4096 bytes but found ${n}`);
        push(decodeLong(bytes(n)));
        break;
      }
      case 0x47: { // BINFLOAT (big-endian)
        need(8);
        push(view.getFloat64(pos, false));
        pos += 8;
        break;
      }
      case 0x58: push(text(u32())); break; // BINUNICODE
      case 0x8c: push(text(u8())); break; // SHORT_BINUNICODE
      case 0x8d: push(text(u64())); break; // BINUNICODE8
      case 0x55: push(text(u8())); break; // SHORT_BINSTRING
      case 0x54: { // BINSTRING
        const n = i32();
        if (n < 0) fail(`expected a non-negative string length but found ${n}`);
        push(text(n));
        break;
      }
      case 0x43: push(bytes(u8()).slice()); break; // SHORT_BINBYTES
      case 0x42: push(bytes(u32()).slice()); break; // BINBYTES
      case 0x8e: push(bytes(u64()).slice()); break; // BINBYTES8
      case 0x74: push(new PyTuple(popMark())); break; // TUPLE
      case 0x85: push(new PyTuple([pop()])); break; // TUPLE1
      case 0x86: { const b = pop(); const a = pop(); push(new PyTuple([a, b])); break; } // TUPLE2
      case 0x87: { const c = pop(); const b = pop(); const a = pop(); push(new PyTuple([a, b, c])); break; } // TUPLE3
      case 0x6c: push(popMark()); break; // LIST
      case 0x61: { const v = pop(); appendItems(top(), [v]); break; } // APPEND
      case 0x65: { const items = popMark(); appendItems(top(), items); break; } // APPENDS
      case 0x64: { const d = new Map<PyKey, PyValue>(); setItems(d, popMark()); push(d); break; } // DICT
      case 0x73: { const v = pop(); const k = pop(); setItems(top(), [k, v]); break; } // SETITEM
      case 0x75: { const items = popMark(); setItems(top(), items); break; } // SETITEMS
      case 0x71: memoPut(u8()); break; // BINPUT
      case 0x72: memoPut(u32()); break; // LONG_BINPUT
      case 0x94: memoPut(memo.size); break; // MEMOIZE
      case 0x68: memoGet(u8()); break; // BINGET
      case 0x6a: memoGet(u32()); break; // LONG_BINGET
      case 0x63: { const module = line(); push(resolve(module, line())); break; } // GLOBAL
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('expected STACK_GLOBAL module and name strings');
        push(resolve(module as string, name as string));
        break;
      }
      case 0x52: { const args = pop(); push(call(pop(), args)); break; } // REDUCE
      case 0x81: { const args = pop(); push(call(pop(), args)); break; } // NEWOBJ
      case 0x62: { // BUILD
        const state = pop();
        const obj = top();
        if (obj instanceof PyObject) obj.state = state;
        else if (!(obj instanceof Map)) fail(`expected BUILD on a dict or object but found ${pyTypeName(obj)}`);
        // On an OrderedDict the state is its attributes (torch's `_metadata`): accepted and ignored.
        break;
      }
      case 0x51: { // BINPERSID
        const pid = pop();
        if (!opts.persistentLoad) fail('expected no persistent ids but found one');
        push(opts.persistentLoad!(pid));
        break;
      }
      default: {
        const ch = op >= 0x20 && op < 0x7f ? ` '${String.fromCharCode(op)}'` : '';
        fail(`expected a supported pickle opcode but found 0x${op.toString(16).padStart(2, '0')}${ch}`);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Writer

class ByteSink {
  private buf = new Uint8Array(1024);
  length = 0;
  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.length + n));
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
  }
  byte(...bs: number[]): void {
    this.reserve(bs.length);
    for (const b of bs) this.buf[this.length++] = b;
  }
  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  u32(v: number): void { this.byte(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff); }
  result(): Uint8Array { return this.buf.slice(0, this.length); }
}

const BATCH = 1000;

function encodeLong(v: bigint): Uint8Array {
  const out: number[] = [];
  let x = v;
  // Minimal two's-complement little-endian bytes.
  for (;;) {
    const b = Number(x & 0xffn);
    out.push(b);
    x >>= 8n;
    if ((x === 0n && (b & 0x80) === 0) || (x === -1n && (b & 0x80) !== 0)) break;
  }
  return Uint8Array.from(out);
}

/**
 * Serializes `value` as a protocol 2 pickle. Integral numbers are written as ints, other numbers as floats; a
 * `PyObject` is written as `fn(*args)` followed by its dict items (SETITEMS) and state (BUILD); a `PyPersistentId`
 * as a persistent id. No memo is used, so shared sub-objects are written once per reference.
 */
export function pickleDump(value: PyValue): Uint8Array {
  const out = new ByteSink();
  const enc = new TextEncoder();
  const str = (s: string): void => {
    const b = enc.encode(s);
    out.byte(0x58);
    out.u32(b.length);
    out.bytes(b);
  };
  const items = (list: readonly PyValue[], close: number, per: number): void => {
    for (let i = 0; i < list.length; i += BATCH * per) {
      out.byte(0x28); // MARK
      for (const v of list.slice(i, i + BATCH * per)) write(v);
      out.byte(close);
    }
  };
  const dictItems = (m: Map<PyKey, PyValue>): void => items([...m].flat(), 0x75 /* SETITEMS */, 2);
  const write = (v: PyValue): void => {
    if (v === null) out.byte(0x4e);
    else if (v === true) out.byte(0x88);
    else if (v === false) out.byte(0x89);
    else if (typeof v === 'number') {
      if (Number.isInteger(v) && v >= 0 && v < 0x100) out.byte(0x4b, v);
      else if (Number.isInteger(v) && v >= 0 && v < 0x10000) out.byte(0x4d, v & 0xff, v >> 8);
      else if (Number.isInteger(v) && v >= -0x80000000 && v <= 0x7fffffff) { out.byte(0x4a); out.u32(v); }
      else if (Number.isSafeInteger(v)) write(BigInt(v));
      else {
        const b = new Uint8Array(8);
        new DataView(b.buffer).setFloat64(0, v, false);
        out.byte(0x47);
        out.bytes(b);
      }
    } else if (typeof v === 'bigint') {
      const b = encodeLong(v);
      if (b.length > 255) throw new Error(`pickle writer: integer ${v} is too large`);
      out.byte(0x8a, b.length);
      out.bytes(b);
    } else if (typeof v === 'string') str(v);
    else if (v instanceof PyTuple) {
      const n = v.items.length;
      if (n === 0) out.byte(0x29);
      else if (n <= 3) { for (const x of v.items) write(x); out.byte(0x84 + n); } // TUPLE1..3
      else { out.byte(0x28); for (const x of v.items) write(x); out.byte(0x74); }
    } else if (Array.isArray(v)) {
      out.byte(0x5d); // EMPTY_LIST
      items(v, 0x65 /* APPENDS */, 1);
    } else if (v instanceof Map) {
      out.byte(0x7d); // EMPTY_DICT
      dictItems(v);
    } else if (v instanceof PyGlobal) {
      out.byte(0x63);
      out.bytes(enc.encode(`${v.module}\n${v.name}\n`));
    } else if (v instanceof PyObject) {
      write(v.fn);
      write(new PyTuple(v.args));
      out.byte(0x52); // REDUCE
      if (v.dictItems) dictItems(v.dictItems);
      if (v.state !== undefined) { write(v.state); out.byte(0x62); } // BUILD
    } else if (v instanceof PyPersistentId) {
      write(v.value);
      out.byte(0x51); // BINPERSID
    } else {
      throw new Error(`pickle writer: cannot serialize ${pyTypeName(v)} in protocol 2`);
    }
  };
  out.byte(0x80, 2);
  write(value);
  out.byte(0x2e);
  return out.result();
}
