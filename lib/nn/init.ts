/** Parameter initialisers, drawing from the global generator (lib/random.ts). */
import { globalRng } from '../random.js';
import { Tensor } from '../tensor.js';

/**
 * A float32 tensor of normal draws with standard deviation std. With `truncated`, values outside
 * [-2, 2] are redrawn: timm's trunc_normal_(std=.02) cuts at +-2 in absolute terms (100 std), so this
 * equals it.
 */
export function randn(shape: readonly number[], std = 1, truncated = false): Tensor {
  const t = Tensor.empty(shape, 'float32');
  const v = t.view<'float32'>();
  for (let i = 0; i < v.length; ++i) {
    let z = globalRng.normal() * std;
    while (truncated && Math.abs(z) > 2) z = globalRng.normal() * std;
    v[i] = z;
  }
  return t;
}
