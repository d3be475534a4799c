/**
 * Tracing: runs a forward function once in "dry" mode, where ops are recorded instead of executed and
 * new tensors get no memory, to capture the exact op sequence a model runs. lib/plan.ts turns a trace
 * into a native Plan, so one description of each layer (its forward()) serves both autograd and
 * precompiled inference.
 */
import type { OpName } from './native.js';
import type { Tensor } from './tensor.js';

export interface TracedStep {
  op: OpName;
  dir: 0 | 1;
  ins: (Tensor | null)[];
  outs: (Tensor | null)[];
  attrs: number[];
}

export class Trace {
  readonly steps: TracedStep[] = [];
  /** tensor -> the tensor whose memory it shares (reshape) */
  readonly aliases = new Map<Tensor, Tensor>();
  /** tensors created while tracing (they own no memory) */
  readonly created = new Set<Tensor>();
}

let active: Trace | null = null;

export function activeTrace(): Trace | null {
  return active;
}

/** Runs fn with tracing on; returns the trace and fn's result. */
export function traced<T>(fn: () => T): { trace: Trace; result: T } {
  if (active) throw new Error('trace: nested tracing is not supported');
  const trace = new Trace();
  active = trace;
  try {
    return { trace, result: fn() };
  } finally {
    active = null;
  }
}
