/**
 * Every configuration of the official release, as data (sail-sg/metaformer, metaformer_baselines.py
 * default_cfgs and model builders). One generic builder (metaformer.ts) turns an entry into a model.
 */
export type Family = 'identityformer' | 'randformer' | 'poolformerv2' | 'convformer' | 'caformer';
export type MixerKind = 'identity' | 'random' | 'pooling' | 'sepconv' | 'attention';
export type NormKind = 'layernorm_hwc' | 'layernorm_c';
export type HeadKind = 'linear' | 'mlp';
export type Interpolation = 'bicubic' | 'bilinear' | 'nearest';

export interface ModelConfig {
  name: string;
  family: Family;
  depths: number[];
  dims: number[];
  tokenMixers: MixerKind[];
  /** Block norm: 'layernorm_hwc' (over H, W, C) or 'layernorm_c' (over C, no bias); eps 1e-6. */
  norm: NormKind;
  head: HeadKind;
  /** Per stage; the official models use [null, null, 1, 1]. */
  resScaleInit: (number | null)[];
  layerScaleInit: (number | null)[];
  numClasses: number;
  /** [H, W] of the evaluation input. */
  inputSize: [number, number];
  cropPct: number;
  interpolation: Interpolation;
  mean: [number, number, number];
  std: [number, number, number];
  /** The official pretrained weights. */
  url?: string;
  /** Pretrained on ImageNet-21k (21841 classes) or fine-tuned from it. */
  pretrain: 'in1k' | 'in21k' | 'in21ft1k';
  /**
   * The stem convolution; absent: the official k7 s4 p2. Small inputs (e.g. 28x28) may want a smaller
   * stride. The three downsampling layers are always the official k3 s2 p1.
   */
  stem?: StemConfig;
}

export interface StemConfig {
  kernel: number;
  stride: number;
  padding: number;
}

export const OFFICIAL_STEM: Readonly<StemConfig> = { kernel: 7, stride: 4, padding: 2 };

export const IMAGENET_MEAN: [number, number, number] = [0.485, 0.456, 0.406];
export const IMAGENET_STD: [number, number, number] = [0.229, 0.224, 0.225];

const HUB = 'https://huggingface.co/sail/dl/resolve/main';

export const FAMILY_MIXERS: Readonly<Record<Family, MixerKind[]>> = {
  identityformer: ['identity', 'identity', 'identity', 'identity'],
  randformer: ['identity', 'identity', 'random', 'random'],
  poolformerv2: ['pooling', 'pooling', 'pooling', 'pooling'],
  convformer: ['sepconv', 'sepconv', 'sepconv', 'sepconv'],
  caformer: ['sepconv', 'sepconv', 'attention', 'attention'],
};

export const FAMILY_NORM: Readonly<Record<Family, NormKind>> = {
  identityformer: 'layernorm_hwc', randformer: 'layernorm_hwc', poolformerv2: 'layernorm_hwc',
  convformer: 'layernorm_c', caformer: 'layernorm_c',
};

export const FAMILY_HEAD: Readonly<Record<Family, HeadKind>> = {
  identityformer: 'linear', randformer: 'linear', poolformerv2: 'linear', convformer: 'mlp', caformer: 'mlp',
};

const SIZES_A: Record<string, { depths: number[]; dims: number[] }> = {
  s12: { depths: [2, 2, 6, 2], dims: [64, 128, 320, 512] },
  s24: { depths: [4, 4, 12, 4], dims: [64, 128, 320, 512] },
  s36: { depths: [6, 6, 18, 6], dims: [64, 128, 320, 512] },
  m36: { depths: [6, 6, 18, 6], dims: [96, 192, 384, 768] },
  m48: { depths: [8, 8, 24, 8], dims: [96, 192, 384, 768] },
};

const SIZES_B: Record<string, { depths: number[]; dims: number[] }> = {
  s18: { depths: [3, 3, 9, 3], dims: [64, 128, 320, 512] },
  s36: { depths: [3, 12, 18, 3], dims: [64, 128, 320, 512] },
  m36: { depths: [3, 12, 18, 3], dims: [96, 192, 384, 576] },
  b36: { depths: [3, 12, 18, 3], dims: [128, 256, 512, 768] },
};

/** The family's fixed parts for a custom configuration. */
export function familyDefaults(family: Family): Pick<ModelConfig, 'tokenMixers' | 'norm' | 'head' | 'resScaleInit' | 'layerScaleInit'> {
  return {
    tokenMixers: [...FAMILY_MIXERS[family]],
    norm: FAMILY_NORM[family],
    head: FAMILY_HEAD[family],
    resScaleInit: [null, null, 1, 1],
    layerScaleInit: [null, null, null, null],
  };
}

function entry(family: Family, size: { depths: number[]; dims: number[] }, name: string, extra: Partial<ModelConfig>): ModelConfig {
  return {
    name,
    family,
    depths: size.depths,
    dims: size.dims,
    ...familyDefaults(family),
    numClasses: 1000,
    inputSize: [224, 224],
    cropPct: 1.0,
    interpolation: 'bicubic',
    mean: IMAGENET_MEAN,
    std: IMAGENET_STD,
    url: `${HUB}/${family}/${name}.pth`,
    pretrain: 'in1k',
    ...extra,
  };
}

function buildRegistry(): Map<string, ModelConfig> {
  const reg = new Map<string, ModelConfig>();
  for (const family of ['identityformer', 'randformer', 'poolformerv2'] as const) {
    for (const [size, s] of Object.entries(SIZES_A)) {
      const name = `${family}_${size}`;
      reg.set(name, entry(family, s, name, {}));
    }
  }
  for (const family of ['convformer', 'caformer'] as const) {
    for (const [size, s] of Object.entries(SIZES_B)) {
      const base = `${family}_${size}`;
      reg.set(base, entry(family, s, base, {}));
      reg.set(`${base}_384`, entry(family, s, `${base}_384`, { inputSize: [384, 384] }));
      reg.set(`${base}_in21ft1k`, entry(family, s, `${base}_in21ft1k`, { pretrain: 'in21ft1k' }));
      reg.set(`${base}_384_in21ft1k`, entry(family, s, `${base}_384_in21ft1k`, { inputSize: [384, 384], pretrain: 'in21ft1k' }));
      reg.set(`${base}_in21k`, entry(family, s, `${base}_in21k`, { numClasses: 21841, pretrain: 'in21k' }));
    }
  }
  return reg;
}

export const REGISTRY: ReadonlyMap<string, ModelConfig> = buildRegistry();

/** The names of every official model. */
export function listModels(filter?: string | RegExp): string[] {
  const names = [...REGISTRY.keys()];
  if (filter === undefined) return names;
  return names.filter((n) => (typeof filter === 'string' ? n.includes(filter) : filter.test(n)));
}

export function getModelConfig(name: string): ModelConfig {
  const c = REGISTRY.get(name);
  if (!c) {
    const near = listModels().filter((n) => n.startsWith(name.split('_')[0] ?? '')).slice(0, 8);
    throw new RangeError(`Expected an official model name for model but received ${JSON.stringify(name)}` +
      (near.length ? ` (did you mean one of: ${near.join(', ')}?)` : ' (see listModels())'));
  }
  return structuredClone(c);
}
