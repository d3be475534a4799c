/**
 * Device selection. 'cpu' and 'cuda' are taken as given ('cuda' throws, saying why, when this build or
 * this machine cannot run it); 'auto' picks 'cuda' when the addon was built with CUDA and a device is
 * present, and otherwise 'cpu', printing a one-line notice on stderr (once per process).
 */
import { addon, type CudaInfo } from './native.js';
import { expectation, type Device } from './tensor.js';

export type DeviceOption = Device | 'auto';
export type { CudaInfo };

const NOT_BUILT: CudaInfo = {
  built: false,
  available: false,
  devices: 0,
  reason: 'this build of metaformer has no CUDA backend',
};

/** What the addon knows of CUDA: built with it, a device present, its name and memory. Never throws. */
export function cudaInfo(): CudaInfo {
  // An addon built before device support has no cudaInfo(): treat it as a build without CUDA.
  return typeof addon.cudaInfo === 'function' ? addon.cudaInfo() : NOT_BUILT;
}

/** True when tensors can be placed on 'cuda'. */
export function cudaAvailable(): boolean {
  return cudaInfo().available;
}

let noticed = false;

/** Resolves a device option to the device to use (see the module comment). */
export function resolveDevice(device: DeviceOption = 'auto'): Device {
  if (device === 'cpu') return 'cpu';
  if (device !== 'cuda' && device !== 'auto') {
    throw new TypeError(expectation("'cpu', 'cuda' or 'auto'", 'device', device));
  }
  const info = cudaInfo();
  if (info.available) return 'cuda';
  if (device === 'cuda') throw new Error(`metaformer: device 'cuda' is unavailable: ${info.reason}`);
  if (!noticed) {
    noticed = true;
    process.stderr.write(`metaformer: device 'auto' runs on the CPU (${info.reason || 'no CUDA device'})\n`);
  }
  return 'cpu';
}

/** Waits for all queued CUDA work and reports an asynchronous kernel error as an Error. No-op without CUDA. */
export function cudaSynchronize(): void {
  if (typeof addon.cudaSynchronize === 'function') addon.cudaSynchronize();
}
