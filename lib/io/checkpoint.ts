/**
 * Checkpoints as state dicts under the official names: read (.safetensors or PyTorch .pth, told apart by
 * their first bytes, not by the extension), map key conventions (lib/io/keys.ts), save atomically, and load
 * into a model.
 *
 * Float16 / bfloat16 weights stay as stored unless a `dtype` is asked for; Module.loadStateDict converts to
 * the parameter dtype while copying, so loading half-precision weights into a float32 model needs no option.
 */
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { isDType, isFloatDType, type DType, type RawTensor } from '../dtype.js';
import { MetaFormer } from '../models/metaformer.js';
import type { LoadResult, Module } from '../nn/module.js';
import { expectation, Tensor } from '../tensor.js';
import { detectConvention, toOfficial, toTimm, type KeyDetection } from './keys.js';
import { PthTensor, readPth, readPthObject, writePth } from './pth.js';
import { MAX_HEADER_BYTES, readSafetensorsHeader } from './safetensors.js';
import { convertDTypes, readSafetensors, tensorAllocator, toRaw, writeSafetensors } from './tensors.js';
import type { PyKey, PyValue } from './pickle.js';

export type CheckpointFormat = 'safetensors' | 'pth';

/** safetensors metadata key under which saveCheckpoint records a MetaFormer's configuration (JSON). */
export const CONFIG_METADATA_KEY = 'metaformer_config';

/** Entries of a training checkpoint that may hold the weights, tried in this order after readPth's own unwrapping. */
const EMA_KEYS: readonly string[] = ['model_ema', 'state_dict_ema', 'ema'];

export interface ReadCheckpointOptions {
  /** Convert every floating-point tensor to this dtype (e.g. 'float32'); default: keep the stored dtypes. */
  dtype?: DType;
}

export interface CheckpointContents {
  format: CheckpointFormat;
  /** The tensors under their stored names, in file order. */
  tensors: Map<string, Tensor>;
  /** safetensors `__metadata__` ({} for .pth). */
  metadata: Record<string, string>;
  /** The key convention of the stored names. */
  detected: KeyDetection;
}

function checkPath(p: unknown, name: string): string {
  if (typeof p !== 'string' || p.length === 0) throw new TypeError(expectation('a file path', name, p));
  return p;
}

function checkDType(d: unknown, name: string): DType | undefined {
  if (d === undefined) return undefined;
  if (!isDType(d) || !isFloatDType(d)) throw new TypeError(expectation("a floating-point dtype ('float32', 'float16', 'bfloat16' or 'float64')", name, d));
  return d;
}

/** Tells a safetensors file from a PyTorch checkpoint by its first bytes. */
export async function sniffFormat(file: string): Promise<CheckpointFormat> {
  checkPath(file, 'file');
  let handle: fsp.FileHandle;
  try {
    handle = await fsp.open(file, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(`${expectation('a readable checkpoint file', 'file', file)} (${code ?? (e as Error).message})`, { cause: e });
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new Error(expectation('a regular file', 'file', file));
    const head = new Uint8Array(Math.min(9, st.size));
    if (head.length > 0) await handle.read(head, 0, head.length, 0);
    if (head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04) return 'pth';
    if (head.length >= 2 && head[0] === 0x80 && head[1]! >= 2 && head[1]! <= 5) return 'pth';  // legacy: a pickle
    if (head.length === 9 && head[8] === 0x7b) {  // '{'
      const n = new DataView(head.buffer).getBigUint64(0, true);
      if (n >= 2n && n <= BigInt(MAX_HEADER_BYTES) && n + 8n <= BigInt(st.size)) return 'safetensors';
    }
    const found = st.size === 0 ? 'an empty file'
      : `a file starting with ${[...head.subarray(0, 8)].map((b) => b.toString(16).padStart(2, '0')).join(' ')}`;
    throw new Error(`${file}: expected a .safetensors or PyTorch .pth checkpoint but found ${found}`);
  } finally {
    await handle.close();
  }
}

/** Finds an EMA state dict (or another nested dict of tensors) in a checkpoint's object tree. */
function findNestedStateDict(root: PyValue): Map<PyKey, PyValue> | null {
  if (!(root instanceof Map)) return null;
  const isDictOfTensors = (v: PyValue | undefined): v is Map<PyKey, PyValue> =>
    v instanceof Map && [...v.values()].some((x) => x instanceof PthTensor);
  for (const k of EMA_KEYS) {
    const v = root.get(k);
    if (isDictOfTensors(v)) return v;
  }
  return null;
}

async function readPthTensors(file: string): Promise<Map<string, Tensor>> {
  const a = tensorAllocator();
  let raw: Map<string, RawTensor>;
  try {
    raw = await readPth(file, { alloc: a.alloc });
  } catch (e) {
    a.disposeAll();
    throw e;
  }
  const out = new Map<string, Tensor>();
  for (const [k, r] of raw) out.set(k, a.take(r));
  a.disposeAll();
  if (out.size > 0) return out;
  // Nothing at the top or under state_dict/model: look for an EMA copy.
  const nested = findNestedStateDict(await readPthObject(file));
  if (nested) {
    for (const [k, v] of nested) {
      if (typeof k === 'string' && v instanceof PthTensor) out.set(k, Tensor.fromBytes(v.data, v.shape, v.dtype));
    }
  }
  if (out.size === 0) throw new Error(`${file}: expected a state dict of tensors but the checkpoint holds none`);
  return out;
}

/** Reads a checkpoint's tensors under their stored names, with its format, metadata and key convention. */
export async function readCheckpoint(file: string, opts: ReadCheckpointOptions = {}): Promise<CheckpointContents> {
  checkPath(file, 'file');
  const dtype = checkDType(opts.dtype, 'dtype');
  const format = await sniffFormat(file);
  let tensors: Map<string, Tensor>;
  let metadata: Record<string, string> = {};
  if (format === 'safetensors') {
    metadata = (await readSafetensorsHeader(file)).metadata;
    tensors = await readSafetensors(file);
  } else {
    tensors = await readPthTensors(file);
  }
  convertDTypes(tensors, dtype);
  return { format, tensors, metadata, detected: detectConvention(tensors.keys()) };
}

/**
 * Reads a checkpoint as a state dict under the official names (timm names mapped, `module.` stripped).
 * The caller owns the tensors.
 */
export async function loadStateDict(file: string, opts: ReadCheckpointOptions = {}): Promise<Map<string, Tensor>> {
  const { tensors } = await readCheckpoint(file, opts);
  try {
    return adoptOfficial(tensors);
  } catch (e) {
    for (const t of tensors.values()) t.dispose();
    throw e;
  }
}

/** toOfficial on a map this module owns: the input tensors replaced by views are disposed. */
function adoptOfficial(tensors: Map<string, Tensor>): Map<string, Tensor> {
  const { stateDict } = toOfficial(tensors);
  const kept = new Set(stateDict.values());
  for (const t of tensors.values()) if (!kept.has(t)) t.dispose();
  return stateDict;
}

/** The MetaFormer configuration saved in a safetensors checkpoint by saveCheckpoint, or null. */
export async function readCheckpointConfig(file: string): Promise<Record<string, unknown> | null> {
  if ((await sniffFormat(file)) !== 'safetensors') return null;
  const text = (await readSafetensorsHeader(file)).metadata[CONFIG_METADATA_KEY];
  if (text === undefined) return null;
  try {
    const v: unknown = JSON.parse(text);
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    throw new Error(`${file}: expected JSON in the '${CONFIG_METADATA_KEY}' metadata entry`);
  }
}

/** The metadata key under which trained weights record their class names (a JSON array of strings). */
export const LABELS_METADATA_KEY = 'metaformer_labels';

/** The class names saved in a safetensors checkpoint (by the trainer), or null. */
export async function readCheckpointLabels(file: string): Promise<string[] | null> {
  if ((await sniffFormat(file)) !== 'safetensors') return null;
  const text = (await readSafetensorsHeader(file)).metadata[LABELS_METADATA_KEY];
  if (text === undefined) return null;
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new Error(`${file}: expected JSON in the '${LABELS_METADATA_KEY}' metadata entry`);
  }
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) {
    throw new Error(`${file}: expected an array of class names in the '${LABELS_METADATA_KEY}' metadata entry`);
  }
  return v as string[];
}

export interface SaveCheckpointOptions {
  /** Default: from the extension (.safetensors; .pth, .pt, .bin, .ckpt). */
  format?: CheckpointFormat;
  /** safetensors `__metadata__` entries (string values); ignored for .pth, which has no such field. */
  metadata?: Record<string, string>;
  /** Store the floating-point tensors in this dtype (e.g. 'float16' to halve the file). */
  dtype?: DType;
  /** Key names to write: 'official' (default) or 'timm' (for timm's MetaFormer, 1x1 conv shapes included). */
  keys?: 'official' | 'timm';
}

/** The format a path's extension implies, or null. */
export function formatFromExtension(file: string): CheckpointFormat | null {
  const ext = path.extname(file).toLowerCase();
  if (ext === '.safetensors') return 'safetensors';
  if (ext === '.pth' || ext === '.pt' || ext === '.bin' || ext === '.ckpt') return 'pth';
  return null;
}

/**
 * Writes a model's parameters, or a state dict (any key convention; mapped to official names, or to timm's
 * with `keys: 'timm'`), atomically:
 * an existing file is replaced only by a complete new one. A MetaFormer's configuration is recorded in the
 * safetensors metadata (CONFIG_METADATA_KEY), so the file alone can rebuild the model.
 */
export async function saveCheckpoint(source: Module | Map<string, Tensor>, file: string, opts: SaveCheckpointOptions = {}): Promise<void> {
  checkPath(file, 'file');
  const format = opts.format ?? formatFromExtension(file);
  if (format !== 'safetensors' && format !== 'pth') {
    throw new TypeError(expectation("format 'safetensors' or 'pth' (or a .safetensors / .pth file name)", 'format', opts.format ?? file));
  }
  const dtype = checkDType(opts.dtype, 'dtype');
  const keys = opts.keys ?? 'official';
  if (keys !== 'official' && keys !== 'timm') throw new TypeError(expectation("'official' or 'timm'", 'keys', opts.keys));
  const metadata: Record<string, string> = { format: 'pt' };
  if (opts.metadata !== undefined) {
    if (opts.metadata === null || typeof opts.metadata !== 'object') throw new TypeError(expectation('an object of strings', 'metadata', opts.metadata));
    for (const [k, v] of Object.entries(opts.metadata)) {
      if (typeof v !== 'string') throw new TypeError(expectation(`a string for metadata ${JSON.stringify(k)}`, 'metadata', v));
      metadata[k] = v;
    }
  }
  let official: Map<string, Tensor>;
  let views: Map<string, Tensor> | null = null;
  if (source instanceof Map) {
    official = toOfficial(source).stateDict;
    views = official;
  } else if (source !== null && typeof source === 'object' && typeof (source as Module).stateDict === 'function') {
    official = source.stateDict();
    if (source instanceof MetaFormer && metadata[CONFIG_METADATA_KEY] === undefined) {
      metadata[CONFIG_METADATA_KEY] = JSON.stringify(source.config);
    }
  } else {
    throw new TypeError(expectation('a Module or a Map of name -> Tensor', 'source', source));
  }
  const named = keys === 'timm' ? toTimm(official) : official;
  const converted: Tensor[] = [];
  try {
    const entries: [string, Tensor][] = [];
    for (const [k, t] of named) {
      if (t.disposed) throw new Error(expectation(`a live tensor for ${JSON.stringify(k)}`, 'source', t));
      if (dtype && isFloatDType(t.dtype) && t.dtype !== dtype) {
        const c = t.to(dtype);
        converted.push(c);
        entries.push([k, c]);
      } else {
        entries.push([k, t]);
      }
    }
    if (format === 'safetensors') await writeSafetensors(file, entries, metadata);
    else await writePth(file, entries.map(([k, t]) => [k, toRaw(t)] as [string, RawTensor]));
  } finally {
    for (const c of converted) c.dispose();
    if (named !== official) {
      const own = new Set(official.values());
      for (const t of named.values()) if (!own.has(t)) t.dispose();
    }
    if (views && source instanceof Map) {
      const own = new Set(source.values());
      for (const t of views.values()) if (!own.has(t)) t.dispose();
    }
  }
}

export interface LoadWeightsOptions {
  /** Missing and unexpected keys are errors (default true); shape mismatches always are. */
  strict?: boolean;
}

export interface LoadWeightsResult extends LoadResult {
  /** The key convention of the source. */
  convention: KeyDetection['convention'];
}

/**
 * Loads weights into a model: a checkpoint file (read, mapped to official names, copied in, freed) or a state
 * dict in any key convention (left to the caller, who still owns its tensors).
 */
export async function loadWeights(model: Module, source: string | Map<string, Tensor>, opts: LoadWeightsOptions = {}): Promise<LoadWeightsResult> {
  if (model === null || typeof model !== 'object' || typeof (model as Module).loadStateDict !== 'function') {
    throw new TypeError(expectation('a Module', 'model', model));
  }
  if (opts.strict !== undefined && typeof opts.strict !== 'boolean') throw new TypeError(expectation('a boolean', 'strict', opts.strict));
  if (typeof source === 'string') {
    const { tensors, detected } = await readCheckpoint(source);
    try {
      const official = adoptOfficial(tensors);
      try {
        return { ...model.loadStateDict(official, { strict: opts.strict ?? true }), convention: detected.convention };
      } catch (e) {
        throw new Error(`${source}: ${(e as Error).message}`, { cause: e });
      } finally {
        for (const t of official.values()) t.dispose();
      }
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  }
  if (!(source instanceof Map)) throw new TypeError(expectation('a checkpoint path or a Map of name -> Tensor', 'source', source));
  const { stateDict, detected } = toOfficial(source);
  try {
    return { ...model.loadStateDict(stateDict, { strict: opts.strict ?? true }), convention: detected.convention };
  } finally {
    const own = new Set(source.values());
    for (const t of stateDict.values()) if (!own.has(t)) t.dispose();
  }
}
