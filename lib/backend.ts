/**
 * Which backend runs the ops: 'cpu' (fast kernels, the default) or 'ref' (plain reference kernels,
 * which also compute in float64). Tests switch with withBackend(); float64 tensors always use 'ref'.
 * Ops on CUDA tensors always run on the 'cuda' backend, whatever is set here; one op never mixes
 * devices.
 */
import type { DType } from './dtype.js';
import { addon, BACKEND_ID, type BackendName, type GemmPolicy, OP, type OpName, type WeightLayout } from './native.js';
import { expectation, type Tensor } from './tensor.js';
import { activeTrace } from './trace.js';

let current: BackendName = 'cpu';

export function getBackend(): BackendName {
  return current;
}

export function setBackend(name: BackendName): void {
  if (!(name in BACKEND_ID)) throw new TypeError(expectation("'cpu', 'ref' or 'cuda'", 'backend', name));
  current = name;
}

export function withBackend<T>(name: BackendName, fn: () => T): T {
  const prev = current;
  setBackend(name);
  try {
    return fn();
  } finally {
    current = prev;
  }
}

/** Sets the size of the one native thread pool (OpenMP; shared with oneDNN). 0 = all cores. */
export function setNumThreads(n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(expectation('a non-negative integer', 'threads', n));
  addon.setNumThreads(n);
}

export function getNumThreads(): number {
  return addon.getNumThreads();
}

export type { GemmPolicy, WeightLayout };
const GEMM_POLICIES: readonly GemmPolicy[] = ['auto', 'own', 'onednn'];

/**
 * Chooses the float32 matrix-multiply kernel of the cpu backend, process-wide: 'auto' (the default:
 * the backend's own GEMM for the products where it measured faster, on CPUs without AVX-512, else
 * oneDNN), 'own' (the own GEMM for every product it can compute) or 'onednn'. Results agree to
 * float32 rounding; meant for benchmarking the kernels against each other. Where the own GEMM runs a
 * compiled plan, the plan's weights are kept packed for it (about the weights' size in extra memory,
 * freed by `model.clearPlans()`); 'onednn' runs plans without those copies (more slowly on CPUs
 * without AVX-512), unless oneDNN keeps its own layout of them (setOnednnWeightLayout). Returns the
 * previous policy.
 */
export function setGemmPolicy(policy: GemmPolicy): GemmPolicy {
  if (!GEMM_POLICIES.includes(policy)) throw new TypeError(expectation("'auto', 'own' or 'onednn'", 'GEMM policy', policy));
  return addon.setGemmPolicy(policy);
}

const WEIGHT_LAYOUTS: readonly WeightLayout[] = ['auto', 'blocked', 'plain'];

/**
 * How oneDNN reads the float32 weights of compiled plans (`predict()`, `features()`), process-wide:
 * 'auto' (the default: 'blocked' on CPUs with AVX-512, where oneDNN runs every float32 product, else
 * 'plain'), 'blocked' (each weight reordered once, per version, into the layout the product's kernel
 * prefers and kept with the weight: 1.1-1.2x faster at batch 1 on an AVX-512 Xeon, at the cost of a
 * second copy of the GEMM weights, freed by `model.clearPlans()`) or 'plain' (read as stored, repacked
 * by oneDNN in every call; no extra memory). Results agree to float32 rounding. Returns the previous
 * setting.
 */
export function setOnednnWeightLayout(layout: WeightLayout): WeightLayout {
  if (!WEIGHT_LAYOUTS.includes(layout)) throw new TypeError(expectation("'auto', 'blocked' or 'plain'", 'weight layout', layout));
  return addon.setOnednnWeightLayout(layout);
}

function backendId(dtypes: DType[], cuda: boolean): number {
  if (cuda) return BACKEND_ID.cuda;
  if (dtypes.includes('float64')) return BACKEND_ID.ref;
  return current === 'cuda' ? BACKEND_ID.cpu : BACKEND_ID[current];
}

/**
 * Runs one native op on the current backend. Every tensor must be live; the error names the op and
 * the argument.
 */
export function runOp(
  op: OpName,
  dir: 0 | 1,
  names: readonly string[],
  ins: readonly (Tensor | null)[],
  outs: readonly (Tensor | null)[],
  attrs: readonly number[] = [],
): void {
  const trace = activeTrace();
  if (trace) {
    trace.steps.push({ op, dir, ins: [...ins], outs: [...outs], attrs: [...attrs] });
    return;
  }
  const dtypes: DType[] = [];
  let onCuda = 0;
  let onCpu = 0;
  const inH = ins.map((t, i) => {
    if (t === null) return null;
    dtypes.push(t.dtype);
    if (t.device === 'cuda') onCuda += 1;
    else onCpu += 1;
    return t._live(op, names[i] ?? `input ${i}`);
  });
  const outH = outs.map((t, i) => {
    if (t === null) return null;
    dtypes.push(t.dtype);
    if (t.device === 'cuda') onCuda += 1;
    else onCpu += 1;
    return t._live(op, `output ${i}`);
  });
  if (onCuda > 0 && onCpu > 0) {
    throw new TypeError(`${op}: Expected tensors on one device for its arguments but received ${onCpu} cpu and ` +
      `${onCuda} cuda tensors; move them with .to('cuda') or .to('cpu')`);
  }
  const backend = refOps.has(op) ? BACKEND_ID.ref : backendId(dtypes, onCuda > 0);
  const t0 = opProfile ? performance.now() : 0;
  addon.run(OP[op], dir, backend, inH, outH, attrs as number[]);
  if (opProfile) {
    const shapes = opProfileShapes ? ' ' + ins.map((t) => (t ? `[${t.shape.join(',')}]` : '-')).join(' ') : '';
    const key = `${op}${dir ? ' bwd' : ''}${shapes}`;
    const e = opProfile.get(key) ?? { calls: 0, ms: 0 };
    e.calls += 1;
    e.ms += performance.now() - t0;
    opProfile.set(key, e);
  }
}

/**
 * Writes src into dst (same shape; dtype converted), across devices too: a cast where both live, else
 * the conversion where src lives and a copy. `where` and `name` name the caller and the tensor in errors.
 */
export function assignInto(where: string, name: string, src: Tensor, dst: Tensor): void {
  if (src.device === dst.device) {
    runOp('cast', 0, [name], [src], [dst]);
    return;
  }
  const c = src.dtype === dst.dtype ? src : src.to(dst.dtype);
  try {
    c._live(where, name).copyTo(dst._live(where, name));
  } finally {
    if (c !== src) c.dispose();
  }
}

/** Ops forced onto the reference backend (METAFORMER_REF_OPS=linear,conv2d): a debugging aid. */
const refOps = new Set((process.env.METAFORMER_REF_OPS ?? '').split(',').filter((s) => s.length > 0));

let opProfile: Map<string, { calls: number; ms: number }> | null = null;
let opProfileShapes = false;

/**
 * Op-level profiling of eager (autograd) execution: while on, every native call is timed per op and
 * direction. Returns the table collected since the last call, and switches profiling on or off.
 */
export function profileOps(on: boolean, opts: { shapes?: boolean } = {}): Map<string, { calls: number; ms: number }> {
  const prev = opProfile ?? new Map<string, { calls: number; ms: number }>();
  opProfile = on ? new Map() : null;
  opProfileShapes = opts.shapes ?? false;
  return prev;
}
