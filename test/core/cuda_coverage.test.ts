/**
 * Every op in native/core/ops.def has CUDA kernels registered in native/cuda (the same directions as the
 * reference backend). A text check, so it runs where no GPU and no cuBLAS exist; the kernels themselves
 * are compiled on every build that has nvcc and checked on a GPU by bench/gpu/check.sh.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function registrations(dir: string, backend: string, ext: string): Map<string, { fwd: boolean; bwd: boolean }> {
  const out = new Map<string, { fwd: boolean; bwd: boolean }>();
  const re = new RegExp(`MF_REGISTER\\(\\s*${backend}\\s*,\\s*(\\w+)\\s*,([^;]*)\\);`, 'g');
  for (const f of readdirSync(dir).filter((n) => n.endsWith(ext))) {
    const text = readFileSync(path.join(dir, f), 'utf8');
    for (const m of text.matchAll(re)) {
      // The last argument is the backward kernel (nullptr when there is none).
      const args = m[2]!.trim();
      out.set(m[1]!, { fwd: true, bwd: !/,\s*nullptr\s*\)?\s*$/.test(args) && !/\bnullptr$/.test(args) });
    }
  }
  return out;
}

describe('CUDA backend coverage', () => {
  it('registers a CUDA kernel for every op and direction the reference backend has', () => {
    const ops = [...readFileSync(path.join(root, 'native/core/ops.def'), 'utf8').matchAll(/^MF_OP\((\w+)\)/gm)].map((m) => m[1]!);
    const ref = registrations(path.join(root, 'native/ref'), 'ref', '.cpp');
    const cuda = registrations(path.join(root, 'native/cuda'), 'cuda', '.cu');
    const missing: string[] = [];
    for (const op of ops) {
      const r = ref.get(op);
      const c = cuda.get(op);
      if (!c) missing.push(`${op} (no CUDA kernel)`);
      else if (r?.bwd && !c.bwd) missing.push(`${op} backward`);
    }
    expect(missing).toEqual([]);
  });
});
