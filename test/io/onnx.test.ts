/**
 * ONNX export: the protobuf writer's wire format (checked byte by byte and by decoding), and exported
 * models run by onnxruntime-node against the golden fixtures (every tiny family, at a fixed and a dynamic
 * batch; the full-size caformer_s18 fixture) and against our own predict() (caformer_s18, random init);
 * the graph's structure (official initializer names, explicit LayerNorm biases, the Transpose peephole);
 * errors and atomic writes.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { noGrad } from '../../lib/autograd/node.js';
import { exportOnnx, toOnnxBytes, type OnnxExportOptions } from '../../lib/io/onnx.js';
import { ProtoWriter, varintSize } from '../../lib/io/protobuf.js';
import { createModel, type MetaFormer } from '../../lib/models/index.js';
import type { Family } from '../../lib/models/zoo.js';
import { Module, type Sequential } from '../../lib/nn/module.js';
import { Linear } from '../../lib/nn/layers.js';
import * as ops from '../../lib/ops.js';
import { Tensor } from '../../lib/tensor.js';
import { compare, failures, loadFixture, randomTensor, type Comparison, type Fixture } from '../helpers/tensors.js';

const FAMILIES: Family[] = ['identityformer', 'randformer', 'poolformerv2', 'convformer', 'caformer'];

// --- a small protobuf reader, to check what the writer wrote ---------------------------------------

type Field = { wire: number; value: bigint | Uint8Array };
type Message = Map<number, Field[]>;

function readVarint(b: Uint8Array, at: { pos: number }): bigint {
  let v = 0n, shift = 0n;
  for (;;) {
    const byte = b[at.pos++];
    if (byte === undefined) throw new Error('truncated varint');
    v |= BigInt(byte & 127) << shift;
    if (byte < 128) return v;
    shift += 7n;
  }
}

function decode(b: Uint8Array): Message {
  const m: Message = new Map();
  const at = { pos: 0 };
  while (at.pos < b.length) {
    const key = Number(readVarint(b, at));
    const field = key >>> 3, wire = key & 7;
    let value: bigint | Uint8Array;
    if (wire === 0) value = readVarint(b, at);
    else if (wire === 2) {
      const n = Number(readVarint(b, at));
      value = b.subarray(at.pos, at.pos + n);
      at.pos += n;
    } else if (wire === 5 || wire === 1) {
      const n = wire === 5 ? 4 : 8;
      value = b.subarray(at.pos, at.pos + n);
      at.pos += n;
    } else throw new Error(`wire type ${wire}`);
    if (at.pos > b.length) throw new Error('truncated field');
    if (!m.has(field)) m.set(field, []);
    m.get(field)!.push({ wire, value });
  }
  return m;
}

const bytesOf = (m: Message, f: number): Uint8Array[] => (m.get(f) ?? []).map((x) => x.value as Uint8Array);
const strings = (m: Message, f: number): string[] => bytesOf(m, f).map((b) => new TextDecoder().decode(b));
const messages = (m: Message, f: number): Message[] => bytesOf(m, f).map(decode);
const intOf = (m: Message, f: number): bigint | undefined => m.get(f)?.[0]?.value as bigint | undefined;
function packedInts(m: Message, f: number): bigint[] {
  const out: bigint[] = [];
  for (const b of bytesOf(m, f)) {
    const at = { pos: 0 };
    while (at.pos < b.length) out.push(BigInt.asIntN(64, readVarint(b, at)));
  }
  return out;
}

interface Graph {
  ir: bigint;
  opset: { domain: string; version: bigint }[];
  producer: string;
  nodes: { op: string; inputs: string[]; outputs: string[]; attrs: Message[] }[];
  inits: Map<string, { dims: number[]; type: number; bytes: number }>;
  inputs: { name: string; dims: (number | string)[] }[];
  outputs: { name: string; dims: (number | string)[] }[];
  meta: Map<string, string>;
}

function valueInfo(v: Message): { name: string; dims: (number | string)[] } {
  const tensorType = messages(messages(v, 2)[0]!, 1)[0]!;
  const dims = messages(messages(tensorType, 2)[0]!, 1).map((d) => (d.has(1) ? Number(intOf(d, 1)) : strings(d, 2)[0]!));
  return { name: strings(v, 1)[0]!, dims };
}

function parseModel(bytes: Uint8Array): Graph {
  const model = decode(bytes);
  const graph = messages(model, 7)[0]!;
  const inits = new Map<string, { dims: number[]; type: number; bytes: number }>();
  for (const t of messages(graph, 5)) {
    inits.set(strings(t, 8)[0]!, { dims: packedInts(t, 1).map(Number), type: Number(intOf(t, 2)), bytes: bytesOf(t, 9)[0]?.length ?? 0 });
  }
  return {
    ir: intOf(model, 1)!,
    producer: strings(model, 2)[0]!,
    opset: messages(model, 8).map((o) => ({ domain: strings(o, 1)[0] ?? '', version: intOf(o, 2)! })),
    nodes: messages(graph, 1).map((n) => ({ op: strings(n, 4)[0]!, inputs: strings(n, 1), outputs: strings(n, 2), attrs: messages(n, 5) })),
    inits,
    inputs: messages(graph, 11).map(valueInfo),
    outputs: messages(graph, 12).map(valueInfo),
    meta: new Map(messages(model, 14).map((e) => [strings(e, 1)[0]!, strings(e, 2)[0]!])),
  };
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

describe('protobuf writer', () => {
  it('writes varints, negative int64, fixed and float fields byte-exactly', () => {
    expect(hex(new ProtoWriter().int(1, 150).finish())).toBe('089601');
    expect(hex(new ProtoWriter().int(1, 0).int(2, true).finish())).toBe('08001001');
    expect(hex(new ProtoWriter().int(1, -1).finish())).toBe('08ffffffffffffffffff01');
    expect(hex(new ProtoWriter().int(1, -(2n ** 63n)).finish())).toBe('0880808080808080808001');
    expect(hex(new ProtoWriter().int(1, 2 ** 53 - 1).finish())).toBe('08ffffffffffffff0f');
    expect(hex(new ProtoWriter().float(2, 1).finish())).toBe('150000803f');
    expect(hex(new ProtoWriter().double(3, -2).finish())).toBe('1900000000000000c0');
    expect(hex(new ProtoWriter().fixed32(4, 0xdeadbeef).finish())).toBe('25efbeadde');
    expect(hex(new ProtoWriter().fixed64(5, -1n).finish())).toBe('29ffffffffffffffff');
    expect(hex(new ProtoWriter().int(16, 1).finish())).toBe('800101');
    expect([0, 127, 128, 16383, 16384, 2 ** 31, 2 ** 53 - 1].map(varintSize)).toEqual([1, 1, 2, 2, 3, 5, 8]);
  });

  it('writes strings, bytes, nested messages and packed repeated fields', () => {
    expect(hex(new ProtoWriter().string(2, 'testing').finish())).toBe('120774657374696e67');
    expect(hex(new ProtoWriter().string(1, 'é').finish())).toBe('0a02c3a9');
    expect(hex(new ProtoWriter().message(3, new ProtoWriter().int(1, 150)).finish())).toBe('1a03089601');
    expect(hex(new ProtoWriter().packedInts(4, [3, 270, 86942]).finish())).toBe('2206038e029ea705');
    expect(hex(new ProtoWriter().packedInts(4, [-1]).finish())).toBe('220affffffffffffffffff01');
    expect(hex(new ProtoWriter().packedInts(4, []).finish())).toBe('');
    expect(hex(new ProtoWriter().packedFloats(5, [1, -2]).finish())).toBe('2a080000803f000000c0');
    expect(hex(new ProtoWriter().packedDoubles(6, [1]).finish())).toBe('3208000000000000f03f');
    expect(hex(new ProtoWriter().packedFixed64(7, [1, -1n]).finish())).toBe('3a100100000000000000ffffffffffffffff');
  });

  it('references large byte fields, keeps lengths exact across nesting, and can be streamed', () => {
    const big = new Uint8Array(100_000).map((_, i) => i * 7);
    const inner = new ProtoWriter().string(1, 'w').bytes(9, big).int(2, 1);
    const outer = new ProtoWriter().int(1, 8).message(7, inner).string(2, 'x');
    const n = outer.length;
    const chunks = outer.chunks();
    expect(chunks.some((c) => c === big)).toBe(true);  // referenced, not copied
    expect(chunks.reduce((a, c) => a + c.length, 0)).toBe(n);
    const all = outer.finish();
    expect(all.length).toBe(n);
    const m = decode(all);
    expect(intOf(m, 1)).toBe(8n);
    expect(strings(m, 2)).toEqual(['x']);
    const back = messages(m, 7)[0]!;
    expect(strings(back, 1)).toEqual(['w']);
    expect(Buffer.from(bytesOf(back, 9)[0]!).equals(Buffer.from(big))).toBe(true);
    expect(intOf(back, 2)).toBe(1n);
  });

  it('rejects bad fields and values, and writes to a sealed writer', () => {
    expect(() => new ProtoWriter().int(0, 1)).toThrow(/Expected a field number in \[1, 536870911\] for field but received 0/);
    expect(() => new ProtoWriter().int(1, 1.5)).toThrow(/Expected a safe integer for value but received 1.5/);
    expect(() => new ProtoWriter().int(1, 2n ** 64n)).toThrow(RangeError);
    expect(() => new ProtoWriter().string(1, 3 as unknown as string)).toThrow(/Expected a string for value/);
    const sub = new ProtoWriter().int(1, 1);
    new ProtoWriter().message(1, sub);
    expect(() => sub.int(2, 2)).toThrow(/already appended/);
  });
});

// --- exported models under onnxruntime ----------------------------------------------------------

interface ModelFixtureConfig {
  family: Family;
  depths: number[];
  dims: number[];
  num_classes: number;
  image_size: [number, number];
  suggested_fp32_rel_l2_tol: Record<string, number>;
}

async function loadModel(file: string): Promise<{ fx: Fixture; cfg: ModelFixtureConfig; model: MetaFormer }> {
  const fx = await loadFixture('models', file);
  const cfg = fx.spec as unknown as ModelFixtureConfig;
  const model = createModel({ family: cfg.family, depths: cfg.depths, dims: cfg.dims, numClasses: cfg.num_classes, imageSize: cfg.image_size });
  const sd = new Map<string, Tensor>();
  for (const [k, t] of fx.tensors) if (k.startsWith('param.')) sd.set(k.slice('param.'.length), t);
  model.loadStateDict(sd, { strict: true });
  return { fx, cfg, model };
}

function release(fx: Fixture, model: MetaFormer): void {
  model.dispose();
  for (const t of fx.tensors.values()) t.dispose();
}

async function session(bytes: Uint8Array): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(bytes, { graphOptimizationLevel: 'all', intraOpNumThreads: 1 });
}

async function runOrt(s: ort.InferenceSession, x: Float32Array, shape: readonly number[]): Promise<{ data: Float32Array; dims: readonly number[] }> {
  const out = await s.run({ input: new ort.Tensor('float32', x, [...shape]) });
  const logits = out.logits!;
  return { data: logits.data as Float32Array, dims: logits.dims };
}

/** Rows [from, to) of a [B, K] row-major array, repeated `times` times. */
function rows(a: Float32Array, k: number, from: number, to: number, times = 1): Float32Array {
  const one = a.subarray(from * k, to * k);
  const out = new Float32Array(one.length * times);
  for (let i = 0; i < times; ++i) out.set(one, i * one.length);
  return out;
}

const STANDARD_OPS = new Set([
  'Gemm', 'MatMul', 'Add', 'Sub', 'Mul', 'Conv', 'Transpose', 'LayerNormalization', 'ConstantOfShape', 'Relu', 'Reshape',
  'Split', 'Softmax', 'AveragePool', 'ReduceMean', 'Cast', 'Identity',
]);

describe('exported tiny models match the fixtures under onnxruntime', () => {
  for (const family of FAMILIES) {
    it(`${family}_tiny: fixed batch, dynamic batch at 1 and 4, graph structure`, async () => {
      const { fx, cfg, model } = await loadModel(`${family}_tiny.safetensors`);
      try {
        const x = fx.get('input');
        const b = x.shape[0]!, k = cfg.num_classes, tol = cfg.suggested_fp32_rel_l2_tol.logits!;
        const input = x.toFloat32Array(), want = fx.get('logits').toFloat32Array();
        const cs: Comparison[] = [];

        const fixed = toOnnxBytes(model, { batch: b });
        const s = await session(fixed);
        expect(s.inputNames).toEqual(['input']);
        expect(s.outputNames).toEqual(['logits']);
        const y = await runOrt(s, input, x.shape);
        expect(y.dims).toEqual([b, k]);
        cs.push(compare('logits', y.data, want, tol));

        const dyn = await session(toOnnxBytes(model, { batch: 'dynamic' }));
        const y1 = await runOrt(dyn, rows(input, input.length / b, 0, 1), [1, ...x.shape.slice(1)]);
        expect(y1.dims).toEqual([1, k]);
        cs.push(compare('logits, dynamic batch 1', y1.data, rows(want, k, 0, 1), tol));
        const y4 = await runOrt(dyn, rows(input, input.length / b, 0, b, 2), [2 * b, ...x.shape.slice(1)]);
        expect(y4.dims).toEqual([2 * b, k]);
        cs.push(compare(`logits, dynamic batch ${2 * b}`, y4.data, rows(want, k, 0, b, 2), tol));
        expect(failures(cs), cs.map((c) => `${c.name} ${c.relL2.toExponential(2)}`).join(', ')).toBe('');

        // Structure: header, official initializer names, explicit LayerNorm biases, standard ops only.
        const g = parseModel(fixed);
        expect(g.ir).toBe(8n);
        expect(g.producer).toBe('metaformer');
        expect(g.opset).toEqual([{ domain: '', version: 17n }]);
        expect(g.inputs).toEqual([{ name: 'input', dims: [b, 3, ...cfg.image_size] }]);
        expect(g.outputs).toEqual([{ name: 'logits', dims: [b, k] }]);
        expect(parseModel(toOnnxBytes(model, { batch: 'dynamic' })).inputs[0]!.dims).toEqual(['batch', 3, ...cfg.image_size]);
        expect(g.meta.get('family')).toBe(family);
        for (const n of g.nodes) expect(STANDARD_OPS.has(n.op), n.op).toBe(true);
        for (const n of g.nodes.filter((n) => n.op === 'LayerNormalization')) expect(n.inputs.filter(Boolean)).toHaveLength(3);
        for (const [name, p] of model.namedParameters()) {
          const init = g.inits.get(name);
          expect(init, name).toBeDefined();
          expect(init!.bytes).toBe(p.numel * 4);
          const matmul = g.nodes.some((n) => n.op === 'MatMul' && n.inputs[1] === name);
          expect(init!.dims, name).toEqual(matmul ? [p.shape[1], p.shape[0]] : [...p.shape]);
        }
      } finally {
        release(fx, model);
      }
    });
  }

  it('other opsets (ReduceMean with axes as an input from 18) and float16 weights', async () => {
    const { fx, cfg, model } = await loadModel('caformer_tiny.safetensors');
    try {
      const x = fx.get('input');
      const input = x.toFloat32Array(), want = fx.get('logits').toFloat32Array();
      const cs: Comparison[] = [];
      for (const opset of [18, 21]) {
        const bytes = toOnnxBytes(model, { batch: x.shape[0], opset });
        const g = parseModel(bytes);
        expect(g.opset[0]!.version).toBe(BigInt(opset));
        expect(g.ir).toBe(opset <= 18 ? 8n : 10n);
        expect(g.nodes.find((n) => n.op === 'ReduceMean')!.inputs).toHaveLength(2);
        cs.push(compare(`opset ${opset}`, (await runOrt(await session(bytes), input, x.shape)).data, want, cfg.suggested_fp32_rel_l2_tol.logits!));
      }
      const half = toOnnxBytes(model, { batch: x.shape[0], dtype: 'float16' });
      const g = parseModel(half);
      expect(g.inits.get('stages.0.0.mlp.fc1.weight')!.type).toBe(10);
      expect(g.inputs[0]).toEqual({ name: 'input', dims: [...x.shape] });
      cs.push(compare('float16', (await runOrt(await session(half), input, x.shape)).data, want, 1e-2));
      expect(failures(cs), cs.map((c) => `${c.name} ${c.relL2.toExponential(2)}`).join(', ')).toBe('');
    } finally {
      release(fx, model);
    }
  });

  it('exports the eval graph of a model in training mode (no dropout) and leaves it in training mode', async () => {
    const fx = await loadFixture('models', 'identityformer_tiny.safetensors');
    const cfg = fx.spec as unknown as ModelFixtureConfig;
    const model = createModel({ family: cfg.family, depths: cfg.depths, dims: cfg.dims, numClasses: cfg.num_classes, imageSize: cfg.image_size },
      { dropPathRate: 0.5, headDropout: 0.5 });
    try {
      const sd = new Map<string, Tensor>();
      for (const [k, t] of fx.tensors) if (k.startsWith('param.')) sd.set(k.slice('param.'.length), t);
      model.loadStateDict(sd);
      model.train();
      const x = fx.get('input');
      const bytes = toOnnxBytes(model, { batch: x.shape[0] });
      expect(model.training).toBe(true);
      expect(parseModel(bytes).nodes.some((n) => /Dropout/.test(n.op))).toBe(false);
      const y = await runOrt(await session(bytes), x.toFloat32Array(), x.shape);
      const c = compare('logits', y.data, fx.get('logits'), cfg.suggested_fp32_rel_l2_tol.logits!);
      expect(failures([c])).toBe('');
    } finally {
      model.dispose();
      for (const t of fx.tensors.values()) t.dispose();
    }
  });
});

describe('full-size models', () => {
  // One caformer_s18 for both tests (random initialisation of the full model takes seconds).
  let model: MetaFormer;
  beforeAll(() => {
    model = createModel('caformer_s18');
  });
  afterAll(() => model.dispose());

  it('caformer_s18 (random init) matches predict() within 1e-4 relative L2', async () => {
    const x = randomTensor([1, 3, 224, 224], 1234);
    try {
      const y = await runOrt(await session(toOnnxBytes(model)), x.toFloat32Array(), x.shape);
      const want = await model.predict(x);
      const c = compare('logits', y.data, want, 1e-4);
      want.dispose();
      expect(y.dims).toEqual([1, 1000]);
      expect(failures([c]), `rel L2 ${c.relL2.toExponential(2)}`).toBe('');
    } finally {
      x.dispose();
    }
  }, 300_000);

  it('caformer_s18 with the fixture weights matches the float64 reference logits', async () => {
    const fx = await loadFixture('models', 'caformer_s18_224.safetensors');
    try {
      const cfg = fx.spec as unknown as ModelFixtureConfig;
      const sd = new Map<string, Tensor>();
      for (const [k, t] of fx.tensors) if (k.startsWith('param.')) sd.set(k.slice('param.'.length), t);
      model.loadStateDict(sd, { strict: true });
      const x = fx.get('input');
      const y = await runOrt(await session(toOnnxBytes(model, { batch: x.shape[0] })), x.toFloat32Array(), x.shape);
      const c = compare('logits', y.data, fx.get('logits'), cfg.suggested_fp32_rel_l2_tol.logits!);
      expect(failures([c]), `rel L2 ${c.relL2.toExponential(2)}`).toBe('');
    } finally {
      for (const t of fx.tensors.values()) t.dispose();
    }
  }, 300_000);
});

// --- peephole, errors, files -----------------------------------------------------------------------

/** A token mixer that permutes to NCHW and back: the exporter must drop both Transposes. */
class RoundTrip extends Module {
  forward(x: Tensor): Tensor {
    return ops.permute(ops.permute(x, [0, 3, 1, 2]), [0, 2, 3, 1]);
  }
}

/** A head that always applies dropout (training-only op): not exportable. */
class AlwaysDropout extends Module {
  forward(x: Tensor): Tensor {
    return ops.dropout(x, 0.5);
  }
}

function smallModel(family: Family = 'identityformer'): MetaFormer {
  return createModel({ family, depths: [1, 1, 1, 1], dims: [8, 8, 8, 8], numClasses: 3, imageSize: 32 });
}

describe('graph construction', () => {
  it('drops a Transpose that undoes the previous one', async () => {
    const model = smallModel();
    const x = randomTensor([1, 3, 32, 32], 5);
    try {
      const before = parseModel(toOnnxBytes(model)).nodes.filter((n) => n.op === 'Transpose').length;
      const block = (model.stages.items[1] as Sequential).items[0]!;
      (block as unknown as { tokenMixer: Module }).tokenMixer = new RoundTrip();
      const bytes = toOnnxBytes(model);
      expect(parseModel(bytes).nodes.filter((n) => n.op === 'Transpose').length).toBe(before);
      model.eval();
      const want = noGrad(() => model.forward(x));
      const y = await runOrt(await session(bytes), x.toFloat32Array(), x.shape);
      expect(failures([compare('logits', y.data, want, 1e-5)])).toBe('');
      want.dispose();
    } finally {
      model.dispose();
      x.dispose();
    }
  });
});

describe('errors', () => {
  it('rejects what is not a MetaFormer, disposed models and bad options', () => {
    const lin = new Linear(2, 2);
    expect(() => toOnnxBytes(lin as unknown as MetaFormer)).toThrow(/Expected a MetaFormer model for model but received Linear/);
    expect(() => toOnnxBytes({} as MetaFormer)).toThrow(TypeError);
    lin.dispose();
    const model = smallModel();
    const bad: [OnnxExportOptions, RegExp][] = [
      [{ batch: 0 }, /Expected a positive integer or 'dynamic' for batch but received 0/],
      [{ batch: 'auto' as unknown as number }, /for batch but received "auto"/],
      [{ opset: 16 }, /Expected an opset from 17 to 21 for opset but received 16/],
      [{ dtype: 'bfloat16' as 'float16' }, /Expected 'float32' or 'float16' for dtype but received "bfloat16"/],
      [{ inputSize: [0, 32] }, /for inputSize but received an array of length 2/],
    ];
    for (const [opts, re] of bad) expect(() => toOnnxBytes(model, opts)).toThrow(re);
    expect(() => toOnnxBytes(model, 3 as unknown as OnnxExportOptions)).toThrow(/Expected an options object for options/);
    model.dispose();
    expect(() => toOnnxBytes(model)).toThrow(/Expected a model with live weights for model/);
  });

  it('rejects an op without an ONNX translation and names it', () => {
    const model = smallModel();
    model.head = new AlwaysDropout();
    expect(() => toOnnxBytes(model)).toThrow(/the op 'dropout' \(step \d+ of the forward trace\) has no ONNX translation/);
    model.dispose();
  });

  it('reports a RandFormer input size its mixing matrices were not built for', () => {
    const model = smallModel('randformer');
    expect(() => toOnnxBytes(model, { inputSize: [64, 64] })).toThrow(/32x32 input/);
    model.dispose();
  });
});

describe('exportOnnx files', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mf-onnx-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writes exactly the bytes of toOnnxBytes, replacing an existing file', async () => {
    const model = smallModel('poolformerv2');
    try {
      const file = path.join(dir, 'model.onnx');
      fs.writeFileSync(file, 'old');
      await exportOnnx(model, file, { batch: 2 });
      expect(Buffer.from(fs.readFileSync(file)).equals(Buffer.from(toOnnxBytes(model, { batch: 2 })))).toBe(true);
      expect(fs.readdirSync(dir)).toEqual(['model.onnx']);
    } finally {
      model.dispose();
    }
  });

  it('leaves no partial file when the write fails', async () => {
    const model = smallModel();
    try {
      const target = path.join(dir, 'a-directory');
      fs.mkdirSync(target);
      await expect(exportOnnx(model, target)).rejects.toThrow();
      expect(fs.statSync(target).isDirectory()).toBe(true);
      await expect(exportOnnx(model, path.join(dir, 'missing', 'model.onnx'))).rejects.toThrow(/ENOENT/);
      await expect(exportOnnx(model, '')).rejects.toThrow(/Expected a file path for path/);
      model.head = new AlwaysDropout();
      await expect(exportOnnx(model, path.join(dir, 'never.onnx'))).rejects.toThrow(/dropout/);
      expect(fs.readdirSync(dir).sort()).toEqual(['a-directory', ...(fs.existsSync(path.join(dir, 'model.onnx')) ? ['model.onnx'] : [])].sort());
    } finally {
      model.dispose();
    }
  });
});
