/**
 * Exports compiled inference plans for the GPU check (bench/gpu/check.sh), so that the model fixtures and
 * the model benchmarks run on a GPU machine without Node: native/cuda/tests/run_plan.cpp replays a plan
 * (the op sequence the model builder traced, with its weights) on any backend.
 *
 *   node dist/bench/gpu/export_plans.js OUTDIR [--fixtures DIR] [--no-bench]
 *
 * Writes, per plan, OUTDIR/<name>.plan (text, format below) and OUTDIR/<name>.bin (raw little-endian
 * data: weights, the input, the expected outputs):
 *   * <family>_tiny_logits / <family>_tiny_features for the five tiny model fixtures (weights, input and
 *     the float64 reference's logits, features and stage outputs, with their suggested tolerances);
 *   * caformer_s18_b{1,64,256} / convformer_s18_b{1,64,256} at 224x224 for timing: shapes only (the
 *     replayer fills weights and input with random values).
 *
 * Plan format, whitespace-separated, version 1:
 *   metaformer-plan 1
 *   slots N      then N x: dtype ndim dims... alias(-1: none)
 *   consts M     then M x: dtype ndim dims... offset(-1: random) nbytes
 *   inputs K     then K x: slot offset(-1: random)
 *   outputs K    then K x: slot name offset(-1: none) tolerance
 *   steps S      then S x: op-name dir n_in refs... n_out refs... n_attr attrs...
 * refs: >= 0 a slot, -1 absent, <= -2 const (-2 - index). dtypes are native/core/tensor.h codes.
 */
import { mkdirSync, openSync, closeSync, writeSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { addon, type PlanSpec } from '../../lib/native.js';
import { DTYPE_CODE } from '../../lib/dtype.js';
import { createModel, type MetaFormer } from '../../lib/models/index.js';
import { readSafetensorsSync } from '../../lib/io/tensors.js';
import { readSafetensorsHeader } from '../../lib/io/safetensors.js';
import { Tensor } from '../../lib/tensor.js';

const FAMILIES = ['identityformer', 'randformer', 'poolformerv2', 'convformer', 'caformer'] as const;

interface Expected {
  name: string;
  tensor: Tensor | null;
  tol: number;
}

/** Captures the PlanSpec that the model's plan() hands to the addon. */
function capture(model: MetaFormer, shape: number[], kind: 'logits' | 'features'): PlanSpec {
  const addonAny = addon as unknown as { Plan: new (spec: PlanSpec) => unknown };
  const Orig = addonAny.Plan;
  let spec: PlanSpec | null = null;
  addonAny.Plan = function PlanCapture(s: PlanSpec) {
    spec = s;
    return new Orig(s);
  } as unknown as typeof Orig;
  try {
    model.clearPlans();
    model.plan(shape, kind);
  } finally {
    addonAny.Plan = Orig;
  }
  if (!spec) throw new Error('export_plans: the model did not compile a plan');
  return spec;
}

function write(dir: string, name: string, spec: PlanSpec, model: MetaFormer, withData: boolean, input: Tensor | null,
  expected: Expected[]): void {
  // Const handles -> their tensors (for dtype and shape).
  const byHandle = new Map<unknown, Tensor>();
  for (const t of model.stateDict().values()) byHandle.set(t._h, t);
  const binPath = path.join(dir, `${name}.bin`);
  const fd = openSync(binPath, 'w');
  let offset = 0;
  const put = (t: Tensor): number => {
    const bytes = t.toBytes();
    const at = offset;
    writeSync(fd, bytes);
    offset += bytes.byteLength;
    const pad = (8 - (offset % 8)) % 8;
    if (pad) {
      writeSync(fd, new Uint8Array(pad));
      offset += pad;
    }
    return at;
  };
  const lines: string[] = ['metaformer-plan 1', `slots ${spec.slots.length}`];
  for (const s of spec.slots) {
    const alias = (s as { alias?: number }).alias;
    lines.push(`${s.dtype} ${s.shape.length} ${s.shape.join(' ')} ${alias ?? -1}`.replace(/  +/g, ' '));
  }
  lines.push(`consts ${spec.consts.length}`);
  spec.consts.forEach((h, i) => {
    const t = byHandle.get(h);
    if (!t) throw new Error(`export_plans: const ${i} of ${name} is not a model parameter or buffer`);
    const nbytes = t.numel * (t.dtype === 'float64' || t.dtype === 'int64' ? 8 : t.dtype === 'float32' || t.dtype === 'int32' ? 4 : 2);
    const at = withData ? put(t) : -1;
    lines.push(`${DTYPE_CODE[t.dtype]} ${t.shape.length} ${t.shape.join(' ')} ${at} ${nbytes}`.replace(/  +/g, ' '));
  });
  lines.push(`inputs ${spec.inputs.length}`);
  for (const s of spec.inputs) lines.push(`${s} ${input ? put(input) : -1}`);
  lines.push(`outputs ${spec.outputs.length}`);
  spec.outputs.forEach((s, i) => {
    const e = expected[i] ?? { name: `out${i}`, tensor: null, tol: 0 };
    lines.push(`${s} ${e.name} ${e.tensor ? put(e.tensor) : -1} ${e.tol}`);
  });
  const names = addon.opNames();
  lines.push(`steps ${spec.steps.length}`);
  for (const st of spec.steps) {
    lines.push([names[st.op], st.dir, st.ins.length, ...st.ins, st.outs.length, ...st.outs, st.attrs.length,
      ...st.attrs.map((a) => String(a))].join(' '));
  }
  closeSync(fd);
  writeFileSync(path.join(dir, `${name}.plan`), lines.join('\n') + '\n');
  console.log(`export_plans: ${name}: ${spec.steps.length} steps, ${spec.consts.length} weights, ${offset} data bytes`);
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const out = args[0];
  if (!out) throw new Error('usage: export_plans OUTDIR [--fixtures DIR] [--no-bench]');
  const fi = args.indexOf('--fixtures');
  const fixtures = fi >= 0 ? args[fi + 1]! : process.env.METAFORMER_FIXTURES ?? path.resolve('../shared/fixtures');
  mkdirSync(out, { recursive: true });
  for (const family of FAMILIES) {
    const file = path.join(fixtures, 'models', `${family}_tiny.safetensors`);
    const header = await readSafetensorsHeader(file);
    const cfg = JSON.parse(header.metadata.config ?? header.metadata.spec ?? '{}') as {
      depths: number[]; dims: number[]; num_classes: number; image_size: [number, number];
      suggested_fp32_rel_l2_tol: Record<string, number>;
    };
    const tensors = readSafetensorsSync(file);
    const model = createModel({ family, depths: cfg.depths, dims: cfg.dims, numClasses: cfg.num_classes,
      imageSize: cfg.image_size });
    const sd = new Map<string, Tensor>();
    for (const [k, t] of tensors) if (k.startsWith('param.')) sd.set(k.slice('param.'.length), t);
    model.loadStateDict(sd, { strict: true });
    model.eval();
    const input = tensors.get('input')!;
    const exp = (n: string): Expected => ({ name: n, tensor: tensors.get(n) ?? null, tol: cfg.suggested_fp32_rel_l2_tol[n] ?? 3e-5 });
    write(out, `${family}_tiny_logits`, capture(model, [...input.shape], 'logits'), model, true, input, [exp('logits')]);
    write(out, `${family}_tiny_features`, capture(model, [...input.shape], 'features'), model, true, input,
      [exp('features'), exp('stage0'), exp('stage1'), exp('stage2'), exp('stage3')]);
    model.dispose();
    for (const t of tensors.values()) t.dispose();
  }
  if (!args.includes('--no-bench')) {
    for (const name of ['caformer_s18', 'convformer_s18']) {
      const model = createModel(name);
      model.eval();
      for (const b of [1, 64, 256]) {
        write(out, `${name}_b${b}`, capture(model, [b, 3, 224, 224], 'logits'), model, false, null, [
          { name: 'logits', tensor: null, tol: 0 }]);
      }
      model.dispose();
    }
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack ?? e.message : e);
  process.exit(1);
});
