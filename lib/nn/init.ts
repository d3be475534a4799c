/** Parameter initialisers: native, parallel, reproducible from the global generator (lib/random.ts). */
import { runOp } from '../backend.js';
import { nextSeed } from '../random.js';
import { Tensor } from '../tensor.js';

/**
 * A float32 tensor of normal draws with standard deviation std. With `truncated`, values outside
 * [-2, 2] are redrawn: timm's trunc_normal_(std=.02) cuts at +-2 in absolute terms (100 std).
 */
export function randn(shape: readonly number[], std = 1, truncated = false): Tensor {
  if (skipping > 0) return Tensor.zeros(shape, 'float32');
  const t = Tensor.empty(shape, 'float32');
  const limit = truncated && std > 0 ? Math.max(0.5, 2 / std) : 0;
  runOp('normal', 0, [], [], [t], [0, std, nextSeed(), limit]);
  return t;
}

let skipping = 0;

/**
 * Runs fn with the random initialisers giving zeros instead of draws (and taking no seeds from the
 * global generator): for building a model whose every parameter is about to be overwritten, as a
 * strict checkpoint load does. Random initialisation is most of the time of building a model
 * (~0.75 s for caformer_s18 on two cores).
 */
export function withoutInit<T>(fn: () => T): T {
  ++skipping;
  try {
    return fn();
  } finally {
    --skipping;
  }
}
