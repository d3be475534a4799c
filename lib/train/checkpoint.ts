/**
 * Training checkpoints: one safetensors file per checkpoint, written atomically (a temporary file in the same
 * folder, fsync, rename: lib/io/atomic.ts), so a crash or an error mid-write leaves the previous checkpoint whole.
 *
 * Layout (format "metaformer-train", version 1):
 *   tensors  model.<official name>           the model's parameters (official state_dict names)
 *            ema.<official name>             the EMA shadow weights, when EMA is on
 *            optimizer.<slot>.<param name>   optimizer state (exp_avg, exp_avg_sq, momentum_buffer)
 *   metadata metaformer_train                JSON: epoch, iteration, optimizer kind / options / step counts,
 *                                            schedule state, EMA updates, data-loader state, global RNG state,
 *                                            history, run configuration
 *            metaformer_config               JSON: the model configuration (lib/io/checkpoint.ts's key)
 *
 * saveModelWeights() writes a plain weights file: official names only (what the official checkpoints and
 * lib/io/checkpoint.ts's loadWeights read), with the model configuration in the metadata (and, from the
 * Trainer, the class names under metaformer_labels).
 */
import { CONFIG_METADATA_KEY } from '../io/checkpoint.js';
import { readSafetensorsHeader } from '../io/safetensors.js';
import { readSafetensors, writeSafetensors } from '../io/tensors.js';
import { MetaFormer } from '../models/metaformer.js';
import type { Module } from '../nn/module.js';
import { expectation, type Tensor } from '../tensor.js';
import type { ModelEma } from './ema.js';
import type { Optimizer, OptimizerState } from './optim.js';

export const TRAIN_METADATA_KEY = 'metaformer_train';
export { CONFIG_METADATA_KEY };
/** Class names of the head, a JSON array, in the weights files the Trainer exports. */
export { LABELS_METADATA_KEY } from '../io/checkpoint.js';
export const TRAIN_FORMAT = 'metaformer-train';

/** The JSON part of a checkpoint. */
export interface TrainStateJson {
  format: typeof TRAIN_FORMAT;
  version: 1;
  [key: string]: unknown;
}

export interface SaveOptions {
  /** Extra metadata entries (strings). */
  metadata?: Record<string, string>;
  /** @internal called before each chunk is written (tests throw here to simulate a crash mid-write) */
  beforeChunk?: (index: number, total: number) => void | Promise<void>;
}

/**
 * Writes named tensors + metadata as safetensors, atomically, one tensor copied at a time (the writer
 * checks names and liveness before the file is touched).
 */
async function writeTensorsAtomic(file: string, tensors: [string, Tensor][], metadata: Record<string, string>, opts: SaveOptions): Promise<void> {
  await writeSafetensors(file, tensors, { format: 'pt', ...metadata }, { beforeChunk: opts.beforeChunk });
}

function modelConfigJson(model: Module): string | null {
  return model instanceof MetaFormer ? JSON.stringify(model.config) : null;
}

/** A plain weights file: the model's parameters under their official names, the config in the metadata. */
export async function saveModelWeights(file: string, model: Module, opts: SaveOptions = {}): Promise<void> {
  if (typeof file !== 'string' || file.length === 0) throw new TypeError(expectation('a file path', 'file', file));
  const meta: Record<string, string> = { ...opts.metadata };
  const cfg = modelConfigJson(model);
  if (cfg) meta[CONFIG_METADATA_KEY] = cfg;
  await writeTensorsAtomic(file, [...model.namedParameters()], meta, opts);
}

export interface CheckpointParts {
  model: Module;
  optimizer?: Optimizer | null;
  ema?: ModelEma | null;
  /** JSON-serialisable training state (epoch, iteration, schedule, loader, rng, history, ...). */
  state: Record<string, unknown>;
}

/** Writes a training checkpoint atomically. */
export async function saveTrainCheckpoint(file: string, parts: CheckpointParts, opts: SaveOptions = {}): Promise<void> {
  if (typeof file !== 'string' || file.length === 0) throw new TypeError(expectation('a file path', 'file', file));
  const tensors: [string, Tensor][] = [];
  for (const [k, p] of parts.model.namedParameters()) tensors.push([`model.${k}`, p]);
  if (parts.ema) for (const [k, t] of parts.ema.stateDict()) tensors.push([`ema.${k}`, t]);
  let optState: OptimizerState | null = null;
  try {
    const json: Record<string, unknown> = { format: TRAIN_FORMAT, version: 1, ...parts.state };
    if (parts.optimizer) {
      optState = parts.optimizer.stateDict();
      for (const [k, t] of optState.tensors) tensors.push([`optimizer.${k}`, t]);
      json.optimizer = { kind: optState.kind, options: optState.options, lr: optState.lr, steps: optState.steps };
    }
    if (parts.ema) json.ema = { decay: parts.ema.decay, warmup: parts.ema.warmup, updates: parts.ema.updates };
    const meta: Record<string, string> = { ...opts.metadata, [TRAIN_METADATA_KEY]: JSON.stringify(json) };
    const cfg = modelConfigJson(parts.model);
    if (cfg) meta[CONFIG_METADATA_KEY] = cfg;
    await writeTensorsAtomic(file, tensors, meta, opts);
  } finally {
    if (optState) for (const t of optState.tensors.values()) t.dispose();
  }
}

export interface LoadedCheckpoint {
  state: TrainStateJson;
  /** Model weights under official names. */
  model: Map<string, Tensor>;
  ema: Map<string, Tensor> | null;
  /** The optimizer state (kind, options, steps, tensors) or null. */
  optimizer: OptimizerState | null;
  /** The model configuration recorded in the file, if any. */
  config: Record<string, unknown> | null;
  /** Frees every tensor. */
  dispose(): void;
}

/** Reads a training checkpoint written by saveTrainCheckpoint. The caller disposes the result. */
export async function loadTrainCheckpoint(file: string): Promise<LoadedCheckpoint> {
  if (typeof file !== 'string' || file.length === 0) throw new TypeError(expectation('a file path', 'file', file));
  const header = await readSafetensorsHeader(file);
  const text = header.metadata[TRAIN_METADATA_KEY];
  if (text === undefined) throw new Error(`${file}: ${expectation(`a training checkpoint (metadata '${TRAIN_METADATA_KEY}')`, 'file', 'a file without it')}`);
  const state = JSON.parse(text) as TrainStateJson;
  if (state.format !== TRAIN_FORMAT || state.version !== 1) throw new Error(`${file}: ${expectation(`${TRAIN_FORMAT} version 1`, 'format', `${state.format} ${state.version}`)}`);
  const cfgText = header.metadata[CONFIG_METADATA_KEY];
  const all = await readSafetensors(file);
  const model = new Map<string, Tensor>();
  const ema = new Map<string, Tensor>();
  const opt = new Map<string, Tensor>();
  for (const [k, t] of all) {
    if (k.startsWith('model.')) model.set(k.slice(6), t);
    else if (k.startsWith('ema.')) ema.set(k.slice(4), t);
    else if (k.startsWith('optimizer.')) opt.set(k.slice(10), t);
    else t.dispose();
  }
  const o = state.optimizer as Omit<OptimizerState, 'tensors'> | undefined;
  return {
    state,
    model,
    ema: ema.size > 0 ? ema : null,
    optimizer: o ? { ...o, tensors: opt } : null,
    config: cfgText ? (JSON.parse(cfgText) as Record<string, unknown>) : null,
    dispose() {
      for (const m of [model, ema, opt]) for (const t of m.values()) t.dispose();
    },
  };
}
