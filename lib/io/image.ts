/**
 * Image decoding and timm-compatible evaluation preprocessing.
 *
 * The goal is bit-for-bit parity with what timm's eval transform produces in
 * Python (PIL 9.4 + torchvision 0.14):
 *
 *   Image.open(f).convert('RGB')
 *   -> transforms.Resize(scale_size, interpolation)   (PIL resampling)
 *   -> transforms.CenterCrop(input_size)
 *   -> transforms.ToTensor()                          (uint8 / 255 in float32)
 *   -> transforms.Normalize(mean, std)                (float32 sub, then div)
 *
 * Decoding is done by sharp (libvips), configured to behave like PIL's
 * `convert('RGB')`: no ICC colour management, no EXIF auto-rotation unless
 * asked for, alpha discarded without compositing, grey replicated to three
 * channels, palettes expanded, first frame only. See `decodeImage` for the
 * treatment of 16-bit and CMYK sources.
 *
 * Resampling is an exact port of Pillow's 8-bit fixed-point resampler (see
 * `resample.ts`), so resized pixels match PIL's uint8 output exactly.
 * Results are plain typed arrays (HWC uint8 images, CHW / NCHW float32).
 */
import { readFile } from 'node:fs/promises';
import sharp from 'sharp';
import { resampleRGB8 } from './resample.js';

/** Decoded 8-bit RGB image, interleaved HWC, row-major. */
export interface RGBImage {
  data: Uint8Array;
  width: number;
  height: number;
  channels: 3;
}

/** Encoded image: a file path or the file's bytes. */
export type ImageSource = string | Buffer | Uint8Array;

/** Resampling method, named as in timm's `interpolation` config field. */
export type Interpolation = 'bicubic' | 'bilinear' | 'nearest';

export interface DecodeOptions {
  /**
   * Apply the EXIF orientation tag (rotate/flip to upright). Default false:
   * PIL's `Image.open` + `convert('RGB')`, and therefore timm, ignore it.
   */
  autoOrient?: boolean;
  /**
   * How 16-bit greyscale sources (PNG/TIFF without alpha) become 8 bits.
   * 'clip' (default) reproduces PIL, which opens them as 32-bit integer
   * mode and clamps values to [0, 255] in `convert('RGB')` (so most of a
   * typical 16-bit image saturates to white). 'scale' keeps the high byte,
   * as PIL itself does for 16-bit RGB, RGBA and grey+alpha sources.
   */
  gray16?: 'clip' | 'scale';
}

/** Largest accepted width or height. */
export const MAX_IMAGE_SIDE = 1 << 14;
/** Largest accepted pixel count. */
export const MAX_IMAGE_PIXELS = 100_000_000;

const IMAGENET_DEFAULT_MEAN: [number, number, number] = [0.485, 0.456, 0.406];
const IMAGENET_DEFAULT_STD: [number, number, number] = [0.229, 0.224, 0.225];

/* ------------------------------------------------------------------------ */
/* Decoding                                                                  */
/* ------------------------------------------------------------------------ */

function describeSource(input: ImageSource): string {
  return typeof input === 'string' ? `'${input}'` : 'buffer';
}

function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message.trim();
  return String(err);
}

/** Make libvips/sharp decoder messages say what is wrong with the input. */
function describeDecodeError(err: unknown): string {
  const msg = errorMessage(err);
  if (/unsupported image format/i.test(msg)) {
    return `not an image, or an unsupported format (${msg})`;
  }
  if (/corrupt header/i.test(msg)) {
    return `corrupt or truncated image header (${msg})`;
  }
  if (/premature end|truncat|end of stream|read error|unexpected end/i.test(msg)) {
    return `truncated or corrupt image data (${msg})`;
  }
  return msg;
}

async function sourceBytes(input: ImageSource, label: string): Promise<Buffer> {
  if (typeof input === 'string') {
    try {
      return await readFile(input);
    } catch (err) {
      throw new Error(`cannot read image file ${label}: ${errorMessage(err)}`, { cause: err });
    }
  }
  if (input instanceof Uint8Array) {
    return Buffer.isBuffer(input)
      ? input
      : Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  }
  throw new TypeError(
    `decodeImage: expected a file path, Buffer or Uint8Array, got ${typeof input}`,
  );
}

/** PIL `cmyk2rgb`: r = 255 - k - c*(255-k)/255 with PIL's rounding MULDIV255. */
function cmykToRGB(src: Uint8Array, pixels: number, srcChannels: number): Uint8Array {
  const out = new Uint8Array(pixels * 3);
  for (let i = 0, p = 0, o = 0; i < pixels; i++, p += srcChannels, o += 3) {
    const nk = 255 - src[p + 3]!;
    for (let c = 0; c < 3; c++) {
      const t = src[p + c]! * nk + 128;
      out[o + c] = nk - (((t >> 8) + t) >> 8);
    }
  }
  return out;
}

/** Expand 1..4 channel 8-bit data to RGB (grey replicated, alpha dropped). */
function toRGB(src: Uint8Array, pixels: number, channels: number): Uint8Array {
  if (channels === 3) return src;
  const out = new Uint8Array(pixels * 3);
  if (channels === 1 || channels === 2) {
    for (let i = 0, p = 0, o = 0; i < pixels; i++, p += channels, o += 3) {
      const v = src[p]!;
      out[o] = v;
      out[o + 1] = v;
      out[o + 2] = v;
    }
  } else {
    for (let i = 0, p = 0, o = 0; i < pixels; i++, p += channels, o += 3) {
      out[o] = src[p]!;
      out[o + 1] = src[p + 1]!;
      out[o + 2] = src[p + 2]!;
    }
  }
  return out;
}

/** 16-bit samples (native endianness) to 8 bits: high byte, or PIL's clamp. */
function narrow16(raw: Uint8Array, clip: boolean): Uint8Array {
  const n = raw.byteLength >> 1;
  const samples = new Uint16Array(n);
  new Uint8Array(samples.buffer).set(raw.subarray(0, n * 2));
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const v = samples[i]!;
    out[i] = clip ? (v > 255 ? 255 : v) : v >> 8;
  }
  return out;
}

/**
 * Decode an encoded image (JPEG, PNG, WebP, GIF first frame, TIFF, AVIF...)
 * to 8-bit RGB, HWC, like PIL's `Image.open(...).convert('RGB')`:
 *
 * - Greyscale is replicated to three channels; alpha is discarded without
 *   compositing onto a background; palette images are expanded.
 * - Embedded ICC profiles are ignored (PIL does not colour-manage).
 * - EXIF orientation is ignored unless `options.autoOrient` is set.
 * - 16-bit RGB/RGBA/grey+alpha: the high byte of each sample (PIL's
 *   "RGB;16B"-style unpacking). 16-bit grey without alpha: see
 *   `DecodeOptions.gray16` (PIL-compatible clamp by default).
 * - CMYK (e.g. JPEG): PIL's naive `cmyk2rgb` formula, no ICC transform.
 * - Other exotic colour spaces (Lab, float TIFF, ...) are converted to sRGB
 *   by libvips; PIL may differ or refuse them.
 *
 * Invalid input (missing file, empty, not an image, truncated or corrupt
 * data, zero or absurd dimensions) rejects with an Error naming the input.
 */
export async function decodeImage(
  input: ImageSource,
  options: DecodeOptions = {},
): Promise<RGBImage> {
  const label = describeSource(input);
  const bytes = await sourceBytes(input, label);
  if (bytes.byteLength === 0) {
    throw new Error(`cannot decode image from ${label}: input is empty (0 bytes)`);
  }
  const fail = (problem: string, cause?: unknown): Error =>
    new Error(`cannot decode image from ${label}: ${problem}`, cause === undefined ? {} : { cause });

  // The header is read without sharp's pixel limit so the size check below
  // can report the actual dimensions; decoding itself keeps the limit.
  const open = (headerOnly: boolean): sharp.Sharp =>
    sharp(bytes, {
      failOn: 'error', // reject truncated or corrupt data, as PIL does
      limitInputPixels: headerOnly ? false : MAX_IMAGE_PIXELS,
      ignoreIcc: true,
      autoOrient: options.autoOrient === true,
      page: 0,
      pages: 1,
    });

  let meta: sharp.Metadata;
  try {
    meta = await open(true).metadata();
  } catch (err) {
    throw fail(describeDecodeError(err), err);
  }
  const { width, height } = meta;
  if (!(width > 0 && height > 0)) {
    throw fail(`invalid dimensions ${width}x${height}`);
  }
  if (width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE || width * height > MAX_IMAGE_PIXELS) {
    throw fail(
      `dimensions ${width}x${height} exceed the limit (${MAX_IMAGE_SIDE} per side, ` +
        `${MAX_IMAGE_PIXELS} pixels)`,
    );
  }

  const isCMYK = meta.space === 'cmyk';
  // 16-bit sources are read as 16-bit samples and narrowed here, PIL's way.
  const is16 = meta.depth === 'ushort' && !isCMYK;
  const isGrey = meta.space === 'b-w' || meta.space === 'grey16';
  try {
    let pipeline = open(false);
    if (isCMYK) {
      // Keep the CMYK samples as stored (no libvips CMYK -> sRGB profile).
      pipeline = pipeline.pipelineColourspace('cmyk').toColourspace('cmyk');
    } else if (is16) {
      pipeline = pipeline.toColourspace(isGrey ? 'grey16' : 'rgb16');
    } else if (isGrey) {
      pipeline = pipeline.toColourspace('b-w');
    } else {
      pipeline = pipeline.toColourspace('srgb');
    }
    const { data, info } = await pipeline
      .raw(is16 ? { depth: 'ushort' } : {})
      .toBuffer({ resolveWithObject: true });

    const pixels = info.width * info.height;
    if (data.byteLength !== pixels * info.channels * (is16 ? 2 : 1)) {
      throw new Error(
        `decoder returned ${data.byteLength} bytes for ${info.width}x${info.height}x${info.channels}`,
      );
    }
    // A plain Uint8Array view (Buffer's slice() would not copy).
    const bytes8 = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    let rgb: Uint8Array;
    if (isCMYK) {
      if (info.channels < 4) throw new Error(`unexpected ${info.channels}-channel CMYK output`);
      rgb = cmykToRGB(bytes8, pixels, info.channels);
    } else {
      // Without alpha PIL clamps 16-bit grey; everything else keeps the high byte.
      const clip = is16 && isGrey && !meta.hasAlpha && options.gray16 !== 'scale';
      rgb = toRGB(is16 ? narrow16(bytes8, clip) : bytes8, pixels, info.channels);
    }
    return { data: rgb, width: info.width, height: info.height, channels: 3 };
  } catch (err) {
    throw fail(describeDecodeError(err), err);
  }
}

/* ------------------------------------------------------------------------ */
/* Geometry                                                                  */
/* ------------------------------------------------------------------------ */

function checkImage(img: RGBImage, what: string): void {
  const { width, height, data } = img;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new RangeError(`${what}: invalid image size ${width}x${height}`);
  }
  if (data.length !== width * height * 3) {
    throw new RangeError(
      `${what}: image data has ${data.length} bytes, expected ${width * height * 3} for ${width}x${height} RGB`,
    );
  }
}

function checkSize(width: number, height: number, what: string): void {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new RangeError(`${what}: target size must be positive integers, got ${width}x${height}`);
  }
}

/**
 * Resize to exactly `width` x `height` with PIL's `Image.resize` semantics
 * (antialiased bicubic/bilinear when downscaling; nearest as PIL's affine
 * scale). Resizing to the current size returns a copy.
 */
export function resizeRGB(
  img: RGBImage,
  width: number,
  height: number,
  interpolation: Interpolation = 'bicubic',
): RGBImage {
  checkImage(img, 'resizeRGB');
  checkSize(width, height, 'resizeRGB');
  const data = resampleRGB8(img.data, img.width, img.height, width, height, interpolation);
  return { data, width, height, channels: 3 };
}

/** Python's `round()` for the non-negative halves used here: ties to even. */
function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const diff = v - f;
  if (diff > 0.5) return f + 1;
  if (diff < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * torchvision's `CenterCrop`: top = int(round((h - ch) / 2)), left likewise
 * (Python rounds halves to even). If the crop is larger than the image, the
 * image is first zero-padded by floor(d/2) before and ceil(d/2) after along
 * each short axis, exactly as torchvision does.
 */
export function centerCrop(img: RGBImage, width: number, height: number): RGBImage {
  checkImage(img, 'centerCrop');
  checkSize(width, height, 'centerCrop');
  let src = img;
  if (width > img.width || height > img.height) {
    const padLeft = width > img.width ? Math.floor((width - img.width) / 2) : 0;
    const padTop = height > img.height ? Math.floor((height - img.height) / 2) : 0;
    const padRight = width > img.width ? Math.floor((width - img.width + 1) / 2) : 0;
    const padBottom = height > img.height ? Math.floor((height - img.height + 1) / 2) : 0;
    const pw = img.width + padLeft + padRight;
    const ph = img.height + padTop + padBottom;
    const padded = new Uint8Array(pw * ph * 3);
    for (let y = 0; y < img.height; y++) {
      const from = y * img.width * 3;
      padded.set(img.data.subarray(from, from + img.width * 3), ((y + padTop) * pw + padLeft) * 3);
    }
    src = { data: padded, width: pw, height: ph, channels: 3 };
    if (pw === width && ph === height) return src;
  }
  const top = roundHalfEven((src.height - height) / 2);
  const left = roundHalfEven((src.width - width) / 2);
  const out = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const from = ((top + y) * src.width + left) * 3;
    out.set(src.data.subarray(from, from + width * 3), y * width * 3);
  }
  return { data: out, width, height, channels: 3 };
}

/* ------------------------------------------------------------------------ */
/* Preprocessing                                                             */
/* ------------------------------------------------------------------------ */

export interface PreprocessConfig {
  /** Model input size as [height, width]. */
  inputSize: [number, number];
  /** Fraction of the resized image kept by the center crop (timm `crop_pct`). */
  cropPct: number;
  interpolation: Interpolation;
  /** Per-channel mean and std of the normalisation, RGB order, on [0, 1] data. */
  mean: [number, number, number];
  std: [number, number, number];
}

/** timm defaults of the MetaFormer baselines: 224x224, crop_pct 1.0, bicubic, ImageNet stats. */
export const DEFAULT_PREPROCESS: Readonly<PreprocessConfig> = Object.freeze<PreprocessConfig>({
  inputSize: [224, 224],
  cropPct: 1.0,
  interpolation: 'bicubic',
  mean: IMAGENET_DEFAULT_MEAN,
  std: IMAGENET_DEFAULT_STD,
});

/** An encoded source, or an image already decoded with `decodeImage`. */
export type PreprocessInput = ImageSource | RGBImage;

function resolveConfig(config: Partial<PreprocessConfig> | undefined): PreprocessConfig {
  const c: PreprocessConfig = { ...DEFAULT_PREPROCESS, ...config };
  const [h, w] = c.inputSize;
  if (!Number.isInteger(h) || !Number.isInteger(w) || h < 1 || w < 1) {
    throw new RangeError(`preprocess: inputSize must be two positive integers, got [${String(c.inputSize)}]`);
  }
  if (!(Number.isFinite(c.cropPct) && c.cropPct > 0)) {
    throw new RangeError(`preprocess: cropPct must be a positive number, got ${c.cropPct}`);
  }
  if (c.interpolation !== 'bicubic' && c.interpolation !== 'bilinear' && c.interpolation !== 'nearest') {
    throw new RangeError(`preprocess: unsupported interpolation '${String(c.interpolation)}'`);
  }
  for (let i = 0; i < 3; i++) {
    if (!Number.isFinite(c.mean[i]) || !Number.isFinite(c.std[i]) || c.std[i] === 0) {
      throw new RangeError('preprocess: mean and std must be 3 finite numbers, std non-zero');
    }
  }
  return c;
}

/**
 * Size of the resize step of timm's `transforms_imagenet_eval` (timm 0.6,
 * the version the MetaFormer baselines use):
 *
 * - square inputSize S: `Resize(floor(S / crop_pct))`, i.e. scale the shorter
 *   side to that length and the longer to int(len * long / short) (torchvision
 *   0.14 semantics), keeping the aspect ratio;
 * - non-square (H, W): `Resize((int(H / crop_pct), int(W / crop_pct)))`, a
 *   resize to exactly that size (the aspect ratio is NOT kept).
 *
 * (timm >= 0.9 resizes non-square targets with ResizeKeepRatio instead.)
 */
export function evalResizeSize(
  imageWidth: number,
  imageHeight: number,
  config: Pick<PreprocessConfig, 'inputSize' | 'cropPct'>,
): { width: number; height: number } {
  const [h, w] = config.inputSize;
  if (h !== w) {
    return { width: Math.floor(w / config.cropPct), height: Math.floor(h / config.cropPct) };
  }
  const size = Math.floor(h / config.cropPct);
  if (imageWidth <= imageHeight) {
    return { width: size, height: Math.trunc((size * imageHeight) / imageWidth) };
  }
  return { width: Math.trunc((size * imageWidth) / imageHeight), height: size };
}

/** Per-channel lookup of the normalised float32 value of each uint8 level. */
function normalizationTables(mean: readonly number[], std: readonly number[]): Float32Array[] {
  const f = Math.fround;
  return [0, 1, 2].map((c) => {
    const m = f(mean[c]!);
    const s = f(std[c]!);
    const table = new Float32Array(256);
    // ToTensor: float32(v) / 255; Normalize: (x - mean) / std, each rounded to float32.
    for (let v = 0; v < 256; v++) table[v] = f(f(f(v / 255) - m) / s);
    return table;
  });
}

/** Resize + center crop of a decoded image, before normalisation. */
function evalGeometry(img: RGBImage, config: PreprocessConfig): RGBImage {
  const [h, w] = config.inputSize;
  const target = evalResizeSize(img.width, img.height, config);
  const resized = resizeRGB(img, target.width, target.height, config.interpolation);
  return centerCrop(resized, w, h);
}

/** HWC uint8 -> CHW float32 normalised, written into `out` at `offset`. */
function writeNormalizedCHW(img: RGBImage, tables: Float32Array[], out: Float32Array, offset: number): void {
  const plane = img.width * img.height;
  const src = img.data;
  for (let c = 0; c < 3; c++) {
    const table = tables[c]!;
    const base = offset + c * plane;
    for (let i = 0, p = c; i < plane; i++, p += 3) {
      out[base + i] = table[src[p]!]!;
    }
  }
}

function isRGBImage(input: PreprocessInput): input is RGBImage {
  return typeof input === 'object' && !(input instanceof Uint8Array) && 'data' in input;
}

async function loadImage(input: PreprocessInput): Promise<RGBImage> {
  return isRGBImage(input) ? input : decodeImage(input);
}

/**
 * timm evaluation preprocessing of one image: decode (unless already decoded),
 * resize (see `evalResizeSize`), center crop to inputSize, scale to [0, 1] and
 * normalise. Returns CHW float32 of length 3 * H * W.
 */
export async function preprocessImage(
  input: PreprocessInput,
  config?: Partial<PreprocessConfig>,
): Promise<Float32Array> {
  const c = resolveConfig(config);
  const [h, w] = c.inputSize;
  const img = evalGeometry(await loadImage(input), c);
  const out = new Float32Array(3 * h * w);
  writeNormalizedCHW(img, normalizationTables(c.mean, c.std), out, 0);
  return out;
}

/** Images decoded at the same time by `preprocessBatch` (bounds peak memory). */
const BATCH_DECODE_CONCURRENCY = 4;

/**
 * `preprocessImage` over several inputs, stacked as NCHW float32. Decoding
 * runs a few images at a time; a failure rejects with the index and the
 * decoder's message.
 */
export async function preprocessBatch(
  inputs: readonly PreprocessInput[],
  config?: Partial<PreprocessConfig>,
): Promise<{ data: Float32Array; shape: [number, 3, number, number] }> {
  const c = resolveConfig(config);
  const [h, w] = c.inputSize;
  const n = inputs.length;
  const per = 3 * h * w;
  const data = new Float32Array(n * per);
  const tables = normalizationTables(c.mean, c.std);

  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (next < n && !failed) {
      const i = next++;
      let img: RGBImage;
      try {
        img = await loadImage(inputs[i]!);
      } catch (err) {
        failed = true;
        throw new Error(`preprocessBatch: input ${i}: ${errorMessage(err)}`, { cause: err });
      }
      writeNormalizedCHW(evalGeometry(img, c), tables, data, i * per);
    }
  };
  const workers = Array.from({ length: Math.min(BATCH_DECODE_CONCURRENCY, n) }, worker);
  await Promise.all(workers);
  return { data, shape: [n, 3, h, w] };
}
