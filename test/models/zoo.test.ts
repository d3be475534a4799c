/**
 * The registry holds every official configuration by name with its family's parts, custom configs are
 * validated, every official family builds and runs a forward pass (shapes, gradients for every
 * trainable parameter, no NaN), and the stem can be changed for small inputs.
 */
import { describe, expect, it } from 'vitest';
import { createModel, listModels, getModelConfig, stageSizes } from '../../lib/models/index.js';
import { crossEntropy } from '../../lib/ops.js';
import { Tensor, tidy } from '../../lib/tensor.js';
import { relL2 } from '../helpers/tensors.js';

describe('the registry', () => {
  it('has every official model and variant', () => {
    const names = new Set(listModels());
    for (const fam of ['identityformer', 'randformer', 'poolformerv2']) {
      for (const size of ['s12', 's24', 's36', 'm36', 'm48']) expect(names.has(`${fam}_${size}`), `${fam}_${size}`).toBe(true);
    }
    for (const fam of ['convformer', 'caformer']) {
      for (const size of ['s18', 's36', 'm36', 'b36']) {
        for (const v of ['', '_384', '_in21ft1k', '_384_in21ft1k', '_in21k']) expect(names.has(`${fam}_${size}${v}`), `${fam}_${size}${v}`).toBe(true);
      }
    }
    expect(names.size).toBe(15 + 40);
  });
  it('carries the official parts and metadata', () => {
    const c = getModelConfig('caformer_b36_384_in21ft1k');
    expect(c.depths).toEqual([3, 12, 18, 3]);
    expect(c.dims).toEqual([128, 256, 512, 768]);
    expect(c.tokenMixers).toEqual(['sepconv', 'sepconv', 'attention', 'attention']);
    expect(c.inputSize).toEqual([384, 384]);
    expect(c.head).toBe('mlp');
    expect(c.url).toMatch(/caformer_b36_384_in21ft1k\.pth$/);
    expect(getModelConfig('convformer_m36_in21k').numClasses).toBe(21841);
    const r = getModelConfig('randformer_m48');
    expect(r.norm).toBe('layernorm_hwc');
    expect(r.resScaleInit).toEqual([null, null, 1, 1]);
    expect(() => getModelConfig('caformer_s19')).toThrow(/Expected an official model name for model but received "caformer_s19"/);
  });
});

describe('custom configurations', () => {
  it('rejects bad configs with clear errors', () => {
    expect(() => createModel({ family: 'vitformer' as never, depths: [1, 1, 1, 1], dims: [8, 8, 8, 8] })).toThrow(/family/);
    expect(() => createModel({ family: 'caformer', depths: [1, 1, 1], dims: [8, 8, 8, 8] })).toThrow(/Expected 4 positive integers for depths/);
    expect(() => createModel({ family: 'caformer', depths: [1, 1, 1, 1], dims: [8, 8, 8, 8], stem: { kernel: 0, stride: 1, padding: 0 } })).toThrow(/stem/);
    expect(() => createModel({ family: 'poolformerv2', depths: [1, 1, 1, 1], dims: [8, 8, 8, 8], imageSize: 2 })).toThrow(/at least 1x1/);
  });
  it('builds every family, runs forward and backward, and gives every trainable parameter a gradient', () => {
    for (const family of ['identityformer', 'randformer', 'poolformerv2', 'convformer', 'caformer'] as const) {
      const model = createModel({ family, depths: [1, 1, 1, 1], dims: [16, 24, 32, 40], numClasses: 5, imageSize: 64 }, { dropPathRate: 0.1, headDropout: 0.1 });
      tidy(() => {
        const x = Tensor.from(new Float32Array(2 * 3 * 64 * 64).map((_, i) => Math.sin(i)), [2, 3, 64, 64]);
        const logits = model.forward(x);
        expect(logits.shape).toEqual([2, 5]);
        const loss = crossEntropy(logits, [1, 3]);
        expect(Number.isFinite(loss.item())).toBe(true);
        loss.backward();
        for (const [name, p] of model.namedParameters()) {
          if (name.endsWith('random_matrix')) {
            expect(p.grad, name).toBeNull();
            continue;
          }
          expect(p.grad, `${family}: ${name}`).not.toBeNull();
          expect(p.grad!.toFloat32Array().every(Number.isFinite), name).toBe(true);
        }
      });
      model.dispose();
    }
  });
  it('takes a smaller stem for small inputs (28x28 -> 14, 7, 4, 2)', async () => {
    const stem = { kernel: 3, stride: 2, padding: 1 };
    expect(stageSizes(28, 28, stem)).toEqual([[14, 14], [7, 7], [4, 4], [2, 2]]);
    expect(stageSizes(28, 28)).toEqual([[7, 7], [4, 4], [2, 2], [1, 1]]);
    const model = createModel({ family: 'caformer', depths: [1, 1, 1, 1], dims: [16, 32, 64, 64], numClasses: 10, imageSize: 28, stem });
    model.eval();
    expect(model.stateDict().get('downsample_layers.0.conv.weight')!.shape).toEqual([16, 3, 3, 3]);
    const x = Tensor.from(new Float32Array(3 * 28 * 28).map((_, i) => Math.cos(i * 0.1)), [1, 3, 28, 28]);
    const eager = model.forward(x).toFloat32Array();
    const planned = (await model.predict(x)).toFloat32Array();
    expect(relL2(planned, eager)).toBeLessThan(1e-5);
    model.dispose();
  });
});
