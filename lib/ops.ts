/** The differentiable ops, as plain functions (autograd records them when an input requires grad). */
export { linear } from './autograd/functions/linear.js';
export { conv2d, conv2dOutputSize, type Conv2dOptions } from './autograd/functions/conv2d.js';
export { dwconv2d } from './autograd/functions/dwconv2d.js';
export { layerNorm, type LayerNormOptions } from './autograd/functions/layernorm.js';
export { starRelu, squaredRelu } from './autograd/functions/starrelu.js';
export { attentionCore, type AttentionOptions } from './autograd/functions/attention.js';
export { randomMixing, poolMixer } from './autograd/functions/mixers.js';
export {
  scaleAdd, add, meanHW, dropout, dropPath, dropoutGroups, reshape, permute,
} from './autograd/functions/elementwise.js';
export { crossEntropy, type CrossEntropyOptions } from './autograd/functions/loss.js';
