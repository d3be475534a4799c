/**
 * metaformer: MetaFormer vision models (IdentityFormer, RandFormer, PoolFormerV2, ConvFormer, CAFormer)
 * for Node.js on native kernels.
 */
export { Tensor, tidy, keep, leakedTensorCount, type Device } from './tensor.js';
export type { DType } from './dtype.js';
export { noGrad, isGradEnabled, setGradEnabled } from './autograd/node.js';
export {
  setBackend, getBackend, withBackend, setNumThreads, getNumThreads, setGemmPolicy, setOnednnWeightLayout, type GemmPolicy, type WeightLayout,
} from './backend.js';
export { resolveDevice, cudaInfo, cudaAvailable, cudaSynchronize, type DeviceOption } from './device.js';
export * as ops from './ops.js';
export { crossEntropy } from './ops.js';
export { manualSeed, getRngState, setRngState, Rng } from './random.js';
export { Module, Parameter, Sequential, Identity } from './nn/module.js';
export * as nn from './nn/layers.js';
export { readSafetensors, readSafetensorsSync, writeSafetensors } from './io/tensors.js';
export { memoryStats, trimCache } from './memory.js';
export { createModel, MetaFormer, listModels, getModelConfig, type ModelConfig, type CustomModelConfig, type ModelOptions, type PretrainedModelOptions } from './models/index.js';
export { loadStateDict, loadWeights, saveCheckpoint, readCheckpoint, sniffFormat, type CheckpointFormat, type SaveCheckpointOptions } from './io/checkpoint.js';
export { detectConvention, toOfficial, toTimm, type KeyConvention, type KeyDetection } from './io/keys.js';
export { fetchWeights, createPretrained, defaultCacheDir, type FetchOptions, type PretrainedOptions, type DownloadProgress } from './io/hub.js';
export { classify, type ClassifyOptions, type ClassifyInput, type Prediction } from './classify.js';
export { imagenetLabels, type ClassLabel, type LabelSet } from './labels.js';
export * as train from './train/index.js';
export { exportOnnx, toOnnxBytes, type OnnxExportOptions } from './io/onnx.js';
export { bf16Native, compilePlan, type CompiledPlan, type Precision, type StepTime } from './plan.js';
export { profileOps } from './backend.js';
