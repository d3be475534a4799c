/**
 * ONNX export of MetaFormer models (standard operators only, default opset 17).
 *
 * The op sequence comes from the same dry-run trace that precompiled inference uses (lib/trace.ts,
 * lib/plan.ts): `model.forward` runs once in eval mode without autograd on a shape-only input, and each
 * recorded native op is translated into ONNX nodes with the same semantics (native/core/ops.def).
 * Tensors the trace did not create are weights; they become initializers under their official
 * state_dict names (linear weights stored transposed, [in, out], where they feed a MatMul).
 *
 * Layout: activations stay channels-last [B, H, W, C] as in the native code; convolutions and the
 * pooling mixer run in NCHW between Transpose nodes, and a Transpose that undoes the previous one is
 * dropped as the graph is built. The model's input `input` is NCHW float32 [B, 3, H, W] and its output
 * `logits` is float32 [B, numClasses]; with dtype 'float16' the weights and the compute are float16
 * between two Cast nodes.
 *
 * LayerNormalization always gets an explicit bias input (zeros when the layer has none): onnxruntime
 * 1.30 crashes creating an optimized session for the opset-17 op without one (onnxruntime#18967).
 */
import type { FileHandle } from 'node:fs/promises';
import { endianness } from 'node:os';
import { noGrad } from '../autograd/node.js';
import { numelOf } from '../dtype.js';
import { MetaFormer } from '../models/metaformer.js';
import { expectation, Tensor } from '../tensor.js';
import { type Trace, type TracedStep, traced } from '../trace.js';
import { writeFileAtomic } from './atomic.js';
import { f32ToF16 } from './halfs.js';
import { ProtoWriter } from './protobuf.js';

export interface OnnxExportOptions {
  /** The batch size fixed in the graph, or 'dynamic' for a symbolic batch dimension `batch`. Default 1. */
  batch?: number | 'dynamic';
  /** [H, W] of the input image; default the model's configured input size. */
  inputSize?: [number, number];
  /** The ONNX opset of the default domain, 17 to 21. Default 17. */
  opset?: number;
  /** The precision of the weights and the compute; the input and output stay float32. Default 'float32'. */
  dtype?: 'float32' | 'float16';
}

/** The ops a forward trace may contain that the exporter translates. */
export const ONNX_EXPORTABLE_OPS: readonly string[] = [
  'linear', 'conv2d', 'dwconv2d', 'layernorm', 'starrelu', 'attention', 'random_mixing', 'pool', 'scale_add',
  'mean_hw', 'permute',
];

const MIN_OPSET = 17;
const MAX_OPSET = 21;
/** The largest message protobuf implementations parse (2 GiB - 1). */
const MAX_MODEL_BYTES = 2 ** 31 - 1;

// onnx.proto TensorProto.DataType
const ONNX_FLOAT = 1;
const ONNX_INT64 = 7;
const ONNX_FLOAT16 = 10;

// onnx.proto AttributeProto.AttributeType
const ATTR_FLOAT = 1;
const ATTR_INT = 2;
const ATTR_TENSOR = 4;
const ATTR_INTS = 7;

interface Initializer {
  name: string;
  dims: number[];
  dataType: number;
  raw: Uint8Array;
}

type Attr =
  | { kind: 'int'; value: number }
  | { kind: 'ints'; value: number[] }
  | { kind: 'float'; value: number }
  | { kind: 'tensor'; value: Initializer };

interface OnnxNode {
  opType: string;
  name: string;
  inputs: string[];
  outputs: string[];
  attrs: [string, Attr][];
}

interface ResolvedOptions {
  batch: number | 'dynamic';
  traceBatch: number;
  inputSize: [number, number];
  opset: number;
  dtype: 'float32' | 'float16';
}

const int = (value: number): Attr => ({ kind: 'int', value });
const ints = (value: number[]): Attr => ({ kind: 'ints', value });
const float = (value: number): Attr => ({ kind: 'float', value });

function bytesOf(a: Float32Array | Uint16Array | BigInt64Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** The ONNX graph under construction: nodes, initializers, unique names and the Transpose peephole. */
class GraphBuilder {
  readonly nodes: OnnxNode[] = [];
  readonly initializers = new Map<string, Initializer>();
  private readonly used = new Set<string>();
  private readonly producer = new Map<string, OnnxNode>();
  private readonly constants = new Map<string, string>();
  private readonly transposes = new Map<string, string>();
  readonly floatType: number;

  constructor(readonly opts: ResolvedOptions) {
    this.floatType = opts.dtype === 'float16' ? ONNX_FLOAT16 : ONNX_FLOAT;
  }

  unique(base: string): string {
    let name = base, k = 1;
    while (this.used.has(name)) name = `${base}_${k++}`;
    this.used.add(name);
    return name;
  }

  reserve(name: string): void {
    this.used.add(name);
  }

  /** Appends a node; returns its output names (`hint/OpType`, made unique). */
  node(opType: string, inputs: string[], hint: string, attrs: [string, Attr][] = [], outputs = 1): string[] {
    const base = this.unique(`${hint}/${opType}`);
    const outs = Array.from({ length: outputs }, (_, i) => (i === 0 ? base : this.unique(`${base}:${i}`)));
    while (inputs.length > 0 && inputs[inputs.length - 1] === '') inputs.pop();
    const n: OnnxNode = { opType, name: base, inputs, outputs: outs, attrs };
    this.nodes.push(n);
    for (const o of outs) this.producer.set(o, n);
    return outs;
  }

  one(opType: string, inputs: string[], hint: string, attrs: [string, Attr][] = []): string {
    return this.node(opType, inputs, hint, attrs)[0]!;
  }

  /** A float initializer in the compute precision. */
  floatInit(name: string, dims: number[], values: Float32Array): string {
    const raw = this.floatType === ONNX_FLOAT16 ? bytesOf(f32ToF16(values)) : bytesOf(values);
    this.initializers.set(name, { name, dims, dataType: this.floatType, raw });
    return name;
  }

  /** A shared float constant (cached by value and shape). */
  floatConst(values: number[], dims: number[]): string {
    const key = `f:${dims.join('x')}:${values.join(',')}`;
    let name = this.constants.get(key);
    if (!name) {
      name = this.unique(values.length === 1 ? `const.${dims.length ? 'vec' : 'scalar'}.${values[0]}` : 'const.float');
      this.floatInit(name, dims, Float32Array.from(values));
      this.constants.set(key, name);
    }
    return name;
  }

  /** A shared int64 constant (shapes, axes, split sizes). */
  int64Const(values: number[], dims = [values.length]): string {
    const key = `i:${dims.join('x')}:${values.join(',')}`;
    let name = this.constants.get(key);
    if (!name) {
      name = this.unique(`const.int64.${values.join('_')}`);
      const data = BigInt64Array.from(values.map((v) => BigInt(v)));
      this.initializers.set(name, { name, dims, dataType: ONNX_INT64, raw: bytesOf(data) });
      this.constants.set(key, name);
    }
    return name;
  }

  /** A Reshape target; the batch dimension (dims[0]) becomes -1 when the batch is dynamic. */
  shapeConst(dims: readonly number[], what: string): string {
    const d = [...dims];
    if (this.opts.batch === 'dynamic') {
      if (d[0] !== this.opts.traceBatch) {
        throw new Error(`exportOnnx: cannot express the reshape of ${what} to [${dims.join(', ')}] with a dynamic batch (its first dimension is not the batch)`);
      }
      d[0] = -1;
    }
    return this.int64Const(d);
  }

  /** A tensor of `shape` filled with `value`, computed by ConstantOfShape (keeps the file small). */
  filled(value: number, shape: number[]): string {
    const key = `fill:${value}:${shape.join('x')}`;
    let name = this.constants.get(key);
    if (!name) {
      const v = this.floatType === ONNX_FLOAT16 ? bytesOf(f32ToF16(Float32Array.of(value))) : bytesOf(Float32Array.of(value));
      const tensor: Initializer = { name: 'value', dims: [1], dataType: this.floatType, raw: v };
      name = this.one('ConstantOfShape', [this.int64Const(shape)], `const.${value === 0 ? 'zeros' : value === 1 ? 'ones' : 'fill'}.${shape.join('x')}`,
        [['value', { kind: 'tensor', value: tensor }]]);
      this.constants.set(key, name);
    }
    return name;
  }

  /** Transpose with a peephole: undoing the previous Transpose returns its input; repeats are shared. */
  transpose(x: string, perm: number[], hint: string): string {
    const prev = this.producer.get(x);
    if (prev && prev.opType === 'Transpose') {
      const p0 = (prev.attrs.find(([k]) => k === 'perm')![1] as { value: number[] }).value;
      if (p0.length === perm.length && perm.every((p, i) => p0[p] === i)) return prev.inputs[0]!;
    }
    const key = `${x}|${perm.join(',')}`;
    let y = this.transposes.get(key);
    if (!y) {
      y = this.one('Transpose', [x], hint, [['perm', ints(perm)]]);
      this.transposes.set(key, y);
    }
    return y;
  }

  /** Renames a value everywhere (the graph output gets its public name). */
  rename(from: string, to: string): void {
    for (const n of this.nodes) {
      n.inputs = n.inputs.map((v) => (v === from ? to : v));
      n.outputs = n.outputs.map((v) => (v === from ? to : v));
    }
  }

  /** Drops nodes whose outputs nothing reads and initializers no node reads. */
  prune(outputs: string[]): void {
    const live = new Set(outputs);
    const kept: OnnxNode[] = [];
    for (let i = this.nodes.length - 1; i >= 0; --i) {
      const n = this.nodes[i]!;
      if (!n.outputs.some((o) => live.has(o))) continue;
      kept.push(n);
      for (const v of n.inputs) if (v) live.add(v);
    }
    kept.reverse();
    this.nodes.length = 0;
    this.nodes.push(...kept);
    for (const name of [...this.initializers.keys()]) if (!live.has(name)) this.initializers.delete(name);
  }
}

// --- options --------------------------------------------------------------------------------------

function resolveOptions(model: MetaFormer, opts: unknown): ResolvedOptions {
  if (opts !== undefined && (opts === null || typeof opts !== 'object' || Array.isArray(opts))) {
    throw new TypeError(expectation('an options object', 'options', opts));
  }
  const o = (opts ?? {}) as OnnxExportOptions;
  const batch = o.batch ?? 1;
  if (batch !== 'dynamic' && !(typeof batch === 'number' && Number.isSafeInteger(batch) && batch >= 1)) {
    throw new TypeError(expectation("a positive integer or 'dynamic'", 'batch', batch));
  }
  const size = o.inputSize ?? model.config.inputSize;
  if (!Array.isArray(size) || size.length !== 2 || size.some((d) => !Number.isSafeInteger(d) || d < 1)) {
    throw new TypeError(expectation('[height, width] as two positive integers', 'inputSize', size));
  }
  const opset = o.opset ?? 17;
  if (!Number.isSafeInteger(opset) || opset < MIN_OPSET || opset > MAX_OPSET) {
    throw new RangeError(expectation(`an opset from ${MIN_OPSET} to ${MAX_OPSET}`, 'opset', opset));
  }
  const dtype = o.dtype ?? 'float32';
  if (dtype !== 'float32' && dtype !== 'float16') throw new TypeError(expectation("'float32' or 'float16'", 'dtype', dtype));
  return { batch, traceBatch: batch === 'dynamic' ? 2 : batch, inputSize: [size[0], size[1]], opset, dtype };
}

function checkModel(model: unknown): MetaFormer {
  if (!(model instanceof MetaFormer)) throw new TypeError(expectation('a MetaFormer model', 'model', model));
  for (const [name, p] of model.namedParameters()) {
    if (p.disposed) throw new TypeError(expectation('a model with live weights', 'model', `a disposed parameter ${name}`));
  }
  return model;
}

// --- the trace walk -------------------------------------------------------------------------------

/** The ONNX IR version a default-domain opset needs. */
function irVersionFor(opset: number): number {
  return opset <= 18 ? 8 : opset <= 20 ? 9 : 10;
}

interface Built {
  graph: GraphBuilder;
  inputDims: (number | string)[];
  outputDims: (number | string)[];
}

function buildGraph(model: MetaFormer, opts: ResolvedOptions): Built {
  const shape = [opts.traceBatch, 3, opts.inputSize[0], opts.inputSize[1]];
  const wasTraining = model.training;
  model.eval();
  let input: Tensor | null = null;
  let trace: Trace;
  let result: Tensor;
  try {
    ({ trace, result } = noGrad(() => traced(() => {
      input = Tensor.empty(shape, 'float32');
      return model.forward(input);
    })));
  } finally {
    model.train(wasTraining);
  }
  try {
    return translate(model, trace, input!, result, opts);
  } finally {
    for (const t of trace.created) t.dispose();
  }
}

function translate(model: MetaFormer, trace: Trace, input: Tensor, result: Tensor, opts: ResolvedOptions): Built {
  const g = new GraphBuilder(opts);
  g.reserve('input');
  g.reserve('logits');
  const paramName = new Map<Tensor, string>();
  for (const [name, p] of model.namedParameters()) if (!paramName.has(p)) paramName.set(p, name);
  for (const name of paramName.values()) g.reserve(name);

  const valueOf = new Map<Tensor, string>();
  valueOf.set(input, opts.dtype === 'float16' ? g.one('Cast', ['input'], 'input', [['to', int(ONNX_FLOAT16)]]) : 'input');

  // Weights: one initializer per (tensor, layout); the first layout used gets the official name.
  const weightForms = new Map<string, string>();
  const officialUsed = new Set<string>();
  let unnamed = 0;
  const nameOfWeight = (t: Tensor): string => {
    let n = paramName.get(t);
    if (n === undefined) {
      n = g.unique(`constant.${unnamed++}`);
      paramName.set(t, n);
    }
    return n;
  };
  const weight = (t: Tensor, layout: 'as-is' | 'transposed' = 'as-is'): string => {
    const official = nameOfWeight(t);
    const key = `${official}|${layout}`;
    let name = weightForms.get(key);
    if (name) return name;
    name = officialUsed.has(official) ? g.unique(`${official}.${layout}`) : official;
    officialUsed.add(official);
    let values = t.toFloat32Array();
    let dims = [...t.shape];
    if (layout === 'transposed') {
      const [rows, cols] = dims as [number, number];
      const tr = new Float32Array(values.length);
      for (let r = 0; r < rows; ++r) for (let c = 0; c < cols; ++c) tr[c * rows + r] = values[r * cols + c]!;
      values = tr;
      dims = [cols, rows];
    }
    g.floatInit(name, dims, values);
    weightForms.set(key, name);
    return name;
  };

  const isWeight = (t: Tensor): boolean => !trace.created.has(t);

  // A value read by step i: computed earlier, a reshape of a computed value, or a weight.
  const read = (t: Tensor, i: number, op: string): string => {
    const known = valueOf.get(t);
    if (known !== undefined) return known;
    if (isWeight(t)) return weight(t);
    const base = trace.aliases.get(t);
    if (base) {
      const src = read(base, i, op);
      const y = g.one('Reshape', [src, g.shapeConst(t.shape, `a [${base.shape.join(', ')}] value`)], `reshape_${i}`);
      valueOf.set(t, y);
      return y;
    }
    throw new Error(`exportOnnx: step ${i} (${op}) reads a value that no exported op computes (${t}); `
      + 'only forward outputs can be exported, not the statistics kept for backward');
  };

  const hintFor = (s: TracedStep, i: number): string => {
    for (const t of s.ins) {
      if (t && isWeight(t)) {
        const n = nameOfWeight(t);
        const dot = n.lastIndexOf('.');
        return dot > 0 ? n.slice(0, dot) : n;
      }
    }
    return `${s.op}_${i}`;
  };

  const toNchw = [0, 3, 1, 2];
  const toNhwc = [0, 2, 3, 1];

  trace.steps.forEach((s, i) => {
    if (!ONNX_EXPORTABLE_OPS.includes(s.op) || s.dir !== 0) {
      const what = s.dir !== 0 ? `the backward of '${s.op}'` : `the op '${s.op}'`;
      throw new Error(`exportOnnx: ${what} (step ${i} of the forward trace) has no ONNX translation; `
        + `the exporter handles the inference ops ${ONNX_EXPORTABLE_OPS.join(', ')}`);
    }
    const hint = hintFor(s, i);
    const x = s.ins[0] ?? null;
    const out = s.outs[0] ?? null;
    if (!x || !out) throw new Error(`exportOnnx: step ${i} (${s.op}) has no input or output tensor`);
    const xv = read(x, i, s.op);
    const opt = (k: number, layout: 'as-is' | 'transposed' = 'as-is'): string => {
      const t = s.ins[k] ?? null;
      if (!t) return '';
      return isWeight(t) ? weight(t, layout) : read(t, i, s.op);
    };
    let y: string;
    switch (s.op) {
      case 'linear': {
        // y = x w^T + b; w [N, K]
        const w = s.ins[1]!;
        if (!isWeight(w)) throw new Error(`exportOnnx: step ${i} (linear) has a computed weight, which is not supported`);
        if (x.ndim === 2) {
          y = g.one('Gemm', [xv, weight(w), opt(2)], hint, [['transB', int(1)]]);
        } else {
          y = g.one('MatMul', [xv, weight(w, 'transposed')], hint);
          const b = opt(2);
          if (b) y = g.one('Add', [y, b], hint);
        }
        break;
      }
      case 'conv2d': {
        const [stride, pad, nchw] = s.attrs as [number, number, number];
        const w = s.ins[1]!;
        const [, , kh, kw] = w.shape as [number, number, number, number];
        const xin = nchw ? xv : g.transpose(xv, toNchw, hint);
        const c = g.one('Conv', [xin, opt(1), opt(2)], hint, [
          ['kernel_shape', ints([kh, kw])], ['strides', ints([stride, stride])], ['pads', ints([pad, pad, pad, pad])],
          ['dilations', ints([1, 1])], ['group', int(1)],
        ]);
        y = g.transpose(c, toNhwc, hint);
        break;
      }
      case 'dwconv2d': {
        // depthwise, stride 1, padding k/2 (odd kernel), weight [C, 1, kh, kw]
        const [ch, , kh, kw] = s.ins[1]!.shape as [number, number, number, number];
        const c = g.one('Conv', [g.transpose(xv, toNchw, hint), opt(1), opt(2)], hint, [
          ['kernel_shape', ints([kh, kw])], ['strides', ints([1, 1])],
          ['pads', ints([kh >> 1, kw >> 1, kh >> 1, kw >> 1])], ['dilations', ints([1, 1])], ['group', int(ch)],
        ]);
        y = g.transpose(c, toNhwc, hint);
        break;
      }
      case 'layernorm': {
        const [eps, group] = s.attrs as [number, number];
        const c = x.shape[x.ndim - 1]!;
        const perSample = x.ndim >= 2 ? numelOf(x.shape.slice(1) as number[]) : -1;
        if (group === c) {
          // over the channels: scale and (explicit, possibly zero) bias per channel
          const scale = opt(1) || g.floatConst(new Array<number>(c).fill(1), [c]);
          const bias = opt(2) || g.floatConst(new Array<number>(c).fill(0), [c]);
          y = g.one('LayerNormalization', [xv, scale, bias], hint, [['axis', int(-1)], ['epsilon', float(eps)]]);
        } else if (group === perSample) {
          // over (H, W, C) per sample, then the per-channel affine
          const dims = x.shape.slice(1) as number[];
          y = g.one('LayerNormalization', [xv, g.filled(1, dims), g.filled(0, dims)], hint,
            [['axis', int(1)], ['epsilon', float(eps)]]);
          const w = opt(1), b = opt(2);
          if (w) y = g.one('Mul', [y, w], hint);
          if (b) y = g.one('Add', [y, b], hint);
        } else {
          throw new Error(`exportOnnx: step ${i} (layernorm) normalises groups of ${group} elements of ${x}, `
            + 'which is neither the channels nor one sample');
        }
        break;
      }
      case 'starrelu': {
        // y = s * relu(x)^2 + b (SquaredReLU without s and b)
        const r = g.one('Relu', [xv], hint);
        y = g.one('Mul', [r, r], hint);
        const sc = opt(1), b = opt(2);
        if (sc) y = g.one('Mul', [y, sc], hint);
        if (b) y = g.one('Add', [y, b], hint);
        break;
      }
      case 'attention': {
        // qkv [B, N, 3A], channels (q|k|v, head, head_dim) -> o [B, N, A]
        const [headDim, scale] = s.attrs as [number, number];
        const [b, n, c3] = x.shape as [number, number, number];
        const a = c3 / 3, heads = a / headDim;
        const [q, k, v] = g.node('Split', [xv, g.int64Const([a, a, a])], hint, [['axis', int(2)]], 3) as [string, string, string];
        const heads4 = g.shapeConst([b, n, heads, headDim], 'the attention heads');
        const qh = g.transpose(g.one('Reshape', [q, heads4], hint), [0, 2, 1, 3], hint);  // [B, h, N, d]
        const kt = g.transpose(g.one('Reshape', [k, heads4], hint), [0, 2, 3, 1], hint);  // [B, h, d, N]
        const vh = g.transpose(g.one('Reshape', [v, heads4], hint), [0, 2, 1, 3], hint);  // [B, h, N, d]
        const scores = g.one('Mul', [g.one('MatMul', [qh, kt], hint), g.floatConst([scale], [])], hint);
        const p = g.one('Softmax', [scores], hint, [['axis', int(-1)]]);
        const o = g.transpose(g.one('MatMul', [p, vh], hint), [0, 2, 1, 3], hint);  // [B, N, h, d]
        y = g.one('Reshape', [o, g.shapeConst([b, n, a], 'the attention output')], hint);
        break;
      }
      case 'random_mixing': {
        // y[b] = R @ x[b]; R [N, N] broadcasts over the batch
        y = g.one('MatMul', [opt(1), xv], hint);
        break;
      }
      case 'pool': {
        // avgpool3x3(x, stride 1, pad 1, count_include_pad=False) - x
        const pooled = g.one('AveragePool', [g.transpose(xv, toNchw, hint)], hint, [
          ['kernel_shape', ints([3, 3])], ['strides', ints([1, 1])], ['pads', ints([1, 1, 1, 1])],
          ['count_include_pad', int(0)],
        ]);
        y = g.one('Sub', [g.transpose(pooled, toNhwc, hint), xv], hint);
        break;
      }
      case 'scale_add': {
        // y = x * s + r
        y = xv;
        const sc = opt(1), r = opt(2);
        if (sc) y = g.one('Mul', [y, sc], hint);
        if (r) y = g.one('Add', [y, r], hint);
        break;
      }
      case 'mean_hw': {
        const axes = Array.from({ length: x.ndim - 2 }, (_, k) => k + 1);
        y = opts.opset >= 18
          ? g.one('ReduceMean', [xv, g.int64Const(axes)], hint, [['keepdims', int(0)]])
          : g.one('ReduceMean', [xv], hint, [['axes', ints(axes)], ['keepdims', int(0)]]);
        break;
      }
      case 'permute': {
        y = g.transpose(xv, [...s.attrs], hint);
        break;
      }
      default:
        throw new Error(`exportOnnx: the op '${s.op}' has no ONNX translation`);
    }
    valueOf.set(out, y);
  });

  let logits = read(result, trace.steps.length, 'output');
  if (opts.dtype === 'float16') logits = g.one('Cast', [logits], 'output', [['to', int(ONNX_FLOAT)]]);
  if (logits === 'input' || g.initializers.has(logits)) logits = g.one('Identity', [logits], 'output');
  g.rename(logits, 'logits');
  g.prune(['logits']);

  const batchDim: number | string = opts.batch === 'dynamic' ? 'batch' : opts.batch;
  const outShape = result.shape;
  if (outShape.length !== 2) throw new Error(`exportOnnx: expected logits [B, classes] from the model but received ${result}`);
  return {
    graph: g,
    inputDims: [batchDim, 3, opts.inputSize[0], opts.inputSize[1]],
    outputDims: [batchDim, outShape[1]!],
  };
}

// --- serialisation (onnx.proto3 field numbers) ----------------------------------------------------

function encodeTensor(t: Initializer): ProtoWriter {
  const w = new ProtoWriter();
  w.packedInts(1, t.dims);  // dims
  w.int(2, t.dataType);  // data_type
  w.string(8, t.name);  // name
  w.bytes(9, t.raw);  // raw_data
  return w;
}

function encodeAttribute(name: string, a: Attr): ProtoWriter {
  const w = new ProtoWriter();
  w.string(1, name);
  switch (a.kind) {
    case 'float': w.float(2, a.value).int(20, ATTR_FLOAT); break;
    case 'int': w.int(3, a.value).int(20, ATTR_INT); break;
    case 'tensor': w.message(5, encodeTensor(a.value)).int(20, ATTR_TENSOR); break;
    case 'ints': w.packedInts(8, a.value).int(20, ATTR_INTS); break;
  }
  return w;
}

function encodeNode(n: OnnxNode): ProtoWriter {
  const w = new ProtoWriter();
  for (const v of n.inputs) w.string(1, v);
  for (const v of n.outputs) w.string(2, v);
  w.string(3, n.name);
  w.string(4, n.opType);
  for (const [k, a] of n.attrs) w.message(5, encodeAttribute(k, a));
  return w;
}

function encodeValueInfo(name: string, elemType: number, dims: (number | string)[]): ProtoWriter {
  const shape = new ProtoWriter();
  for (const d of dims) {
    const dim = new ProtoWriter();
    if (typeof d === 'number') dim.int(1, d);  // dim_value
    else dim.string(2, d);  // dim_param
    shape.message(1, dim);
  }
  const tensorType = new ProtoWriter().int(1, elemType).message(2, shape);
  const type = new ProtoWriter().message(1, tensorType);
  return new ProtoWriter().string(1, name).message(2, type);
}

function encodeModel(model: MetaFormer, built: Built, opts: ResolvedOptions): ProtoWriter {
  const { graph: g } = built;
  const graph = new ProtoWriter();
  for (const n of g.nodes) graph.message(1, encodeNode(n));
  graph.string(2, model.config.name);
  for (const t of g.initializers.values()) graph.message(5, encodeTensor(t));
  graph.message(11, encodeValueInfo('input', ONNX_FLOAT, built.inputDims));
  graph.message(12, encodeValueInfo('logits', ONNX_FLOAT, built.outputDims));

  const m = new ProtoWriter();
  m.int(1, irVersionFor(opts.opset));  // ir_version
  m.string(2, 'metaformer');  // producer_name
  m.message(7, graph);
  m.message(8, new ProtoWriter().string(1, '').int(2, opts.opset));  // opset_import
  const c = model.config;
  const meta: [string, string][] = [
    ['model', c.name],
    ['family', c.family],
    ['num_classes', String(c.numClasses)],
    ['input_size', JSON.stringify(opts.inputSize)],
    ['mean', JSON.stringify(c.mean)],
    ['std', JSON.stringify(c.std)],
    ['interpolation', c.interpolation],
    ['crop_pct', String(c.cropPct)],
    ['layout', 'input NCHW float32 [B, 3, H, W] normalised with mean/std; output logits [B, num_classes]'],
  ];
  for (const [k, v] of meta) m.message(14, new ProtoWriter().string(1, k).string(2, v));
  return m;
}

function encode(model: unknown, options: unknown): ProtoWriter {
  if (endianness() !== 'LE') throw new Error('exportOnnx: writing ONNX tensor data needs a little-endian machine');
  const mf = checkModel(model);
  const opts = resolveOptions(mf, options);
  const built = buildGraph(mf, opts);
  const w = encodeModel(mf, built, opts);
  if (w.length > MAX_MODEL_BYTES) {
    throw new RangeError(`exportOnnx: the model takes ${w.length} bytes, more than a single ONNX protobuf file can hold (2 GiB)`);
  }
  return w;
}

/** The ONNX model (a serialised ModelProto) of `model`, traced at the given input shape. */
export function toOnnxBytes(model: MetaFormer, opts: OnnxExportOptions = {}): Uint8Array {
  return encode(model, opts).finish();
}

/** Writes the ONNX model of `model` to `path` atomically (a complete file or none). */
export async function exportOnnx(model: MetaFormer, path: string, opts: OnnxExportOptions = {}): Promise<void> {
  if (typeof path !== 'string' || path.length === 0) throw new TypeError(expectation('a file path', 'path', path));
  const chunks = encode(model, opts).chunks();
  await writeFileAtomic(path, async (handle: FileHandle) => {
    for (const c of chunks) {
      let off = 0;
      while (off < c.length) {
        const { bytesWritten } = await handle.write(c, off, c.length - off);
        off += bytesWritten;
      }
    }
  });
}
