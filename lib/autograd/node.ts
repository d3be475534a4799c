/**
 * Autograd nodes. Each differentiable op records one Node on its output: the inputs, the tensors its
 * backward needs (saved as separate handles, so they live exactly as long as the graph), and a
 * backward() that turns the output gradient into input gradients.
 *
 * Gradient routing (the native rule, backend.h): parameter gradients accumulate (+=) straight into the
 * leaf's .grad (GradContext.paramGrad), activation gradients are written into fresh tensors
 * (GradContext.actGrad) that the engine sums where the graph branches.
 */
import { keep, keepUntracked, Tensor } from '../tensor.js';

let gradEnabled = true;

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Runs fn without recording autograd nodes (inference). */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

export function setGradEnabled(on: boolean): void {
  gradEnabled = on;
}

/** Marks a gradient that backward() already accumulated into the input leaf's .grad. */
export const ACCUMULATED = Symbol('accumulated');
export type GradResult = Tensor | null | typeof ACCUMULATED;

export class GradContext {
  constructor(private readonly node: Node) {}

  /** Whether input i needs a gradient. */
  needs(i: number): boolean {
    const t = this.node.inputs[i];
    return !!t && t.requiresGrad;
  }

  /**
   * The tensor a kernel should accumulate (+=) input i's gradient into, or null if none is needed.
   * For a leaf that is its .grad (created as zeros); otherwise a zeroed tensor the engine routes.
   */
  paramGrad(i: number): Tensor | null {
    const t = this.node.inputs[i];
    if (!t || !t.requiresGrad) return null;
    if (t._node === null) {
      if (t.grad === null || t.grad.disposed) t.grad = keep(Tensor.zeros(t.shape, t.dtype, t.device));
      return t.grad;
    }
    return Tensor.zeros(t.shape, t.dtype, t.device);
  }

  /** A fresh tensor a kernel writes (=) input i's gradient into, or null if none is needed. */
  actGrad(i: number): Tensor | null {
    const t = this.node.inputs[i];
    if (!t || !t.requiresGrad) return null;
    return Tensor.empty(t.shape, t.dtype, t.device);
  }

  /** What backward() returns for input i after filling the tensor from paramGrad(i). */
  paramResult(i: number, g: Tensor | null): GradResult {
    const t = this.node.inputs[i];
    if (!g || !t) return null;
    return t._node === null ? ACCUMULATED : g;
  }
}

export abstract class Node {
  inputs: (Tensor | null)[] = [];
  saved: Tensor[] = [];
  released = false;

  constructor(readonly name: string) {}

  /** Keeps a handle on t for backward; it is disposed when the graph is released. */
  save(t: Tensor): Tensor {
    const s = t._share();
    keepUntracked(s);
    this.saved.push(s);
    return s;
  }

  /** Input gradients, aligned with `inputs`. `gy` is the gradient of this node's output. */
  abstract backward(gy: Tensor, ctx: GradContext): GradResult[];

  release(): void {
    for (const t of this.saved) t.dispose();
    this.saved = [];
    this.released = true;
  }
}

/**
 * Attaches `node` to `out` when any input requires grad and grad mode is on; returns `out`.
 * `setup` saves what backward needs and only runs when the node is recorded.
 */
export function record(out: Tensor, inputs: (Tensor | null)[], makeNode: () => Node): Tensor {
  if (!gradEnabled || !inputs.some((t) => t?.requiresGrad)) return out;
  const node = makeNode();
  node.inputs = inputs;
  out.requiresGrad = true;
  out._node = node;
  return out;
}
