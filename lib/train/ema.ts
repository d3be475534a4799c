/**
 * Model EMA (timm ModelEmaV2): shadow copies of every parameter, updated after each optimizer step with the
 * native `lerp` op, ema += (1 - decay) * (param - ema). Optional warmup of the decay, min(decay, (1 + n) / (10 + n)).
 * Evaluation with the EMA weights swaps them into the model for the duration of a callback.
 */
import { assignInto, runOp } from '../backend.js';
import type { Module } from '../nn/module.js';
import { expectation, keep, Tensor } from '../tensor.js';

export interface ModelEmaOptions {
  /** Default 0.9998 (timm's model_ema_decay). */
  decay?: number;
  /** Ramp the decay up over the first updates (timm ModelEmaV3 warmup). Default false. */
  warmup?: boolean;
}

export class ModelEma {
  readonly decay: number;
  readonly warmup: boolean;
  /** Updates applied. */
  updates = 0;
  readonly shadow = new Map<string, Tensor>();

  constructor(model: Module, opts: ModelEmaOptions = {}) {
    if (model === null || typeof model !== 'object' || typeof model.namedParameters !== 'function') throw new TypeError(expectation('a Module', 'model', model));
    const d = opts.decay ?? 0.9998;
    if (typeof d !== 'number' || !(d >= 0 && d <= 1)) throw new RangeError(expectation('a number in [0, 1]', 'decay', d));
    this.decay = d;
    this.warmup = opts.warmup ?? false;
    for (const [name, p] of model.namedParameters()) this.shadow.set(name, keep(p.clone()));
  }

  /** The decay of the next update. */
  currentDecay(): number {
    return this.warmup ? Math.min(this.decay, (1 + this.updates) / (10 + this.updates)) : this.decay;
  }

  /** ema = decay * ema + (1 - decay) * model. */
  update(model: Module): void {
    const w = 1 - this.currentDecay();
    for (const [name, p] of model.namedParameters()) {
      const s = this.shadow.get(name);
      if (!s) throw new RangeError(expectation('a model with the parameters the EMA was made from', 'model', name));
      runOp('lerp', 0, [name], [p], [s], [w]);
    }
    this.updates += 1;
  }

  /** Copies the EMA weights into the model. */
  copyTo(model: Module): void {
    for (const [name, p] of model.namedParameters()) {
      const s = this.shadow.get(name);
      if (s) runOp('cast', 0, [name], [s], [p]);
    }
  }

  /** Runs fn with the EMA weights in `model`, then puts the model's own weights back. */
  async withWeights<T>(model: Module, fn: () => T | Promise<T>): Promise<T> {
    const backup = new Map<string, Tensor>();
    for (const [name, p] of model.namedParameters()) backup.set(name, p.clone());
    try {
      this.copyTo(model);
      return await fn();
    } finally {
      for (const [name, p] of model.namedParameters()) {
        const b = backup.get(name);
        if (b) {
          runOp('cast', 0, [name], [b], [p]);
          b.dispose();
        }
      }
    }
  }

  /** The shadow tensors under the official names (the EMA's own tensors, not copies). */
  stateDict(): Map<string, Tensor> {
    return this.shadow;
  }

  loadStateDict(sd: Map<string, Tensor>, updates = this.updates): void {
    for (const [name, s] of this.shadow) {
      const t = sd.get(name);
      if (!t) throw new RangeError(expectation('a tensor for every parameter', 'ema state', `none for ${name}`));
      if (t.shape.join(',') !== s.shape.join(',')) throw new RangeError(expectation(`shape [${s.shape.join(', ')}]`, name, t));
      assignInto('loadStateDict', name, t, s);  // a host checkpoint into a shadow on the GPU too
    }
    this.updates = updates;
  }

  dispose(): void {
    for (const t of this.shadow.values()) t.dispose();
    this.shadow.clear();
  }
}
