/**
 * DataLoader: shuffling (a permutation per epoch from the seed), batching, drop_last, and augmentation ahead of
 * the training step in worker_threads: N workers build batches from plain-data descriptions of the dataset and
 * transform (lib/train/data.ts), a prefetch queue keeps `prefetch` batches in flight, and batches come back as
 * transferred Float32Arrays, in order. With workers 0 the batches are built on the calling thread.
 *
 * Each batch's randomness is seeded from (seed, epoch, batch index), so the batches do not depend on the number
 * of workers, and the loader's whole state is { seed, epoch, position } (stateDict / loadStateDict): a resumed
 * loader yields exactly the batches an uninterrupted one would have.
 *
 * Worker threads run dist/lib/train/loader-worker.js (plain JavaScript; `npm run build:ts` builds it).
 */
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { packageRoot } from '../native.js';
import { Rng } from '../random.js';
import { expectation } from '../tensor.js';
import { checkTransformSpec, type TransformSpec } from './augment.js';
import {
  type Batch, type BatchBuilder, buildBatch, type Dataset, makeBatchBuilder, mixSeeds, type MixupSpec,
} from './data.js';

export interface DataLoaderOptions {
  batchSize: number;
  transform: TransformSpec;
  shuffle?: boolean;
  dropLast?: boolean;
  /** Seed of the shuffling and of every batch's augmentation. Default 0. */
  seed?: number;
  /** Worker threads (0: build batches on this thread). Default 0. */
  workers?: number;
  /** Batches in flight. Default 2 per worker (2 without workers). */
  prefetch?: number;
  /** Mix batches (soft targets in Batch.targets). */
  mixup?: MixupSpec | null;
}

export interface DataLoaderState {
  seed: number;
  /** The epoch being read. */
  epoch: number;
  /** Batches of that epoch already handed out. */
  position: number;
}

/** The compiled worker entry: next to this file when running from dist/, else in the package's dist/. */
export function loaderWorkerPath(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.js')) return path.join(path.dirname(here), 'loader-worker.js');
  return path.join(packageRoot(), 'dist', 'lib', 'train', 'loader-worker.js');
}

interface Pending {
  resolve: (b: Batch) => void;
  reject: (e: Error) => void;
  worker: number;
}

type Reply = { id: number; ok: true; batch: Batch } | { id: number; ok: false; message: string; stack?: string };

class WorkerPool {
  private readonly workers: Worker[] = [];
  private readonly busy: number[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private failure: Error | null = null;

  constructor(n: number, init: { dataset: unknown; transform: TransformSpec; mixup: MixupSpec | null }) {
    const file = loaderWorkerPath();
    if (!existsSync(file)) {
      throw new Error(`DataLoader: ${expectation('the compiled worker (run `npm run build:ts`)', 'worker file', file)}`);
    }
    for (let i = 0; i < n; ++i) {
      const w = new Worker(pathToFileURL(file), { workerData: init });
      w.on('message', (m: Reply) => this.onReply(i, m));
      w.on('error', (e) => this.fail(e));
      w.on('exit', (code) => {
        if (code !== 0) this.fail(new Error(`DataLoader: a worker thread exited with code ${code}`));
      });
      w.unref();
      this.workers.push(w);
      this.busy.push(0);
    }
  }

  private onReply(wi: number, m: Reply): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (--this.busy[wi]! === 0) this.workers[wi]!.unref();
    if (m.ok) p.resolve(m.batch);
    else {
      const e = new Error(`DataLoader worker: ${m.message}`);
      if (m.stack) e.stack = `${e.message}\n(worker) ${m.stack}`;
      p.reject(e);
    }
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  request(req: { epoch: number; index: number; indices: Int32Array; seed: number }): Promise<Batch> {
    if (this.failure) return Promise.reject(this.failure);
    let wi = 0;
    for (let i = 1; i < this.workers.length; ++i) if (this.busy[i]! < this.busy[wi]!) wi = i;
    const id = this.nextId++;
    return new Promise<Batch>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, worker: wi });
      if (this.busy[wi]!++ === 0) this.workers[wi]!.ref();
      this.workers[wi]!.postMessage({ id, ...req });
    });
  }

  async close(): Promise<void> {
    this.fail(new Error('DataLoader: closed'));
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers.length = 0;
  }
}

export class DataLoader implements AsyncIterable<Batch> {
  readonly dataset: Dataset;
  readonly batchSize: number;
  readonly shuffle: boolean;
  readonly dropLast: boolean;
  readonly workers: number;
  readonly prefetch: number;
  readonly transform: TransformSpec;
  readonly mixup: MixupSpec | null;
  private seed: number;
  private epochIndex = 0;
  private position = 0;
  private pool: WorkerPool | null = null;
  private local: BatchBuilder | null = null;

  constructor(dataset: Dataset, opts: DataLoaderOptions) {
    if (dataset === null || typeof dataset !== 'object' || typeof dataset.get !== 'function' || typeof dataset.spec !== 'function') {
      throw new TypeError(expectation('a Dataset', 'dataset', dataset));
    }
    if (opts === null || typeof opts !== 'object') throw new TypeError(expectation('DataLoader options', 'options', opts));
    const int = (v: unknown, name: string, lo: number, dflt: number): number => {
      const x = v === undefined ? dflt : v;
      if (!Number.isSafeInteger(x) || (x as number) < lo) throw new RangeError(expectation(`an integer >= ${lo}`, name, v));
      return x as number;
    };
    this.dataset = dataset;
    this.batchSize = int(opts.batchSize, 'batchSize', 1, NaN);
    this.shuffle = opts.shuffle ?? false;
    this.dropLast = opts.dropLast ?? false;
    this.seed = int(opts.seed, 'seed', 0, 0);
    this.workers = int(opts.workers, 'workers', 0, 0);
    this.prefetch = int(opts.prefetch, 'prefetch', 1, 2 * Math.max(1, this.workers));
    this.transform = checkTransformSpec(opts.transform, 'transform');
    this.mixup = opts.mixup ?? null;
    if (this.mixup && this.mixup.numClasses !== dataset.classes.length) {
      throw new RangeError(expectation(`numClasses ${dataset.classes.length} (the dataset's)`, 'mixup.numClasses', this.mixup.numClasses));
    }
    if (this.length === 0) throw new RangeError(expectation(`a dataset of at least ${this.batchSize} samples with dropLast`, 'dataset', `${dataset.length} samples`));
  }

  /** Batches per epoch. */
  get length(): number {
    const n = this.dataset.length;
    return this.dropLast ? Math.floor(n / this.batchSize) : Math.ceil(n / this.batchSize);
  }

  get epoch(): number {
    return this.epochIndex;
  }

  /** The sample order of an epoch. */
  order(epoch: number): Int32Array {
    const idx = Int32Array.from({ length: this.dataset.length }, (_, i) => i);
    if (this.shuffle) new Rng(mixSeeds(this.seed, epoch, 0x5eed)).shuffle(idx);
    return idx;
  }

  /** Moves to the start of `epoch`. */
  setEpoch(epoch: number): void {
    if (!Number.isSafeInteger(epoch) || epoch < 0) throw new RangeError(expectation('an integer >= 0', 'epoch', epoch));
    this.epochIndex = epoch;
    this.position = 0;
  }

  stateDict(): DataLoaderState {
    return { seed: this.seed, epoch: this.epochIndex, position: this.position };
  }

  loadStateDict(s: DataLoaderState): void {
    if (s === null || typeof s !== 'object') throw new TypeError(expectation('a DataLoader state', 'state', s));
    for (const k of ['seed', 'epoch', 'position'] as const) {
      if (!Number.isSafeInteger(s[k]) || s[k] < 0) throw new RangeError(expectation('an integer >= 0', `state.${k}`, s[k]));
    }
    if (s.position > this.length) throw new RangeError(expectation(`a position <= ${this.length}`, 'state.position', s.position));
    this.seed = s.seed;
    this.epochIndex = s.epoch;
    this.position = s.position;
  }

  private build(req: { epoch: number; index: number; indices: Int32Array; seed: number }): Promise<Batch> {
    if (this.workers > 0) {
      this.pool ??= new WorkerPool(this.workers, { dataset: this.dataset.spec(), transform: this.transform, mixup: this.mixup });
      return this.pool.request(req);
    }
    this.local ??= makeBatchBuilder(this.dataset, this.transform, this.mixup);
    return buildBatch(this.local, req);
  }

  /** The rest of the current epoch; when it is done the loader moves to the next epoch. */
  async *[Symbol.asyncIterator](): AsyncGenerator<Batch> {
    const epoch = this.epochIndex;
    const order = this.order(epoch);
    const total = this.length;
    const queue: Promise<Batch>[] = [];
    let next = this.position;
    const issue = (): void => {
      while (queue.length < this.prefetch && next < total) {
        const indices = order.slice(next * this.batchSize, Math.min(order.length, (next + 1) * this.batchSize));
        const p = this.build({ epoch, index: next, indices, seed: this.seed });
        p.catch(() => undefined);  // observed when it reaches the head of the queue
        queue.push(p);
        next += 1;
      }
    };
    issue();
    while (queue.length > 0) {
      const batch = await queue.shift()!;
      issue();
      this.position = batch.index + 1;
      if (this.position === total) {
        this.epochIndex = epoch + 1;
        this.position = 0;
      }
      yield batch;
    }
  }

  /** Stops the worker threads. */
  async close(): Promise<void> {
    await this.pool?.close();
    this.pool = null;
  }
}
