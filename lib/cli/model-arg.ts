/**
 * The model a command runs, from --model / --weights: a checkpoint that records its configuration
 * (saved by this library) builds its own model unless --model is given, and brings its class names when
 * it recorded them; otherwise the named model with the given weights, its pretrained weights (downloaded
 * and cached), or none (`pretrained: false`). The default is a model name or a checkpoint file.
 */
import { loadWeights, readCheckpointConfig, readCheckpointLabels } from '../io/checkpoint.js';
import { createModel } from '../models/index.js';
import { withoutInit } from '../nn/init.js';
import { resolveConfig, type CustomModelConfig, type MetaFormer } from '../models/metaformer.js';
import { stringOption, type OptionValues } from './command.js';

export interface LoadedModel {
  model: MetaFormer;
  /** Class names recorded in the checkpoint, if any. */
  labels?: string[];
}

async function fromCheckpoint(file: string): Promise<LoadedModel | null> {
  const config = await readCheckpointConfig(file);
  if (!config) return null;
  // (the strict load below sets every parameter: no random initialisation first)
  const model = withoutInit(() => createModel(resolveConfig(config as unknown as CustomModelConfig)));
  try {
    await loadWeights(model, file);
    const labels = await readCheckpointLabels(file);
    return { model: model.eval(), ...(labels ? { labels } : {}) };
  } catch (e) {
    model.dispose();
    throw e;
  }
}

export async function modelFromOptions(values: OptionValues, defaults: { model: string } | { file: string },
  pretrained = true): Promise<LoadedModel> {
  const name = stringOption(values, 'model');
  let weights = stringOption(values, 'weights');
  if (name === undefined && weights === undefined && 'file' in defaults) weights = defaults.file;
  const fetch = { cacheDir: stringOption(values, 'cache-dir'), offline: values.offline === true ? true : undefined };
  if (weights !== undefined && name === undefined && !/^https?:\/\//i.test(weights)) {
    const loaded = await fromCheckpoint(weights);
    if (loaded) return loaded;
  }
  const fallback = 'model' in defaults ? defaults.model : 'caformer_s18';
  if (weights === undefined && !pretrained) return { model: createModel(name ?? fallback).eval() };
  return { model: await createModel(name ?? fallback, { pretrained: weights ?? true, ...fetch }) };
}
