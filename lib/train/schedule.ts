/**
 * Learning-rate schedules, stepped once per optimizer update (timm's `step_update`, `sched_on_updates`).
 *
 * CosineSchedule is timm's CosineLRScheduler with one cycle: a linear warmup from warmupLr to baseLr over
 * warmupIters updates, then lr(t) = minLr + (baseLr - minLr) / 2 * (1 + cos(pi * t / totalIters)), and minLr
 * after totalIters. As in timm (warmup_prefix False) the cosine counts t from the first update, so warmup covers
 * the start of the cosine; with warmupPrefix it starts after the warmup and spans totalIters - warmupIters.
 * ConstantSchedule keeps baseLr (after an optional warmup).
 *
 * A schedule is a pure function of the update index plus that index, so its state is one counter.
 */
import { expectation } from '../tensor.js';

export interface ScheduleState {
  kind: 'cosine' | 'constant';
  options: Record<string, number | boolean>;
  /** Updates done (the index of the next update). */
  iteration: number;
}

function nonNegative(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new RangeError(expectation('a finite number >= 0', name, v));
  return v;
}

function nonNegativeInt(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new RangeError(expectation('an integer >= 0', name, v));
  return v;
}

export abstract class Schedule {
  /** The index of the next update. */
  iteration = 0;

  /** The learning rate of update `t` (0-based). */
  abstract lrAt(t: number): number;
  protected abstract options(): Record<string, number | boolean>;
  abstract readonly kind: ScheduleState['kind'];

  /** The learning rate of the next update. */
  get lr(): number {
    return this.lrAt(this.iteration);
  }

  /** Advances to the next update. */
  step(): void {
    this.iteration += 1;
  }

  stateDict(): ScheduleState {
    return { kind: this.kind, options: this.options(), iteration: this.iteration };
  }

  /** Restores the position; the options stay those of this schedule (a resumed run may change them). */
  loadStateDict(state: ScheduleState): void {
    if (state === null || typeof state !== 'object') throw new TypeError(expectation('a schedule state', 'state', state));
    this.iteration = nonNegativeInt(state.iteration, 'state.iteration');
  }
}

export interface WarmupOptions {
  baseLr: number;
  /** Updates of linear warmup (0: none). */
  warmupIters?: number;
  /** The learning rate of update 0 during warmup (timm warmup_lr_init). Default 1e-6. */
  warmupLr?: number;
}

export interface CosineOptions extends WarmupOptions {
  /** The cosine length in updates (timm t_initial). */
  totalIters: number;
  /** The floor (timm min_lr). Default 1e-6. */
  minLr?: number;
  /** Start the cosine after the warmup (timm warmup_prefix). Default false. */
  warmupPrefix?: boolean;
}

function warmup(t: number, o: Required<WarmupOptions>): number | null {
  if (t < o.warmupIters) return o.warmupLr + (t * (o.baseLr - o.warmupLr)) / o.warmupIters;
  return null;
}

export class CosineSchedule extends Schedule {
  readonly kind = 'cosine' as const;
  readonly opts: Required<CosineOptions>;

  constructor(opts: CosineOptions) {
    super();
    if (opts === null || typeof opts !== 'object') throw new TypeError(expectation('cosine schedule options', 'options', opts));
    this.opts = {
      baseLr: nonNegative(opts.baseLr, 'baseLr'),
      totalIters: nonNegativeInt(opts.totalIters, 'totalIters'),
      warmupIters: nonNegativeInt(opts.warmupIters ?? 0, 'warmupIters'),
      warmupLr: nonNegative(opts.warmupLr ?? 1e-6, 'warmupLr'),
      minLr: nonNegative(opts.minLr ?? 1e-6, 'minLr'),
      warmupPrefix: opts.warmupPrefix ?? false,
    };
    if (this.opts.totalIters < 1) throw new RangeError(expectation('at least 1 update', 'totalIters', opts.totalIters));
  }

  lrAt(t: number): number {
    nonNegative(t, 'iteration');
    const o = this.opts;
    const w = warmup(t, o);
    if (w !== null) return w;
    let tc = t;
    let len = o.totalIters;
    if (o.warmupPrefix) {
      tc -= o.warmupIters;
      len = Math.max(1, len - o.warmupIters);
    }
    if (tc >= len) return o.minLr;
    return o.minLr + 0.5 * (o.baseLr - o.minLr) * (1 + Math.cos((Math.PI * tc) / len));
  }

  protected options(): Record<string, number | boolean> {
    return { ...this.opts };
  }
}

export class ConstantSchedule extends Schedule {
  readonly kind = 'constant' as const;
  readonly opts: Required<WarmupOptions>;

  constructor(opts: WarmupOptions) {
    super();
    if (opts === null || typeof opts !== 'object') throw new TypeError(expectation('constant schedule options', 'options', opts));
    this.opts = {
      baseLr: nonNegative(opts.baseLr, 'baseLr'),
      warmupIters: nonNegativeInt(opts.warmupIters ?? 0, 'warmupIters'),
      warmupLr: nonNegative(opts.warmupLr ?? 1e-6, 'warmupLr'),
    };
  }

  lrAt(t: number): number {
    nonNegative(t, 'iteration');
    return warmup(t, this.opts) ?? this.opts.baseLr;
  }

  protected options(): Record<string, number | boolean> {
    return { ...this.opts };
  }
}

/** Rebuilds a schedule from its state (options and position). */
export function scheduleFromState(state: ScheduleState): Schedule {
  if (state === null || typeof state !== 'object') throw new TypeError(expectation('a schedule state', 'state', state));
  const o: unknown = state.options;
  const s = state.kind === 'cosine'
    ? new CosineSchedule(o as CosineOptions)
    : state.kind === 'constant' ? new ConstantSchedule(o as WarmupOptions) : null;
  if (!s) throw new TypeError(expectation("'cosine' or 'constant'", 'state.kind', state.kind));
  s.loadStateDict(state);
  return s;
}
