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
