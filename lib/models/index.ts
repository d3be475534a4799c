/** createModel: an official model by name, or a custom configuration, built by the one generic builder. */
import { type CustomModelConfig, MetaFormer, type ModelOptions, resolveConfig } from './metaformer.js';
import type { ModelConfig } from './zoo.js';
import { expectation } from '../tensor.js';

/** createModel with pretrained weights (lib/io/hub.ts): `true` for the registry's, or a checkpoint path / URL. */
export interface PretrainedModelOptions extends ModelOptions {
  pretrained: true | string;
  cacheDir?: string;
  offline?: boolean;
  sha256?: string;
  progress?: boolean;
}

export function createModel(nameOrConfig: string | CustomModelConfig | ModelConfig, options: PretrainedModelOptions): Promise<MetaFormer>;
export function createModel(nameOrConfig: string | CustomModelConfig | ModelConfig, options?: ModelOptions & { pretrained?: false }): MetaFormer;
export function createModel(nameOrConfig: string | CustomModelConfig | ModelConfig,
  options: ModelOptions & { pretrained?: boolean | string } = {}): MetaFormer | Promise<MetaFormer> {
  const pretrained = options.pretrained;
  if (pretrained !== undefined && pretrained !== false) {
    if (pretrained !== true && (typeof pretrained !== 'string' || pretrained === '')) {
      throw new TypeError(expectation('true, a checkpoint path or a URL', 'pretrained', pretrained));
    }
    const { pretrained: _, ...rest } = options as PretrainedModelOptions;
    return import('../io/hub.js').then((hub) =>
      hub.createPretrained(nameOrConfig, { ...rest, weights: pretrained === true ? undefined : pretrained }));
  }
  return new MetaFormer(resolveConfig(nameOrConfig), options);
}

export { MetaFormer, resolveConfig, stageSizes, type CustomModelConfig, type ModelOptions, type FeatureOutput } from './metaformer.js';
export { listModels, getModelConfig, REGISTRY, type ModelConfig, type Family } from './zoo.js';
