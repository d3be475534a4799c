/**
 * metaformer: MetaFormer vision models (IdentityFormer, RandFormer, PoolFormerV2, ConvFormer, CAFormer)
 * for Node.js on native kernels.
 */
export { Tensor, tidy, keep, leakedTensorCount, type Device } from './tensor.js';
export type { DType } from './dtype.js';
export { noGrad, isGradEnabled, setGradEnabled } from './autograd/node.js';
export { setBackend, getBackend, withBackend, setNumThreads, getNumThreads } from './backend.js';
export * as ops from './ops.js';
export { crossEntropy } from './ops.js';
export { manualSeed, getRngState, setRngState, Rng } from './random.js';
export { Module, Parameter, Sequential, Identity } from './nn/module.js';
export * as nn from './nn/layers.js';
export { readSafetensors, readSafetensorsSync, writeSafetensors } from './io/tensors.js';
export { memoryStats, trimCache } from './memory.js';
