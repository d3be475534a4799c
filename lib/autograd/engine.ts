/**
 * The backward pass: walks the recorded graph from a scalar in reverse topological order, calls each
 * node's backward once with the summed gradient of its output, and accumulates into the leaves' .grad.
 * Intermediate gradients are disposed as soon as they are used; saved tensors when the node is done
 * (unless retainGraph).
 */
import { runOp } from '../backend.js';
import { expectation, keep, keepUntracked, Tensor } from '../tensor.js';
import { ACCUMULATED, GradContext, noGrad } from './node.js';

export interface BackwardOptions {
  /** Keep the graph (saved tensors) for another backward through it. */
  retainGraph?: boolean;
}

function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const visited = new Set<Tensor>();
  const stack: [Tensor, number][] = [[root, 0]];
  visited.add(root);
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    const [t, i] = top;
    const inputs = t._node?.inputs ?? [];
    if (i < inputs.length) {
      top[1] = i + 1;
      const child = inputs[i];
      if (child && child._node && child.requiresGrad && !visited.has(child)) {
        visited.add(child);
        stack.push([child, 0]);
      }
    } else {
      order.push(t);
      stack.pop();
    }
  }
  return order;  // inputs before outputs
}

/** Adds g into acc (same shape), in place. */
function accumulate(acc: Tensor, g: Tensor): void {
  runOp('axpy', 0, ['grad'], [g], [acc], [1]);
}

function toLeaf(leaf: Tensor, g: Tensor): void {
  if (leaf.grad === null || leaf.grad.disposed) {
    leaf.grad = keep(g);
  } else {
    accumulate(leaf.grad, g);
    g.dispose();
  }
}

export function backward(root: Tensor, gradient?: Tensor, opts: BackwardOptions = {}): void {
  if (!root.requiresGrad) {
    throw new Error('backward: the tensor does not require grad (no input of the computation required grad)');
  }
  if (gradient === undefined && root.numel !== 1) {
    throw new RangeError(expectation('a one-element tensor (or an explicit gradient)', 'backward()', root));
  }
  if (gradient !== undefined && gradient.shape.join(',') !== root.shape.join(',')) {
    throw new RangeError(expectation(`a gradient of shape [${root.shape.join(', ')}]`, 'gradient', gradient));
  }
  noGrad(() => {
    if (root._node === null) {  // a leaf: its gradient is the seed itself
      toLeaf(root, gradient ? gradient.clone() : Tensor.ones(root.shape, root.dtype, root.device));
      return;
    }
    const order = topoOrder(root);
    const grads = new Map<Tensor, Tensor>();
    grads.set(root, gradient ? gradient.clone() : Tensor.ones(root.shape, root.dtype, root.device));
    for (let k = order.length - 1; k >= 0; --k) {
      const t = order[k]!;
      const node = t._node!;
      const gy = grads.get(t);
      if (!gy) continue;
      grads.delete(t);
      if (node.released) {
        gy.dispose();
        throw new Error(`backward: the graph through ${node.name} was already released; pass { retainGraph: true } to the first backward()`);
      }
      const results = node.backward(gy, new GradContext(node));
      gy.dispose();
      node.inputs.forEach((input, i) => {
        const g = results[i];
        if (!input || g === null || g === undefined || g === ACCUMULATED) return;
        if (!input.requiresGrad) {
          g.dispose();
        } else if (input._node === null) {
          toLeaf(input, g);
        } else {
          const prev = grads.get(input);
          if (prev) {
            accumulate(prev, g);
            g.dispose();
          } else {
            grads.set(input, keepUntracked(g));
          }
        }
      });
      if (!opts.retainGraph) node.release();
    }
    for (const g of grads.values()) g.dispose();
  });
}
