/**
 * The only module that loads the native addon. It sets the OpenMP wait policy before the addon (and
 * with it the OpenMP runtime) is loaded: an unboundedly spinning pool stalls small machines.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeTensorHandle {
  /** Zero-copy ArrayBuffer over the tensor's memory; it keeps the memory alive on its own. */
  view(): ArrayBuffer;
  /** A copy of the bytes (host tensors). */
  read(): ArrayBuffer;
  /** Copies exactly the tensor's byte size in (host tensors). */
  write(data: Uint8Array): void;
  /** Frees data kept with the memory (bf16 copies or packed GEMM panels of a weight). */
  dropDerived(): void;
  /** A second handle to the same memory with another shape (same element count). */
  share(shape: number[]): NativeTensorHandle;
  dispose(): void;
  /** Reports this handle's bytes to V8 as external memory until it is released (see tensor_wrap.cpp). */
  track(): void;
  readonly disposed: boolean;
  readonly address: bigint | null;
  /** Where the memory lives: 0 host, 1 CUDA device. */
  readonly device: number;
  /** Copies this tensor's bytes into dst (the same byte size), between any two devices. */
  copyTo(dst: NativeTensorHandle): void;
  /** The same copy on a worker thread (a device copy waits there for the work queued before it). */
  copyToAsync(dst: NativeTensorHandle): Promise<void>;
}

/** What the addon knows of CUDA (never throws for a missing driver or device). */
export interface CudaInfo {
  /** The addon was built with the CUDA backend. */
  built: boolean;
  /** A device is present and initialised. */
  available: boolean;
  devices: number;
  /** Why `available` is false ('' when it is true). */
  reason: string;
  name?: string;
  memory?: { live: number; peak: number; cached: number; free: number; total: number };
  /**
   * The emulated device of a build without CUDA (METAFORMER_EMULATE_CUDA=1 when the addon loads): 'cuda'
   * tensors in host memory, the cpu kernels behind the cuda backend. For testing the device plumbing.
   */
  emulated?: boolean;
}

export interface PlanSpec {
  backend: number;
  /** 0 float32 GEMMs (default), 1 bf16 GEMMs (cpu backend only). */
  precision?: number;
  slots: { dtype: number; shape: number[] }[];
  consts: NativeTensorHandle[];
  inputs: number[];
  outputs: number[];
  steps: { op: number; dir: number; ins: number[]; outs: number[]; attrs: number[] }[];
}

export interface NativePlan {
  runSync(inputs: NativeTensorHandle[], outputs: NativeTensorHandle[]): void;
  run(inputs: NativeTensorHandle[], outputs: NativeTensorHandle[]): Promise<void>;
  /** Runs synchronously; returns the seconds each step took. */
  profile(inputs: NativeTensorHandle[], outputs: NativeTensorHandle[]): Float64Array;
  dispose(): void;
  readonly arenaBytes: number;
  /** Whether the plan runs as a recorded device graph (on a GPU unless METAFORMER_CUDA_GRAPHS=0; its second run records it). */
  readonly graphed: boolean;
}

/** The cpu backend's float32 GEMM choice (see Addon.setGemmPolicy). */
export type GemmPolicy = 'auto' | 'own' | 'onednn';
/** How oneDNN reads float32 plan weights (see Addon.setOnednnWeightLayout). */
export type WeightLayout = 'auto' | 'blocked' | 'plain';

export interface Addon {
  NativeTensor: new (dtype: number, shape: number[], zeroFill?: boolean, device?: number) => NativeTensorHandle;
  Plan: new (spec: PlanSpec) => NativePlan;
  run(op: number, dir: number, backend: number, inputs: (NativeTensorHandle | null)[],
    outputs: (NativeTensorHandle | null)[], attrs: number[] | Float64Array): void;
  runAsync(op: number, dir: number, backend: number, inputs: (NativeTensorHandle | null)[],
    outputs: (NativeTensorHandle | null)[], attrs: number[] | Float64Array): Promise<void>;
  opNames(): string[];
  supports(backend: number, op: number, dir: number): boolean;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  memoryStats(): { live: number; peak: number; cached: number; gcTracked: number; systemAllocs: number };
  resetPeak(): void;
  trimCache(): void;
  buildInfo(): { cuda: boolean; openmp: number; procs: number; bf16Native: boolean };
  /**
   * Which float32 GEMM the cpu backend runs (native/cpu/gemm.h): 'auto' (its own kernel where it
   * measured faster, else oneDNN), 'own' (the own kernel for every product it can compute) or
   * 'onednn'. Returns the previous policy. For tests and benchmarks.
   */
  setGemmPolicy(policy: GemmPolicy): GemmPolicy;
  /**
   * How oneDNN reads a float32 plan weight (native/cpu/gemm.h): 'blocked' (reordered once per weight
   * version into the layout the product's kernel prefers, kept with the weight), 'plain' (as it is) or
   * 'auto' (blocked on CPUs with AVX-512). Returns the previous setting.
   */
  setOnednnWeightLayout(layout: WeightLayout): WeightLayout;
  cudaInfo(): CudaInfo;
  /** Waits for queued CUDA work (reports asynchronous kernel errors); a no-op without CUDA. */
  cudaSynchronize(): void;
}

/** The package root: the nearest folder above this file with metaformer's package.json. */
export function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (existsSync(pj)) {
      try {
        if ((JSON.parse(readFileSync(pj, 'utf8')) as { name?: string }).name === 'metaformer') return dir;
      } catch {
        // keep looking
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error('metaformer: cannot find the package root');
    dir = up;
  }
}

function load(): Addon {
  // OpenMP threads sleep between parallel regions, after spinning briefly (GOMP_SPINCOUNT iterations,
  // a fraction of a millisecond): fully spinning pools stall small machines when any other thread is
  // runnable (NOTES.md), fully passive ones pay a wake-up per op (training steps ran 12-18% slower).
  process.env.OMP_WAIT_POLICY ??= 'PASSIVE';
  process.env.GOMP_SPINCOUNT ??= '300000';
  const file = process.env.METAFORMER_ADDON ?? path.join(packageRoot(), 'build', 'Release', 'metaformer.node');
  if (!existsSync(file)) {
    throw new Error(
      `metaformer: the native addon is not built (${file} is missing). ` +
        'Run `npm run build:native` (it needs cmake, g++ and libdnnl-dev).',
    );
  }
  const require = createRequire(import.meta.url);
  return require(file) as Addon;
}

export const addon: Addon = load();

export type OpName =
  | 'linear' | 'conv2d' | 'dwconv2d' | 'layernorm' | 'starrelu' | 'attention' | 'random_mixing' | 'pool'
  | 'scale_add' | 'mean_hw' | 'cross_entropy' | 'dropout' | 'axpy' | 'scale' | 'sumsq' | 'lerp' | 'fill'
  | 'cast' | 'permute' | 'adamw' | 'lamb' | 'sgd' | 'normal' | 'fused_linear';

const names = addon.opNames();
/** Op ids, from the addon's own list (native/core/ops.def). */
export const OP: Readonly<Record<OpName, number>> = Object.fromEntries(names.map((n, i) => [n, i])) as Record<
  OpName,
  number
>;

export type BackendName = 'ref' | 'cpu' | 'cuda';
export const BACKEND_ID: Readonly<Record<BackendName, number>> = { ref: 0, cpu: 1, cuda: 2 };
