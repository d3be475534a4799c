/**
 * Optimizers over parameter groups: AdamW (torch.optim.AdamW), LAMB (timm.optim.Lamb) and SGD with momentum /
 * Nesterov (torch.optim.SGD). Every step runs the native fused update op once per parameter (ops.def: adamw,
 * lamb, sgd), so the update itself never runs in JS.
 *
 * Parameter groups follow timm's `param_groups_weight_decay`: parameters with `ndim <= 1` or a name ending in
 * `.bias` (norm weights, biases, res/layer scales, StarReLU scale and bias) get no weight decay; frozen
 * parameters (requiresGrad false, e.g. RandomMixing matrices) are left out, and a parameter whose
 * requiresGrad is switched off later, or that has no gradient, is skipped at step time.
 *
 * Gradient accumulation and global-norm clipping fold into the native ops' `grad_scale` attribute: the update
 * sees g = grad * gradScale, so accumulated gradients need no extra pass. The state (moments, momentum
 * buffers, per-parameter step counts) is serialisable with stateDict() / loadStateDict().
 */
import { assignInto, runOp } from '../backend.js';
import { Module, type Parameter } from '../nn/module.js';
import { expectation, keep, Tensor } from '../tensor.js';

/** One group as given by the caller: [name, parameter] pairs (or bare parameters) and its own hyper-parameters. */
export interface ParamGroupSpec {
  params: readonly (readonly [string, Parameter])[] | readonly Parameter[];
  weightDecay?: number;
  /** Multiplies the scheduled learning rate for this group (layer-wise decay, a slower backbone). */
  lrScale?: number;
}

/** A resolved group. `lr` is the learning rate of the next step (scheduled lr times lrScale). */
export interface ParamGroup {
  names: string[];
  params: Parameter[];
  weightDecay: number;
  lrScale: number;
  lr: number;
}

/** The serialisable optimizer state: plain JSON plus tensors named `<slot>.<parameter name>`. */
export interface OptimizerState {
  kind: OptimizerKind;
  options: Record<string, number | boolean | null>;
  lr: number;
  /** Updates applied per parameter (torch keeps one `step` per parameter). */
  steps: Record<string, number>;
  tensors: Map<string, Tensor>;
}

export type OptimizerKind = 'adamw' | 'lamb' | 'sgd';

/** Whether timm would exempt this parameter from weight decay: `ndim <= 1 or name.endswith('.bias')`. */
export function isNoWeightDecay(name: string, p: Tensor): boolean {
  return p.ndim <= 1 || name.endsWith('.bias');
}

/**
 * timm's `param_groups_weight_decay`: [no-decay group (weight decay 0), decay group]. Parameters that do not
 * require grad are left out; names in `noWeightDecay` are exempt too (timm's `no_weight_decay()` list).
 */
export function paramGroupsWeightDecay(model: Module, weightDecay: number, opts: { noWeightDecay?: readonly string[] } = {}): ParamGroupSpec[] {
  checkModule(model, 'model');
  checkNonNegative(weightDecay, 'weightDecay');
  const skip = new Set(opts.noWeightDecay ?? []);
  const decay: [string, Parameter][] = [];
  const noDecay: [string, Parameter][] = [];
  for (const [name, p] of model.namedParameters()) {
    if (!p.requiresGrad || p._frozen) continue;
    if (isNoWeightDecay(name, p) || skip.has(name)) noDecay.push([name, p]);
    else decay.push([name, p]);
  }
  return [{ params: noDecay, weightDecay: 0 }, { params: decay, weightDecay }];
}

function checkModule(m: unknown, name: string): asserts m is Module {
  if (!(m instanceof Module)) throw new TypeError(expectation('a Module', name, m));
}

function checkNonNegative(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new RangeError(expectation('a finite number >= 0', name, v));
  return v;
}

function checkPositive(v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new RangeError(expectation('a finite number > 0', name, v));
  return v;
}

function checkUnit(v: unknown, name: string): number {
  if (typeof v !== 'number' || !(v >= 0 && v < 1)) throw new RangeError(expectation('a number in [0, 1)', name, v));
  return v;
}

/** The global L2 norm of the gradients of `params` (times gradScale), by the native sumsq op per gradient. */
export function gradNorm(params: Iterable<Tensor>, gradScale = 1): number {
  const s = Tensor.empty([1], 'float64');
  let dev: Tensor | null = null;  // the sum's slot on the GPU, for gradients there
  try {
    const acc = s.view<'float64'>();
    let total = 0;
    for (const p of params) {
      const g = p.grad;
      if (!g || g.disposed) continue;
      if (g.device === 'cpu') {
        runOp('sumsq', 0, ['grad'], [g], [s]);
        total += acc[0]!;
      } else {
        dev ??= Tensor.empty([1], 'float64', g.device);
        runOp('sumsq', 0, ['grad'], [g], [dev]);
        total += dev.toFloat64Array()[0]!;
      }
    }
    return Math.sqrt(total) * Math.abs(gradScale);
  } finally {
    s.dispose();
    dev?.dispose();
  }
}

/**
 * torch.nn.utils.clip_grad_norm_: scales every gradient in place (native `scale`) by
 * min(1, maxNorm / (norm + 1e-6)); returns the norm before clipping.
 */
export function clipGradNorm(params: Iterable<Tensor>, maxNorm: number): number {
  checkPositive(maxNorm, 'maxNorm');
  const list = [...params];
  const norm = gradNorm(list);
  const coef = maxNorm / (norm + 1e-6);
  if (coef < 1) {
    for (const p of list) if (p.grad && !p.grad.disposed) runOp('scale', 0, [], [], [p.grad], [coef]);
  }
  return norm;
}

export interface OptimizerOptions {
  lr?: number;
  /** Weight decay of the automatic groups (a Module argument) and of groups that set none. */
  weightDecay?: number;
}

export interface StepOptions {
  /** Multiplies every gradient inside the update (1 / accumulation steps, a clipping factor). Default 1. */
  gradScale?: number;
}

/** Resolves the constructor's first argument into groups. */
function resolveGroups(source: Module | readonly ParamGroupSpec[], weightDecay: number): ParamGroup[] {
  const specs = source instanceof Module ? paramGroupsWeightDecay(source, weightDecay) : source;
  if (!Array.isArray(specs)) throw new TypeError(expectation('a Module or an array of parameter groups', 'params', source));
  const groups: ParamGroup[] = [];
  const seen = new Set<Parameter>();
  const names = new Set<string>();
  specs.forEach((spec, gi) => {
    if (spec === null || typeof spec !== 'object' || !Array.isArray(spec.params)) {
      throw new TypeError(expectation('a parameter group { params, weightDecay? }', `groups[${gi}]`, spec));
    }
    const g: ParamGroup = {
      names: [], params: [],
      weightDecay: spec.weightDecay === undefined ? weightDecay : checkNonNegative(spec.weightDecay, `groups[${gi}].weightDecay`),
      lrScale: spec.lrScale === undefined ? 1 : checkNonNegative(spec.lrScale, `groups[${gi}].lrScale`),
      lr: 0,
    };
    (spec.params as readonly (Parameter | readonly [string, Parameter])[]).forEach((entry, i) => {
      const [name, p] = Array.isArray(entry) ? entry as readonly [string, Parameter] : [`group${gi}.${i}`, entry as Parameter];
      if (!(p instanceof Tensor)) throw new TypeError(expectation('a Parameter', `groups[${gi}].params[${i}]`, p));
      if (p.dtype !== 'float32' && p.dtype !== 'float64') throw new TypeError(expectation('a float32 parameter', name, p));
      if (seen.has(p as Parameter)) throw new RangeError(expectation('each parameter in one group only', name, 'a repeated parameter'));
      if (names.has(name)) throw new RangeError(expectation('unique parameter names', 'name', name));
      seen.add(p as Parameter);
      names.add(name);
      g.names.push(name);
      g.params.push(p as Parameter);
    });
    groups.push(g);
  });
  return groups;
}

export abstract class Optimizer {
  abstract readonly kind: OptimizerKind;
  readonly groups: ParamGroup[];
  /** The learning rate set last (before each group's lrScale). */
  private baseLr: number;
  protected readonly steps = new Map<string, number>();
  protected readonly slots = new Map<string, Tensor[]>();

  protected constructor(params: Module | readonly ParamGroupSpec[], opts: OptimizerOptions) {
    const wd = checkNonNegative(opts.weightDecay ?? 0, 'weightDecay');
    this.groups = resolveGroups(params, wd);
    this.baseLr = 0;
    this.setLr(opts.lr ?? 1e-3);
  }

  get lr(): number {
    return this.baseLr;
  }

  /** Sets the learning rate of the next step (each group gets lr * its lrScale). */
  setLr(lr: number): void {
    checkNonNegative(lr, 'lr');
    this.baseLr = lr;
    for (const g of this.groups) g.lr = lr * g.lrScale;
  }

  /** The parameters, each once. */
  parameters(): Parameter[] {
    return this.groups.flatMap((g) => g.params);
  }

  /** The named parameters that would be updated now (trainable, with a gradient). */
  protected *active(): Generator<[string, Parameter, ParamGroup]> {
    for (const g of this.groups) {
      for (let i = 0; i < g.params.length; ++i) {
        const p = g.params[i]!;
        if (!p.requiresGrad || p._frozen || p.disposed || !p.grad || p.grad.disposed) continue;
        yield [g.names[i]!, p, g];
      }
    }
  }

  /** Applies one update to every trainable parameter that has a gradient. */
  step(opts: StepOptions = {}): void {
    const gs = opts.gradScale ?? 1;
    if (typeof gs !== 'number' || !Number.isFinite(gs)) throw new RangeError(expectation('a finite number', 'gradScale', gs));
    this.update(gs);
  }

  protected abstract update(gradScale: number): void;
  protected abstract slotNames(): string[];
  protected abstract options(): Record<string, number | boolean | null>;

  /** The state tensors of a parameter, created (zeros) on first use. */
  protected state(name: string, p: Parameter, count: number): { tensors: Tensor[]; step: number; fresh: boolean } {
    let t = this.slots.get(name);
    const fresh = !t;
    if (!t) {
      t = [];
      for (let i = 0; i < count; ++i) t.push(keep(Tensor.zeros(p.shape, p.dtype, p.device)));  // state outlives any tidy() around step()
      this.slots.set(name, t);
    }
    return { tensors: t, step: this.steps.get(name) ?? 0, fresh };
  }

  /** Disposes the gradients (the next backward starts from zero). */
  zeroGrad(): void {
    for (const p of this.parameters()) {
      if (p.grad) {
        p.grad.dispose();
        p.grad = null;
      }
    }
  }

  /** A snapshot: copies of the state tensors (the caller disposes them) and the step counts. */
  stateDict(): OptimizerState {
    const tensors = new Map<string, Tensor>();
    const names = this.slotNames();
    for (const [name, list] of this.slots) list.forEach((t, i) => tensors.set(`${names[i]}.${name}`, t.clone()));
    return { kind: this.kind, options: this.options(), lr: this.baseLr, steps: Object.fromEntries(this.steps), tensors };
  }

  /** Restores a snapshot taken by stateDict() of an optimizer of the same kind over the same parameter names. */
  loadStateDict(state: OptimizerState): void {
    if (state === null || typeof state !== 'object') throw new TypeError(expectation('an optimizer state', 'state', state));
    if (state.kind !== this.kind) throw new TypeError(expectation(`a '${this.kind}' optimizer state`, 'state.kind', state.kind));
    const byName = new Map<string, Parameter>();
    for (const g of this.groups) g.names.forEach((n, i) => byName.set(n, g.params[i]!));
    const names = this.slotNames();
    const fresh = new Map<string, Tensor[]>();
    try {
      for (const [key, t] of state.tensors) {
        const dot = key.indexOf('.');
        const slot = names.indexOf(key.slice(0, dot));
        const pname = key.slice(dot + 1);
        const p = byName.get(pname);
        if (dot < 0 || slot < 0) throw new RangeError(expectation(`a state tensor named <${names.join('|')}>.<parameter>`, 'state.tensors', key));
        if (!p) throw new RangeError(expectation('the name of a parameter of this optimizer', 'state.tensors', key));
        if (t.shape.join(',') !== p.shape.join(',')) {
          throw new RangeError(expectation(`shape [${p.shape.join(', ')}]`, key, t));
        }
        let list = fresh.get(pname);
        if (!list) {
          list = names.map(() => keep(Tensor.zeros(p.shape, p.dtype, p.device)));
          fresh.set(pname, list);
        }
        assignInto('loadStateDict', key, t, list[slot]!);  // a host checkpoint into GPU state too
      }
    } catch (e) {
      for (const list of fresh.values()) for (const t of list) t.dispose();
      throw e;
    }
    for (const list of this.slots.values()) for (const t of list) t.dispose();
    this.slots.clear();
    for (const [k, v] of fresh) this.slots.set(k, v);
    this.steps.clear();
    for (const [k, v] of Object.entries(state.steps ?? {})) {
      if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(expectation('a step count', `state.steps[${k}]`, v));
      if (byName.has(k)) this.steps.set(k, v);
    }
    if (typeof state.lr === 'number') this.setLr(state.lr);
  }

  /** Frees the state tensors. */
  dispose(): void {
    for (const list of this.slots.values()) for (const t of list) t.dispose();
    this.slots.clear();
  }
}

export interface AdamWOptions extends OptimizerOptions {
  beta1?: number;
  beta2?: number;
  eps?: number;
}

/** torch.optim.AdamW (decoupled weight decay, bias-corrected moments). Defaults: betas (0.9, 0.999), eps 1e-8. */
export class AdamW extends Optimizer {
  readonly kind = 'adamw' as const;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;

  constructor(params: Module | readonly ParamGroupSpec[], opts: AdamWOptions = {}) {
    super(params, opts);
    this.beta1 = checkUnit(opts.beta1 ?? 0.9, 'beta1');
    this.beta2 = checkUnit(opts.beta2 ?? 0.999, 'beta2');
    this.eps = checkPositive(opts.eps ?? 1e-8, 'eps');
  }

  protected update(gs: number): void {
    for (const [name, p, g] of this.active()) {
      const { tensors: [m, v], step } = this.state(name, p, 2);
      const t = step + 1;
      runOp('adamw', 0, ['grad'], [p.grad], [p, m!, v!], [g.lr, this.beta1, this.beta2, this.eps, g.weightDecay, t, gs]);
      this.steps.set(name, t);
    }
  }

  protected slotNames(): string[] {
    return ['exp_avg', 'exp_avg_sq'];
  }

  protected options(): Record<string, number | boolean | null> {
    return { beta1: this.beta1, beta2: this.beta2, eps: this.eps };
  }
}

export interface LambOptions extends AdamWOptions {
  /** timm's global gradient-norm clipping before the update (default 1.0; null turns it off). */
  maxGradNorm?: number | null;
  /** Clip the trust ratio at 1 (timm `trust_clip`, "LAMBC"). Default false. */
  trustClip?: boolean;
}

/**
 * timm.optim.Lamb: Adam moments with bias correction, weight decay added to the update, and the layer-wise trust
 * ratio |p| / |update| only for parameters with weight decay. Before the updates, the gradients are divided by
 * max(1, globalNorm / maxGradNorm). Defaults: betas (0.9, 0.999), eps 1e-6, maxGradNorm 1.0.
 */
export class Lamb extends Optimizer {
  readonly kind = 'lamb' as const;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly maxGradNorm: number | null;
  readonly trustClip: boolean;
  /** The global gradient norm seen by the last step (after gradScale, before clipping). */
  lastGradNorm = 0;

  constructor(params: Module | readonly ParamGroupSpec[], opts: LambOptions = {}) {
    super(params, opts);
    this.beta1 = checkUnit(opts.beta1 ?? 0.9, 'beta1');
    this.beta2 = checkUnit(opts.beta2 ?? 0.999, 'beta2');
    this.eps = checkPositive(opts.eps ?? 1e-6, 'eps');
    this.maxGradNorm = opts.maxGradNorm === undefined ? 1.0 : opts.maxGradNorm === null ? null : checkPositive(opts.maxGradNorm, 'maxGradNorm');
    this.trustClip = opts.trustClip ?? false;
    if (typeof this.trustClip !== 'boolean') throw new TypeError(expectation('a boolean', 'trustClip', opts.trustClip));
  }

  protected update(gs: number): void {
    const active = [...this.active()];
    let scale = gs;
    if (this.maxGradNorm !== null) {
      this.lastGradNorm = gradNorm(active.map(([, p]) => p), gs);
      if (this.lastGradNorm > this.maxGradNorm) scale = gs / (this.lastGradNorm / this.maxGradNorm);
    }
    for (const [name, p, g] of active) {
      const { tensors: [m, v], step } = this.state(name, p, 2);
      const t = step + 1;
      runOp('lamb', 0, ['grad'], [p.grad], [p, m!, v!],
        [g.lr, this.beta1, this.beta2, this.eps, g.weightDecay, t, scale, this.trustClip ? 1 : 0]);
      this.steps.set(name, t);
    }
  }

  protected slotNames(): string[] {
    return ['exp_avg', 'exp_avg_sq'];
  }

  protected options(): Record<string, number | boolean | null> {
    return { beta1: this.beta1, beta2: this.beta2, eps: this.eps, maxGradNorm: this.maxGradNorm, trustClip: this.trustClip };
  }
}

export interface SGDOptions extends OptimizerOptions {
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
}

/** torch.optim.SGD: weight decay added to the gradient, momentum buffer (first step: the gradient), Nesterov. */
export class SGD extends Optimizer {
  readonly kind = 'sgd' as const;
  readonly momentum: number;
  readonly dampening: number;
  readonly nesterov: boolean;

  constructor(params: Module | readonly ParamGroupSpec[], opts: SGDOptions = {}) {
    super(params, opts);
    this.momentum = checkUnit(opts.momentum ?? 0.9, 'momentum');
    this.dampening = checkUnit(opts.dampening ?? 0, 'dampening');
    this.nesterov = opts.nesterov ?? false;
    if (typeof this.nesterov !== 'boolean') throw new TypeError(expectation('a boolean', 'nesterov', opts.nesterov));
    if (this.nesterov && (this.momentum <= 0 || this.dampening !== 0)) {
      throw new RangeError(expectation('momentum > 0 and dampening 0 with nesterov', 'momentum', this.momentum));
    }
  }

  protected update(gs: number): void {
    for (const [name, p, g] of this.active()) {
      const step = this.steps.get(name) ?? 0;
      let buf: Tensor | null = null;
      let first = false;
      if (this.momentum !== 0) {
        const s = this.state(name, p, 1);
        buf = s.tensors[0]!;
        first = s.fresh;  // torch: the first buffer is the gradient itself
      }
      runOp('sgd', 0, ['grad'], [p.grad], [p, buf],
        [g.lr, this.momentum, this.dampening, g.weightDecay, this.nesterov ? 1 : 0, gs, first ? 1 : 0]);
      this.steps.set(name, step + 1);
    }
  }

  protected slotNames(): string[] {
    return ['momentum_buffer'];
  }

  protected options(): Record<string, number | boolean | null> {
    return { momentum: this.momentum, dampening: this.dampening, nesterov: this.nesterov };
  }
}

export interface CreateOptimizerOptions extends AdamWOptions, LambOptions, SGDOptions {
  /** Exempt 1-D parameters and biases from weight decay (timm's filter_bias_and_bn; default true). */
  filterBiasAndNorm?: boolean;
}

/** timm's create_optimizer_v2 in short: 'adamw' | 'lamb' | 'sgd' over the model's weight-decay groups. */
export function createOptimizer(kind: OptimizerKind, model: Module, opts: CreateOptimizerOptions = {}): Optimizer {
  checkModule(model, 'model');
  const wd = checkNonNegative(opts.weightDecay ?? 0.05, 'weightDecay');
  const groups = opts.filterBiasAndNorm === false
    ? [{ params: [...model.namedParameters()].filter(([, p]) => p.requiresGrad && !p._frozen), weightDecay: wd }]
    : paramGroupsWeightDecay(model, wd);
  switch (kind) {
    case 'adamw': return new AdamW(groups, { ...opts, weightDecay: wd });
    case 'lamb': return new Lamb(groups, { ...opts, weightDecay: wd });
    case 'sgd': return new SGD(groups, { ...opts, weightDecay: wd });
    default: throw new TypeError(expectation("'adamw', 'lamb' or 'sgd'", 'optimizer', kind));
  }
}
