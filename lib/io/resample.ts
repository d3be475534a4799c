/**
 * Pixel-exact port of Pillow's resampling of 8-bit RGB images (as in PIL 9.4,
 * `Image.resize` -> `ImagingResample` / `ImagingTransformAffine`), written for
 * interleaved HWC `Uint8Array` data.
 *
 * Bicubic and bilinear ("convolution" filters) use Pillow's separable two-pass
 * scheme:
 *   1. For each axis, precompute per-output-pixel filter windows. The filter
 *      support is widened by the downscale factor (antialiasing), the weights
 *      are normalised to sum to one in double precision and then converted to
 *      signed fixed point with PRECISION_BITS = 32 - 8 - 2 = 22 fractional bits
 *      (round half away from zero).
 *   2. Horizontal pass over only the source rows the vertical pass will read,
 *      then vertical pass. Each pass accumulates in 32-bit integers starting
 *      from 0.5 (1 << 21), shifts right by 22 and clips to [0, 255], so the
 *      intermediate image is rounded to uint8 exactly as Pillow does.
 *   A pass is skipped when its axis is unchanged (same size, box covering the
 *   full axis); a request for the unchanged size returns a copy.
 *
 * Nearest neighbour follows Pillow's affine "scale" path instead: sample
 * positions start at box0 + scale/2 and are advanced by repeated addition of
 * the scale (in double precision), then truncated.
 *
 * All box coordinates are rounded to float32 first because Pillow keeps the
 * resize box in C `float`s.
 */

/** Filters implemented by the convolution (two-pass) resampler. */
export type ConvolutionFilter = 'bicubic' | 'bilinear';

/** All supported resampling methods. */
export type ResampleMethod = ConvolutionFilter | 'nearest';

/** Source region `[x0, y0, x1, y1]` in (fractional) source pixel units. */
export type ResampleBox = readonly [number, number, number, number];

const PRECISION_BITS = 32 - 8 - 2;
const FIXED_ONE = 1 << PRECISION_BITS;
const FIXED_HALF = 1 << (PRECISION_BITS - 1);

interface FilterSpec {
  /** Radius of the kernel at scale 1. */
  readonly support: number;
  readonly weight: (x: number) => number;
}

/** Keys' cubic convolution with a = -0.5, as Pillow's `bicubic_filter`. */
function bicubicWeight(x: number): number {
  const a = -0.5;
  const t = x < 0 ? -x : x;
  if (t < 1) {
    return ((a + 2) * t - (a + 3)) * t * t + 1;
  }
  if (t < 2) {
    return (((t - 5) * t + 8) * t - 4) * a;
  }
  return 0;
}

/** Triangle filter, as Pillow's `bilinear_filter`. */
function bilinearWeight(x: number): number {
  const t = x < 0 ? -x : x;
  return t < 1 ? 1 - t : 0;
}

const FILTERS: Record<ConvolutionFilter, FilterSpec> = {
  bicubic: { support: 2, weight: bicubicWeight },
  bilinear: { support: 1, weight: bilinearWeight },
};

/** Per-output-pixel filter windows along one axis, in fixed point. */
interface AxisCoefficients {
  /** Maximum window length (stride of `weights`). */
  readonly ksize: number;
  /** `[first, count]` source index and window length per output pixel. */
  readonly bounds: Int32Array;
  /**
   * Fixed-point weights (integers), `ksize` per output pixel, unused tail
   * zero. Stored as float64: every product and sum of the passes stays an
   * exact integer far below 2^53, and V8 runs float64 arithmetic without
   * the int32 overflow checks, which makes the passes markedly faster.
   */
  readonly weights: Float64Array;
}

/**
 * Port of Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
 * `in0`/`in1` are the box edges along this axis (already float32-rounded).
 */
function computeAxisCoefficients(
  inSize: number,
  in0: number,
  in1: number,
  outSize: number,
  filter: FilterSpec,
): AxisCoefficients {
  // Pillow subtracts the float box edges in float, then divides in double.
  const scale = Math.fround(in1 - in0) / outSize;
  const filterScale = scale < 1 ? 1 : scale;
  const support = filter.support * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const invFilterScale = 1 / filterScale;

  const bounds = new Int32Array(outSize * 2);
  const weights = new Float64Array(outSize * ksize);
  const window = new Float64Array(ksize);

  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    // C `(int)` casts truncate toward zero.
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    const count = Math.max(0, xmax - xmin);

    let total = 0;
    for (let x = 0; x < count; x++) {
      const w = filter.weight((x + xmin - center + 0.5) * invFilterScale);
      window[x] = w;
      total += w;
    }
    const base = xx * ksize;
    for (let x = 0; x < count; x++) {
      const w = total !== 0 ? window[x]! / total : window[x]!;
      // Round half away from zero, then truncate like the C cast.
      weights[base + x] = Math.trunc(w < 0 ? w * FIXED_ONE - 0.5 : w * FIXED_ONE + 0.5);
    }
    // Drop taps whose fixed-point weight is zero at either end of the window:
    // they add nothing to the sums, so results are unchanged.
    let first = 0;
    let end = count;
    while (end > 0 && weights[base + end - 1] === 0) end--;
    while (first < end && weights[base + first] === 0) first++;
    if (first > 0) weights.copyWithin(base, base + first, base + end);
    weights.fill(0, base + end - first, base + ksize);
    bounds[xx * 2] = xmin + first;
    bounds[xx * 2 + 1] = end - first;
  }
  return { ksize, bounds, weights };
}

/**
 * Horizontal pass over `rowCount` source rows starting at `rowOffset`.
 * Output values are clipped into a Uint8ClampedArray, which performs the
 * same saturation as Pillow's `clip8` on the already-shifted integer.
 */
function resampleHorizontalRGB(
  src: Uint8Array,
  srcWidth: number,
  rowOffset: number,
  rowCount: number,
  outWidth: number,
  coeffs: AxisCoefficients,
): Uint8ClampedArray {
  const { ksize, bounds, weights } = coeffs;
  const out = new Uint8ClampedArray(outWidth * rowCount * 3);
  const srcStride = srcWidth * 3;
  let o = 0;
  for (let y = 0; y < rowCount; y++) {
    const rowStart = (y + rowOffset) * srcStride;
    for (let xx = 0; xx < outWidth; xx++) {
      const xmin = bounds[xx * 2]!;
      const count = bounds[xx * 2 + 1]!;
      const kBase = xx * ksize;
      let s0 = FIXED_HALF;
      let s1 = FIXED_HALF;
      let s2 = FIXED_HALF;
      let p = rowStart + xmin * 3;
      let x = 0;
      // Two taps per iteration: roughly twice as fast in V8, same exact sums.
      for (; x + 2 <= count; x += 2) {
        const k = weights[kBase + x]!;
        const q = weights[kBase + x + 1]!;
        s0 += src[p]! * k + src[p + 3]! * q;
        s1 += src[p + 1]! * k + src[p + 4]! * q;
        s2 += src[p + 2]! * k + src[p + 5]! * q;
        p += 6;
      }
      if (x < count) {
        const k = weights[kBase + x]!;
        s0 += src[p]! * k;
        s1 += src[p + 1]! * k;
        s2 += src[p + 2]! * k;
      }
      out[o] = s0 >> PRECISION_BITS;
      out[o + 1] = s1 >> PRECISION_BITS;
      out[o + 2] = s2 >> PRECISION_BITS;
      o += 3;
    }
  }
  return out;
}

/**
 * Vertical pass: output row `yy` is a weighted sum of source rows
 * `bounds[2*yy] .. + count`. Rows are accumulated one at a time into a row
 * accumulator so memory is read sequentially.
 */
function resampleVerticalRGB(
  src: Uint8Array | Uint8ClampedArray,
  width: number,
  outHeight: number,
  coeffs: AxisCoefficients,
): Uint8ClampedArray {
  const { ksize, bounds, weights } = coeffs;
  const rowLen = width * 3;
  const out = new Uint8ClampedArray(rowLen * outHeight);
  const acc = new Float64Array(rowLen);
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = bounds[yy * 2]!;
    const count = bounds[yy * 2 + 1]!;
    const kBase = yy * ksize;
    acc.fill(FIXED_HALF);
    let y = 0;
    for (; y + 2 <= count; y += 2) {
      const k = weights[kBase + y]!;
      const q = weights[kBase + y + 1]!;
      const r0 = (ymin + y) * rowLen;
      const r1 = r0 + rowLen;
      for (let i = 0; i < rowLen; i++) {
        acc[i] += src[r0 + i]! * k + src[r1 + i]! * q;
      }
    }
    if (y < count) {
      const k = weights[kBase + y]!;
      const r0 = (ymin + y) * rowLen;
      for (let i = 0; i < rowLen; i++) {
        acc[i] += src[r0 + i]! * k;
      }
    }
    const outStart = yy * rowLen;
    for (let i = 0; i < rowLen; i++) {
      out[outStart + i] = acc[i]! >> PRECISION_BITS;
    }
  }
  return out;
}

function asUint8(data: Uint8ClampedArray): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** Port of Pillow's `ImagingResampleInner` for 3-channel uint8 images. */
function resampleConvolutionRGB(
  src: Uint8Array,
  width: number,
  height: number,
  outWidth: number,
  outHeight: number,
  filter: FilterSpec,
  box: ResampleBox,
): Uint8Array {
  const [bx0, by0, bx1, by1] = box;
  const needHorizontal = outWidth !== width || bx0 !== 0 || bx1 !== outWidth;
  const needVertical = outHeight !== height || by0 !== 0 || by1 !== outHeight;

  const vert = computeAxisCoefficients(height, by0, by1, outHeight, filter);
  // Source rows actually read by the vertical pass: only these go through
  // the horizontal pass (Pillow takes the first and last window; with
  // zero taps trimmed the extremes are taken over all windows).
  let firstRow = height;
  let lastRow = 0;
  for (let i = 0; i < outHeight; i++) {
    const start = vert.bounds[i * 2]!;
    const count = vert.bounds[i * 2 + 1]!;
    if (count === 0) continue;
    if (start < firstRow) firstRow = start;
    if (start + count > lastRow) lastRow = start + count;
  }
  if (lastRow < firstRow) firstRow = lastRow = 0;

  let current: Uint8Array = src;
  let currentWidth = width;
  if (needHorizontal) {
    const horiz = computeAxisCoefficients(width, bx0, bx1, outWidth, filter);
    for (let i = 0; i < outHeight; i++) {
      vert.bounds[i * 2] -= firstRow;
    }
    current = asUint8(
      resampleHorizontalRGB(src, width, firstRow, lastRow - firstRow, outWidth, horiz),
    );
    currentWidth = outWidth;
  }
  if (needVertical) {
    return asUint8(resampleVerticalRGB(current, currentWidth, outHeight, vert));
  }
  return current === src ? src.slice() : current;
}

/** Port of Pillow's nearest-neighbour resize (`ImagingScaleAffine`). */
function resampleNearestRGB(
  src: Uint8Array,
  width: number,
  height: number,
  outWidth: number,
  outHeight: number,
  box: ResampleBox,
): Uint8Array {
  const [bx0, by0, bx1, by1] = box;
  const ax = Math.fround(bx1 - bx0) / outWidth;
  const ay = Math.fround(by1 - by0) / outHeight;
  // Pillow's COORD(): negative -> -1 (out of range), else truncate.
  const coord = (v: number): number => (v < 0 ? -1 : Math.trunc(v));

  const xTable = new Int32Array(outWidth).fill(-1);
  let xo = bx0 + ax * 0.5;
  for (let x = 0; x < outWidth; x++) {
    const xin = coord(xo);
    if (xin >= 0 && xin < width) xTable[x] = xin;
    xo += ax;
  }

  // Pixels mapping outside the source stay zero (Pillow fills them).
  const out = new Uint8Array(outWidth * outHeight * 3);
  let yo = by0 + ay * 0.5;
  for (let y = 0; y < outHeight; y++) {
    const yin = coord(yo);
    if (yin >= 0 && yin < height) {
      const rowIn = yin * width * 3;
      let o = y * outWidth * 3;
      for (let x = 0; x < outWidth; x++, o += 3) {
        const xin = xTable[x]!;
        if (xin < 0) continue;
        const p = rowIn + xin * 3;
        out[o] = src[p]!;
        out[o + 1] = src[p + 1]!;
        out[o + 2] = src[p + 2]!;
      }
    }
    yo += ay;
  }
  return out;
}

/** Copy of an integer-aligned box region (Pillow's `ImagingCrop` shortcut). */
function cropRGB(
  src: Uint8Array,
  width: number,
  left: number,
  top: number,
  cropWidth: number,
  cropHeight: number,
): Uint8Array {
  const out = new Uint8Array(cropWidth * cropHeight * 3);
  for (let y = 0; y < cropHeight; y++) {
    const from = ((top + y) * width + left) * 3;
    out.set(src.subarray(from, from + cropWidth * 3), y * cropWidth * 3);
  }
  return out;
}

/**
 * Resize interleaved 8-bit RGB data the way Pillow's `Image.resize(size,
 * resample, box)` does for an "RGB" image. `box` defaults to the whole image.
 * Returns a new buffer of `outWidth * outHeight * 3` bytes.
 */
export function resampleRGB8(
  src: Uint8Array,
  width: number,
  height: number,
  outWidth: number,
  outHeight: number,
  method: ResampleMethod,
  box?: ResampleBox,
): Uint8Array {
  for (const [name, v] of [
    ['width', width],
    ['height', height],
    ['output width', outWidth],
    ['output height', outHeight],
  ] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(`resample: ${name} must be a positive integer, got ${v}`);
    }
  }
  if (src.length !== width * height * 3) {
    throw new RangeError(
      `resample: expected ${width * height * 3} bytes for ${width}x${height} RGB, got ${src.length}`,
    );
  }
  const b: ResampleBox = box
    ? [Math.fround(box[0]), Math.fround(box[1]), Math.fround(box[2]), Math.fround(box[3])]
    : [0, 0, width, height];
  if (
    !b.every(Number.isFinite) ||
    b[0] < 0 ||
    b[1] < 0 ||
    b[2] > width ||
    b[3] > height ||
    b[2] <= b[0] ||
    b[3] <= b[1]
  ) {
    throw new RangeError(`resample: invalid box [${b.join(', ')}] for ${width}x${height} image`);
  }

  // Integer box whose size equals the requested size: plain crop / copy.
  if (
    Number.isInteger(b[0]) &&
    Number.isInteger(b[1]) &&
    Math.fround(b[2] - b[0]) === outWidth &&
    Math.fround(b[3] - b[1]) === outHeight
  ) {
    return cropRGB(src, width, b[0], b[1], outWidth, outHeight);
  }
  if (method === 'nearest') {
    return resampleNearestRGB(src, width, height, outWidth, outHeight, b);
  }
  const filter = FILTERS[method];
  if (filter === undefined) {
    throw new RangeError(`resample: unsupported method '${String(method)}'`);
  }
  return resampleConvolutionRGB(src, width, height, outWidth, outHeight, filter, b);
}
