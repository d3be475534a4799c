/**
 * Low-level file I/O shared by the checkpoint readers and writers: exact positional reads in bounded chunks (async
 * and sync), complete writes, and the allocation hook through which callers choose where tensor bytes land.
 *
 * Sync and async readers share their parsing logic as "read plans": generators that yield the positional reads
 * they need and resume once each read is filled. `runPlan` drives a plan on a FileHandle, `runPlanSync` on a fd.
 */
import * as fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { DTYPE_SIZE, type DType, type RawTensor } from '../dtype.js';

/** Largest single read or write issued to the OS. */
export const IO_CHUNK = 64 * 1024 * 1024;

/** Returns the buffer a tensor's bytes are read into; it must be exactly `byteLength` long. */
export type Alloc = (dtype: DType, shape: number[], byteLength: number) => Uint8Array;

export const defaultAlloc: Alloc = (_dtype, _shape, byteLength) => new Uint8Array(byteLength);

/** Calls `alloc` and checks that the buffer it returned has the requested length. */
export function allocChecked(file: string, name: string, alloc: Alloc, dtype: DType, shape: number[],
  byteLength: number): Uint8Array {
  const buf = alloc(dtype, [...shape], byteLength);
  if (!(buf instanceof Uint8Array) || buf.byteLength !== byteLength) {
    const got = buf instanceof Uint8Array ? `${buf.byteLength} bytes` : typeof buf;
    throw new Error(`${file}: tensor '${name}': expected alloc() to return a Uint8Array of ${byteLength} bytes ` +
      `but it returned ${got}`);
  }
  return buf;
}

/** Checks a tensor handed to a writer and returns its byte length. */
export function checkRawTensor(file: string, name: string, t: RawTensor): number {
  const bytes = tensorBytes(file, name, t.dtype, t.shape);
  checkTensorData(file, name, t, bytes);
  return bytes;
}

/** The byte size of a dtype and shape, checked (the error names the file and the tensor). */
export function tensorBytes(file: string, name: string, dtype: unknown, shape: unknown): number {
  const size = DTYPE_SIZE[dtype as keyof typeof DTYPE_SIZE];
  if (size === undefined) throw new Error(`${file}: tensor '${name}': expected a known dtype but found ${preview(dtype)}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new Error(`${file}: tensor '${name}': expected a shape of non-negative integers but found ${preview(shape)}`);
  }
  return (shape as number[]).reduce((a, d) => a * d, size);
}

/** Checks that t.data holds exactly `bytes` bytes. */
export function checkTensorData(file: string, name: string, t: Pick<RawTensor, 'dtype' | 'shape' | 'data'>, bytes: number): void {
  if (!(t.data instanceof Uint8Array) || t.data.byteLength !== bytes) {
    const found = t.data instanceof Uint8Array ? `${t.data.byteLength} bytes` : typeof t.data;
    throw new Error(`${file}: tensor '${name}': expected ${bytes} bytes of data for ${t.dtype} ${preview(t.shape)} ` +
      `but found ${found}`);
  }
}

/** One positional read: fill all of `buf` from byte `position` of the file. */
export interface ReadRequest {
  buf: Uint8Array;
  position: number;
}

/** A generator that yields the reads it needs and returns a result once they are done. */
export type ReadPlan<T> = Generator<ReadRequest, T, void>;

function truncated(file: string, req: ReadRequest, got: number): Error {
  return new Error(`${file}: expected ${req.buf.byteLength} bytes at offset ${req.position} but the file ends ` +
    `after ${req.position + got} bytes`);
}

/** Fills `buf` from `position`, in chunks of at most IO_CHUNK; a short file is an error. */
export async function readFullyAt(file: string, handle: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buf.byteLength) {
    const len = Math.min(IO_CHUNK, buf.byteLength - done);
    const { bytesRead } = await handle.read(buf, done, len, position + done);
    if (bytesRead === 0) throw truncated(file, { buf, position }, done);
    done += bytesRead;
  }
}

export function readFullyAtSync(file: string, fd: number, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.byteLength) {
    const len = Math.min(IO_CHUNK, buf.byteLength - done);
    const bytesRead = fs.readSync(fd, buf, done, len, position + done);
    if (bytesRead === 0) throw truncated(file, { buf, position }, done);
    done += bytesRead;
  }
}

export async function runPlan<T>(file: string, handle: FileHandle, plan: ReadPlan<T>): Promise<T> {
  for (let step = plan.next(); ; step = plan.next()) {
    if (step.done) return step.value;
    await readFullyAt(file, handle, step.value.buf, step.value.position);
  }
}

export function runPlanSync<T>(file: string, fd: number, plan: ReadPlan<T>): T {
  for (let step = plan.next(); ; step = plan.next()) {
    if (step.done) return step.value;
    readFullyAtSync(file, fd, step.value.buf, step.value.position);
  }
}

/** Writes all of `data` at the handle's current position, in chunks of at most IO_CHUNK. */
export async function writeAll(handle: FileHandle, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.byteLength) {
    const len = Math.min(IO_CHUNK, data.byteLength - done);
    const { bytesWritten } = await handle.write(data, done, len, null);
    done += bytesWritten;
  }
}

/** A short, printable rendering of a parsed value for error messages. */
export function preview(value: unknown, max = 80): string {
  let s: string;
  try {
    s = typeof value === 'bigint' ? `${value}` : JSON.stringify(value) ?? String(value);
  } catch {
    s = String(value);
  }
  return s.length > max ? `${s.slice(0, max)}...` : s;
}
