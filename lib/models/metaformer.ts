/**
 * The one generic MetaFormer builder (no class per model): four Downsampling layers, four stages of
 * MetaFormerBlocks with the family's token mixers and norms, the output norm (LayerNorm with bias,
 * eps 1e-6) over the H, W mean of the last stage, and the head. Module names are the official ones:
 * downsample_layers.i, stages.i.j, norm, head.
 */
import { conv2dOutputSize } from '../autograd/functions/conv2d.js';
import { noGrad } from '../autograd/node.js';
import * as L from '../nn/layers.js';
import { Identity, Module, Sequential } from '../nn/module.js';
import { meanHW } from '../ops.js';
import { checkPrecision, compilePlan, type CompiledPlan, noticeBf16Emulation, type Precision } from '../plan.js';
import { type DeviceOption } from '../device.js';
import { expectation, onDevice, Tensor } from '../tensor.js';
import { type Family, familyDefaults, getModelConfig, type MixerKind, type ModelConfig, IMAGENET_MEAN, IMAGENET_STD, OFFICIAL_STEM, type StemConfig } from './zoo.js';

/** A custom configuration: the family supplies mixers, norms and head. */
export interface CustomModelConfig {
  family: Family;
  depths: number[];
  dims: number[];
  numClasses?: number;
  /** Input size (square) or [H, W]; default 224. RandFormer's mixing matrices follow it. */
  imageSize?: number | [number, number];
  name?: string;
  /** The stem convolution (default: the official k7 s4 p2). */
  stem?: StemConfig;
}

export interface ModelOptions {
  /** A new head with this many classes. */
  numClasses?: number;
  /** Stochastic depth: rises linearly from 0 to this over the blocks (training only). */
  dropPathRate?: number;
  /** Dropout before the last head layer (training only). */
  headDropout?: number;
  /**
   * Where the parameters live: 'cpu' (default), 'cuda' (throws, saying why, without a usable GPU) or
   * 'auto' ('cuda' when available, else 'cpu' with a one-line notice). Same as calling model.to(device).
   */
  device?: DeviceOption;
  /**
   * Precision of predict() and features(): 'float32' (default) or 'bf16' (matrix products with bfloat16
   * operands and float32 accumulation, the rest float32: oneDNN's bf16 kernels on the CPU, emulated with
   * a one-line notice on CPUs without AVX512-BF16/AMX; cuBLAS's bf16 tensor-core GEMMs on a GPU). Same
   * as setting model.precision.
   */
  precision?: Precision;
}

export interface FeatureOutput {
  /** [B, C_last]: the output norm of the H, W mean of the last stage (what the head sees). */
  features: Tensor;
  /** The four stage outputs, channels-last [B, H_i, W_i, C_i] (strides 4, 8, 16, 32), when requested. */
  stages?: Tensor[];
}

/** Spatial sizes after the stem (official: k7 s4 p2) and each downsampling (k3 s2 p1). */
export function stageSizes(h: number, w: number, stem: StemConfig = OFFICIAL_STEM): [number, number][] {
  const out: [number, number][] = [];
  let hh = conv2dOutputSize(h, stem.kernel, stem.stride, stem.padding), ww = conv2dOutputSize(w, stem.kernel, stem.stride, stem.padding);
  for (let i = 0; i < 4; ++i) {
    if (i > 0) {
      hh = conv2dOutputSize(hh, 3, 2, 1);
      ww = conv2dOutputSize(ww, 3, 2, 1);
    }
    out.push([hh, ww]);
  }
  return out;
}

function checkPositiveInts(name: string, v: unknown, n: number): number[] {
  if (!Array.isArray(v) || v.length !== n || v.some((d) => !Number.isSafeInteger(d) || d < 1)) {
    throw new TypeError(expectation(`${n} positive integers`, name, v));
  }
  return v as number[];
}

/** Resolves a name or a custom config into a full ModelConfig. */
export function resolveConfig(nameOrConfig: string | CustomModelConfig | ModelConfig): ModelConfig {
  if (typeof nameOrConfig === 'string') return getModelConfig(nameOrConfig);
  if (nameOrConfig === null || typeof nameOrConfig !== 'object') {
    throw new TypeError(expectation('a model name or a config object', 'model', nameOrConfig));
  }
  const c = nameOrConfig as Partial<ModelConfig> & CustomModelConfig;
  const families: Family[] = ['identityformer', 'randformer', 'poolformerv2', 'convformer', 'caformer'];
  if (!families.includes(c.family)) throw new TypeError(expectation(`one of ${families.join(', ')}`, 'family', c.family));
  const depths = checkPositiveInts('depths', c.depths, 4);
  const dims = checkPositiveInts('dims', c.dims, 4);
  const size = c.imageSize ?? c.inputSize ?? 224;
  const inputSize: [number, number] = typeof size === 'number' ? [size, size] : [size[0], size[1]];
  checkPositiveInts('imageSize', inputSize, 2);
  const numClasses = c.numClasses ?? 1000;
  if (c.stem !== undefined) {
    const st = c.stem as Partial<StemConfig> | null;
    const ok = st !== null && typeof st === 'object' && [st.kernel, st.stride, st.padding].every((v) => Number.isSafeInteger(v) && (v as number) >= 0)
      && (st.kernel as number) >= 1 && (st.stride as number) >= 1;
    if (!ok) throw new TypeError(expectation('{ kernel, stride, padding } (non-negative integers, kernel and stride >= 1)', 'stem', c.stem));
  }
  if (!Number.isSafeInteger(numClasses) || numClasses < 1) throw new TypeError(expectation('a positive integer', 'numClasses', numClasses));
  return {
    ...familyDefaults(c.family),
    cropPct: 1.0,
    interpolation: 'bicubic',
    mean: IMAGENET_MEAN,
    std: IMAGENET_STD,
    pretrain: 'in1k',
    ...(c as Partial<ModelConfig>),
    name: c.name ?? `${c.family}_custom`,
    family: c.family,
    depths,
    dims,
    numClasses,
    inputSize,
  };
}

function makeMixer(kind: MixerKind, dim: number, tokens: number): Module {
  switch (kind) {
    case 'identity': return new Identity();
    case 'random': return new L.RandomMixing(tokens);
    case 'pooling': return new L.Pooling();
    case 'sepconv': return new L.SepConv(dim);
    case 'attention': return new L.Attention(dim);
  }
}

export class MetaFormer extends Module {
  readonly config: ModelConfig;
  readonly downsampleLayers: Sequential;
  readonly stages: Sequential;
  readonly norm: L.LayerNorm;
  head: Module;
  private readonly plans = new Map<string, CompiledPlan>();
  private precision_: Precision = 'float32';

  constructor(config: ModelConfig, opts: ModelOptions = {}) {
    super();
    const precision = opts.precision === undefined ? undefined : checkPrecision(opts.precision);
    const c = (this.config = { ...config, numClasses: opts.numClasses ?? config.numClasses });
    const dpr = opts.dropPathRate ?? 0;
    if (!(dpr >= 0 && dpr < 1)) throw new RangeError(expectation('a number in [0, 1)', 'dropPathRate', dpr));
    const headDropout = opts.headDropout ?? 0;
    if (!(headDropout >= 0 && headDropout < 1)) throw new RangeError(expectation('a number in [0, 1)', 'headDropout', headDropout));
    const stem = c.stem ?? OFFICIAL_STEM;
    const sizes = stageSizes(c.inputSize[0], c.inputSize[1], stem);
    if (sizes.some(([h, w]) => h < 1 || w < 1)) {
      throw new RangeError(expectation('an input size that leaves every stage at least 1x1', 'imageSize', `${c.inputSize.join('x')}`));
    }
    const down: Module[] = [];
    const stages: Module[] = [];
    const total = c.depths.reduce((a, b) => a + b, 0);
    let block = 0;
    for (let i = 0; i < 4; ++i) {
      down.push(i === 0
        ? new L.Downsampling(3, c.dims[0]!, stem.kernel, stem.stride, stem.padding, { postNorm: true, imageInput: true })
        : new L.Downsampling(c.dims[i - 1]!, c.dims[i]!, 3, 2, 1, { preNorm: true }));
      const blocks: Module[] = [];
      const tokens = sizes[i]![0] * sizes[i]![1];
      for (let j = 0; j < c.depths[i]!; ++j, ++block) {
        blocks.push(new L.MetaFormerBlock(c.dims[i]!, makeMixer(c.tokenMixers[i]!, c.dims[i]!, tokens), c.norm, {
          dropPath: total > 1 ? (dpr * block) / (total - 1) : 0,
          resScaleInit: c.resScaleInit[i] ?? null,
          layerScaleInit: c.layerScaleInit[i] ?? null,
        }));
      }
      stages.push(new Sequential(blocks));
    }
    this.downsampleLayers = this.child('downsample_layers', new Sequential(down));
    this.stages = this.child('stages', new Sequential(stages));
    this.norm = this.child('norm', new L.LayerNorm(c.dims[3]!, 1e-6, true));
    this.head = this.child('head', this.makeHead(c.numClasses, headDropout));
    if (opts.device !== undefined && opts.device !== 'cpu') {
      try {
        this.to(opts.device);
      } catch (e) {
        this.dispose();
        throw e;
      }
    }
    if (precision !== undefined) this.precision = precision;  // after the move: the notice is for CPUs
  }

  /** Moves the model to a device (see Module.to); compiled plans are dropped. */
  override to(device: DeviceOption): this {
    this.clearPlans();
    return super.to(device);
  }

  private makeHead(numClasses: number, headDropout: number): Module {
    const dim = this.config.dims[3]!;
    return this.config.head === 'mlp' ? new L.MlpHead(dim, numClasses, 4, headDropout) : new L.LinearHead(dim, numClasses, headDropout);
  }

  /** Replaces the head with a fresh one for `numClasses` classes (fine-tuning). */
  resetClassifier(numClasses: number, headDropout = 0): void {
    if (!Number.isSafeInteger(numClasses) || numClasses < 1) throw new TypeError(expectation('a positive integer', 'numClasses', numClasses));
    this.head = this.makeHead(numClasses, headDropout);
    this.replaceChild('head', this.head);
    this.config.numClasses = numClasses;
  }

  override replaceChild(name: string, m: Module): void {
    const device = this.device;
    super.replaceChild(name, m);
    if (m.device !== device) m.to(device);  // a new head joins the model's device
    this.clearPlans();
  }

  get numClasses(): number {
    return this.config.numClasses;
  }

  private checkInput(x: Tensor, where: string): void {
    if (!(x instanceof Tensor)) throw new TypeError(`${where}: ${expectation('a Tensor', 'input', x)}`);
    if (x.ndim !== 4 || x.shape[1] !== 3) {
      throw new RangeError(`${where}: ${expectation('an NCHW image batch [B, 3, H, W]', 'input', x)}`);
    }
    const [h, w] = [x.shape[2]!, x.shape[3]!];
    if (h < 4 || w < 4) throw new RangeError(`${where}: ${expectation('an image of at least 4x4', 'input', x)}`);
    if (this.config.tokenMixers.includes('random')) {
      const [eh, ew] = this.config.inputSize;
      const got = stageSizes(h, w, this.config.stem), want = stageSizes(eh, ew, this.config.stem);
      if (got[2]![0] * got[2]![1] !== want[2]![0] * want[2]![1] || got[3]![0] * got[3]![1] !== want[3]![0] * want[3]![1]) {
        throw new RangeError(`${where}: ${expectation(`a ${eh}x${ew} input (RandFormer's mixing matrices are built for it)`, 'input', x)}`);
      }
    }
  }

  /** Runs the stages: the four stage outputs (channels-last). */
  private runStages(x: Tensor): Tensor[] {
    const outs: Tensor[] = [];
    let y = x;
    for (let i = 0; i < 4; ++i) {
      y = this.downsampleLayers.items[i]!.forward(y);
      y = this.stages.items[i]!.forward(y);
      outs.push(y);
    }
    return outs;
  }

  /** Logits for an NCHW float32 batch: synchronous and autograd-aware (training uses it). */
  forward(x: Tensor): Tensor {
    this.checkInput(x, 'forward');
    const stages = this.runStages(x);
    return this.head.forward(this.norm.forward(meanHW(stages[3]!)));
  }

  /** Pooled features (and the four stage maps), synchronous and autograd-aware. */
  forwardFeatures(x: Tensor, opts: { stages?: boolean } = {}): FeatureOutput {
    this.checkInput(x, 'forwardFeatures');
    const stages = this.runStages(x);
    const features = this.norm.forward(meanHW(stages[3]!));
    return opts.stages ? { features, stages } : { features };
  }

  /** Precision of predict() and features() (see ModelOptions.precision); plans are kept per precision. */
  get precision(): Precision {
    return this.precision_;
  }

  set precision(p: Precision) {
    this.precision_ = checkPrecision(p);
    if (p === 'bf16' && this.device === 'cpu') noticeBf16Emulation();
  }

  /**
   * The compiled inference plan for this input shape, output kind and precision (cached), on the model's
   * device: its arena lives there and it reads the weights in place.
   */
  plan(shape: readonly number[], kind: 'logits' | 'features' = 'logits', precision: Precision = this.precision_): CompiledPlan {
    checkPrecision(precision);
    const key = `${kind}:${precision}:${shape.join('x')}`;
    let p = this.plans.get(key);
    if (!p) {
      const wasTraining = this.training;
      this.eval();
      try {
        p = compilePlan((x) => {
          const stages = this.runStages(x);
          const features = this.norm.forward(meanHW(stages[3]!));
          return kind === 'logits' ? this.head.forward(features) : [features, ...stages];
        }, shape, this.device === 'cuda' ? 'cuda' : 'cpu', { precision });
      } finally {
        this.train(wasTraining);
      }
      this.plans.set(key, p);
    }
    return p;
  }

  /**
   * Logits [B, numClasses] (inference mode, no autograd): a compiled plan runs off the main thread, on the
   * model's device (the input is copied there when it lives elsewhere; the logits stay there).
   */
  async predict(x: Tensor): Promise<Tensor> {
    this.checkInput(x, 'predict');
    return this.withInputOnDeviceAsync(x, async (t) => (await this.plan(t.shape).run(t))[0]!);
  }

  predictSync(x: Tensor): Tensor {
    this.checkInput(x, 'predict');
    return this.withInputOnDevice(x, (t) => noGrad(() => this.plan(t.shape).runSync(t)[0]!));
  }

  /** fn(x), or fn of a copy of x on the model's device, freed when fn is done. */
  private withInputOnDevice<T>(x: Tensor, fn: (x: Tensor) => T): T {
    const moved = onDevice(x, this.device);
    if (moved === x) return fn(x);
    try {
      return fn(moved);
    } finally {
      moved.dispose();
    }
  }

  /** The same for asynchronous work: the copy itself is made off the main thread (Tensor.toAsync). */
  private async withInputOnDeviceAsync<T>(x: Tensor, fn: (x: Tensor) => Promise<T>): Promise<T> {
    if (x.device === this.device) return fn(x);
    const moved = await x.toAsync(this.device);
    try {
      return await fn(moved);
    } finally {
      moved.dispose();
    }
  }

  /**
   * Pooled features [B, C] and, with { stages: true }, the four stage maps [B, H/4, W/4, C0],
   * [B, H/8, W/8, C1], [B, H/16, W/16, C2], [B, H/32, W/32, C3] (channels-last), off the main thread.
   */
  async features(x: Tensor, opts: { stages?: boolean } = {}): Promise<FeatureOutput> {
    this.checkInput(x, 'features');
    const [features, ...stages] = await this.withInputOnDeviceAsync(x, (t) => this.plan(t.shape, 'features').run(t));
    if (opts.stages) return { features: features!, stages };
    for (const s of stages) s.dispose();
    return { features: features! };
  }

  /** Drops the compiled plans and the copies of the weights that plans keep (bf16 copies, packed GEMM panels). */
  clearPlans(): void {
    for (const p of this.plans.values()) p.dispose();
    this.plans.clear();
    for (const p of this.parameters()) if (!p.disposed) p._h.dropDerived();
  }

  override dispose(): void {
    this.clearPlans();
    super.dispose();
  }
}

