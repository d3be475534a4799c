/** Test helpers: fixture loading into tensors, relative L2 error, and tolerance reporting. */
import { readSafetensorsSync } from '../../lib/io/tensors.js';
import { readSafetensorsHeader } from '../../lib/io/safetensors.js';
import { Tensor } from '../../lib/tensor.js';
import { fixturePath } from './fixtures.js';

export interface Fixture {
  tensors: Map<string, Tensor>;
  meta: Record<string, string>;
  spec: Record<string, unknown> & {
    suggested_fp32_rel_l2_tol?: Record<string, number>;
    fp32_torch_rel_l2?: Record<string, number>;
    hyper_parameters?: Record<string, unknown>;
  };
  get(name: string): Tensor;
}

export async function loadFixture(...parts: string[]): Promise<Fixture> {
  const file = fixturePath(...parts);
  const header = await readSafetensorsHeader(file);
  const tensors = readSafetensorsSync(file);
  const specText = header.metadata.spec ?? header.metadata.config ?? '{}';
  return {
    tensors,
    meta: header.metadata,
    spec: JSON.parse(specText) as Fixture['spec'],
    get(name: string): Tensor {
      const t = tensors.get(name);
      if (!t) throw new Error(`fixture ${parts.join('/')} has no tensor ${name}`);
      return t;
    },
  };
}

/** ||a - b|| / ||b|| in float64. */
export function relL2(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length} != ${expected.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < expected.length; ++i) {
    const d = actual[i]! - expected[i]!;
    num += d * d;
    den += expected[i]! * expected[i]!;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

export function maxAbsDiff(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < expected.length; ++i) m = Math.max(m, Math.abs(actual[i]! - expected[i]!));
  return m;
}

export interface Comparison {
  name: string;
  relL2: number;
  maxAbs: number;
  tol: number;
  ok: boolean;
}

export function compare(name: string, actual: Tensor | ArrayLike<number>, expected: Tensor | ArrayLike<number>, tol: number): Comparison {
  const a = actual instanceof Tensor ? actual.toFloat64Array() : actual;
  const e = expected instanceof Tensor ? expected.toFloat64Array() : expected;
  const r = relL2(a, e);
  return { name, relL2: r, maxAbs: maxAbsDiff(a, e), tol, ok: r <= tol && Number.isFinite(r) };
}

/** A readable table of failed comparisons (empty when all pass). */
export function failures(cs: Comparison[]): string {
  return cs
    .filter((c) => !c.ok)
    .map((c) => `${c.name}: rel L2 ${c.relL2.toExponential(2)} > tol ${c.tol.toExponential(1)} (max abs diff ${c.maxAbs.toExponential(2)})`)
    .join('\n');
}

/** A deterministic pseudo-random float32 tensor (values in [-1, 1) * scale). */
export function randomTensor(shape: readonly number[], seed: number, scale = 1, dtype: 'float32' | 'float64' = 'float32'): Tensor {
  // splitmix32 of the seed, so nearby seeds start far apart
  let s = (seed + 0x9e3779b9) >>> 0;
  s = Math.imul(s ^ (s >>> 16), 0x85ebca6b) >>> 0;
  s = Math.imul(s ^ (s >>> 13), 0xc2b2ae35) >>> 0;
  s = (s ^ (s >>> 16)) >>> 0 || 1;
  const n = shape.reduce((a, b) => a * b, 1);
  const data = dtype === 'float32' ? new Float32Array(n) : new Float64Array(n);
  for (let i = 0; i < n; ++i) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    data[i] = ((s / 2 ** 32) * 2 - 1) * scale;
  }
  return Tensor.from(data, shape);
}
