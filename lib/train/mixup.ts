/**
 * Mixup and CutMix on a batch, timm's `Mixup` in 'batch' mode: one lambda per batch, sample i mixed with sample
 * B-1-i (the flipped batch). With both enabled (timm defaults mixup_alpha 0.8, cutmix_alpha 1.0, switch_prob 0.5)
 * each batch uses CutMix with probability switchProb, else Mixup; lambda ~ Beta(alpha, alpha). The CutMix box
 * is timm's rand_bbox (a centre uniform over the image, sides int(H sqrt(1-lam)), clipped at the borders), and
 * with correctLam (default) lambda becomes 1 - box area / image area. Label smoothing is folded into the soft
 * targets: lam * smooth(y) + (1 - lam) * smooth(flip(y)), smooth = one-hot with (1 - s + s/K, s/K).
 */
import type { Rng } from '../random.js';
import { expectation } from '../tensor.js';

export interface MixupOptions {
  numClasses: number;
  mixupAlpha?: number;
  cutmixAlpha?: number;
  /** CutMix box side ratios [min, max] of the image sides (timm cutmix_minmax); overrides cutmixAlpha's lambda. */
  cutmixMinMax?: [number, number] | null;
  /** Probability of mixing a batch at all (timm prob / mix_prob). Default 1. */
  prob?: number;
  switchProb?: number;
  labelSmoothing?: number;
  correctLam?: boolean;
}

/** Gamma(k, 1) by Marsaglia and Tsang (with the k < 1 boost). */
export function sampleGamma(rng: Rng, k: number): number {
  if (k < 1) return sampleGamma(rng, k + 1) * Math.pow(rng.random() || Number.MIN_VALUE, 1 / k);
  const d = k - 1 / 3, c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number, v: number;
    do {
      x = rng.normal();
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = rng.random();
    if (u < 1 - 0.0331 * x ** 4 || Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v;
  }
}

/** Beta(a, b) from two Gamma draws. */
export function sampleBeta(rng: Rng, a: number, b: number): number {
  const x = sampleGamma(rng, a), y = sampleGamma(rng, b);
  return x + y > 0 ? x / (x + y) : 0.5;
}

export interface CutmixBox {
  /** Rows [top, bottom) and columns [left, right). */
  top: number;
  bottom: number;
  left: number;
  right: number;
}

const clip = (v: number, lo: number, hi: number): number => Math.max(lo, Math.min(hi, v));

/** timm cutmix_bbox_and_lam: the box and the (corrected) lambda. */
export function cutmixBox(h: number, w: number, lam: number, rng: Rng, minmax: [number, number] | null = null, correctLam = true): { box: CutmixBox; lam: number } {
  let box: CutmixBox;
  if (minmax) {
    const ch = Math.trunc(h * minmax[0]) + rng.int(Math.max(1, Math.trunc(h * minmax[1]) - Math.trunc(h * minmax[0])));
    const cw = Math.trunc(w * minmax[0]) + rng.int(Math.max(1, Math.trunc(w * minmax[1]) - Math.trunc(w * minmax[0])));
    const top = rng.int(h - ch + 1), left = rng.int(w - cw + 1);
    box = { top, bottom: top + ch, left, right: left + cw };
  } else {
    const ratio = Math.sqrt(1 - lam);
    const ch = Math.trunc(h * ratio), cw = Math.trunc(w * ratio);
    const cy = rng.int(h), cx = rng.int(w);
    box = {
      top: clip(cy - Math.floor(ch / 2), 0, h), bottom: clip(cy + Math.floor(ch / 2), 0, h),
      left: clip(cx - Math.floor(cw / 2), 0, w), right: clip(cx + Math.floor(cw / 2), 0, w),
    };
  }
  if (correctLam || minmax) lam = 1 - ((box.bottom - box.top) * (box.right - box.left)) / (h * w);
  return { box, lam };
}

/** Smoothed one-hot targets of `labels` mixed with those of the flipped batch: [B, K] row-major. */
export function mixupTargets(labels: Int32Array, numClasses: number, lam: number, smoothing: number): Float32Array {
  const b = labels.length;
  const off = smoothing / numClasses, on = 1 - smoothing + off;
  const out = new Float32Array(b * numClasses);
  for (let i = 0; i < b; ++i) {
    const row = out.subarray(i * numClasses, (i + 1) * numClasses);
    row.fill(off);
    row[labels[i]!]! += lam * (on - off);
    row[labels[b - 1 - i]!]! += (1 - lam) * (on - off);
  }
  return out;
}

export interface MixupResult {
  /** Soft targets [B, K]. */
  targets: Float32Array;
  lam: number;
  mode: 'none' | 'mixup' | 'cutmix';
  box?: CutmixBox;
}

export class Mixup {
  readonly numClasses: number;
  readonly mixupAlpha: number;
  readonly cutmixAlpha: number;
  readonly cutmixMinMax: [number, number] | null;
  readonly prob: number;
  readonly switchProb: number;
  readonly labelSmoothing: number;
  readonly correctLam: boolean;
  /** Off: only label smoothing (timm mixup_off_epoch turns it off for the last epochs). */
  enabled = true;

  constructor(opts: MixupOptions) {
    if (opts === null || typeof opts !== 'object') throw new TypeError(expectation('mixup options', 'options', opts));
    if (!Number.isSafeInteger(opts.numClasses) || opts.numClasses < 1) throw new RangeError(expectation('a positive integer', 'numClasses', opts.numClasses));
    const num = (v: unknown, name: string, dflt: number, hi = Infinity): number => {
      const x = v === undefined ? dflt : v;
      if (typeof x !== 'number' || !(x >= 0 && x <= hi)) throw new RangeError(expectation(`a number in [0, ${hi}]`, name, v));
      return x;
    };
    this.numClasses = opts.numClasses;
    this.mixupAlpha = num(opts.mixupAlpha, 'mixupAlpha', 0.8);
    this.cutmixAlpha = num(opts.cutmixAlpha, 'cutmixAlpha', 1.0);
    this.prob = num(opts.prob, 'prob', 1, 1);
    this.switchProb = num(opts.switchProb, 'switchProb', 0.5, 1);
    this.labelSmoothing = num(opts.labelSmoothing, 'labelSmoothing', 0.1, 0.999999);
    this.correctLam = opts.correctLam ?? true;
    const mm = opts.cutmixMinMax ?? null;
    if (mm !== null && (!Array.isArray(mm) || mm.length !== 2 || !(mm[0] >= 0 && mm[0] < mm[1] && mm[1] <= 1))) {
      throw new RangeError(expectation('[min, max] with 0 <= min < max <= 1', 'cutmixMinMax', mm));
    }
    this.cutmixMinMax = mm;
  }

  /** Whether any mixing can happen (else the targets are only smoothed). */
  get active(): boolean {
    return this.enabled && this.prob > 0 && (this.mixupAlpha > 0 || this.cutmixAlpha > 0 || this.cutmixMinMax !== null);
  }

  /** Mixes an NCHW float batch in place and returns the soft targets. */
  apply(images: Float32Array, shape: readonly [number, number, number, number], labels: Int32Array, rng: Rng): MixupResult {
    const [b, c, h, w] = shape;
    if (images.length !== b * c * h * w) throw new RangeError(expectation(`${b * c * h * w} values for [${shape.join(', ')}]`, 'images', images.length));
    if (labels.length !== b) throw new RangeError(expectation(`${b} labels`, 'labels', labels.length));
    for (const l of labels) if (!(l >= 0 && l < this.numClasses)) throw new RangeError(expectation(`class ids in [0, ${this.numClasses})`, 'labels', l));
    let lam = 1;
    let mode: MixupResult['mode'] = 'none';
    if (this.active && rng.random() < this.prob) {
      const canMix = this.mixupAlpha > 0, canCut = this.cutmixAlpha > 0 || this.cutmixMinMax !== null;
      const useCut = canMix && canCut ? rng.random() < this.switchProb : canCut;
      mode = useCut ? 'cutmix' : 'mixup';
      lam = this.cutmixMinMax !== null && useCut ? 1 : sampleBeta(rng, useCut ? this.cutmixAlpha : this.mixupAlpha, useCut ? this.cutmixAlpha : this.mixupAlpha);
    }
    let box: CutmixBox | undefined;
    const per = c * h * w;
    if (mode === 'mixup' && lam !== 1) {
      for (let i = 0; i < b >> 1; ++i) {
        const a0 = i * per, b0 = (b - 1 - i) * per;
        for (let k = 0; k < per; ++k) {
          const x = images[a0 + k]!, y = images[b0 + k]!;
          images[a0 + k] = lam * x + (1 - lam) * y;
          images[b0 + k] = lam * y + (1 - lam) * x;
        }
      }
    } else if (mode === 'cutmix') {
      const r = cutmixBox(h, w, lam, rng, this.cutmixMinMax, this.correctLam);
      lam = r.lam;
      box = r.box;
      for (let i = 0; i < b >> 1; ++i) {
        const a0 = i * per, b0 = (b - 1 - i) * per;
        for (let ch = 0; ch < c; ++ch) {
          for (let y = box.top; y < box.bottom; ++y) {
            const row = (ch * h + y) * w;
            for (let x = box.left; x < box.right; ++x) {
              const t = images[a0 + row + x]!;
              images[a0 + row + x] = images[b0 + row + x]!;
              images[b0 + row + x] = t;
            }
          }
        }
      }
    }
    return { targets: mixupTargets(labels, this.numClasses, lam, this.labelSmoothing), lam, mode, box };
  }
}
