/** createModel: an official model by name, or a custom configuration, built by the one generic builder. */
import { type CustomModelConfig, MetaFormer, type ModelOptions, resolveConfig } from './metaformer.js';
import type { ModelConfig } from './zoo.js';

export function createModel(nameOrConfig: string | CustomModelConfig | ModelConfig, options: ModelOptions = {}): MetaFormer {
  return new MetaFormer(resolveConfig(nameOrConfig), options);
}

export { MetaFormer, resolveConfig, stageSizes, type CustomModelConfig, type ModelOptions, type FeatureOutput } from './metaformer.js';
export { listModels, getModelConfig, REGISTRY, type ModelConfig, type Family } from './zoo.js';
