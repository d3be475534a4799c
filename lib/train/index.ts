/** Training: optimizers, schedules, data, augmentation, mixup, EMA, metrics, checkpoints, the Trainer, whole runs. */
export {
  AdamW, Lamb, SGD, Optimizer, createOptimizer, paramGroupsWeightDecay, isNoWeightDecay, gradNorm, clipGradNorm,
  type OptimizerKind, type OptimizerState, type ParamGroup, type ParamGroupSpec, type AdamWOptions, type LambOptions, type SGDOptions,
} from './optim.js';
export { Schedule, CosineSchedule, ConstantSchedule, scheduleFromState, type ScheduleState, type CosineOptions } from './schedule.js';
export {
  buildTransform, imagenetTrainSpec, imagenetEvalSpec, randomResizedCrop, randomResizedCropBox, randomCropPad, hflip, resize,
  randAugment, parseRandAugment, randomErasing, evalResizeCrop,
  type Image8, type TransformSpec, type TrainTransformSpec, type EvalTransformSpec,
} from './augment.js';
export { Mixup, mixupTargets, cutmixBox, sampleBeta, type MixupOptions, type MixupResult } from './mixup.js';
export { parseIdx, readIdx, encodeIdx, fashionMnistDir, hasFashionMnist, DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES } from './idx.js';
export { TensorDataset, IdxDataset, ImageFolder, Subset, fashionMnist, datasetFromSpec, type Dataset, type Sample, type Batch } from './data.js';
export { DataLoader, type DataLoaderOptions, type DataLoaderState } from './loader.js';
export { ModelEma, type ModelEmaOptions } from './ema.js';
export { evaluate, accuracy, topkCorrect, Mean, type EvalResult } from './metrics.js';
export { lineChartSvg, trainingCurvesSvg, type Series, type ChartOptions } from './plot.js';
export { saveTrainCheckpoint, loadTrainCheckpoint, saveModelWeights, type LoadedCheckpoint } from './checkpoint.js';
export { freezeStages, prepareFinetune, type FinetuneOptions } from './finetune.js';
export { Trainer, type TrainerOptions, type EpochRecord, type StepInfo } from './trainer.js';
export {
  trainRun, evalRun, measureThroughput, prepareRun, setupData, TRAIN_PRESETS,
  type TrainRunOptions, type TrainRunResult, type EvalRunOptions, type EvalRunResult, type ThroughputResult,
} from './recipe.js';
