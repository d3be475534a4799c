/**
 * Precompiled inference: traces a forward function once per input shape (lib/trace.ts), turns the op
 * sequence into a native Plan (slots laid out in one arena by liveness, weights referenced in place),
 * and runs it natively: `run()` on a worker thread (a Promise; the event loop stays free), `runSync()`
 * inline. No JS runs per layer.
 */
import { DTYPE_CODE } from './dtype.js';
import { addon, BACKEND_ID, type BackendName, type NativePlan, OP, type OpName, type PlanSpec } from './native.js';
import { noGrad } from './autograd/node.js';
import { type Device, expectation, expectationText, Tensor } from './tensor.js';
import { type Trace, traced, type TracedStep } from './trace.js';

/** Outputs an op may leave absent (statistics that only backward needs). */
const OPTIONAL_OUTPUTS: Partial<Record<OpName, number[]>> = { layernorm: [1, 2], attention: [1] };

/**
 * Precision of a plan's matrix products (linear layers, convolutions, attention, random mixing):
 * 'float32', or 'bf16' (both operands rounded to bfloat16, float32 accumulation and output; every other
 * op stays float32). bf16 runs oneDNN's bf16 kernels on CPUs that have them (AVX512-BF16, AMX; see
 * bf16Native()) and is emulated elsewhere: the same rounding on the float32 kernels, slower than float32.
 */
export type Precision = 'float32' | 'bf16';

const PRECISION_CODE: Record<Precision, number> = { float32: 0, bf16: 1 };

/** Checks a precision option (throws a TypeError naming the bad value). */
export function checkPrecision(p: unknown, name = 'precision'): Precision {
  if (p === 'float32' || p === 'bf16') return p;
  throw new TypeError(expectation("'float32' or 'bf16'", name, p));
}

/** Whether this CPU runs bf16 matrix products natively (oneDNN with AVX512-BF16 or AMX). */
export function bf16Native(): boolean {
  return addon.buildInfo().bf16Native;
}

let bf16Noticed = false;

/** Prints once per process that bf16 is emulated on this CPU (a one-line notice on stderr). */
export function noticeBf16Emulation(): void {
  if (bf16Noticed || bf16Native()) return;
  bf16Noticed = true;
  process.stderr.write("metaformer: precision 'bf16' is emulated on this CPU (no AVX512-BF16/AMX): bf16 rounding, float32 speed or slower\n");
}

export interface CompiledPlan {
  readonly inputShape: readonly number[];
  readonly precision: Precision;
  readonly outputShapes: readonly (readonly number[])[];
  readonly arenaBytes: number;
  /**
   * Whether the plan runs as one recorded CUDA graph: on a GPU (unless METAFORMER_CUDA_GRAPHS=0 is set when
   * the process starts) the first run goes step by step (a warm-up), the second records the steps and later
   * runs replay them (inputs and outputs pass through fixed device buffers); false before the second
   * run, on the CPU, or when recording failed.
   */
  readonly graphed: boolean;
  readonly steps: number;
  /** Multiply-accumulates of one run (GEMMs, convolutions, attention, mixing). */
  readonly macs: number;
  run(input: Tensor): Promise<Tensor[]>;
  runSync(input: Tensor): Tensor[];
  /** Runs once, synchronously, timing every step: [{ op, shape of the first output, seconds }]. */
  profile(input: Tensor): StepTime[];
  dispose(): void;
}

export interface StepTime {
  op: OpName;
  /** shape of the step's first output */
  shape: number[];
  /** multiply-accumulates of the step (matrix products, convolutions, attention; 0 for the others) */
  macs: number;
  seconds: number;
}

/**
 * Compiles fn (a forward pass without autograd, returning one tensor or an array of tensors) for
 * inputs of `inputShape`.
 */
export function compilePlan(fn: (x: Tensor) => Tensor | Tensor[], inputShape: readonly number[],
  backend: BackendName = 'cpu', opts: { fuse?: boolean; precision?: Precision } = {}): CompiledPlan {
  const precision = checkPrecision(opts.precision ?? 'float32', 'compilePlan precision');
  if (precision === 'bf16' && backend === 'ref') {
    throw new TypeError(expectation("the 'cpu' or 'cuda' backend for precision 'bf16'", 'compilePlan backend', backend));
  }
  const device: Device = backend === 'cuda' ? 'cuda' : 'cpu';  // where the plan's arena, input and outputs live
  const { trace, result, input } = noGrad(() => {
    let inp: Tensor | null = null;
    const r = traced(() => {
      inp = Tensor.empty(inputShape, 'float32', device);
      return fn(inp);
    });
    return { ...r, input: inp! };
  });
  const outputs = Array.isArray(result) ? result : [result];
  try {
    if (opts.fuse ?? true) fuse(trace, outputs, input);
    return build(trace, input, outputs, backend, precision, device);
  } finally {
    for (const t of trace.created) t.dispose();
  }
}

const numel = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

function rootIn(trace: Trace, t: Tensor): Tensor {
  let r = t;
  while (trace.aliases.has(r)) r = trace.aliases.get(r)!;
  return r;
}

/** A traced tensor that shares `base`'s memory with another shape (a reshape made after tracing). */
function aliasIn(trace: Trace, base: Tensor, shape: readonly number[]): Tensor {
  const { trace: tmp, result } = traced(() => Tensor.empty(shape, base.dtype));
  for (const t of tmp.created) trace.created.add(t);
  trace.aliases.set(result, base);
  return result;
}

/**
 * Rewrites a trace for inference, keeping its results bit-for-bit the same up to rounding order:
 *  1. linear -> StarReLU / SquaredReLU becomes one fused_linear with the activation in the GEMM
 *     epilogue (the pre-activation tensor is never written);
 *  2. a residual step `x * s + branch` whose branch is a linear output read nowhere else becomes
 *     `y = x * s` followed by the linear accumulating into y (the branch is never written); without
 *     a scale, when nothing reads x afterwards (and x is not the plan's input or an output), the linear
 *     accumulates into x itself and y becomes x's memory (no copy).
 */
export function fuse(trace: Trace, outputs: readonly Tensor[], input: Tensor): void {
  const steps = trace.steps;
  const reads = new Map<Tensor, number>();
  const note = (t: Tensor | null) => {
    if (t) reads.set(rootIn(trace, t), (reads.get(rootIn(trace, t)) ?? 0) + 1);
  };
  for (const s of steps) s.ins.forEach(note);
  for (const o of outputs) note(o);
  const producer = new Map<Tensor, number>();
  steps.forEach((s, i) => s.outs.forEach((t) => t && producer.set(t, i)));
  const dead = new Set<number>();

  // 1. activation epilogues
  steps.forEach((s, j) => {
    if (s.op !== 'starrelu' || s.dir !== 0) return;
    const t = s.ins[0]!;
    const i = producer.get(t);
    if (i === undefined || dead.has(i) || steps[i]!.op !== 'linear' || steps[i]!.dir !== 0 || reads.get(t) !== 1) return;
    const lin = steps[i]!;
    const star = s.ins[1] !== null;
    steps[i] = { op: 'fused_linear', dir: 0, ins: [lin.ins[0]!, lin.ins[1]!, lin.ins[2] ?? null, s.ins[1] ?? null, s.ins[2] ?? null],
      outs: [s.outs[0]!], attrs: [star ? 1 : 2, 0] };
    producer.set(s.outs[0]!, i);
    dead.add(j);
  });

  // 2. residual accumulation into the GEMM: the linear step moves to the residual step's place,
  //    right after `y = x * s`, and accumulates into y (or, unscaled and x dead after, into x).
  const after = new Map<number, TracedStep>();
  // x may be overwritten in place only if the plan does not bind it (input, outputs) and no later
  // step reads its memory (roots taken as they are now: earlier rewrites alias outputs to inputs).
  const boundRoots = (): Set<Tensor> => new Set([...outputs, input].map((t) => rootIn(trace, t)));
  const readsRoot = (s: TracedStep, root: Tensor): boolean => s.ins.some((t) => t !== null && rootIn(trace, t) === root);
  const readAfter = (root: Tensor, k: number): boolean => steps.some((s, j) => j > k && !dead.has(j) && readsRoot(s, root));
  // Roots a residual was accumulated into in place: more than one step writes them now, so they are
  // no longer a linear's output to fold (their producer and read counts above predate the aliasing).
  const accumulated = new Set<Tensor>();
  steps.forEach((s, k) => {
    if (s.op !== 'scale_add' || s.dir !== 0 || dead.has(k)) return;
    const [x, scale, r] = s.ins;
    if (!x || !r) return;
    const root = rootIn(trace, r);
    if (accumulated.has(root)) return;
    const i = producer.get(root);
    if (i === undefined || i >= k || dead.has(i) || reads.get(root) !== 1) return;
    const lin = steps[i]!;
    const isLinear = (lin.op === 'linear' || (lin.op === 'fused_linear' && lin.attrs[1] === 0)) && lin.dir === 0;
    if (!isLinear || lin.outs[0] !== root) return;
    const y = s.outs[0]!;
    const ins = lin.op === 'linear' ? [...lin.ins, null, null] : [...lin.ins];
    const attrs = lin.op === 'linear' ? [0, 1] : [lin.attrs[0]!, 1];
    dead.add(i);
    const xRoot = rootIn(trace, x);
    const fusedStep: TracedStep = { op: 'fused_linear', dir: 0, ins, outs: [], attrs };
    if (!scale && trace.created.has(xRoot) && !boundRoots().has(xRoot) && !readAfter(xRoot, k) &&
        !readsRoot(fusedStep, xRoot) && !trace.aliases.has(y)) {
      dead.add(k);  // no copy: y is x's memory from here on
      trace.aliases.set(y, xRoot);
      accumulated.add(xRoot);
    } else {
      steps[k] = { op: 'scale_add', dir: 0, ins: [x, scale ?? null, null], outs: [y], attrs: [] };
    }
    after.set(k, { ...fusedStep, outs: [aliasIn(trace, y, root.shape)] });
  });

  const rewritten: TracedStep[] = [];
  steps.forEach((s, i) => {
    if (!dead.has(i)) rewritten.push(s);
    const next = after.get(i);
    if (next) rewritten.push(next);
  });
  steps.length = 0;
  steps.push(...rewritten);
}

/** Multiply-accumulates of one forward step (0 for memory-bound ops). */
export function stepMacs(s: TracedStep): number {
  const x = s.ins[0], w = s.ins[1], y = s.outs[0];
  if (s.dir !== 0 || !x || !y) return 0;
  switch (s.op) {
    case 'linear':
    case 'fused_linear': return numel(y.shape) * w!.shape[1]!;
    case 'conv2d': return numel(y.shape) * w!.shape[1]! * w!.shape[2]! * w!.shape[3]!;
    case 'dwconv2d': return numel(y.shape) * w!.shape[2]! * w!.shape[3]!;
    case 'attention': return 2 * numel(y.shape) * x.shape[1]!;
    case 'random_mixing': return numel(y.shape) * x.shape[1]!;
    default: return 0;
  }
}

function build(trace: Trace, input: Tensor, outputs: Tensor[], backend: BackendName, precision: Precision, device: Device): CompiledPlan {
  const slotOf = new Map<Tensor, number>();
  const slots: PlanSpec['slots'] = [];
  const consts: Tensor[] = [];
  const constOf = new Map<Tensor, number>();
  const produced = new Set<Tensor>([input]);
  for (const s of trace.steps) for (const t of s.outs) if (t) produced.add(t);

  const rootOf = (t: Tensor): Tensor => {
    let r = t;
    while (trace.aliases.has(r)) r = trace.aliases.get(r)!;
    return r;
  };
  const slot = (t: Tensor): number => {
    let id = slotOf.get(t);
    if (id !== undefined) return id;
    const base = trace.aliases.get(t);
    const alias = base ? slot(base) : undefined;
    id = slots.length;
    slots.push({ dtype: DTYPE_CODE[t.dtype], shape: [...t.shape], ...(alias !== undefined ? { alias } : {}) } as PlanSpec['slots'][number]);
    slotOf.set(t, id);
    return id;
  };
  const ref = (t: Tensor | null): number => {
    if (t === null) return -1;
    if (trace.created.has(t)) {
      if (!produced.has(rootOf(t))) throw new Error('compilePlan: a tensor is read before any op writes it');
      return slot(t);
    }
    let c = constOf.get(t);
    if (c === undefined) {
      if (t.disposed) throw new TypeError(`compilePlan: ${expectationText('live weights', 'the model', 'a disposed tensor')}`);
      c = consts.length;
      consts.push(t);
      constOf.set(t, c);
    }
    return -2 - c;
  };

  // Outputs leave through their root slot; the JS side restores the final shape.
  const outRoots = outputs.map((o) => {
    if (!trace.created.has(o)) throw new Error('compilePlan: an output must be computed by the traced function');
    return rootOf(o);
  });
  const readLater = new Set<Tensor>(outRoots);
  const steps: PlanSpec['steps'] = [];
  for (let i = trace.steps.length - 1; i >= 0; --i) {  // backwards, to drop outputs nobody reads
    const s = trace.steps[i]!;
    const optional = OPTIONAL_OUTPUTS[s.op] ?? [];
    const outs = s.outs.map((t, k) => (t && optional.includes(k) && !readLater.has(rootOf(t)) ? null : t));
    for (const t of s.ins) if (t) readLater.add(rootOf(t));
    steps.push({ op: OP[s.op], dir: s.dir, ins: s.ins.map(ref), outs: outs.map(ref), attrs: s.attrs });
  }
  steps.reverse();
  // The refs above were numbered in reverse order; that only changes slot numbering, not meaning.
  const inputSlot = slot(input);
  const outputSlots = outRoots.map(slot);
  const spec: PlanSpec = {
    backend: BACKEND_ID[backend],
    precision: PRECISION_CODE[precision],
    slots,
    consts: consts.map((t) => t._h),
    inputs: [inputSlot],
    outputs: outputSlots,
    steps,
  };
  const plan: NativePlan = new addon.Plan(spec);
  const macs = trace.steps.reduce((sum, s) => sum + stepMacs(s), 0);
  const stepInfo = trace.steps.map((s) => ({ op: s.op, shape: [...(s.outs.find((o) => o)?.shape ?? [])], macs: stepMacs(s) }));
  const inputShape = [...input.shape];
  const rootShapes = outRoots.map((r) => [...r.shape]);
  const finalShapes = outputs.map((o) => [...o.shape]);

  const checkInput = (x: Tensor): void => {
    if (!(x instanceof Tensor)) throw new TypeError(expectation('a Tensor', 'input', x));
    if (x.dtype !== 'float32' || x.shape.length !== inputShape.length || x.shape.some((d, i) => d !== inputShape[i])) {
      throw new RangeError(expectation(`a float32 tensor of shape [${inputShape.join(', ')}]`, 'input', x));
    }
    if (x.device !== device) throw new TypeError(expectation(`a ${device} tensor (the plan runs there; move it with .to('${device}'))`, 'input', x));
    x._live('predict', 'input');
  };
  const allocOutputs = (): Tensor[] => rootShapes.map((s) => Tensor.empty(s, 'float32', device));
  const finish = (outs: Tensor[]): Tensor[] =>
    outs.map((o, i) => {
      const shape = finalShapes[i]!;
      if (shape.join(',') === o.shape.join(',')) return o;
      const r = o._share(shape);
      o.dispose();
      return r;
    });

  return {
    inputShape,
    precision,
    outputShapes: finalShapes,
    arenaBytes: plan.arenaBytes,
    get graphed() {
      return plan.graphed;
    },
    steps: steps.length,
    macs,
    async run(x: Tensor): Promise<Tensor[]> {
      checkInput(x);
      const outs = allocOutputs();
      try {
        await plan.run([x._h], outs.map((o) => o._h));
      } catch (e) {
        for (const o of outs) o.dispose();
        throw e;
      }
      return finish(outs);
    },
    runSync(x: Tensor): Tensor[] {
      checkInput(x);
      const outs = allocOutputs();
      try {
        plan.runSync([x._h], outs.map((o) => o._h));
      } catch (e) {
        for (const o of outs) o.dispose();
        throw e;
      }
      return finish(outs);
    },
    profile(x: Tensor): StepTime[] {
      checkInput(x);
      const outs = allocOutputs();
      try {
        const times = plan.profile([x._h], outs.map((o) => o._h));
        return stepInfo.map((s, i) => ({ ...s, seconds: times[i]! }));
      } finally {
        for (const o of outs) o.dispose();
      }
    },
    dispose(): void {
      plan.dispose();
    },
  };
}
