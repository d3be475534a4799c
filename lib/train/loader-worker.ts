/**
 * The DataLoader's worker thread: rebuilds the dataset, transform and mixup from workerData (plain data; pixels
 * in shared memory), then answers each batch request with the NCHW float32 images, labels and soft targets,
 * transferring their buffers (no copy). Runs from dist/ as plain JavaScript (worker threads cannot load
 * TypeScript).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { buildBatch, datasetFromSpec, makeBatchBuilder, type BatchRequest, type DatasetSpec, type MixupSpec } from './data.js';
import type { TransformSpec } from './augment.js';

interface WorkerInit {
  dataset: DatasetSpec;
  transform: TransformSpec;
  mixup: MixupSpec | null;
}

interface Request extends BatchRequest {
  id: number;
}

const init = workerData as WorkerInit;
const port = parentPort;
if (!port) throw new Error('loader-worker: expected to run in a worker thread');

let builder: ReturnType<typeof makeBatchBuilder> | null = null;
let initError: Error | null = null;
try {
  builder = makeBatchBuilder(datasetFromSpec(init.dataset), init.transform, init.mixup);
} catch (e) {
  initError = e as Error;
}

port.on('message', (req: Request) => {
  void (async () => {
    try {
      if (!builder) throw initError ?? new Error('loader-worker: not initialised');
      const batch = await buildBatch(builder, req);
      const transfer: ArrayBuffer[] = [batch.images.buffer as ArrayBuffer, batch.labels.buffer as ArrayBuffer];
      if (batch.targets) transfer.push(batch.targets.buffer as ArrayBuffer);
      port.postMessage({ id: req.id, ok: true, batch }, transfer);
    } catch (e) {
      const err = e as Error;
      port.postMessage({ id: req.id, ok: false, message: err?.message ?? String(e), stack: err?.stack });
    }
  })();
});
