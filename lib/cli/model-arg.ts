/**
 * The model a command runs, from --model / --weights: a checkpoint that records its configuration
 * (saved by this library) builds its own model unless --model is given; otherwise the named model with
 * the given weights, its pretrained weights (downloaded and cached), or none (`pretrained: false`).
 */
import { loadWeights, readCheckpointConfig } from '../io/checkpoint.js';
import { createModel } from '../models/index.js';
import { resolveConfig, type CustomModelConfig, type MetaFormer } from '../models/metaformer.js';
import { stringOption, type OptionValues } from './command.js';

export async function modelFromOptions(values: OptionValues, defaultModel: string, pretrained = true): Promise<MetaFormer> {
  const name = stringOption(values, 'model');
  const weights = stringOption(values, 'weights');
  const fetch = { cacheDir: stringOption(values, 'cache-dir'), offline: values.offline === true ? true : undefined };
  if (weights !== undefined && name === undefined && !/^https?:\/\//i.test(weights)) {
    const config = await readCheckpointConfig(weights);
    if (config) {
      const model = createModel(resolveConfig(config as unknown as CustomModelConfig));
      try {
        await loadWeights(model, weights);
      } catch (e) {
        model.dispose();
        throw e;
      }
      return model.eval();
    }
  }
  if (weights === undefined && !pretrained) return createModel(name ?? defaultModel).eval();
  return createModel(name ?? defaultModel, { pretrained: weights ?? true, ...fetch });
}
