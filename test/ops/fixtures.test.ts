/**
 * Every per-op golden fixture (official PyTorch module, float64 reference): forward output and every
 * gradient (input and parameters), on the reference backend and on the fast CPU backend.
 * Tolerances: the fixture's per-tensor suggested_fp32_rel_l2_tol.
 */
import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { withBackend } from '../../lib/backend.js';
import { type Tensor, tidy } from '../../lib/tensor.js';
import { fixturePath } from '../helpers/fixtures.js';
import { moduleForOp } from '../helpers/modules.js';
import { compare, failures, loadFixture, type Comparison } from '../helpers/tensors.js';

const files = readdirSync(fixturePath('ops')).filter((f) => f.endsWith('.safetensors')).sort();

async function runFixture(file: string, backend: 'ref' | 'cpu'): Promise<Comparison[]> {
  const fx = await loadFixture('ops', file);
  const tol = fx.spec.suggested_fp32_rel_l2_tol ?? {};
  const { module, forward } = moduleForOp(fx.spec.op as string, fx.spec.hyper_parameters ?? {});
  try {
    const params = new Map<string, Tensor>();
    for (const [k, t] of fx.tensors) {
      if (!k.startsWith('grad') && k !== 'input' && k !== 'output') params.set(k, t);
    }
    module.loadStateDict(params);
    // Every parameter gets a gradient here, the frozen random_matrix too: the fixture has it.
    for (const [, p] of module.namedParameters()) p.requiresGrad = true;
    return withBackend(backend, () => tidy(() => {
      const x = fx.get('input');
      x.requiresGrad = true;
      const y = forward(x);
      const results: Comparison[] = [compare('output', y, fx.get('output'), tol.output ?? 1e-5)];
      y.backward(fx.get('grad_output'));
      results.push(compare('grad.input', x.grad!, fx.get('grad.input'), tol['grad.input'] ?? 1e-5));
      for (const [name, p] of module.namedParameters()) {
        const key = `grad.${name}`;
        if (!fx.tensors.has(key)) continue;
        if (!p.grad) throw new Error(`${key} was not computed`);
        results.push(compare(key, p.grad, fx.get(key), tol[key] ?? 1e-5));
      }
      return results;
    }));
  } finally {
    module.dispose();
    for (const t of fx.tensors.values()) t.dispose();
  }
}

describe('op fixtures (official PyTorch, float64 reference)', () => {
  for (const file of files) {
    for (const backend of ['ref', 'cpu'] as const) {
      it(`${file} on ${backend}`, async () => {
        const cs = await runFixture(file, backend);
        expect(cs.length).toBeGreaterThan(1);
        const report = cs.map((c) => `${c.name} ${c.relL2.toExponential(2)}`).join(', ');
        expect(failures(cs), report).toBe("");
        if (process.env.MF_VERBOSE) console.log(file, backend, report);
      });
    }
  }
});
