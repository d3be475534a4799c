/**
 * Training and evaluation transforms on 8-bit HWC images with 1 (grey) or 3 (RGB) channels, following timm /
 * torchvision semantics:
 *
 * - randomResizedCrop: torchvision RandomResizedCrop.get_params (scale (0.08, 1), log-uniform ratio (3/4, 4/3),
 *   10 attempts, then a center crop clamped to the ratio range), crop, then PIL resize (lib/io/resample.ts).
 * - randomCropPad: torchvision RandomCrop(size, padding) with a constant fill (small images such as Fashion-MNIST;
 *   an image of another size is first resized to the output size).
 * - hflip with probability p.
 * - RandAugment: timm's `rand-m9-mstd0.5` family (rand_augment_transform): two ops drawn with replacement from
 *   timm's 15-op set (or the `inc1` increasing set), each applied with probability 0.5 at magnitude m plus
 *   Gaussian noise of std mstd, clipped to [0, mmax = 10]; the level-to-argument rules, PIL's ImageOps /
 *   ImageEnhance arithmetic, and affine ops that sample at pixel centres with the mean colour as fill. Affine
 *   ops use bilinear sampling (timm picks bilinear or bicubic at random; we keep bilinear).
 * - randomErasing: timm RandomErasing on the normalised CHW float image (probability, area (0.02, 1/3), aspect
 *   (0.3, 1/0.3), modes 'pixel' (per-pixel normal), 'rand' (per-channel normal), 'const' (zeros)).
 * - evaluation: timm's eval resize (shorter side to size / cropPct) and center crop.
 *
 * Outputs are always 3-channel normalised CHW float32 (grey images give three identical channels), written into
 * a caller's batch buffer. All randomness comes from the Rng passed in, so a transform is a pure function of
 * (image, spec, rng state).
 */
import { resampleRGB8 } from '../io/resample.js';
import type { Rng } from '../random.js';
import { expectation } from '../tensor.js';

/** An 8-bit image, interleaved HWC, row-major. lib/io's RGBImage is one (channels 3). */
export interface Image8 {
  data: Uint8Array;
  width: number;
  height: number;
  channels: 1 | 3;
}

export type TrainInterpolation = 'bilinear' | 'bicubic';

export function checkImage8(img: unknown, name = 'image'): Image8 {
  const i = img as Image8;
  if (i === null || typeof i !== 'object' || !(i.data instanceof Uint8Array)) throw new TypeError(expectation('an 8-bit image { data, width, height, channels }', name, img));
  if (!Number.isSafeInteger(i.width) || !Number.isSafeInteger(i.height) || i.width < 1 || i.height < 1) {
    throw new RangeError(expectation('a positive width and height', name, `${i.width}x${i.height}`));
  }
  if (i.channels !== 1 && i.channels !== 3) throw new RangeError(expectation('1 or 3 channels', name, i.channels));
  if (i.data.length !== i.width * i.height * i.channels) {
    throw new RangeError(expectation(`${i.width * i.height * i.channels} bytes`, name, `${i.data.length} bytes`));
  }
  return i;
}

// --- geometry ---------------------------------------------------------------------------------------

/** Python's round(): halves to even. */
function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

export interface Box {
  left: number;
  top: number;
  width: number;
  height: number;
}

/** A copy of a rectangle (inside the image). */
export function crop(img: Image8, box: Box): Image8 {
  const c = img.channels;
  const out = new Uint8Array(box.width * box.height * c);
  for (let y = 0; y < box.height; ++y) {
    const from = ((box.top + y) * img.width + box.left) * c;
    out.set(img.data.subarray(from, from + box.width * c), y * box.width * c);
  }
  return { data: out, width: box.width, height: box.height, channels: img.channels };
}

/** PIL Image.resize (antialiased when shrinking) for 1- or 3-channel 8-bit images. */
export function resize(img: Image8, width: number, height: number, interpolation: TrainInterpolation = 'bilinear'): Image8 {
  if (img.width === width && img.height === height) return { ...img, data: img.data.slice() };
  if (img.channels === 3) return { data: resampleRGB8(img.data, img.width, img.height, width, height, interpolation), width, height, channels: 3 };
  // grey: the RGB resampler on three identical channels (each channel is resampled on its own)
  const n = img.width * img.height;
  const rgb = new Uint8Array(n * 3);
  for (let i = 0; i < n; ++i) rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = img.data[i]!;
  const r = resampleRGB8(rgb, img.width, img.height, width, height, interpolation);
  const out = new Uint8Array(width * height);
  for (let i = 0; i < out.length; ++i) out[i] = r[3 * i]!;
  return { data: out, width, height, channels: 1 };
}

/** torchvision RandomResizedCrop.get_params. */
export function randomResizedCropBox(width: number, height: number, rng: Rng,
  scale: readonly [number, number] = [0.08, 1], ratio: readonly [number, number] = [3 / 4, 4 / 3]): Box {
  const area = width * height;
  const logLo = Math.log(ratio[0]), logHi = Math.log(ratio[1]);
  for (let attempt = 0; attempt < 10; ++attempt) {
    const targetArea = area * rng.uniform(scale[0], scale[1]);
    const aspect = Math.exp(rng.uniform(logLo, logHi));
    const w = roundHalfEven(Math.sqrt(targetArea * aspect));
    const h = roundHalfEven(Math.sqrt(targetArea / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const top = rng.int(height - h + 1);
      const left = rng.int(width - w + 1);
      return { left, top, width: w, height: h };
    }
  }
  const inRatio = width / height;
  let w = width, h = height;
  if (inRatio < Math.min(ratio[0], ratio[1])) h = roundHalfEven(w / Math.min(ratio[0], ratio[1]));
  else if (inRatio > Math.max(ratio[0], ratio[1])) w = roundHalfEven(h * Math.max(ratio[0], ratio[1]));
  return { left: Math.floor((width - w) / 2), top: Math.floor((height - h) / 2), width: w, height: h };
}

export interface RandomResizedCropOptions {
  scale?: [number, number];
  ratio?: [number, number];
  interpolation?: TrainInterpolation;
}

/** RandomResizedCrop to [height, width]. */
export function randomResizedCrop(img: Image8, size: readonly [number, number], rng: Rng, opts: RandomResizedCropOptions = {}): Image8 {
  const box = randomResizedCropBox(img.width, img.height, rng, opts.scale, opts.ratio);
  return resize(crop(img, box), size[1], size[0], opts.interpolation ?? 'bilinear');
}

/** torchvision RandomCrop(size, padding, fill): pad every side, then a random window of [height, width]. */
export function randomCropPad(img: Image8, size: readonly [number, number], padding: number, rng: Rng, fill = 0): Image8 {
  const [oh, ow] = size;
  const c = img.channels;
  const pw = img.width + 2 * padding, ph = img.height + 2 * padding;
  if (ph < oh || pw < ow) throw new RangeError(expectation(`an image of at least ${ow}x${oh} after padding`, 'image', `${pw}x${ph}`));
  const top = rng.int(ph - oh + 1) - padding;
  const left = rng.int(pw - ow + 1) - padding;
  const out = new Uint8Array(ow * oh * c).fill(fill);
  for (let y = 0; y < oh; ++y) {
    const sy = top + y;
    if (sy < 0 || sy >= img.height) continue;
    for (let x = 0; x < ow; ++x) {
      const sx = left + x;
      if (sx < 0 || sx >= img.width) continue;
      for (let k = 0; k < c; ++k) out[(y * ow + x) * c + k] = img.data[(sy * img.width + sx) * c + k]!;
    }
  }
  return { data: out, width: ow, height: oh, channels: img.channels };
}

/** Mirror left-right. */
export function hflip(img: Image8): Image8 {
  const { width: w, height: h, channels: c } = img;
  const out = new Uint8Array(img.data.length);
  for (let y = 0; y < h; ++y) {
    for (let x = 0; x < w; ++x) {
      const s = (y * w + x) * c, d = (y * w + (w - 1 - x)) * c;
      for (let k = 0; k < c; ++k) out[d + k] = img.data[s + k]!;
    }
  }
  return { ...img, data: out };
}

/**
 * timm's evaluation geometry: resize the shorter side to floor(size / cropPct) (a square target; the other side
 * int(len * long / short)), or both sides for a non-square target, then a center crop.
 */
export function evalResizeCrop(img: Image8, size: readonly [number, number], cropPct = 1, interpolation: TrainInterpolation = 'bicubic'): Image8 {
  const [h, w] = size;
  let rw: number, rh: number;
  if (h !== w) {
    rw = Math.floor(w / cropPct);
    rh = Math.floor(h / cropPct);
  } else {
    const s = Math.floor(h / cropPct);
    if (img.width <= img.height) {
      rw = s;
      rh = Math.trunc((s * img.height) / img.width);
    } else {
      rh = s;
      rw = Math.trunc((s * img.width) / img.height);
    }
  }
  const r = resize(img, rw, rh, interpolation);
  const top = roundHalfEven((rh - h) / 2), left = roundHalfEven((rw - w) / 2);
  if (top < 0 || left < 0) throw new RangeError(expectation('cropPct <= 1', 'cropPct', cropPct));
  return crop(r, { left, top, width: w, height: h });
}

// --- pixel ops (PIL ImageOps / ImageEnhance) ---------------------------------------------------------------

function mapLut(img: Image8, luts: Uint8Array[]): Image8 {
  const c = img.channels;
  const out = new Uint8Array(img.data.length);
  for (let i = 0; i < out.length; ++i) out[i] = luts[i % c]![img.data[i]!]!;
  return { ...img, data: out };
}

function histograms(img: Image8): Uint32Array[] {
  const c = img.channels;
  const h = Array.from({ length: c }, () => new Uint32Array(256));
  for (let i = 0; i < img.data.length; ++i) h[i % c]![img.data[i]!]! += 1;
  return h;
}

/** ImageOps.autocontrast (cutoff 0): each channel stretched from [min, max] to [0, 255]. */
export function autoContrast(img: Image8): Image8 {
  return mapLut(img, histograms(img).map((h) => {
    const lut = new Uint8Array(256);
    let lo = 0, hi = 255;
    while (lo < 256 && h[lo] === 0) lo++;
    while (hi >= 0 && h[hi] === 0) hi--;
    for (let i = 0; i < 256; ++i) {
      if (hi <= lo) lut[i] = i;
      else {
        const scale = 255 / (hi - lo);
        lut[i] = Math.max(0, Math.min(255, Math.trunc(i * scale - lo * scale)));
      }
    }
    return lut;
  }));
}

/** ImageOps.equalize: per-channel histogram equalisation. */
export function equalize(img: Image8): Image8 {
  return mapLut(img, histograms(img).map((h) => {
    const lut = new Uint8Array(256);
    let last = 255;
    while (last > 0 && h[last] === 0) last--;
    let total = 0;
    for (let i = 0; i < 256; ++i) total += h[i]!;
    const step = Math.floor((total - h[last]!) / 255);
    if (step === 0) {
      for (let i = 0; i < 256; ++i) lut[i] = i;
      return lut;
    }
    let n = Math.floor(step / 2);
    for (let i = 0; i < 256; ++i) {
      lut[i] = Math.min(255, Math.floor(n / step));
      n += h[i]!;
    }
    return lut;
  }));
}

function pointLut(img: Image8, f: (v: number) => number): Image8 {
  const lut = new Uint8Array(256);
  for (let i = 0; i < 256; ++i) lut[i] = f(i);
  return mapLut(img, Array.from({ length: img.channels }, () => lut));
}

export const invert = (img: Image8): Image8 => pointLut(img, (v) => 255 - v);
export const posterize = (img: Image8, bits: number): Image8 =>
  bits >= 8 ? { ...img, data: img.data.slice() } : pointLut(img, (v) => v & ~((1 << (8 - Math.max(0, bits))) - 1) & 0xff);
export const solarize = (img: Image8, thresh: number): Image8 => pointLut(img, (v) => (v < thresh ? v : 255 - v));
export const solarizeAdd = (img: Image8, add: number, thresh = 128): Image8 =>
  pointLut(img, (v) => (v < thresh ? Math.min(255, v + add) : v));

/** PIL's "L" conversion of one pixel (ITU-R 601-2 luma, fixed point). */
function luma(d: Uint8Array, i: number, c: number): number {
  return c === 1 ? d[i]! : (d[i]! * 19595 + d[i + 1]! * 38470 + d[i + 2]! * 7471 + 0x8000) >> 16;
}

/** Image.blend(degenerate, img, factor): degenerate + factor * (img - degenerate), truncated to 0..255. */
function blend(img: Image8, degenerate: (i: number) => number, factor: number): Image8 {
  const out = new Uint8Array(img.data.length);
  for (let i = 0; i < out.length; ++i) {
    const d = degenerate(i);
    const v = d + factor * (img.data[i]! - d);
    out[i] = v <= 0 ? 0 : v >= 255 ? 255 : Math.trunc(v);
  }
  return { ...img, data: out };
}

/** ImageEnhance.Color (saturation). */
export function color(img: Image8, factor: number): Image8 {
  const c = img.channels;
  const gray = new Uint8Array(img.width * img.height);
  for (let p = 0; p < gray.length; ++p) gray[p] = luma(img.data, p * c, c);
  return blend(img, (i) => gray[Math.floor(i / c)]!, factor);
}

/** ImageEnhance.Contrast: blend with the mean grey level. */
export function contrast(img: Image8, factor: number): Image8 {
  const c = img.channels;
  let sum = 0;
  for (let i = 0; i < img.data.length; i += c) sum += luma(img.data, i, c);
  const mean = Math.trunc(sum / (img.width * img.height) + 0.5);
  return blend(img, () => mean, factor);
}

/** ImageEnhance.Brightness: blend with black. */
export const brightness = (img: Image8, factor: number): Image8 => blend(img, () => 0, factor);

/** ImageEnhance.Sharpness: blend with ImageFilter.SMOOTH (3x3, centre 5, /13; the border ring unchanged). */
export function sharpness(img: Image8, factor: number): Image8 {
  const { width: w, height: h, channels: c } = img;
  const smooth = img.data.slice();
  for (let y = 1; y < h - 1; ++y) {
    for (let x = 1; x < w - 1; ++x) {
      for (let k = 0; k < c; ++k) {
        let s = 0;
        for (let dy = -1; dy <= 1; ++dy) for (let dx = -1; dx <= 1; ++dx) s += img.data[((y + dy) * w + x + dx) * c + k]! * (dx === 0 && dy === 0 ? 5 : 1);
        smooth[(y * w + x) * c + k] = Math.min(255, Math.trunc(s / 13 + 0.5));
      }
    }
  }
  return blend(img, (i) => smooth[i]!, factor);
}

/**
 * PIL Image.transform(AFFINE, (a, b, c, d, e, f)): output pixel centre (x, y) samples the input at
 * (a x + b y + c, d x + e y + f); bilinear with edge clamp inside the image, `fill` outside.
 */
export function affine(img: Image8, m: readonly number[], fill: readonly number[]): Image8 {
  const { width: w, height: h, channels: c } = img;
  const [a, b, cc, d, e, f] = m as [number, number, number, number, number, number];
  const out = new Uint8Array(img.data.length);
  const src = img.data;
  for (let y = 0; y < h; ++y) {
    for (let x = 0; x < w; ++x) {
      const xin = a * (x + 0.5) + b * (y + 0.5) + cc;
      const yin = d * (x + 0.5) + e * (y + 0.5) + f;
      const o = (y * w + x) * c;
      if (xin < 0 || xin >= w || yin < 0 || yin >= h) {
        for (let k = 0; k < c; ++k) out[o + k] = fill[k] ?? fill[0] ?? 0;
        continue;
      }
      const xs = xin - 0.5, ys = yin - 0.5;
      const x0 = Math.floor(xs), y0 = Math.floor(ys);
      const dx = xs - x0, dy = ys - y0;
      const xa = Math.max(0, Math.min(w - 1, x0)), xb = Math.max(0, Math.min(w - 1, x0 + 1));
      const ya = Math.max(0, Math.min(h - 1, y0)), yb = Math.max(0, Math.min(h - 1, y0 + 1));
      for (let k = 0; k < c; ++k) {
        const top = src[(ya * w + xa) * c + k]! * (1 - dx) + src[(ya * w + xb) * c + k]! * dx;
        const bot = src[(yb * w + xa) * c + k]! * (1 - dx) + src[(yb * w + xb) * c + k]! * dx;
        out[o + k] = Math.min(255, Math.max(0, Math.round(top * (1 - dy) + bot * dy)));
      }
    }
  }
  return { ...img, data: out };
}

/** PIL Image.rotate(degrees) about the centre, same size (counter-clockwise for positive degrees). */
export function rotate(img: Image8, degrees: number, fill: readonly number[]): Image8 {
  const r = -((((degrees % 360) + 360) % 360) * Math.PI) / 180;
  const round15 = (v: number): number => Math.round(v * 1e15) / 1e15;
  const m = [round15(Math.cos(r)), round15(Math.sin(r)), 0, round15(-Math.sin(r)), round15(Math.cos(r)), 0];
  const cx = img.width / 2, cy = img.height / 2;
  m[2] = m[0]! * -cx + m[1]! * -cy + cx;
  m[5] = m[3]! * -cx + m[4]! * -cy + cy;
  return affine(img, m, fill);
}

// --- RandAugment -----------------------------------------------------------------------------------------

const LEVEL_DENOM = 10;

type OpFn = (img: Image8, level: number, rng: Rng, hp: RandAugmentHParams) => Image8;

export interface RandAugmentHParams {
  /** Fill colour of the affine ops (timm: the dataset mean in 0..255). */
  fill: number[];
  /** Largest relative translation (timm translate_pct 0.45). */
  translatePct: number;
}

const negate = (v: number, rng: Rng): number => (rng.random() > 0.5 ? -v : v);

/** timm's level-to-argument rules and ops, by timm name. */
const RAND_OPS: Record<string, OpFn> = {
  AutoContrast: (img) => autoContrast(img),
  Equalize: (img) => equalize(img),
  Invert: (img) => invert(img),
  Rotate: (img, l, rng, hp) => rotate(img, negate((l / LEVEL_DENOM) * 30, rng), hp.fill),
  Posterize: (img, l) => posterize(img, Math.trunc((l / LEVEL_DENOM) * 4)),
  PosterizeIncreasing: (img, l) => posterize(img, 4 - Math.trunc((l / LEVEL_DENOM) * 4)),
  Solarize: (img, l) => solarize(img, Math.trunc((l / LEVEL_DENOM) * 256)),
  SolarizeIncreasing: (img, l) => solarize(img, 256 - Math.trunc((l / LEVEL_DENOM) * 256)),
  SolarizeAdd: (img, l) => solarizeAdd(img, Math.trunc((l / LEVEL_DENOM) * 110)),
  Color: (img, l) => color(img, (l / LEVEL_DENOM) * 1.8 + 0.1),
  ColorIncreasing: (img, l, rng) => color(img, 1 + negate((l / LEVEL_DENOM) * 0.9, rng)),
  Contrast: (img, l) => contrast(img, (l / LEVEL_DENOM) * 1.8 + 0.1),
  ContrastIncreasing: (img, l, rng) => contrast(img, 1 + negate((l / LEVEL_DENOM) * 0.9, rng)),
  Brightness: (img, l) => brightness(img, (l / LEVEL_DENOM) * 1.8 + 0.1),
  BrightnessIncreasing: (img, l, rng) => brightness(img, 1 + negate((l / LEVEL_DENOM) * 0.9, rng)),
  Sharpness: (img, l) => sharpness(img, (l / LEVEL_DENOM) * 1.8 + 0.1),
  SharpnessIncreasing: (img, l, rng) => sharpness(img, 1 + negate((l / LEVEL_DENOM) * 0.9, rng)),
  ShearX: (img, l, rng, hp) => affine(img, [1, negate((l / LEVEL_DENOM) * 0.3, rng), 0, 0, 1, 0], hp.fill),
  ShearY: (img, l, rng, hp) => affine(img, [1, 0, 0, negate((l / LEVEL_DENOM) * 0.3, rng), 1, 0], hp.fill),
  TranslateXRel: (img, l, rng, hp) => affine(img, [1, 0, negate((l / LEVEL_DENOM) * hp.translatePct, rng) * img.width, 0, 1, 0], hp.fill),
  TranslateYRel: (img, l, rng, hp) => affine(img, [1, 0, 0, 0, 1, negate((l / LEVEL_DENOM) * hp.translatePct, rng) * img.height], hp.fill),
};

/** timm _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS. */
export const RAND_TRANSFORMS = ['AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color',
  'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel'] as const;
export const RAND_INCREASING_TRANSFORMS = ['AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
  'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
  'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel'] as const;

export interface RandAugmentConfig {
  magnitude: number;
  numLayers: number;
  magnitudeStd: number;
  magnitudeMax: number;
  prob: number;
  ops: string[];
}

/** Parses timm's config string: 'rand-m9-mstd0.5', with optional -n<layers> -mmax<max> -inc<0|1> -p<prob>. */
export function parseRandAugment(config: string): RandAugmentConfig {
  if (typeof config !== 'string' || !config.startsWith('rand')) {
    throw new TypeError(expectation("a RandAugment config such as 'rand-m9-mstd0.5'", 'randAugment', config));
  }
  const c: RandAugmentConfig = { magnitude: 10, numLayers: 2, magnitudeStd: 0, magnitudeMax: LEVEL_DENOM, prob: 0.5, ops: [...RAND_TRANSFORMS] };
  for (const part of config.split('-').slice(1)) {
    const m = /^(mstd|mmax|inc|m|n|p)([0-9.]+|inf)$/.exec(part);
    if (!m) throw new RangeError(expectation('sections m<int>, n<int>, mstd<float>, mmax<float>, inc<0|1>, p<float>', 'randAugment', part));
    const v = m[2] === 'inf' ? Infinity : Number(m[2]);
    if (!Number.isFinite(v) && m[1] !== 'mstd') throw new RangeError(expectation('a finite value', 'randAugment', part));
    switch (m[1]) {
      case 'm': c.magnitude = v; break;
      case 'n': c.numLayers = Math.trunc(v); break;
      case 'mstd': c.magnitudeStd = v; break;
      case 'mmax': c.magnitudeMax = v; break;
      case 'inc': c.ops = v ? [...RAND_INCREASING_TRANSFORMS] : [...RAND_TRANSFORMS]; break;
      case 'p': c.prob = v; break;
    }
  }
  return c;
}

/** timm RandAugment: numLayers ops chosen with replacement, each applied with probability prob. */
export function randAugment(img: Image8, config: RandAugmentConfig, rng: Rng, hp: RandAugmentHParams): Image8 {
  let out = img;
  const chosen: string[] = [];
  for (let i = 0; i < config.numLayers; ++i) chosen.push(config.ops[rng.int(config.ops.length)]!);
  for (const name of chosen) {
    if (config.prob < 1 && rng.random() > config.prob) continue;
    let m = config.magnitude;
    if (config.magnitudeStd === Infinity) m = rng.uniform(0, m);
    else if (config.magnitudeStd > 0) m = m + config.magnitudeStd * rng.normal();
    m = Math.max(0, Math.min(m, config.magnitudeMax));
    out = RAND_OPS[name]!(out, m, rng, hp);
  }
  return out;
}

// --- float stage ---------------------------------------------------------------------------------------

export interface RandomErasingOptions {
  probability?: number;
  mode?: 'pixel' | 'rand' | 'const';
  minArea?: number;
  maxArea?: number;
  minAspect?: number;
}

/** timm RandomErasing (one box) on a CHW float image at `offset` of `buf`, in place. */
export function randomErasing(buf: Float32Array, offset: number, c: number, h: number, w: number, rng: Rng, opts: RandomErasingOptions = {}): boolean {
  const prob = opts.probability ?? 0.25;
  if (rng.random() > prob) return false;
  const minArea = opts.minArea ?? 0.02, maxArea = opts.maxArea ?? 1 / 3;
  const minAspect = opts.minAspect ?? 0.3;
  const logLo = Math.log(minAspect), logHi = Math.log(1 / minAspect);
  const area = h * w;
  for (let attempt = 0; attempt < 10; ++attempt) {
    const target = rng.uniform(minArea, maxArea) * area;
    const aspect = Math.exp(rng.uniform(logLo, logHi));
    const eh = roundHalfEven(Math.sqrt(target * aspect));
    const ew = roundHalfEven(Math.sqrt(target / aspect));
    if (ew < w && eh < h) {
      const top = rng.int(h - eh + 1);
      const left = rng.int(w - ew + 1);
      const mode = opts.mode ?? 'pixel';
      for (let k = 0; k < c; ++k) {
        const chan = mode === 'rand' ? rng.normal() : 0;
        for (let y = top; y < top + eh; ++y) {
          const row = offset + (k * h + y) * w;
          for (let x = left; x < left + ew; ++x) buf[row + x] = mode === 'pixel' ? rng.normal() : chan;
        }
      }
      return true;
    }
  }
  return false;
}

/** ToTensor + Normalize into 3 channels of CHW float32 at `offset` (grey is replicated). */
// The 256-entry table byte -> normalised float of each channel, per (mean, std) pair (a handful per process).
const normLutCache = new Map<string, Float32Array[]>();

function normLuts(mean: readonly number[], std: readonly number[]): Float32Array[] {
  const key = `${mean.join(',')}|${std.join(',')}`;
  let luts = normLutCache.get(key);
  if (!luts) {
    luts = [0, 1, 2].map((k) => {
      const m = Math.fround(mean[k] ?? mean[0]!), s = Math.fround(std[k] ?? std[0]!);
      const lut = new Float32Array(256);
      for (let v = 0; v < 256; ++v) lut[v] = Math.fround(Math.fround(Math.fround(v / 255) - m) / s);
      return lut;
    });
    if (normLutCache.size > 64) normLutCache.clear();
    normLutCache.set(key, luts);
  }
  return luts;
}

export function normalizeInto(img: Image8, mean: readonly number[], std: readonly number[], out: Float32Array, offset: number): void {
  const plane = img.width * img.height;
  const c = img.channels;
  const luts = normLuts(mean, std);
  for (let k = 0; k < 3; ++k) {
    const src = c === 1 ? 0 : k;
    const lut = luts[k]!;
    const base = offset + k * plane;
    for (let i = 0, p = src; i < plane; ++i, p += c) out[base + i] = lut[img.data[p]!]!;
  }
}

// --- transform specs (plain data, so worker threads can rebuild them) --------------------------------------

export interface TrainTransformSpec {
  kind: 'train';
  /** Output [height, width]. */
  size: [number, number];
  /** 'rrc' RandomResizedCrop (ImageNet), 'pad' RandomCrop with padding (small images), 'none' resize only. */
  crop?: 'rrc' | 'pad' | 'none';
  scale?: [number, number];
  ratio?: [number, number];
  padding?: number;
  interpolation?: TrainInterpolation;
  /** Horizontal flip probability (default 0.5). */
  hflip?: number;
  /** timm RandAugment config string, e.g. 'rand-m9-mstd0.5'; null: none. */
  randAugment?: string | null;
  /** Random erasing probability (default 0.25) and mode (default 'pixel'). */
  reprob?: number;
  remode?: 'pixel' | 'rand' | 'const';
  mean: number[];
  std: number[];
}

export interface EvalTransformSpec {
  kind: 'eval';
  size: [number, number];
  cropPct?: number;
  interpolation?: TrainInterpolation;
  mean: number[];
  std: number[];
}

export type TransformSpec = TrainTransformSpec | EvalTransformSpec;

export const IMAGENET_MEAN = [0.485, 0.456, 0.406];
export const IMAGENET_STD = [0.229, 0.224, 0.225];

/** timm's ImageNet training transform of the MetaFormer recipe at `size`. */
export function imagenetTrainSpec(size = 224, opts: Partial<TrainTransformSpec> = {}): TrainTransformSpec {
  return { kind: 'train', size: [size, size], crop: 'rrc', hflip: 0.5, randAugment: 'rand-m9-mstd0.5', reprob: 0.25, remode: 'pixel',
    mean: IMAGENET_MEAN, std: IMAGENET_STD, interpolation: 'bicubic', ...opts };
}

export function imagenetEvalSpec(size = 224, opts: Partial<EvalTransformSpec> = {}): EvalTransformSpec {
  return { kind: 'eval', size: [size, size], cropPct: 1, interpolation: 'bicubic', mean: IMAGENET_MEAN, std: IMAGENET_STD, ...opts };
}

export function checkTransformSpec(spec: unknown, name = 'transform'): TransformSpec {
  const s = spec as TransformSpec;
  if (s === null || typeof s !== 'object' || (s.kind !== 'train' && s.kind !== 'eval')) {
    throw new TypeError(expectation("a transform spec { kind: 'train' | 'eval', size, mean, std }", name, spec));
  }
  if (!Array.isArray(s.size) || s.size.length !== 2 || s.size.some((d) => !Number.isSafeInteger(d) || d < 1)) {
    throw new RangeError(expectation('[height, width] positive integers', `${name}.size`, s.size));
  }
  for (const k of ['mean', 'std'] as const) {
    const v = s[k];
    if (!Array.isArray(v) || (v.length !== 1 && v.length !== 3) || v.some((x) => typeof x !== 'number' || !Number.isFinite(x))) {
      throw new TypeError(expectation('1 or 3 finite numbers', `${name}.${k}`, v));
    }
  }
  if (s.std.some((x) => x === 0)) throw new RangeError(expectation('non-zero values', `${name}.std`, s.std));
  if (s.kind === 'train') {
    if (s.crop !== undefined && !['rrc', 'pad', 'none'].includes(s.crop)) throw new TypeError(expectation("'rrc', 'pad' or 'none'", `${name}.crop`, s.crop));
    if (s.randAugment) parseRandAugment(s.randAugment);
    for (const k of ['hflip', 'reprob'] as const) {
      const v = s[k];
      if (v !== undefined && !(typeof v === 'number' && v >= 0 && v <= 1)) throw new RangeError(expectation('a probability in [0, 1]', `${name}.${k}`, v));
    }
  } else if (s.cropPct !== undefined && !(typeof s.cropPct === 'number' && s.cropPct > 0 && s.cropPct <= 1)) {
    throw new RangeError(expectation('a number in (0, 1]', `${name}.cropPct`, s.cropPct));
  }
  return s;
}

/** A compiled transform: image -> 3 x H x W normalised floats written at `offset` of `out`. */
export type Transform = (img: Image8, rng: Rng, out: Float32Array, offset: number) => void;

export function buildTransform(specIn: TransformSpec): Transform {
  const spec = checkTransformSpec(specIn);
  const [h, w] = spec.size;
  if (spec.kind === 'eval') {
    return (img, _rng, out, offset) => {
      const g = img.width === w && img.height === h ? img : evalResizeCrop(img, spec.size, spec.cropPct ?? 1, spec.interpolation ?? 'bicubic');
      normalizeInto(g, spec.mean, spec.std, out, offset);
    };
  }
  const ra = spec.randAugment ? parseRandAugment(spec.randAugment) : null;
  const fill = spec.mean.map((m) => Math.min(255, Math.round(255 * m)));
  const interp = spec.interpolation ?? 'bilinear';
  const crop = spec.crop ?? 'rrc';
  return (img, rng, out, offset) => {
    let g: Image8;
    if (crop === 'rrc') g = randomResizedCrop(img, spec.size, rng, { scale: spec.scale, ratio: spec.ratio, interpolation: interp });
    else if (crop === 'pad') g = randomCropPad(img.width === w && img.height === h ? img : resize(img, w, h, interp), spec.size, spec.padding ?? 4, rng);
    else g = img.width === w && img.height === h ? img : resize(img, w, h, interp);
    if (rng.random() < (spec.hflip ?? 0.5)) g = hflip(g);
    if (ra) g = randAugment(g, ra, rng, { fill: img.channels === 1 ? [fill[0]!] : fill, translatePct: 0.45 });
    normalizeInto(g, spec.mean, spec.std, out, offset);
    const reprob = spec.reprob ?? 0.25;
    if (reprob > 0) randomErasing(out, offset, 3, h, w, rng, { probability: reprob, mode: spec.remode ?? 'pixel' });
  };
}
