/**
 * The peers measured in the same run: PyTorch (Debian python3-torch, a Python process per job, tuned
 * as PITFALLS.md says) and onnxruntime-node (in process, on the ONNX file our exporter writes).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { machineInfo } from './timing.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** bench/peers/torch_peer.py, from either the source tree or dist/bench/lib. */
function peerScript(): string {
  for (const p of [path.resolve(here, '../peers/torch_peer.py'), path.resolve(here, '../../../bench/peers/torch_peer.py')]) {
    if (existsSync(p)) return p;
  }
  throw new Error('bench: peers/torch_peer.py not found');
}

let python: string | null | undefined;

/** A Python interpreter that imports torch (METAFORMER_PYTHON, python3, or the system python3), or null. */
export function torchPython(): string | null {
  if (python !== undefined) return python;
  const candidates = [process.env.METAFORMER_PYTHON, 'python3', '/usr/bin/python3'].filter((c): c is string => !!c);
  python = candidates.find((c) => spawnSync(c, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0) ?? null;
  return python;
}

/** The tuned PyTorch environment for this CPU (PITFALLS.md 3 and 6). */
export function torchEnv(threads: number): NodeJS.ProcessEnv {
  const avx512 = machineInfo().flags.includes('avx512f');
  return {
    ...process.env,
    OMP_WAIT_POLICY: 'passive',
    OMP_NUM_THREADS: String(threads),
    OPENBLAS_NUM_THREADS: '1',
    OPENBLAS_CORETYPE: avx512 ? 'Cooperlake' : 'Haswell',
    ATEN_CPU_CAPABILITY: avx512 ? 'avx512' : 'avx2',
  };
}

export interface TorchResult {
  [key: string]: unknown;
  times?: number[];
}

export function runTorch(job: Record<string, unknown>, threads = 2): TorchResult | { error: string } {
  const py = torchPython();
  if (!py) return { error: 'python3-torch not installed' };
  const r = spawnSync(py, [peerScript()], {
    input: JSON.stringify({ threads, ...job }),
    env: torchEnv(threads),
    encoding: 'utf8',
    maxBuffer: 1 << 24,
    timeout: 30 * 60_000,
  });
  if (r.status !== 0) return { error: (r.stderr || r.error?.message || 'failed').trim().split('\n').slice(-3).join(' | ') };
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as TorchResult;
}

type Ort = typeof import('onnxruntime-node');
let ort: Ort | null | undefined;

export async function loadOrt(): Promise<Ort | null> {
  if (ort !== undefined) return ort;
  try {
    ort = (await import('onnxruntime-node')) as Ort;
  } catch {
    ort = null;
  }
  return ort;
}
