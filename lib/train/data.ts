/**
 * Datasets and batch assembly.
 *
 * A Dataset yields 8-bit HWC samples (Image8 + class id) and describes itself as plain data (`spec()`), so a
 * worker thread can rebuild it: in-memory images live in a SharedArrayBuffer (TensorDataset, IdxDataset,
 * Fashion-MNIST), an ImageFolder passes its file list.
 *
 * - TensorDataset: in-memory uint8 images [N, H, W, C] (C 1 or 3) and labels.
 * - IdxDataset / fashionMnist(): IDX files (lib/train/idx.ts) as a TensorDataset.
 * - ImageFolder: torchvision's layout, root/<class>/<...>/<image>; class names sorted (code-point order, as
 *   Python's sorted) give the indices; files with torchvision's image extensions, walked recursively in
 *   sorted order; decoded with lib/io/image.ts (PIL convert('RGB') semantics).
 * - Subset: some indices of another dataset.
 *
 * buildBatch() turns sample indices into an NCHW float32 batch with one Rng per batch, seeded from
 * (loader seed, epoch, batch index): the augmentation of a batch does not depend on which thread builds it or
 * on what ran before, so any number of loader workers gives the same batches and a resumed run the same
 * trajectory. Mixup / CutMix (lib/train/mixup.ts) run on the finished batch with the same Rng.
 */
import { readdirSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { decodeImage } from '../io/image.js';
import { Rng } from '../random.js';
import { expectation } from '../tensor.js';
import { buildTransform, checkImage8, type Image8, type Transform, type TransformSpec } from './augment.js';
import { FASHION_MNIST_CLASSES, fashionMnistDir, findIdxFile, readIdx } from './idx.js';
import { Mixup, type MixupOptions } from './mixup.js';

export interface Sample {
  image: Image8;
  label: number;
}

export type DatasetSpec =
  | { kind: 'tensor'; images: Uint8Array; labels: Int32Array; shape: [number, number, number, number]; classes: string[] }
  | { kind: 'imagefolder'; root: string; files: string[]; labels: Int32Array; classes: string[] }
  | { kind: 'subset'; base: DatasetSpec; indices: Int32Array };

export interface Dataset {
  readonly length: number;
  readonly classes: readonly string[];
  get(index: number): Sample | Promise<Sample>;
  /** Plain data that rebuilds this dataset in another thread (datasetFromSpec). */
  spec(): DatasetSpec;
}

function checkIndex(i: unknown, n: number): number {
  if (!Number.isSafeInteger(i) || (i as number) < 0 || (i as number) >= n) throw new RangeError(expectation(`an index in [0, ${n})`, 'index', i));
  return i as number;
}

function toShared(src: Uint8Array): Uint8Array {
  if (src.buffer instanceof SharedArrayBuffer) return src;
  const out = new Uint8Array(new SharedArrayBuffer(src.byteLength));
  out.set(src);
  return out;
}

/** In-memory uint8 images [N, H, W, C] (C = 1 or 3) with class ids; the pixels are kept in shared memory. */
export class TensorDataset implements Dataset {
  readonly images: Uint8Array;
  readonly labels: Int32Array;
  readonly shape: [number, number, number, number];
  readonly classes: string[];

  constructor(images: Uint8Array, shape: readonly number[], labels: ArrayLike<number>, classes?: readonly string[]) {
    if (!(images instanceof Uint8Array)) throw new TypeError(expectation('a Uint8Array of pixels', 'images', images));
    if (!Array.isArray(shape) || shape.length !== 4 || shape.some((d) => !Number.isSafeInteger(d) || d < 0) || (shape[3] !== 1 && shape[3] !== 3)) {
      throw new RangeError(expectation('a shape [N, H, W, C] with C 1 or 3', 'shape', shape));
    }
    const [n, h, w, c] = shape as [number, number, number, number];
    if (images.length !== n * h * w * c) throw new RangeError(expectation(`${n * h * w * c} pixels for [${shape.join(', ')}]`, 'images', images.length));
    if (labels === null || typeof labels !== 'object' || labels.length !== n) throw new RangeError(expectation(`${n} labels`, 'labels', labels));
    const lab = Int32Array.from(labels);
    let max = -1;
    for (const l of lab) {
      if (l < 0) throw new RangeError(expectation('class ids >= 0', 'labels', l));
      max = Math.max(max, l);
    }
    this.classes = classes ? [...classes] : Array.from({ length: max + 1 }, (_, i) => String(i));
    if (max >= this.classes.length) throw new RangeError(expectation(`class ids below ${this.classes.length}`, 'labels', max));
    this.images = toShared(images);
    this.labels = lab;
    this.shape = [n, h, w, c];
  }

  get length(): number {
    return this.shape[0];
  }

  get(index: number): Sample {
    const i = checkIndex(index, this.length);
    const [, h, w, c] = this.shape;
    const per = h * w * c;
    return { image: { data: this.images.subarray(i * per, (i + 1) * per), width: w, height: h, channels: c as 1 | 3 }, label: this.labels[i]! };
  }

  spec(): DatasetSpec {
    return { kind: 'tensor', images: this.images, labels: this.labels, shape: this.shape, classes: this.classes };
  }
}

/** IDX image and label files ([N, H, W] or [N, H, W, C] ubyte images, [N] labels) as a TensorDataset. */
export class IdxDataset extends TensorDataset {
  constructor(imagesFile: string, labelsFile: string, classes?: readonly string[]) {
    const im = readIdx(imagesFile, { shared: true });
    const lb = readIdx(labelsFile);
    if (!(im.data instanceof Uint8Array) || (im.shape.length !== 3 && im.shape.length !== 4)) {
      throw new TypeError(expectation('ubyte images [N, H, W] or [N, H, W, C]', imagesFile, `[${im.shape.join(', ')}]`));
    }
    if (lb.shape.length !== 1 || lb.shape[0] !== im.shape[0]) {
      throw new RangeError(expectation(`${im.shape[0]} labels`, labelsFile, `[${lb.shape.join(', ')}]`));
    }
    const shape = im.shape.length === 3 ? [...im.shape, 1] : im.shape;
    super(im.data, shape, lb.data, classes);
  }
}

/** Fashion-MNIST (60000 train / 10000 test images, 28x28 grey, 10 classes) from `dir` (default fashionMnistDir()). */
export function fashionMnist(split: 'train' | 'test', dir = fashionMnistDir()): IdxDataset {
  if (split !== 'train' && split !== 'test') throw new TypeError(expectation("'train' or 'test'", 'split', split));
  const prefix = split === 'train' ? 'train' : 't10k';
  const images = findIdxFile(dir, `${prefix}-images-idx3-ubyte`);
  const labels = findIdxFile(dir, `${prefix}-labels-idx1-ubyte`);
  if (!images || !labels) {
    throw new Error(`fashionMnist: ${expectation(`${prefix}-images-idx3-ubyte[.gz] and ${prefix}-labels-idx1-ubyte[.gz]`, 'the dataset folder', dir)}` +
      ' (install Debian\'s dataset-fashion-mnist or set METAFORMER_FASHION_MNIST)');
  }
  return new IdxDataset(images, labels, FASHION_MNIST_CLASSES);
}

/** torchvision's IMG_EXTENSIONS. */
export const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp'];

const byCodePoint = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

function walk(dir: string, out: string[]): void {
  const entries = readdirSync(dir, { withFileTypes: true }).map((e) => e.name).sort(byCodePoint);
  const files: string[] = [];
  const dirs: string[] = [];
  for (const name of entries) {
    const full = path.join(dir, name);
    let st;
    try {
      st = statSync(full);  // follows links, as os.walk(followlinks=True)
    } catch {
      continue;
    }
    if (st.isDirectory()) dirs.push(full);
    else if (IMAGE_EXTENSIONS.includes(path.extname(name).toLowerCase())) files.push(full);
  }
  out.push(...files);
  for (const d of dirs) walk(d, out);
}

/** torchvision ImageFolder: root/<class>/**\/<image>, sorted class names give the class indices. */
export class ImageFolder implements Dataset {
  readonly root: string;
  readonly classes: string[];
  readonly files: string[];
  readonly labels: Int32Array;

  constructor(root: string, scanned?: { classes: string[]; files: string[]; labels: Int32Array }) {
    if (typeof root !== 'string' || root.length === 0) throw new TypeError(expectation('a folder path', 'root', root));
    this.root = root;
    if (scanned) {
      this.classes = scanned.classes;
      this.files = scanned.files;
      this.labels = scanned.labels;
      return;
    }
    let st;
    try {
      st = statSync(root);
    } catch {
      throw new Error(`ImageFolder: ${expectation('an existing folder', 'root', root)}`);
    }
    if (!st.isDirectory()) throw new Error(`ImageFolder: ${expectation('a folder', 'root', root)}`);
    this.classes = readdirSync(root, { withFileTypes: true })
      .filter((e) => e.isDirectory() || (e.isSymbolicLink() && statSync(path.join(root, e.name)).isDirectory()))
      .map((e) => e.name).sort(byCodePoint);
    if (this.classes.length === 0) throw new Error(`ImageFolder: ${expectation('class sub-folders', root, 'none')}`);
    const files: string[] = [];
    const labels: number[] = [];
    this.classes.forEach((c, ci) => {
      const list: string[] = [];
      walk(path.join(root, c), list);
      for (const f of list) {
        files.push(f);
        labels.push(ci);
      }
    });
    if (files.length === 0) throw new Error(`ImageFolder: ${expectation(`images (${IMAGE_EXTENSIONS.join(' ')})`, root, 'none')}`);
    this.files = files;
    this.labels = Int32Array.from(labels);
  }

  get length(): number {
    return this.files.length;
  }

  async get(index: number): Promise<Sample> {
    const i = checkIndex(index, this.length);
    return { image: await decodeImage(this.files[i]!), label: this.labels[i]! };
  }

  spec(): DatasetSpec {
    return { kind: 'imagefolder', root: this.root, files: this.files, labels: this.labels, classes: this.classes };
  }
}

/** Some samples of another dataset, in the given order. */
export class Subset implements Dataset {
  readonly indices: Int32Array;

  constructor(readonly base: Dataset, indices: ArrayLike<number>) {
    this.indices = Int32Array.from(indices);
    for (const i of this.indices) checkIndex(i, base.length);
  }

  get length(): number {
    return this.indices.length;
  }

  get classes(): readonly string[] {
    return this.base.classes;
  }

  get(index: number): Sample | Promise<Sample> {
    return this.base.get(this.indices[checkIndex(index, this.length)]!);
  }

  spec(): DatasetSpec {
    return { kind: 'subset', base: this.base.spec(), indices: this.indices };
  }
}

/** Rebuilds a dataset from spec() (in a worker thread). */
export function datasetFromSpec(spec: DatasetSpec): Dataset {
  switch (spec?.kind) {
    case 'tensor': return new TensorDataset(spec.images, spec.shape, spec.labels, spec.classes);
    case 'imagefolder': return new ImageFolder(spec.root, { classes: spec.classes, files: spec.files, labels: spec.labels });
    case 'subset': return new Subset(datasetFromSpec(spec.base), spec.indices);
    default: throw new TypeError(expectation("a dataset spec of kind 'tensor', 'imagefolder' or 'subset'", 'spec', spec));
  }
}

// --- batches ---------------------------------------------------------------------------------------------

/** Mixup settings for a loader: timm's Mixup options plus the epoch from which mixing stops (smoothing stays). */
export interface MixupSpec extends MixupOptions {
  offEpoch?: number;
}

export interface Batch {
  epoch: number;
  /** The batch's index within its epoch. */
  index: number;
  /** NCHW float32 [B, 3, H, W]. */
  images: Float32Array;
  shape: [number, number, number, number];
  /** Class ids [B] (before mixing). */
  labels: Int32Array;
  /** Soft targets [B, K] when the loader mixes (mixup / cutmix / smoothing folded in). */
  targets?: Float32Array;
}

export interface BatchRequest {
  epoch: number;
  index: number;
  indices: Int32Array;
  seed: number;
}

/** A 32-bit hash of several integers (splitmix-style mixing), for per-epoch and per-batch seeds. */
export function mixSeeds(...xs: number[]): number {
  let h = 0x243f6a88;
  for (const x of xs) {
    h = (h ^ (x >>> 0) ^ (Math.floor(x / 2 ** 32) >>> 0)) >>> 0;
    h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
    h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
    h = (h ^ (h >>> 16)) >>> 0;
    h = (h + 0x9e3779b9) >>> 0;
  }
  return h;
}

/** What a batch builder needs (the same in the main thread and in workers). */
export interface BatchBuilder {
  dataset: Dataset;
  transform: Transform;
  size: [number, number];
  mixup: Mixup | null;
  mixupOffEpoch: number;
}

export function makeBatchBuilder(dataset: Dataset, transform: TransformSpec, mixup: MixupSpec | null | undefined): BatchBuilder {
  return {
    dataset,
    transform: buildTransform(transform),
    size: [transform.size[0], transform.size[1]],
    mixup: mixup ? new Mixup(mixup) : null,
    mixupOffEpoch: mixup?.offEpoch ?? Infinity,
  };
}

/** Loads, augments and stacks one batch; deterministic in (seed, epoch, index, indices). */
export async function buildBatch(b: BatchBuilder, req: BatchRequest): Promise<Batch> {
  const rng = new Rng(mixSeeds(req.seed, req.epoch, req.index, 0xba7c));
  const n = req.indices.length;
  const [h, w] = b.size;
  const per = 3 * h * w;
  const images = new Float32Array(n * per);
  const labels = new Int32Array(n);
  const samples = await Promise.all(Array.from(req.indices, (i) => b.dataset.get(i)));
  samples.forEach((s, j) => {
    checkImage8(s.image, `sample ${req.indices[j]}`);
    b.transform(s.image, rng, images, j * per);
    labels[j] = s.label;
  });
  const batch: Batch = { epoch: req.epoch, index: req.index, images, shape: [n, 3, h, w], labels };
  if (b.mixup) {
    b.mixup.enabled = req.epoch < b.mixupOffEpoch;
    batch.targets = b.mixup.apply(images, batch.shape, labels, rng).targets;
  }
  return batch;
}
