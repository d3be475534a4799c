/**
 * The MetaFormer building blocks, with the official module and parameter names
 * (sail-sg/metaformer metaformer_baselines.py). Activations are channels-last [B, H, W, C].
 */
import * as ops from '../ops.js';
import { randn } from './init.js';
import { Tensor } from '../tensor.js';
import { Module } from './module.js';
import type { Parameter } from './module.js';
import { dropoutGroups } from '../autograd/functions/elementwise.js';

/** nn.Linear: weight [out, in], optional bias. Initialised as timm does (trunc normal std .02, zero bias). */
export class Linear extends Module {
  readonly weight: Parameter;
  readonly bias: Parameter | null;
  constructor(readonly inFeatures: number, readonly outFeatures: number, bias = true) {
    super();
    this.weight = this.param('weight', randn([outFeatures, inFeatures], 0.02, true));
    this.bias = bias ? this.param('bias', Tensor.zeros([outFeatures])) : null;
  }
  forward(x: Tensor): Tensor {
    return ops.linear(x, this.weight, this.bias);
  }
}

/** LayerNorm over the last dimension (LayerNormWithoutBias when bias = false; nn.LayerNorm with bias). */
export class LayerNorm extends Module {
  readonly weight: Parameter;
  readonly bias: Parameter | null;
  constructor(readonly dim: number, readonly eps: number, bias: boolean) {
    super();
    this.weight = this.param('weight', Tensor.ones([dim]));
    this.bias = bias ? this.param('bias', Tensor.zeros([dim])) : null;
  }
  forward(x: Tensor): Tensor {
    return ops.layerNorm(x, this.weight, this.bias, { eps: this.eps, over: 'c' });
  }
}

/** The "modified LayerNorm": statistics over (H, W, C) per sample, weight per channel, no bias. */
export class LayerNormHWC extends Module {
  readonly weight: Parameter;
  constructor(readonly dim: number, readonly eps: number) {
    super();
    this.weight = this.param('weight', Tensor.ones([dim]));
  }
  forward(x: Tensor): Tensor {
    return ops.layerNorm(x, this.weight, null, { eps: this.eps, over: 'hwc' });
  }
}

/** StarReLU: scale * relu(x)^2 + bias, with learnable 1-element scale (init 1) and bias (init 0). */
export class StarReLU extends Module {
  readonly scale: Parameter;
  readonly bias: Parameter;
  constructor(scale = 1, bias = 0) {
    super();
    this.scale = this.param('scale', Tensor.full([1], scale));
    this.bias = this.param('bias', Tensor.full([1], bias));
  }
  forward(x: Tensor): Tensor {
    return ops.starRelu(x, this.scale, this.bias);
  }
}

export class SquaredReLU extends Module {
  forward(x: Tensor): Tensor {
    return ops.squaredRelu(x);
  }
}

/** Per-channel scale (res_scale / layer_scale): parameter `scale` [C]. */
export class Scale extends Module {
  readonly scale: Parameter;
  constructor(dim: number, init = 1) {
    super();
    this.scale = this.param('scale', Tensor.full([dim], init));
  }
  forward(x: Tensor): Tensor {
    return ops.scaleAdd(x, this.scale, null);
  }
}

/** Depthwise conv (nn.Conv2d with groups = channels, no bias), channels-last; parameter `weight` [C, 1, k, k]. */
export class DepthwiseConv extends Module {
  readonly weight: Parameter;
  constructor(readonly channels: number, readonly kernelSize = 7) {
    super();
    this.weight = this.param('weight', randn([channels, 1, kernelSize, kernelSize], 0.02, true));
  }
  forward(x: Tensor): Tensor {
    return ops.dwconv2d(x, this.weight, null);
  }
}

/** SepConv (ConvFormer's mixer): pwconv1 -> StarReLU -> depthwise 7x7 -> pwconv2, expansion 2, no biases. */
export class SepConv extends Module {
  readonly pwconv1: Linear;
  readonly act1: StarReLU;
  readonly dwconv: DepthwiseConv;
  readonly pwconv2: Linear;
  constructor(dim: number, expansionRatio = 2, kernelSize = 7) {
    super();
    const med = Math.floor(expansionRatio * dim);
    this.pwconv1 = this.child('pwconv1', new Linear(dim, med, false));
    this.act1 = this.child('act1', new StarReLU());
    this.dwconv = this.child('dwconv', new DepthwiseConv(med, kernelSize));
    this.pwconv2 = this.child('pwconv2', new Linear(med, dim, false));
  }
  forward(x: Tensor): Tensor {
    return this.pwconv2.forward(this.dwconv.forward(this.act1.forward(this.pwconv1.forward(x))));
  }
}

/** Attention (CAFormer's mixer): heads = max(1, floor(dim / 32)), head_dim 32, no biases. */
export class Attention extends Module {
  readonly headDim = 32;
  readonly heads: number;
  readonly attentionDim: number;
  readonly qkv: Linear;
  readonly proj: Linear;
  constructor(readonly dim: number) {
    super();
    this.heads = Math.max(1, Math.floor(dim / this.headDim));
    this.attentionDim = this.heads * this.headDim;
    this.qkv = this.child('qkv', new Linear(dim, 3 * this.attentionDim, false));
    this.proj = this.child('proj', new Linear(this.attentionDim, dim, false));
  }
  forward(x: Tensor): Tensor {
    const [b, h, w, c] = x.shape as [number, number, number, number];
    const tokens = ops.reshape(x, [b, h * w, c]);
    const o = ops.attentionCore(this.qkv.forward(tokens), { headDim: this.headDim, scale: this.headDim ** -0.5 });
    return ops.reshape(this.proj.forward(o), [b, h, w, this.dim]);
  }
}

/** RandomMixing (RandFormer's mixer): a fixed [N, N] token matrix, never trained. */
export class RandomMixing extends Module {
  readonly randomMatrix: Parameter;
  constructor(readonly numTokens: number, matrix?: Tensor) {
    super();
    this.randomMatrix = this.param('random_matrix', matrix ?? randomSoftmaxMatrix(numTokens), false);
    this.randomMatrix._frozen = true;
  }
  forward(x: Tensor): Tensor {
    const [b, h, w, c] = x.shape as [number, number, number, number];
    if (h * w !== this.numTokens) {
      throw new RangeError(
        `RandomMixing: Expected ${this.numTokens} tokens (the input size the model was built for) for x but received ${h}x${w} = ${h * w}`,
      );
    }
    return ops.reshape(ops.randomMixing(ops.reshape(x, [b, h * w, c]), this.randomMatrix), [b, h, w, c]);
  }
}

/** Row-wise softmax of a standard normal matrix, as the official RandomMixing initialises it. */
function randomSoftmaxMatrix(n: number): Tensor {
  const t = randn([n, n], 1, false);
  const v = t.view<'float32'>();
  for (let i = 0; i < n; ++i) {
    const row = v.subarray(i * n, (i + 1) * n);
    let mx = -Infinity;
    for (const x of row) mx = Math.max(mx, x);
    let s = 0;
    for (let j = 0; j < n; ++j) s += row[j] = Math.exp(row[j]! - mx);
    for (let j = 0; j < n; ++j) row[j] = row[j]! / s;
  }
  return t;
}

/** Pooling (PoolFormer's mixer): avgpool3x3(x) - x. */
export class Pooling extends Module {
  forward(x: Tensor): Tensor {
    return ops.poolMixer(x);
  }
}

/** Mlp: fc1 -> StarReLU -> fc2, ratio 4, no biases (dropout 0 in every official model). */
export class Mlp extends Module {
  readonly fc1: Linear;
  readonly act: StarReLU;
  readonly fc2: Linear;
  constructor(dim: number, ratio = 4) {
    super();
    const hidden = Math.floor(ratio * dim);
    this.fc1 = this.child('fc1', new Linear(dim, hidden, false));
    this.act = this.child('act', new StarReLU());
    this.fc2 = this.child('fc2', new Linear(hidden, dim, false));
  }
  forward(x: Tensor): Tensor {
    return this.fc2.forward(this.act.forward(this.fc1.forward(x)));
  }
}

/** MlpHead (ConvFormer / CAFormer): fc1 -> SquaredReLU -> LayerNorm(eps 1e-5, bias) -> dropout -> fc2. */
export class MlpHead extends Module {
  readonly fc1: Linear;
  readonly act: SquaredReLU;
  readonly norm: LayerNorm;
  readonly fc2: Linear;
  constructor(dim: number, numClasses: number, ratio = 4, readonly headDropout = 0) {
    super();
    const hidden = Math.floor(ratio * dim);
    this.fc1 = this.child('fc1', new Linear(dim, hidden, true));
    this.act = this.child('act', new SquaredReLU());
    this.norm = this.child('norm', new LayerNorm(hidden, 1e-5, true));
    this.fc2 = this.child('fc2', new Linear(hidden, numClasses, true));
  }
  forward(x: Tensor): Tensor {
    let y = this.norm.forward(this.act.forward(this.fc1.forward(x)));
    if (this.training && this.headDropout > 0) y = ops.dropout(y, this.headDropout);
    return this.fc2.forward(y);
  }
}

/** A plain classifier head (IdentityFormer / RandFormer / PoolFormerV2) with optional dropout before it. */
export class LinearHead extends Linear {
  constructor(dim: number, numClasses: number, readonly headDropout = 0) {
    super(dim, numClasses, true);
  }
  override forward(x: Tensor): Tensor {
    const y = this.training && this.headDropout > 0 ? ops.dropout(x, this.headDropout) : x;
    return super.forward(y);
  }
}

export type NormKind = 'layernorm_c' | 'layernorm_hwc';

export function makeNorm(kind: NormKind, dim: number, eps = 1e-6): Module {
  return kind === 'layernorm_c' ? new LayerNorm(dim, eps, false) : new LayerNormHWC(dim, eps);
}

export interface BlockOptions {
  dropPath?: number;
  layerScaleInit?: number | null;
  resScaleInit?: number | null;
}

/**
 * MetaFormerBlock: x = res_scale1(x) + layer_scale1(drop_path(token_mixer(norm1(x))))
 *                  x = res_scale2(x) + layer_scale2(drop_path(mlp(norm2(x))))
 * res_scale multiplies the skip path (official: stages 3 and 4 only); layer_scale is never used
 * by the official models but supported.
 */
export class MetaFormerBlock extends Module {
  readonly norm1: Module;
  readonly tokenMixer: Module;
  readonly norm2: Module;
  readonly mlp: Mlp;
  readonly layerScale1: Scale | null;
  readonly layerScale2: Scale | null;
  readonly resScale1: Scale | null;
  readonly resScale2: Scale | null;
  readonly dropPath: number;
  constructor(dim: number, mixer: Module, norm: NormKind, opts: BlockOptions = {}) {
    super();
    this.dropPath = opts.dropPath ?? 0;
    this.norm1 = this.child('norm1', makeNorm(norm, dim));
    this.tokenMixer = this.child('token_mixer', mixer);
    const ls = opts.layerScaleInit ?? null, rs = opts.resScaleInit ?? null;
    this.layerScale1 = ls === null ? null : this.child('layer_scale1', new Scale(dim, ls));
    this.resScale1 = rs === null ? null : this.child('res_scale1', new Scale(dim, rs));
    this.norm2 = this.child('norm2', makeNorm(norm, dim));
    this.mlp = this.child('mlp', new Mlp(dim));
    this.layerScale2 = ls === null ? null : this.child('layer_scale2', new Scale(dim, ls));
    this.resScale2 = rs === null ? null : this.child('res_scale2', new Scale(dim, rs));
  }

  private residual(x: Tensor, branch: Tensor, layerScale: Scale | null, resScale: Scale | null): Tensor {
    let b = branch;
    if (this.training && this.dropPath > 0) b = dropoutGroups(b, this.dropPath, b.numel / b.shape[0]!);
    if (layerScale && resScale) return ops.scaleAdd(b, layerScale.scale, ops.scaleAdd(x, resScale.scale, null));
    if (layerScale) return ops.scaleAdd(b, layerScale.scale, x);
    return ops.scaleAdd(x, resScale ? resScale.scale : null, b);
  }

  forward(x: Tensor): Tensor {
    const y = this.residual(x, this.tokenMixer.forward(this.norm1.forward(x)), this.layerScale1, this.resScale1);
    return this.residual(y, this.mlp.forward(this.norm2.forward(y)), this.layerScale2, this.resScale2);
  }
}

/**
 * Downsampling: the stem (conv k7 s4 p2 on the NCHW image, then LayerNorm over C) and the stage
 * transitions (LayerNorm over C, then conv k3 s2 p1). All convs have a bias; norms have eps 1e-6, no bias.
 */
export class Downsampling extends Module {
  readonly preNorm: LayerNorm | null;
  readonly conv: Conv2d;
  readonly postNorm: LayerNorm | null;
  constructor(inChannels: number, outChannels: number, kernelSize: number, stride: number, padding: number,
    opts: { preNorm?: boolean; postNorm?: boolean; imageInput?: boolean } = {}) {
    super();
    this.preNorm = opts.preNorm ? this.child('pre_norm', new LayerNorm(inChannels, 1e-6, false)) : null;
    this.conv = this.child('conv', new Conv2d(inChannels, outChannels, kernelSize, stride, padding, opts.imageInput ?? false));
    this.postNorm = opts.postNorm ? this.child('post_norm', new LayerNorm(outChannels, 1e-6, false)) : null;
  }
  forward(x: Tensor): Tensor {
    let y = this.preNorm ? this.preNorm.forward(x) : x;
    y = this.conv.forward(y);
    return this.postNorm ? this.postNorm.forward(y) : y;
  }
}

/** nn.Conv2d with bias; input NCHW (imageInput) or channels-last, output channels-last. */
export class Conv2d extends Module {
  readonly weight: Parameter;
  readonly bias: Parameter;
  constructor(readonly inChannels: number, readonly outChannels: number, readonly kernelSize: number,
    readonly stride: number, readonly padding: number, readonly imageInput: boolean) {
    super();
    this.weight = this.param('weight', randn([outChannels, inChannels, kernelSize, kernelSize], 0.02, true));
    this.bias = this.param('bias', Tensor.zeros([outChannels]));
  }
  forward(x: Tensor): Tensor {
    return ops.conv2d(x, this.weight, this.bias, {
      stride: this.stride, padding: this.padding, inputLayout: this.imageInput ? 'nchw' : 'nhwc',
    });
  }
}
