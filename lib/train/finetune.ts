/**
 * Fine-tuning helpers: load pretrained weights (an official or timm checkpoint, .pth or .safetensors, through
 * lib/io/checkpoint.ts), give the model a fresh head for N classes, and freeze the early stages (their
 * downsampling layer and blocks stop requiring gradients, so the optimizer skips them and backward does not
 * compute their weight gradients).
 */
import { loadStateDict } from '../io/checkpoint.js';
import type { MetaFormer } from '../models/metaformer.js';
import { expectation } from '../tensor.js';

/** Freezes (or unfreezes) downsample_layers.i and stages.i for i < n. Frozen matrices stay frozen either way. */
export function freezeStages(model: MetaFormer, n: number, frozen = true): void {
  if (!Number.isSafeInteger(n) || n < 0 || n > 4) throw new RangeError(expectation('an integer in [0, 4]', 'stages', n));
  for (let i = 0; i < n; ++i) {
    model.downsampleLayers.items[i]!.requiresGrad(!frozen);
    model.stages.items[i]!.requiresGrad(!frozen);
  }
}

export interface FinetuneOptions {
  /** A checkpoint path (official / timm names, .pth or .safetensors) to start from. */
  weights?: string;
  /** A new head with this many classes (after loading, so the checkpoint's head is used for nothing). */
  numClasses?: number;
  headDropout?: number;
  /** Freeze this many leading stages (with their downsampling layers). */
  freezeStages?: number;
}

/**
 * Prepares a model for fine-tuning: loads `weights` (every backbone parameter must be there; a head of another
 * shape is skipped), replaces the head when numClasses differs, freezes stages.
 */
export async function prepareFinetune(model: MetaFormer, opts: FinetuneOptions): Promise<MetaFormer> {
  if (opts.weights !== undefined) {
    const sd = await loadStateDict(opts.weights);
    try {
      const own = model.stateDict();
      for (const [k, t] of sd) {  // a head for other classes is left out (it is replaced below anyway)
        const p = own.get(k);
        if (k.startsWith('head.') && (!p || p.shape.join(',') !== t.shape.join(','))) {
          t.dispose();
          sd.delete(k);
        }
      }
      const res = model.loadStateDict(sd, { strict: false });
      const missing = res.missing.filter((k) => !k.startsWith('head.'));
      const unexpected = res.unexpected.filter((k) => !k.startsWith('head.'));
      if (missing.length > 0 || unexpected.length > 0) {
        throw new Error(`${opts.weights}: ${expectation('the backbone of this model', 'checkpoint',
          `${missing.length} missing and ${unexpected.length} unexpected keys (${[...missing, ...unexpected].slice(0, 3).join(', ')})`)}`);
      }
    } finally {
      for (const t of sd.values()) t.dispose();
    }
  }
  if (opts.numClasses !== undefined && (opts.numClasses !== model.numClasses || opts.headDropout !== undefined)) {
    model.resetClassifier(opts.numClasses, opts.headDropout ?? 0);
  }
  if (opts.freezeStages) freezeStages(model, opts.freezeStages);
  return model;
}
