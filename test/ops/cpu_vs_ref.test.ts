/**
 * Every op of the fast CPU backend against the reference backend, forward and backward, on random
 * shapes that include 1, primes and sizes just past the vector widths (8, 16). Written outputs are
 * pre-filled with NaN (a skipped element fails); accumulated outputs (parameter gradients, in-place
 * updates) are pre-filled with random values (the += must keep them). Errors are relative L2.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setGemmPolicy, type GemmPolicy } from '../../lib/backend.js';
import { addon, BACKEND_ID, OP, type OpName } from '../../lib/native.js';
import { Tensor } from '../../lib/tensor.js';
import { randomTensor, relL2 } from '../helpers/tensors.js';

type Fill = 'nan' | 'rand' | 'positive';
interface Case {
  name: string;
  op: OpName;
  dir: 0 | 1;
  ins: (Tensor | null)[];
  outs: ({ shape: number[]; fill: Fill; dtype?: 'float32' | 'float64' } | null)[];
  attrs: number[];
}

/** Tolerances (relative L2), one table: op x direction. GEMM-based ops differ by fp32 summation order. */
const TOL: Partial<Record<OpName, [number, number]>> = {
  linear: [2e-6, 2e-6], fused_linear: [2e-6, 0], conv2d: [2e-6, 2e-6], dwconv2d: [1e-6, 1e-6], attention: [2e-6, 3e-6],
  random_mixing: [2e-6, 2e-6], layernorm: [1e-6, 2e-6], cross_entropy: [1e-6, 1e-6],
};
const DEFAULT_TOL = 1e-6;

let seed = 1;
const rnd = (shape: number[], scale = 1): Tensor => randomTensor(shape, seed++, scale);
const nanOut = (shape: number[]) => ({ shape, fill: 'nan' as const });
const accOut = (shape: number[]) => ({ shape, fill: 'rand' as const });
const posOut = (shape: number[]) => ({ shape, fill: 'positive' as const });

function allocOut(spec: Case['outs'][number], fillSeed: number): Tensor | null {
  if (!spec) return null;
  if (spec.dtype === 'float64') return Tensor.zeros(spec.shape, 'float64');
  if (spec.fill === 'rand') return randomTensor(spec.shape, fillSeed);
  if (spec.fill === 'positive') {  // second-moment optimizer state is never negative
    const t = randomTensor(spec.shape, fillSeed);
    const v = t.view<'float32'>();
    for (let i = 0; i < v.length; ++i) v[i] = Math.abs(v[i]!);
    return t;
  }
  const t = Tensor.empty(spec.shape);
  t.view<'float32'>().fill(NaN);
  return t;
}

function runOn(backend: 'ref' | 'cpu', c: Case, fillSeed: number): Tensor[] {
  const outs = c.outs.map((o, i) => allocOut(o, fillSeed + i));
  addon.run(OP[c.op], c.dir, BACKEND_ID[backend], c.ins.map((t) => t?._h ?? null), outs.map((t) => t?._h ?? null), c.attrs);
  return outs.filter((t): t is Tensor => t !== null);
}

function cases(): Case[] {
  const out: Case[] = [];
  const both = (name: string, op: OpName, fwd: Omit<Case, 'name' | 'op' | 'dir'>, bwd: Omit<Case, 'name' | 'op' | 'dir'> | null) => {
    out.push({ name: `${name} fwd`, op, dir: 0, ...fwd });
    if (bwd) out.push({ name: `${name} bwd`, op, dir: 1, ...bwd });
  };
  for (const [M, K, N, bias] of [[1, 1, 1, true], [7, 3, 5, false], [33, 17, 9, true], [64, 64, 31, true], [13, 130, 17, false]] as const) {
    const x = rnd([M, K]), w = rnd([N, K]), b = bias ? rnd([N]) : null;
    both(`linear M${M} K${K} N${N}${bias ? ' bias' : ''}`, 'linear',
      { ins: [x, w, b], outs: [nanOut([M, N])], attrs: [] },
      { ins: [rnd([M, N]), x, w], outs: [nanOut([M, K]), accOut([N, K]), bias ? accOut([N]) : null], attrs: [] });
  }
  // Products of M >= 128 rows and N >= 96 columns run on the backend's own GEMM (native/cpu/sgemm.cpp;
  // threads split the columns below 512 rows, the rows from there): tails of rows (M mod 6), of
  // columns (N mod 16) and of the K blocks (K > 384).
  for (const [M, K, N, bias] of [[2053, 389, 101, true], [2048, 7, 96, false], [4099, 20, 130, true], [128, 389, 97, true],
    [301, 33, 250, false], [511, 800, 96, true], [512, 17, 113, false]] as const) {
    const x = rnd([M, K]), w = rnd([N, K]), b = bias ? rnd([N]) : null;
    both(`linear (own gemm) M${M} K${K} N${N}${bias ? ' bias' : ''}`, 'linear',
      { ins: [x, w, b], outs: [nanOut([M, N])], attrs: [] },
      { ins: [rnd([M, N]), x, w], outs: [nanOut([M, K]), accOut([N, K]), bias ? accOut([N]) : null], attrs: [] });
  }
  for (const [M, K, N, act, acc] of [[1, 1, 1, 1, 0], [7, 3, 5, 1, 1], [33, 17, 9, 2, 0], [64, 64, 31, 0, 1], [13, 130, 17, 2, 1],
    [2053, 389, 101, 1, 0], [2051, 64, 112, 2, 0], [2052, 777, 97, 0, 1], [2049, 33, 128, 1, 1],
    [131, 389, 101, 1, 0], [197, 64, 200, 2, 0], [300, 777, 97, 0, 1], [263, 33, 128, 1, 1]] as const) {
    const x = rnd([M, K]), w = rnd([N, K]), b = rnd([N]), s = rnd([1]), sb = rnd([1]);
    out.push({ name: `fused_linear M${M} K${K} N${N} act${act} acc${acc}`, op: 'fused_linear', dir: 0,
      ins: [x, w, b, act === 1 ? s : null, act === 1 ? sb : null], outs: [acc ? accOut([M, N]) : nanOut([M, N])], attrs: [act, acc] });
  }
  // conv2d: the stem (NCHW in), downsampling (channels-last in; tap-major columns when pixels > Co), odd sizes.
  for (const [B, Ci, H, W, Co, k, s, p, nchw] of [
    [2, 3, 29, 23, 12, 7, 4, 2, 1], [1, 3, 17, 9, 5, 7, 4, 2, 1], [2, 12, 7, 5, 20, 3, 2, 1, 0],
    [1, 5, 9, 11, 3, 3, 1, 1, 0], [3, 17, 1, 1, 9, 3, 2, 1, 0], [1, 1, 4, 4, 1, 3, 2, 1, 0],
    [2, 4, 9, 10, 6, 3, 2, 1, 1], [1, 2, 5, 3, 4, 5, 1, 2, 1],  // NCHW with other kernel widths
    [1, 20, 13, 17, 100, 3, 1, 1, 0], [2, 9, 23, 21, 130, 3, 2, 1, 0],  // >= 128 pixels, >= 96 outputs: own GEMM
    [2, 64, 128, 128, 3, 3, 1, 1, 0]] as const) {  // the last: several im2col chunks
    const x = nchw ? rnd([B, Ci, H, W]) : rnd([B, H, W, Ci]), w = rnd([Co, Ci, k, k]), b = rnd([Co]);
    const Ho = Math.floor((H + 2 * p - k) / s) + 1, Wo = Math.floor((W + 2 * p - k) / s) + 1;
    both(`conv2d ${nchw ? 'nchw' : 'nhwc'} [${B},${Ci},${H},${W}] k${k} s${s} -> ${Co}`, 'conv2d',
      { ins: [x, w, b], outs: [nanOut([B, Ho, Wo, Co])], attrs: [s, p, nchw] },
      { ins: [rnd([B, Ho, Wo, Co]), x, w], outs: [nanOut([...x.shape]), accOut([Co, Ci, k, k]), accOut([Co])], attrs: [s, p, nchw] });
  }
  const dwconv = (B: number, H: number, W: number, C: number, k: number, bias: boolean, kw = k) => {
    const x = rnd([B, H, W, C]), w = rnd([C, 1, k, kw]), b = bias ? rnd([C]) : null;
    both(`dwconv2d [${B},${H},${W},${C}] k${k}${kw !== k ? `x${kw}` : ''}${bias ? ' bias' : ''}`, 'dwconv2d',
      { ins: [x, w, b], outs: [nanOut([B, H, W, C])], attrs: [] },
      { ins: [rnd([B, H, W, C]), x, w], outs: [nanOut([B, H, W, C]), accOut([C, 1, k, kw]), bias ? accOut([C]) : null], attrs: [] });
  };
  for (const [B, H, W, C, k, bias] of [[1, 1, 1, 1, 7, false], [2, 3, 2, 8, 7, true], [1, 7, 5, 17, 7, false],
    [2, 13, 9, 33, 7, true], [1, 14, 14, 128, 7, false], [1, 6, 7, 16, 3, true], [1, 5, 4, 9, 5, false]] as const) {
    dwconv(B, H, W, C, k, bias);
  }
  const layernorm = (B: number, H: number, W: number, C: number, over: 'c' | 'hwc', hasW: boolean, hasB: boolean) => {
    const x = rnd([B, H, W, C], 2), w = hasW ? rnd([C]) : null, b = hasB ? rnd([C]) : null;
    const group = over === 'c' ? C : H * W * C, rows = (B * H * W * C) / group;
    const mean = Tensor.empty([rows]), rstd = Tensor.empty([rows]);
    addon.run(OP.layernorm, 0, BACKEND_ID.ref, [x._h, w?._h ?? null, b?._h ?? null], [Tensor.empty(x.shape)._h, mean._h, rstd._h], [1e-6, group]);
    both(`layernorm ${over} [${B},${H},${W},${C}] w${+hasW} b${+hasB}`, 'layernorm',
      { ins: [x, w, b], outs: [nanOut([B, H, W, C]), nanOut([rows]), nanOut([rows])], attrs: [1e-6, group] },
      { ins: [rnd([B, H, W, C]), x, w, mean, rstd], outs: [nanOut([B, H, W, C]), hasW ? accOut([C]) : null, hasB ? accOut([C]) : null], attrs: [1e-6, group] });
  };
  for (const [B, H, W, C] of [[1, 1, 1, 1], [2, 7, 5, 9], [2, 3, 3, 17], [1, 4, 4, 64], [3, 2, 5, 31]] as const) {
    for (const over of ['c', 'hwc'] as const) {
      for (const [hasW, hasB] of [[true, false], [true, true], [false, false]] as const) layernorm(B, H, W, C, over, hasW, hasB);
    }
  }
  for (const [shape, params] of [[[1], true], [[7, 9], true], [[2, 17, 33], false], [[4, 8, 8, 16], true]] as const) {
    const x = rnd([...shape]), s = params ? rnd([1]) : null, b = params ? rnd([1]) : null;
    both(`starrelu [${shape}]${params ? '' : ' squared'}`, 'starrelu',
      { ins: [x, s, b], outs: [nanOut([...shape])], attrs: [] },
      { ins: [rnd([...shape]), x, s], outs: [nanOut([...shape]), params ? accOut([1]) : null, params ? accOut([1]) : null], attrs: [] });
  }
  const attention = (B: number, N: number, heads: number, hd: number) => {
    const A = heads * hd, qkv = rnd([B, N, 3 * A]);
    const o = Tensor.empty([B, N, A]), lse = Tensor.empty([B, heads, N]);
    addon.run(OP.attention, 0, BACKEND_ID.ref, [qkv._h], [o._h, lse._h], [hd, hd ** -0.5]);
    both(`attention B${B} N${N} heads${heads} hd${hd}`, 'attention',
      { ins: [qkv], outs: [nanOut([B, N, A]), nanOut([B, heads, N])], attrs: [hd, hd ** -0.5] },
      { ins: [rnd([B, N, A]), qkv, o, lse], outs: [nanOut([B, N, 3 * A])], attrs: [hd, hd ** -0.5] });
  };
  for (const [B, N, heads, hd] of [[1, 1, 1, 32], [2, 5, 2, 32], [1, 49, 3, 32], [2, 50, 1, 32], [1, 17, 2, 8], [1, 196, 2, 32]] as const) {
    attention(B, N, heads, hd);
  }
  for (const [B, N, C] of [[1, 1, 1], [2, 7, 3], [2, 35, 17], [1, 49, 64], [2, 144, 100]] as const) {  // the last: own GEMM
    const x = rnd([B, N, C]), r = rnd([N, N]);
    both(`random_mixing [${B},${N},${C}]`, 'random_mixing',
      { ins: [x, r], outs: [nanOut([B, N, C])], attrs: [] },
      { ins: [rnd([B, N, C]), x, r], outs: [nanOut([B, N, C]), accOut([N, N])], attrs: [] });
  }
  for (const [B, H, W, C] of [[1, 1, 1, 1], [1, 2, 2, 9], [2, 3, 5, 17], [1, 8, 7, 16], [2, 14, 14, 64]] as const) {
    both(`pool [${B},${H},${W},${C}]`, 'pool',
      { ins: [rnd([B, H, W, C])], outs: [nanOut([B, H, W, C])], attrs: [] },
      { ins: [rnd([B, H, W, C])], outs: [nanOut([B, H, W, C])], attrs: [] });
  }
  for (const [shape, hasS, hasR] of [[[1], true, true], [[7, 9], true, false], [[2, 5, 3, 17], false, true], [[4, 33], true, true]] as const) {
    const C = shape[shape.length - 1]!;
    const x = rnd([...shape]), s = hasS ? rnd([C]) : null, r = hasR ? rnd([...shape]) : null;
    both(`scale_add [${shape}] s${+hasS} r${+hasR}`, 'scale_add',
      { ins: [x, s, r], outs: [nanOut([...shape])], attrs: [] },
      { ins: [rnd([...shape]), x, s], outs: [nanOut([...shape]), hasS ? accOut([C]) : null, nanOut([...shape])], attrs: [] });
  }
  for (const shape of [[1, 1, 1], [2, 7, 9], [3, 5, 4, 17], [2, 49, 64]]) {
    const B = shape[0]!, C = shape[shape.length - 1]!;
    both(`mean_hw [${shape}]`, 'mean_hw',
      { ins: [rnd(shape)], outs: [nanOut([B, C])], attrs: [] },
      { ins: [rnd([B, C])], outs: [nanOut(shape)], attrs: [] });
  }
  for (const [B, K, soft, ls] of [[1, 1, false, 0], [3, 10, false, 0.1], [5, 1000, false, 0], [4, 17, true, 0]] as const) {
    const z = rnd([B, K], 3);
    const target = soft ? Tensor.from(new Float32Array(B * K).fill(1 / K), [B, K]) : Tensor.from(Int32Array.from({ length: B }, (_, i) => (i * 7) % K), [B]);
    both(`cross_entropy B${B} K${K}${soft ? ' soft' : ''} ls${ls}`, 'cross_entropy',
      { ins: [z, target], outs: [nanOut([])], attrs: [ls] },
      { ins: [rnd([]), z, target], outs: [nanOut([B, K])], attrs: [ls] });
  }
  for (const [shape, group] of [[[9], 1], [[4, 17], 1], [[3, 5, 7], 35], [[2, 8, 8, 16], 1024]] as const) {
    both(`dropout [${shape}] group ${group}`, 'dropout',
      { ins: [rnd([...shape])], outs: [nanOut([...shape])], attrs: [0.3, group, 12345, 77] },
      { ins: [rnd([...shape])], outs: [nanOut([...shape])], attrs: [0.3, group, 12345, 77] });
  }
  for (const n of [1, 9, 1031]) {
    out.push({ name: `axpy ${n}`, op: 'axpy', dir: 0, ins: [rnd([n])], outs: [accOut([n])], attrs: [0.7] });
    out.push({ name: `scale ${n}`, op: 'scale', dir: 0, ins: [], outs: [accOut([n])], attrs: [-1.5] });
    out.push({ name: `lerp ${n}`, op: 'lerp', dir: 0, ins: [rnd([n])], outs: [accOut([n])], attrs: [0.1] });
    out.push({ name: `fill ${n}`, op: 'fill', dir: 0, ins: [], outs: [nanOut([n])], attrs: [2.5] });
    out.push({ name: `sumsq ${n}`, op: 'sumsq', dir: 0, ins: [rnd([n])], outs: [{ shape: [1], fill: 'nan', dtype: 'float64' }], attrs: [] });
    const g = rnd([n]);
    out.push({ name: `adamw ${n}`, op: 'adamw', dir: 0, ins: [g], outs: [accOut([n]), accOut([n]), posOut([n])], attrs: [1e-3, 0.9, 0.999, 1e-8, 0.05, 3, 0.5] });
    out.push({ name: `lamb ${n}`, op: 'lamb', dir: 0, ins: [g], outs: [accOut([n]), accOut([n]), posOut([n])], attrs: [1e-3, 0.9, 0.999, 1e-6, 0.05, 3, 1, 0] });
    out.push({ name: `sgd ${n}`, op: 'sgd', dir: 0, ins: [g], outs: [accOut([n]), accOut([n])], attrs: [0.1, 0.9, 0, 1e-4, 1, 1, 0] });
  }
  out.push({ name: 'normal 1031 truncated', op: 'normal', dir: 0, ins: [], outs: [nanOut([1031])], attrs: [0.5, 2, 99, 1.5] });
  out.push({ name: 'permute [2,3,5,7] -> [0,2,3,1]', op: 'permute', dir: 0, ins: [rnd([2, 3, 5, 7])], outs: [nanOut([2, 5, 7, 3])], attrs: [0, 2, 3, 1] });
  // Depthwise tiles: widths that are whole 8-pixel tiles (16, 56) and not (57), several images and
  // channel blocks (block-major tasks), kernels wider than the weight gradient's 7-column chunks (9, 11)
  // and kernels wider than the image. (Appended here so the cases above keep their random data.)
  for (const [B, H, W, C, k, bias] of [[3, 9, 16, 20, 7, true], [2, 11, 57, 24, 7, false], [1, 6, 56, 8, 7, true],
    [1, 12, 10, 19, 9, true], [2, 5, 6, 7, 11, false]] as const) {
    dwconv(B, H, W, C, k, bias);
  }
  // Depthwise forward tasks over groups of channel blocks: several blocks per group with a partial last
  // block (72 and 200 channels), groups of unequal size (13 blocks in 7 + 6), odd heights (the 1-row
  // tail of the 2-row tiles) and widths that are not whole 7-pixel tiles; then empty tensors (no
  // channels, no images, no rows, no columns).
  for (const [B, H, W, C, k, bias] of [[8, 7, 14, 72, 7, true], [5, 9, 23, 200, 5, false], [4, 15, 8, 48, 7, false],
    [1, 4, 4, 0, 7, false], [0, 4, 4, 8, 7, true], [1, 0, 4, 8, 7, false], [1, 4, 0, 8, 3, true]] as const) {
    dwconv(B, H, W, C, k, bias);
  }
  // Rectangular kernels (the row ring holds kh + 1 rows, the columns are padded by kw / 2).
  dwconv(2, 9, 9, 20, 3, true, 7);
  dwconv(3, 10, 13, 33, 7, false, 3);
  // Cross-entropy: int64 class ids with smoothing at ImageNet width, and soft targets that are not uniform.
  {
    const z = rnd([6, 1000], 4), ids = Tensor.from(BigInt64Array.from({ length: 6 }, (_, i) => BigInt((i * 331) % 1000)), [6]);
    both('cross_entropy B6 K1000 int64 ls0.1', 'cross_entropy', { ins: [z, ids], outs: [nanOut([])], attrs: [0.1] },
      { ins: [rnd([]), z, ids], outs: [nanOut([6, 1000])], attrs: [0.1] });
    const zs = rnd([3, 37], 3), q = new Float32Array(3 * 37).map((_, i) => 0.5 + 0.5 * Math.sin(i));
    for (let b = 0; b < 3; ++b) {
      const row = q.subarray(b * 37, (b + 1) * 37), s = row.reduce((x, y) => x + y, 0);
      row.forEach((v, k) => (row[k] = v / s));
    }
    const soft = Tensor.from(q, [3, 37]);
    both('cross_entropy B3 K37 soft (not uniform)', 'cross_entropy', { ins: [zs, soft], outs: [nanOut([])], attrs: [0.2] },
      { ins: [rnd([]), zs, soft], outs: [nanOut([3, 37])], attrs: [0.2] });
  }
  // The fused attention kernel for few tokens (N <= 32): head sizes 16, 32, 64, N at and around the
  // block boundaries (4 query rows, 16 keys), several images; N = 33 takes the batched GEMMs.
  for (const [B, N, heads, hd] of [[3, 4, 5, 32], [2, 31, 2, 16], [1, 32, 3, 64], [2, 16, 2, 32], [1, 33, 2, 32], [4, 1, 2, 64]] as const) {
    attention(B, N, heads, hd);
  }
  // Layer norm over channels narrower than a vector, in blocks of 8 rows and a remainder (R = 27).
  layernorm(3, 3, 3, 5, 'c', true, true);
  layernorm(1, 2, 4, 3, 'c', false, false);
  // Partial gradient requests (frozen weights, inputs without grad): every backward case with several
  // outputs again with only one of them requested, so no kernel touches an output it was not given.
  for (const c of out.filter((k) => k.dir === 1 && k.outs.filter((o) => o).length > 1)) {
    c.outs.forEach((o, i) => {
      if (o) out.push({ ...c, name: `${c.name} only output ${i}`, outs: c.outs.map((q, j) => (j === i ? q : null)) });
    });
  }
  // Layer norm over channels with an output of 8 MiB or more (2^21 elements: streamed stores), with
  // each affine combination (the models' norms have a weight and no bias).
  for (const [hasW, hasB] of [[true, true], [true, false], [false, false]] as const) layernorm(1, 257, 128, 64, 'c', hasW, hasB);
  // The own GEMM with A of 8 MiB or more (the next row block prefetched; 64-column outputs taken in
  // 'auto' too): a partial last row block and row tile, N = 64 and a column tail, bias, both
  // activations, accumulation.
  {
    const [M, K] = [8209, 256];
    const x = rnd([M, K]), w = rnd([64, K]), b = rnd([64]);
    both(`linear (own gemm, A streamed) M${M} K${K} N64 bias`, 'linear',
      { ins: [x, w, b], outs: [nanOut([M, 64])], attrs: [] },
      { ins: [rnd([M, 64]), x, w], outs: [nanOut([M, K]), accOut([64, K]), accOut([64])], attrs: [] });
    for (const [N, act, acc] of [[70, 1, 0], [64, 2, 0], [64, 0, 1]] as const) {
      const w2 = rnd([N, K]), b2 = rnd([N]), s2 = rnd([1]), sb2 = rnd([1]);
      out.push({ name: `fused_linear (own gemm, A streamed) M${M} K${K} N${N} act${act} acc${acc}`, op: 'fused_linear', dir: 0,
        ins: [x, w2, b2, act === 1 ? s2 : null, act === 1 ? sb2 : null], outs: [acc ? accOut([M, N]) : nanOut([M, N])], attrs: [act, acc] });
    }
  }
  // An empty reduction (K = 0): act(bias), written or accumulated.
  for (const [act, acc] of [[1, 0], [2, 1], [0, 0]] as const) {
    const s3 = rnd([1]), sb3 = rnd([1]);
    out.push({ name: `fused_linear M5 K0 N7 act${act} acc${acc}`, op: 'fused_linear', dir: 0,
      ins: [rnd([5, 0]), rnd([7, 0]), rnd([7]), act === 1 ? s3 : null, act === 1 ? sb3 : null], outs: [acc ? accOut([5, 7]) : nanOut([5, 7])], attrs: [act, acc] });
  }
  return out;
}

function compare(c: Case): void {
  const ref = runOn('ref', c, 1000);
  const cpu = runOn('cpu', c, 1000);
  const tol = TOL[c.op]?.[c.dir] ?? DEFAULT_TOL;
  ref.forEach((r, i) => {
    const a = cpu[i]!.toFloat64Array(), e = r.toFloat64Array();
    expect(a.some((v) => Number.isNaN(v)), `output ${i} has unwritten (NaN) elements`).toBe(false);
    const err = relL2(a, e);
    expect(err, `output ${i}: rel L2 ${err.toExponential(2)} > ${tol}`).toBeLessThanOrEqual(tol);
  });
}

const all = cases();

describe('cpu backend vs reference backend', () => {
  it('covers every op with a forward case and every differentiable op with a backward case', () => {
    const names = addon.opNames() as OpName[];
    for (const op of names) {
      if (op === 'cast') continue;  // conversions are exact: covered by the tensor tests
      expect(all.some((c) => c.op === op && c.dir === 0), `${op} forward`).toBe(true);
      if (addon.supports(BACKEND_ID.ref, OP[op], 1)) expect(all.some((c) => c.op === op && c.dir === 1), `${op} backward`).toBe(true);
    }
  });
  for (const c of all) it(c.name, () => compare(c));
});

// The GEMM-based ops again with each float32 GEMM forced: the own kernel on every shape it can take
// (whatever this CPU's automatic choice), and oneDNN on the shapes the automatic choice gives the own one.
const GEMM_OPS = new Set<OpName>(['linear', 'fused_linear', 'conv2d', 'random_mixing']);
for (const policy of ['own', 'onednn'] as const) {
  describe(`cpu backend vs reference backend, GEMM policy '${policy}'`, () => {
    let previous: GemmPolicy = 'auto';
    beforeAll(() => {
      previous = setGemmPolicy(policy);
    });
    afterAll(() => {
      setGemmPolicy(previous);
    });
    for (const c of all.filter((k) => GEMM_OPS.has(k.op) && !k.name.includes(' only output '))) it(c.name, () => compare(c));
  });
}
