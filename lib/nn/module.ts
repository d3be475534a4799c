/**
 * Module and Parameter: the PyTorch-like container. Parameters are registered under the official
 * state_dict names, so namedParameters() / stateDict() speak the names of the official checkpoints.
 */
import { type Device, expectation, keep, Tensor } from '../tensor.js';
import { assignInto } from '../backend.js';
import { type DeviceOption, resolveDevice } from '../device.js';

export class Parameter extends Tensor {
  /** Wraps a tensor's memory as a parameter (the tensor itself is disposed). */
  static of(t: Tensor, requiresGrad = true): Parameter {
    const p = new Parameter(t._h.share([...t.shape]), t.shape, t.dtype, t.device);
    t.dispose();
    p.requiresGrad = requiresGrad;
    keep(p);
    return p;
  }
}

export interface LoadOptions {
  /** Report missing and unexpected keys as errors (default true). Shape mismatches are always errors. */
  strict?: boolean;
}

export interface LoadResult {
  missing: string[];
  unexpected: string[];
}

export abstract class Module {
  training = true;
  private readonly params = new Map<string, Parameter>();
  private readonly children = new Map<string, Module>();

  protected param(name: string, t: Tensor, requiresGrad = true): Parameter {
    const p = Parameter.of(t, requiresGrad);
    this.params.set(name, p);
    return p;
  }

  protected child<M extends Module>(name: string, m: M): M {
    this.children.set(name, m);
    return m;
  }

  /** Replaces a child (e.g. a new head for fine-tuning); disposes the old one. */
  replaceChild(name: string, m: Module): void {
    const old = this.children.get(name);
    if (!old) throw new RangeError(expectation('the name of a child module', 'name', name));
    old.dispose();
    this.children.set(name, m);
  }

  getChild(name: string): Module | undefined {
    return this.children.get(name);
  }

  abstract forward(x: Tensor): Tensor;

  *namedChildren(): Generator<[string, Module]> {
    yield* this.children.entries();
  }

  *namedModules(prefix = ''): Generator<[string, Module]> {
    yield [prefix, this];
    for (const [n, c] of this.children) yield* c.namedModules(prefix ? `${prefix}.${n}` : n);
  }

  /** [official name, Parameter] pairs, in registration order (the official state_dict order). */
  *namedParameters(prefix = ''): Generator<[string, Parameter]> {
    for (const [n, p] of this.params) yield [prefix ? `${prefix}.${n}` : n, p];
    for (const [n, c] of this.children) yield* c.namedParameters(prefix ? `${prefix}.${n}` : n);
  }

  parameters(): Parameter[] {
    return [...this.namedParameters()].map(([, p]) => p);
  }

  /** The parameters under their official names (the tensors themselves, not copies). */
  stateDict(): Map<string, Tensor> {
    return new Map(this.namedParameters());
  }

  /**
   * Copies tensors into the parameters (converting float16/bfloat16/float64 to the parameter dtype).
   * All problems (missing keys, unexpected keys, shape mismatches) are reported together in one error.
   */
  loadStateDict(sd: Map<string, Tensor>, opts: LoadOptions = {}): LoadResult {
    const strict = opts.strict ?? true;
    const own = this.stateDict();
    const missing = [...own.keys()].filter((k) => !sd.has(k));
    const unexpected = [...sd.keys()].filter((k) => !own.has(k));
    const mismatched: string[] = [];
    for (const [k, t] of sd) {
      const p = own.get(k);
      if (!p) continue;
      if (!(t instanceof Tensor) || t.disposed) {
        mismatched.push(`${k}: expected a live Tensor`);
      } else if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i])) {
        mismatched.push(`${k}: expected shape [${p.shape.join(', ')}] but the checkpoint has [${t.shape.join(', ')}]`);
      }
    }
    const problems: string[] = [];
    if (mismatched.length) problems.push(`shape mismatches (${mismatched.length}):\n  ${mismatched.join('\n  ')}`);
    if (strict && missing.length) problems.push(`missing keys (${missing.length}):\n  ${missing.join('\n  ')}`);
    if (strict && unexpected.length) problems.push(`unexpected keys (${unexpected.length}):\n  ${unexpected.join('\n  ')}`);
    if (problems.length) throw new Error(`loadStateDict: the state dict does not fit the model:\n${problems.join('\n')}`);
    for (const [k, t] of sd) {
      const p = own.get(k);
      if (p) assignInto('loadStateDict', k, t, p);  // a host checkpoint into a model on the GPU too
    }
    return { missing, unexpected };
  }

  /** Where the parameters live ('cpu' for a module without parameters). */
  get device(): Device {
    return this.parameters()[0]?.device ?? 'cpu';
  }

  /**
   * Moves every parameter (and its gradient) to a device, in place: optimizers and other references to
   * the parameters stay valid. 'auto' picks 'cuda' when available, else 'cpu' with a one-line notice;
   * 'cuda' without a usable GPU throws an Error saying why.
   */
  to(device: DeviceOption): this {
    const target = resolveDevice(device);
    for (const p of this.parameters()) {
      p._moveTo(target);
      if (p.grad && !p.grad.disposed) p.grad._moveTo(target);
    }
    return this;
  }

  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Sets requiresGrad on every parameter of this module (freezing / unfreezing). */
  requiresGrad(on: boolean): this {
    for (const p of this.parameters()) p.requiresGrad = on && !p._frozen;
    return this;
  }

  zeroGrad(): void {
    for (const p of this.parameters()) {
      if (p.grad) {
        p.grad.dispose();
        p.grad = null;
      }
    }
  }

  numParameters(): number {
    let n = 0;
    for (const p of this.parameters()) n += p.numel;
    return n;
  }

  dispose(): void {
    for (const p of this.parameters()) {
      p.grad?.dispose();
      p.dispose();
    }
  }
}

declare module '../tensor.js' {
  interface Tensor {
    /** @internal a parameter that never trains (RandomMixing's matrix) */
    _frozen?: boolean;
  }
}

/** Calls each child in order (nn.Sequential); children are named 0, 1, 2, ... */
export class Sequential extends Module {
  readonly items: Module[];
  constructor(items: Module[]) {
    super();
    this.items = items;
    items.forEach((m, i) => this.child(String(i), m));
  }
  forward(x: Tensor): Tensor {
    let y = x;
    for (const m of this.items) y = m.forward(y);
    return y;
  }
}

export class Identity extends Module {
  forward(x: Tensor): Tensor {
    return x;
  }
}
