/**
 * classify: images in, top-k classes out. Images are decoded and preprocessed exactly as timm evaluates
 * these models (lib/io/image.ts, with the model config's input size, crop, interpolation, mean and std),
 * run through the model's compiled inference plan in batches, and turned into probabilities with a softmax.
 */
import { preprocessImage, type ImageSource } from './io/image.js';
import { type DeviceOption, resolveDevice } from './device.js';
import { createPretrained, type FetchOptions } from './io/hub.js';
import { labelsFor } from './labels.js';
import { MetaFormer } from './models/metaformer.js';
import { expectation, Tensor } from './tensor.js';

export type ClassifyInput = string | Buffer | Uint8Array | Tensor;

export interface ClassifyOptions extends Pick<FetchOptions, 'cacheDir' | 'offline' | 'progress'> {
  /** A model, or a registry name (built with its pretrained weights, or with `weights`). */
  model: MetaFormer | string;
  /** Classes per image (default 5; at most the number of classes). */
  topK?: number;
  /** With a model name: a local checkpoint path or URL to load instead of the registry's weights. */
  weights?: string;
  /** One label per class; default: ImageNet's for 1000 or 21841 classes, else the class index. */
  labels?: readonly string[];
  /** Images per forward pass (default 8). */
  batchSize?: number;
  /** With a model name: where to build it ('cpu' default, 'cuda', 'auto'). A MetaFormer runs where it is. */
  device?: DeviceOption;
}

export interface Prediction {
  /** Class index in the head. */
  index: number;
  label: string;
  /** WordNet synset id, for the ImageNet heads. */
  synset?: string;
  probability: number;
}

/** Images decoded at the same time. */
const DECODE_CONCURRENCY = 2;

function describeInput(x: unknown): string {
  if (typeof x === 'string') return JSON.stringify(x);
  if (x instanceof Uint8Array) return `a buffer of ${x.byteLength} bytes`;
  return String(x);
}

/** Softmax of one row (in float64) and its k most probable classes, most probable first. */
export function topKSoftmax(logits: ArrayLike<number>, k: number): { index: number; probability: number }[] {
  let max = -Infinity;
  for (let i = 0; i < logits.length; ++i) if (logits[i]! > max) max = logits[i]!;
  const exps = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; ++i) sum += exps[i] = Math.exp(logits[i]! - max);
  // Keep a small sorted list of the best k (k is small next to the class count).
  const best: number[] = [];
  for (let i = 0; i < exps.length; ++i) {
    const v = exps[i]!;
    if (best.length === k && !(v > exps[best[k - 1]!]!)) continue;
    let pos = best.length;
    while (pos > 0 && v > exps[best[pos - 1]!]!) --pos;
    best.splice(pos, 0, i);
    if (best.length > k) best.pop();
  }
  return best.map((index) => ({ index, probability: exps[index]! / sum }));
}

function checkOptions(opts: ClassifyOptions): { topK: number; batchSize: number } {
  if (opts === null || typeof opts !== 'object') throw new TypeError(expectation('an options object with a model', 'options', opts));
  if (!(opts.model instanceof MetaFormer) && (typeof opts.model !== 'string' || opts.model === '')) {
    throw new TypeError(expectation('a MetaFormer or a model name', 'model', opts.model));
  }
  const topK = opts.topK ?? 5;
  if (!Number.isSafeInteger(topK) || topK < 1) throw new TypeError(expectation('a positive integer', 'topK', topK));
  const batchSize = opts.batchSize ?? 8;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1) throw new TypeError(expectation('a positive integer', 'batchSize', batchSize));
  if (opts.weights !== undefined && (typeof opts.weights !== 'string' || opts.weights === '')) {
    throw new TypeError(expectation('a checkpoint path or URL', 'weights', opts.weights));
  }
  if (opts.device !== undefined) resolveDevice(opts.device);  // a bad or unusable device fails before any download
  return { topK, batchSize };
}

/** Each input as a list of [3, H, W] tensors or encoded images, checked up front. */
function checkInputs(images: ClassifyInput[] | ClassifyInput): ClassifyInput[] {
  const list = Array.isArray(images) ? images : [images];
  list.forEach((x, i) => {
    if (typeof x === 'string' ? x.length > 0 : x instanceof Uint8Array) return;
    if (x instanceof Tensor) {
      const ok = !x.disposed && (x.ndim === 3 ? x.shape[0] === 3 : x.ndim === 4 && x.shape[1] === 3) &&
        (x.dtype === 'float32' || x.dtype === 'float16' || x.dtype === 'bfloat16' || x.dtype === 'float64');
      if (ok) return;
      throw new TypeError(expectation('a live float tensor [3, H, W] or [N, 3, H, W] (a preprocessed image)', `images[${i}]`, x));
    }
    throw new TypeError(expectation('an image path, a Buffer or a preprocessed Tensor', `images[${i}]`, x));
  });
  return list;
}

/** Runs one [N, 3, H, W] float32 batch and appends the top-k of each row. */
async function runBatch(model: MetaFormer, x: Tensor, topK: number, out: { index: number; probability: number }[][]): Promise<void> {
  const logits = await model.predict(x);
  try {
    const values = logits.toFloat32Array();
    const c = model.numClasses;
    for (let r = 0; r < x.shape[0]!; ++r) out.push(topKSoftmax(values.subarray(r * c, (r + 1) * c), Math.min(topK, c)));
  } finally {
    logits.dispose();
  }
}

/**
 * The top-k classes of each image, most probable first. Images are paths, encoded bytes (JPEG, PNG, WebP, ...)
 * or already preprocessed tensors ([3, H, W], or [N, 3, H, W] for N images). A model given by name is built
 * with its pretrained weights for this call and freed afterwards; pass a MetaFormer to reuse one.
 */
export async function classify(images: ClassifyInput[] | ClassifyInput, opts: ClassifyOptions): Promise<Prediction[][]> {
  const { topK, batchSize } = checkOptions(opts);
  const inputs = checkInputs(images);
  const owned = !(opts.model instanceof MetaFormer);
  const model = opts.model instanceof MetaFormer ? opts.model
    : await createPretrained(opts.model, { weights: opts.weights, cacheDir: opts.cacheDir, offline: opts.offline, progress: opts.progress });
  try {
    if (owned && opts.device !== undefined) model.to(opts.device);
    const names = labelsFor(model.numClasses, opts.labels);
    const cfg = model.config;
    const pre = { inputSize: cfg.inputSize, cropPct: cfg.cropPct, interpolation: cfg.interpolation, mean: cfg.mean, std: cfg.std };
    const [h, w] = cfg.inputSize;
    const per = 3 * h * w;
    const ranked: { index: number; probability: number }[][] = [];
    let i = 0;
    while (i < inputs.length) {
      const x = inputs[i]!;
      if (x instanceof Tensor) {
        const batch = x.ndim === 3 ? x._share([1, ...x.shape]) : x._share(x.shape);
        const f32 = batch.dtype === 'float32' ? batch : batch.to('float32');
        try {
          await runBatch(model, f32, topK, ranked);
        } finally {
          if (f32 !== batch) f32.dispose();
          batch.dispose();
        }
        ++i;
        continue;
      }
      // A run of encoded images, up to batchSize, decoded a few at a time.
      const start = i;
      while (i < inputs.length && i - start < batchSize && !(inputs[i] instanceof Tensor)) ++i;
      const n = i - start;
      const data = new Float32Array(n * per);
      let next = 0;
      let failed = false;
      const worker = async (): Promise<void> => {
        while (next < n && !failed) {
          const j = next++;
          const src = inputs[start + j] as ImageSource;
          let chw: Float32Array;
          try {
            chw = await preprocessImage(src, pre);
          } catch (e) {
            failed = true;
            throw new Error(`classify: image ${start + j} (${describeInput(src)}): ${(e as Error).message}`, { cause: e });
          }
          data.set(chw, j * per);
        }
      };
      await Promise.all(Array.from({ length: Math.min(DECODE_CONCURRENCY, n) }, worker));
      const batch = Tensor.from(data, [n, 3, h, w]);
      try {
        await runBatch(model, batch, topK, ranked);
      } finally {
        batch.dispose();
      }
    }
    return ranked.map((row) => row.map(({ index, probability }) => {
      const synset = names.synset(index);
      return synset === undefined ? { index, label: names.label(index), probability } : { index, label: names.label(index), synset, probability };
    }));
  } finally {
    if (owned) model.dispose();
  }
}
