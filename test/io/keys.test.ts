/**
 * Key conventions: detection, timm -> official mapping checked against the fixture's complete
 * `official_to_timm` table, the inverse mapping with timm's 1x1 conv shapes, wrapper prefixes, and errors.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  detectConvention, disposeMapped, officialKeyToTimm, timmKeyToOfficial, toOfficial, toTimm,
} from '../../lib/io/keys.js';
import { readSafetensorsHeader } from '../../lib/io/safetensors.js';
import { readSafetensorsSync } from '../../lib/io/tensors.js';
import { Tensor } from '../../lib/tensor.js';
import { fixturePath } from '../helpers/fixtures.js';

let timm: Map<string, Tensor>;
let official: Map<string, Tensor>;
let officialToTimm: Record<string, string>;
let reshapedToConv: string[];

beforeAll(async () => {
  const file = fixturePath('checkpoints', 'caformer_tiny_timm.safetensors');
  const meta = (await readSafetensorsHeader(file)).metadata;
  officialToTimm = JSON.parse(meta.official_to_timm!) as Record<string, string>;
  reshapedToConv = JSON.parse(meta.reshaped_to_1x1_conv!) as string[];
  timm = readSafetensorsSync(file);
  official = new Map();
  for (const [k, t] of readSafetensorsSync(fixturePath('models', 'caformer_tiny.safetensors'))) {
    if (k.startsWith('param.')) official.set(k.slice('param.'.length), t);
    else t.dispose();
  }
});

afterAll(() => {
  for (const t of [...timm.values(), ...official.values()]) t.dispose();
});

function sameValues(a: Tensor, b: Tensor): boolean {
  const x = a.toFloat32Array(), y = b.toFloat32Array();
  return x.length === y.length && x.every((v, i) => Object.is(v, y[i]));
}

describe('detectConvention', () => {
  it('finds timm names in the timm fixture and official names in the model fixture', () => {
    const t = detectConvention(timm.keys());
    expect(t.convention).toBe('timm');
    expect(t.prefix).toBe('');
    expect(t.evidence.length).toBe(1);
    expect(detectConvention(official).convention).toBe('official');
  });

  it('sees through DataParallel and torch.compile prefixes', () => {
    const keys = [...official.keys()].map((k) => `module._orig_mod.${k}`);
    expect(detectConvention(keys)).toMatchObject({ convention: 'official', prefix: 'module._orig_mod.' });
    expect(detectConvention([...timm.keys()].map((k) => `module.${k}`))).toMatchObject({ convention: 'timm', prefix: 'module.' });
  });

  it('reports mixed and unknown conventions explicitly', () => {
    const mixed = detectConvention(['stem.conv.weight', 'stages.0.0.norm1.weight']);
    expect(mixed.convention).toBe('mixed');
    expect(mixed.evidence).toEqual(['stages.0.0.norm1.weight', 'stem.conv.weight']);
    expect(detectConvention(['fc.weight', 'conv1.weight']).convention).toBe('unknown');
    expect(detectConvention([]).convention).toBe('unknown');
  });
});

describe('single-key mappings', () => {
  it('match the complete official_to_timm table in both directions', () => {
    const entries = Object.entries(officialToTimm);
    expect(entries.length).toBe(official.size);
    for (const [off, tm] of entries) {
      expect(timmKeyToOfficial(tm)).toBe(off);
      expect(officialKeyToTimm(off, { mlpHead: true })).toBe(tm);
    }
  });

  it('map Linear heads (IdentityFormer, RandFormer, PoolFormerV2)', () => {
    expect(timmKeyToOfficial('head.fc.weight')).toBe('head.weight');
    expect(timmKeyToOfficial('head.fc.bias')).toBe('head.bias');
    expect(timmKeyToOfficial('head.norm.bias')).toBe('norm.bias');
    expect(officialKeyToTimm('head.weight', { mlpHead: false })).toBe('head.fc.weight');
    expect(officialKeyToTimm('norm.weight', { mlpHead: false })).toBe('head.norm.weight');
  });

  it('keep res_scale, layer_scale and StarReLU names, which both conventions share', () => {
    expect(timmKeyToOfficial('stages.3.blocks.2.res_scale2.scale')).toBe('stages.3.2.res_scale2.scale');
    expect(timmKeyToOfficial('stages.1.blocks.0.layer_scale1.scale')).toBe('stages.1.0.layer_scale1.scale');
    expect(timmKeyToOfficial('stages.0.blocks.1.mlp.act.bias')).toBe('stages.0.1.mlp.act.bias');
  });
});

describe('toOfficial', () => {
  it('maps the timm fixture to exactly the official state dict (names, shapes, values)', () => {
    const { stateDict, detected, renamed, reshaped } = toOfficial(timm);
    expect(detected.convention).toBe('timm');
    expect(new Set(stateDict.keys())).toEqual(new Set(official.keys()));
    expect(renamed.length).toBe(official.size);
    expect(new Set(reshaped)).toEqual(new Set(reshapedToConv.map(timmKeyToOfficial)));
    for (const [k, t] of official) {
      const m = stateDict.get(k)!;
      expect(m.shape, k).toEqual(t.shape);
      expect(sameValues(m, t), k).toBe(true);
    }
    // The input is untouched: the 1x1 conv weights keep their 4-D shape there.
    expect(timm.get(reshapedToConv[0]!)!.shape.length).toBe(4);
    disposeMapped(timm, stateDict);
    expect(timm.get(reshapedToConv[0]!)!.disposed).toBe(false);
  });

  it('strips a module. prefix and passes official names through with the same tensors', () => {
    const wrapped = new Map([...official].map(([k, t]) => [`module.${k}`, t] as const));
    const { stateDict, detected, reshaped } = toOfficial(wrapped);
    expect(detected).toMatchObject({ convention: 'official', prefix: 'module.' });
    expect(reshaped).toEqual([]);
    for (const [k, t] of official) expect(stateDict.get(k)).toBe(t);
  });

  it('rejects mixed conventions, colliding names and bad input with clear errors', () => {
    const t = Tensor.zeros([2]);
    try {
      expect(() => toOfficial(new Map([['stem.norm.weight', t], ['downsample_layers.0.conv.weight', t]])))
        .toThrow(/mixes official and timm key names/);
      expect(() => toOfficial(new Map([['stages.0.blocks.0.norm1.weight', t], ['stages.0.0.norm1.weight', t]])))
        .toThrow(/mixes/);
      expect(() => toOfficial(new Map([['head.fc.weight', t], ['head.weight', t]])))
        .toThrow(/both map to "head.weight"/);
      expect(() => toOfficial({} as unknown as Map<string, Tensor>))
        .toThrow('Expected a Map of name -> Tensor for stateDict but received Object');
      expect(() => toOfficial(new Map([['a', 3]]) as unknown as Map<string, Tensor>))
        .toThrow('Expected a Tensor for key "a" for stateDict but received 3');
    } finally {
      t.dispose();
    }
  });
});

describe('toTimm', () => {
  it('reproduces the timm fixture names and 1x1 conv shapes from the official state dict', () => {
    const out = toTimm(official);
    expect(new Set(out.keys())).toEqual(new Set(timm.keys()));
    for (const [k, t] of timm) {
      expect(out.get(k)!.shape, k).toEqual(t.shape);
      expect(sameValues(out.get(k)!, t), k).toBe(true);
    }
    const back = toOfficial(out);
    for (const [k, t] of official) expect(back.stateDict.get(k)!.shape).toEqual(t.shape);
    disposeMapped(out, back.stateDict);
    disposeMapped(official, out);
    expect([...official.values()].every((t) => !t.disposed)).toBe(true);
  });

  it('refuses timm input', () => {
    expect(() => toTimm(timm)).toThrow(/expected a state dict with official key names but found timm names/);
  });
});
