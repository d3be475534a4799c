/** Native memory statistics: live and peak bytes handed out, and bytes kept in the reuse cache. */
import { addon } from './native.js';
import { leakedTensorCount } from './tensor.js';

export interface MemoryStats {
  /** Bytes currently held by tensors, plans and views. */
  live: number;
  /** High-water mark of `live` since the last resetPeakMemory(). */
  peak: number;
  /** Freed blocks kept for reuse (returned to the OS by trimCache()). */
  cached: number;
  /**
   * Bytes reported to V8's garbage collector as external memory: tensors created outside any tidy()
   * scope or escaping one (memory that tidy()/dispose() frees is not reported).
   */
  gcTracked: number;
  /**
   * Blocks of 64 KiB or more taken from the system allocator since the process started (the rest came
   * from the reuse cache). Each one page-faults on first touch; after the first inference for a given
   * input shape, predict() and features() take none.
   */
  systemAllocs: number;
  /** Tensors collected by the garbage collector without dispose(). */
  leakedTensors: number;
}

export function memoryStats(): MemoryStats {
  return { ...addon.memoryStats(), leakedTensors: leakedTensorCount() };
}

export function resetPeakMemory(): void {
  addon.resetPeak();
}

export function trimCache(): void {
  addon.trimCache();
}
