/**
 * The tiny model fixtures of every family (official PyTorch code, float64 reference): logits, every
 * downsample and stage output, features, loss, the input gradient and every parameter gradient,
 * on the ref and cpu backends, and on the GPU (model.to('cuda')) where one is usable; and the
 * precompiled predict()/features() paths (eager on the GPU).
 */
import { describe, expect, it } from 'vitest';
import { withBackend } from '../../lib/backend.js';
import { cudaAvailable } from '../../lib/device.js';
import { createModel, type MetaFormer } from '../../lib/models/index.js';
import type { Family } from '../../lib/models/zoo.js';
import { crossEntropy, meanHW } from '../../lib/ops.js';
import { type Tensor, tidy } from '../../lib/tensor.js';
import { compare, failures, loadFixture, relL2, type Comparison, type Fixture } from '../helpers/tensors.js';

const FAMILIES: Family[] = ['identityformer', 'randformer', 'poolformerv2', 'convformer', 'caformer'];
/** Where the fixtures run: both CPU backends, and the GPU when this machine has a usable one. */
type Where = 'ref' | 'cpu' | 'cuda';
const WHERE: Where[] = cudaAvailable() ? ['ref', 'cpu', 'cuda'] : ['ref', 'cpu'];

interface ModelFixtureConfig {
  family: Family;
  depths: number[];
  dims: number[];
  num_classes: number;
  image_size: [number, number];
  frozen_params: string[];
  suggested_fp32_rel_l2_tol: Record<string, number>;
}

async function load(file: string): Promise<{ fx: Fixture; cfg: ModelFixtureConfig; model: MetaFormer }> {
  const fx = await loadFixture('models', file);
  const cfg = fx.spec as unknown as ModelFixtureConfig;
  const model = createModel({ family: cfg.family, depths: cfg.depths, dims: cfg.dims, numClasses: cfg.num_classes, imageSize: cfg.image_size });
  const sd = new Map<string, Tensor>();
  for (const [k, t] of fx.tensors) if (k.startsWith('param.')) sd.set(k.slice('param.'.length), t);
  model.loadStateDict(sd, { strict: true });
  model.eval();
  return { fx, cfg, model };
}

function tolOf(cfg: ModelFixtureConfig, name: string): number {
  const t = cfg.suggested_fp32_rel_l2_tol[name];
  if (t === undefined) throw new Error(`no tolerance for ${name}`);
  return t;
}

/**
 * Tolerance for a parameter gradient. Every tensor uses its per-tensor suggested tolerance, with one
 * documented exception on the fast backend: gradients of 1-element parameters (StarReLU scale/bias)
 * are sums of many terms that cancel (the fixtures' README calls them ill-conditioned). Their
 * suggested tolerance is 10x one sample of PyTorch's fp32 error; our reference backend in fp32 storage
 * already spends up to 46% of it, and the fp32 GEMM rounding of oneDNN (1e-7..3e-7 per element, as
 * any fp32 GEMM) lands a few of them at 0.9-1.35x. For those on the fast backend the README's global
 * rule for model gradients (1e-4) applies. The reference backend meets every per-tensor value.
 */
function gradTol(cfg: ModelFixtureConfig, name: string, numel: number, backend: Where): number {
  const t = tolOf(cfg, name);
  return backend !== 'ref' && numel === 1 ? Math.max(t, 1e-4) : t;
}

/** Forward step by step so every downsample and stage output can be compared. */
function forwardAll(model: MetaFormer, x: Tensor): { named: Map<string, Tensor>; logits: Tensor } {
  const named = new Map<string, Tensor>();
  let y = x;
  for (let i = 0; i < 4; ++i) {
    y = model.downsampleLayers.items[i]!.forward(y);
    named.set(`downsample${i}`, y);
    y = model.stages.items[i]!.forward(y);
    named.set(`stage${i}`, y);
  }
  const features = model.norm.forward(meanHW(y));
  named.set('features', features);
  const logits = model.head.forward(features);
  named.set('logits', logits);
  return { named, logits };
}

describe('tiny model fixtures, forward and backward', () => {
  for (const family of FAMILIES) {
    for (const backend of WHERE) {
      it(`${family}_tiny on ${backend}`, async () => {
        const { fx, cfg, model } = await load(`${family}_tiny.safetensors`);
        try {
          // The GPU runs whatever device its tensors are on; the CPU backends are chosen by name.
          if (backend === 'cuda') model.to('cuda');
          const onDevice = (t: Tensor): Tensor => (backend === 'cuda' ? t.to('cuda') : t);
          const cs = withBackend(backend === 'ref' ? 'ref' : 'cpu', () => tidy(() => {
            const results: Comparison[] = [];
            const x = onDevice(fx.get('input'));
            x.requiresGrad = true;
            const { named, logits } = forwardAll(model, x);
            if (backend === 'cuda') expect(logits.device).toBe('cuda');
            for (const [k, t] of named) results.push(compare(k, t, fx.get(k), tolOf(cfg, k)));
            const loss = crossEntropy(logits, onDevice(fx.get('target')));
            results.push(compare('loss', loss, fx.get('loss'), tolOf(cfg, 'loss')));
            loss.backward();
            results.push(compare('grad.input', x.grad!, fx.get('grad.input'), tolOf(cfg, 'grad.input')));
            let grads = 0;
            for (const [name, p] of model.namedParameters()) {
              if (cfg.frozen_params.includes(name)) {
                expect(p.grad, `${name} is frozen`).toBeNull();
                continue;
              }
              expect(p.grad, `${name} has no gradient`).not.toBeNull();
              const key = `grad.param.${name}`;
              results.push(compare(key, p.grad!, fx.get(key), gradTol(cfg, key, p.numel, backend)));
              grads += 1;
            }
            expect(grads).toBeGreaterThan(20);
            return results;
          }));
          const report = cs.filter((c) => !c.name.startsWith('grad.param')).map((c) => `${c.name} ${c.relL2.toExponential(2)}`).join(', ');
          expect(failures(cs), report).toBe('');
        } finally {
          model.dispose();
          for (const t of fx.tensors.values()) t.dispose();
        }
      });
    }
  }
});

describe('tiny model fixtures, precompiled inference', () => {
  for (const [family, device] of FAMILIES.flatMap((f) => WHERE.filter((w) => w !== 'ref').map((w) => [f, w] as const))) {
    it(`${family}_tiny predict() and features({ stages: true }) on ${device}`, async () => {
      const { fx, cfg, model } = await load(`${family}_tiny.safetensors`);
      try {
        if (device === 'cuda') model.to('cuda');
        const x = fx.get('input');
        const logits = await model.predict(x);
        expect(logits.device).toBe(device);
        const cs = [compare('logits', logits, fx.get('logits'), tolOf(cfg, 'logits'))];
        const f = await model.features(x, { stages: true });
        cs.push(compare('features', f.features, fx.get('features'), tolOf(cfg, 'features')));
        f.stages!.forEach((s, i) => cs.push(compare(`stage${i}`, s, fx.get(`stage${i}`), tolOf(cfg, `stage${i}`))));
        expect(failures(cs)).toBe('');
        const again = model.predictSync(x);
        expect(Array.from(again.toFloat32Array())).toEqual(Array.from(logits.toFloat32Array()));
        for (const t of [logits, again, f.features, ...f.stages!]) t.dispose();
      } finally {
        model.dispose();
        for (const t of fx.tensors.values()) t.dispose();
      }
    });
  }
});

// bf16 inference (GEMM operands rounded to bfloat16, float32 accumulation): the logits stay within
// issue 5's 2e-2 relative L2 of the float32 reference, and differ from float32 (the mode is applied).
describe('tiny model fixtures, bf16 inference', () => {
  for (const [family, device] of FAMILIES.flatMap((f) => WHERE.filter((w) => w !== 'ref').map((w) => [f, w] as const))) {
    it(`${family}_tiny predict() in bf16 on ${device}`, async () => {
      const { fx, model } = await load(`${family}_tiny.safetensors`);
      try {
        if (device === 'cuda') model.to('cuda');
        const x = fx.get('input');
        model.precision = 'bf16';
        const logits = await model.predict(x);
        const err = relL2(logits.toFloat32Array(), fx.get('logits').toFloat32Array());
        expect(err, `bf16 logits rel. L2 ${err.toExponential(2)}`).toBeLessThan(2e-2);
        expect(err).toBeGreaterThan(1e-5);
        logits.dispose();
      } finally {
        model.dispose();
        for (const t of fx.tensors.values()) t.dispose();
      }
    });
  }
});
