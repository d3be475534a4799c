/** Timing helpers for the benchmarks: medians over repeated runs, and the machine description. */
import { cpus } from 'node:os';
import { readFileSync } from 'node:fs';

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return NaN;
  return n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
}

/** Runs fn `warmup` times untimed, then `iters` times; returns seconds per run. */
export function timeSync(fn: () => void, iters: number, warmup = 1): number[] {
  for (let i = 0; i < warmup; ++i) fn();
  const out: number[] = [];
  for (let i = 0; i < iters; ++i) {
    const t = performance.now();
    fn();
    out.push((performance.now() - t) / 1000);
  }
  return out;
}

export async function timeAsync(fn: () => Promise<void>, iters: number, warmup = 1): Promise<number[]> {
  for (let i = 0; i < warmup; ++i) await fn();
  const out: number[] = [];
  for (let i = 0; i < iters; ++i) {
    const t = performance.now();
    await fn();
    out.push((performance.now() - t) / 1000);
  }
  return out;
}

export interface MachineInfo {
  cpu: string;
  cores: number;
  flags: string[];
  node: string;
}

export function machineInfo(): MachineInfo {
  let flags: string[] = [];
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('flags'));
    const all = new Set((line ?? '').split(':')[1]?.trim().split(/\s+/) ?? []);
    flags = ['avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile'].filter((f) => all.has(f));
  } catch {
    // not Linux: leave empty
  }
  return { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, flags, node: process.version };
}

export const fmt = (x: number, digits = 2): string => (Number.isFinite(x) ? x.toFixed(digits) : 'n/a');
