/** Builds the official module a per-op fixture describes, from its spec (op name + hyper-parameters). */
import * as L from '../../lib/nn/layers.js';
import type { Module } from '../../lib/nn/module.js';
import * as ops from '../../lib/ops.js';
import type { Tensor } from '../../lib/tensor.js';

export interface OpUnderTest {
  module: Module;
  forward: (x: Tensor) => Tensor;
}

export function moduleForOp(op: string, hp: Record<string, unknown>): OpUnderTest {
  const n = (k: string): number => hp[k] as number;
  const plain = (module: Module): OpUnderTest => ({ module, forward: (x) => module.forward(x) });
  switch (op) {
    case 'attention': return plain(new L.Attention(n('dim')));
    case 'downsampling':
      return plain(new L.Downsampling(n('in_channels'), n('out_channels'), n('kernel_size'), n('stride'), n('padding'), { preNorm: true }));
    case 'downsampling_stem':
      return plain(new L.Downsampling(n('in_channels'), n('out_channels'), n('kernel_size'), n('stride'), n('padding'),
        { postNorm: true, imageInput: true }));
    case 'dwconv7x7': {
      // The fixture is NCHW (nn.Conv2d); our kernel is channels-last, so the test permutes around it.
      const m = new L.DepthwiseConv(n('channels'), n('kernel_size'));
      return { module: m, forward: (x) => ops.permute(m.forward(ops.permute(x, [0, 2, 3, 1])), [0, 3, 1, 2]) };
    }
    case 'layernorm_general_123': return plain(new L.LayerNormHWC((hp.affine_shape as number[])[0]!, n('eps')));
    case 'layernorm_without_bias': return plain(new L.LayerNorm((hp.normalized_shape as number[])[0]!, n('eps'), false));
    case 'metaformer_block_caformer':
      return plain(new L.MetaFormerBlock(n('dim'), new L.Attention(n('dim')), 'layernorm_c', { resScaleInit: 1 }));
    case 'metaformer_block_convformer':
      return plain(new L.MetaFormerBlock(n('dim'), new L.SepConv(n('dim')), 'layernorm_c', { resScaleInit: 1 }));
    case 'metaformer_block_convformer_nores':
      return plain(new L.MetaFormerBlock(n('dim'), new L.SepConv(n('dim')), 'layernorm_c', {}));
    case 'metaformer_block_poolformerv2':
      return plain(new L.MetaFormerBlock(n('dim'), new L.Pooling(), 'layernorm_hwc', { resScaleInit: 1 }));
    case 'mlp': return plain(new L.Mlp(n('dim')));
    case 'mlp_head': return plain(new L.MlpHead(n('dim'), n('num_classes')));
    case 'pooling': return plain(new L.Pooling());
    case 'random_mixing': return plain(new L.RandomMixing(n('num_tokens')));
    case 'sepconv': return plain(new L.SepConv(n('dim')));
    case 'squared_relu': return plain(new L.SquaredReLU());
    case 'starrelu': return plain(new L.StarReLU());
    default: throw new Error(`no module for op fixture ${op}`);
  }
}
