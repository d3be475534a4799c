/**
 * Tests for lib/io/image.ts and lib/io/resample.ts: timm eval preprocessing
 * against the reference tensors in fixtures/preprocess/expected.safetensors
 * (torchvision 0.14 + PIL 9.4), decoding semantics (PIL `convert('RGB')`),
 * geometry helpers, and rejection of bad input.
 *
 * Extra reference values (hashes, small encoded images and their RGB bytes)
 * were produced with Pillow 11.3, whose resampling and mode-conversion code
 * is the same as 9.4's for these paths (Pillow 11.3 also reproduces every
 * fixture tensor exactly).
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { deflateSync } from 'node:zlib';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  centerCrop,
  decodeImage,
  DEFAULT_PREPROCESS,
  evalResizeSize,
  preprocessBatch,
  preprocessImage,
  resizeRGB,
  type PreprocessConfig,
  type RGBImage,
} from '../../lib/io/image.js';
import { resampleRGB8 } from '../../lib/io/resample.js';
import { readSafetensors } from '../../lib/io/safetensors.js';
import { fixturePath } from '../helpers/fixtures.js';

const preprocessDir = fixturePath('preprocess');
const imagePath = (name: string): string => fixturePath('preprocess', 'images', name);

/** One uint8 level after normalisation is 1 / (255 * std) <= 1 / (255 * 0.224). */
const ONE_LEVEL = 1 / (255 * 0.224);

interface Diff {
  maxAbs: number;
  meanAbs: number;
  over1e6: number;
}

function diff(a: Float32Array, b: Float32Array): Diff {
  expect(a.length).toBe(b.length);
  let maxAbs = 0;
  let sum = 0;
  let over1e6 = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (d > maxAbs) maxAbs = d;
    if (d > 1e-6) over1e6++;
    sum += d;
  }
  return { maxAbs, meanAbs: sum / a.length, over1e6 };
}

function sha256(data: ArrayBufferView): string {
  return createHash('sha256')
    .update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength))
    .digest('hex');
}

function hex(data: Uint8Array): string {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('hex');
}

/* ---------------------------------------------------------------------- */
/* Reference tensors                                                       */
/* ---------------------------------------------------------------------- */

describe('preprocessImage vs torchvision 0.14 + PIL 9.4 fixtures', () => {
  const expected = new Map<string, Float32Array>();

  beforeAll(async () => {
    const tensors = await readSafetensors(path.join(preprocessDir, 'expected.safetensors'));
    for (const [name, t] of tensors) {
      const s = Number(name.split('@')[1]);
      expect(t.shape).toEqual([3, s, s]);
      expect(t.data.byteLength).toBe(4 * 3 * s * s); // F32
      // Copy into an aligned buffer before viewing as float32.
      const bytes = t.data.slice();
      expected.set(name, new Float32Array(bytes.buffer, 0, bytes.byteLength / 4));
    }
  });

  it('covers the documented cases', () => {
    expect([...expected.keys()].sort()).toEqual([
      'astronaut.png@224',
      'camera.png@224',
      'chelsea.png@224',
      'chelsea.png@384',
      'coffee.png@224',
      'logo.png@224',
      'rocket.jpg@224',
      'rocket.jpg@384',
    ]);
  });

  it('matches every reference tensor', async () => {
    const report: string[] = [];
    for (const [name, ref] of expected) {
      const [file, size] = name.split('@') as [string, string];
      const s = Number(size);
      const out = await preprocessImage(imagePath(file), { inputSize: [s, s] });
      const d = diff(out, ref);
      report.push(
        `${name.padEnd(18)} max|diff| ${d.maxAbs.toExponential(2)}  mean ${d.meanAbs.toExponential(2)}  ` +
          `>1e-6: ${d.over1e6}/${ref.length}`,
      );
      if (file.endsWith('.png')) {
        // PNG decoding is lossless and the resampler is a bit-exact port:
        // identical uint8 pixels, identical float32 arithmetic.
        expect(d.maxAbs, name).toBeLessThan(1e-5);
      } else {
        // JPEG: the IDCT/upsampling of sharp's libjpeg-turbo (mozjpeg) build
        // could differ from PIL's by one level on some pixels. Measured with
        // sharp 0.34 the result is exact (max diff 0); allow at most one
        // uint8 level anywhere and a tiny mean so a decoder upgrade that
        // shifts a few pixels does not break the test, while anything beyond
        // decoder noise still fails.
        expect(d.maxAbs, name).toBeLessThanOrEqual(ONE_LEVEL + 1e-6);
        expect(d.meanAbs, name).toBeLessThan(1e-3);
      }
    }
    console.log(`preprocess fixture diffs:\n${report.join('\n')}`);
  });

  it('preprocessBatch stacks the same tensors as NCHW', async () => {
    const files = ['chelsea.png', 'rocket.jpg', 'camera.png'];
    const batch = await preprocessBatch(files.map(imagePath));
    expect(batch.shape).toEqual([3, 3, 224, 224]);
    const per = 3 * 224 * 224;
    for (let i = 0; i < files.length; i++) {
      const ref = expected.get(`${files[i]}@224`)!;
      expect(diff(batch.data.subarray(i * per, (i + 1) * per), ref).maxAbs).toBeLessThanOrEqual(
        ONE_LEVEL + 1e-6,
      );
    }
  });

  it('accepts already decoded images and encoded buffers', async () => {
    const ref = expected.get('coffee.png@224')!;
    const decoded = await decodeImage(imagePath('coffee.png'));
    expect(diff(await preprocessImage(decoded), ref).maxAbs).toBe(0);
    const bytes = await readFile(imagePath('coffee.png'));
    expect(diff(await preprocessImage(new Uint8Array(bytes)), ref).maxAbs).toBe(0);
  });
});

/* ---------------------------------------------------------------------- */
/* Other configurations                                                    */
/* ---------------------------------------------------------------------- */

// sha256 of the float32 CHW output of a Python reference: Pillow 11.3 for
// decoding/resampling, with timm 0.6 `transforms_imagenet_eval` and
// torchvision 0.14 Resize/CenterCrop/ToTensor/Normalize arithmetic.

describe('timm eval transform with other configs', () => {
  const cases: [string, Partial<PreprocessConfig>, string][] = [
    // crop_pct 0.875: resize shorter side to 256, crop 224.
    ['chelsea.png', { inputSize: [224, 224], cropPct: 0.875 }, '750788e479afb447e9b8d41124a9b90ff50c5b197820a5708487f267baa54064'],
    // Non-square: resize to exactly (int(256/0.9), int(192/0.9)), then crop.
    ['coffee.png', { inputSize: [256, 192], cropPct: 0.9, interpolation: 'bilinear' }, '0bbe3da9f5a1f0bf70a9b0f5e9affd9ccd8fe1bf5aae83e1854c44add66f5a18'],
    // crop_pct > 1: resized image smaller than the crop, zero padding.
    ['camera.png', { inputSize: [224, 224], cropPct: 1.15, interpolation: 'nearest' }, '9560bd3998ddd2afd6123dedaa2c2c6608033390e51c0781b92fdc63ce5a81bb'],
    // (PNG only here: exact hashes must not depend on the JPEG decoder build.)
    ['chelsea.png', { inputSize: [200, 300], mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] }, '268205e9fdcffbacb07f2c34b2283e56d79993f733d5cd9286260ab05b801edc'],
    ['logo.png', { inputSize: [193, 193], cropPct: 0.95, interpolation: 'bilinear' }, '3b0b651f7cec6ff23e7f71bb2bc8796ae19c761f1494b2b7c24231905a0b3a4d'],
    // Non-square with padding on both axes.
    ['astronaut.png', { inputSize: [160, 240], cropPct: 1.2 }, '5c870ba2af6f85f42726c63959645793fa6a488cdf0a6e577abdc9c842b0a61d'],
    // Upscaling (short side 300 -> 301) and a .5 crop offset (round half to even).
    ['chelsea.png', { inputSize: [301, 301], interpolation: 'nearest' }, 'd21ba455212e6d863ab102bc8e529b3daf83c82df2ff3e3c4afcf1389fddfd46'],
  ];

  it.each(cases)('%s %j', async (file, config, hash) => {
    const out = await preprocessImage(imagePath(file), config);
    const [h, w] = config.inputSize!;
    expect(out.length).toBe(3 * h * w);
    expect(sha256(out)).toBe(hash);
  });

  it('defaults are the MetaFormer baseline config', () => {
    expect(DEFAULT_PREPROCESS).toEqual({
      inputSize: [224, 224],
      cropPct: 1,
      interpolation: 'bicubic',
      mean: [0.485, 0.456, 0.406],
      std: [0.229, 0.224, 0.225],
    });
  });

  it('computes timm resize sizes', () => {
    const sq = { inputSize: [224, 224] as [number, number], cropPct: 1 };
    expect(evalResizeSize(451, 300, sq)).toEqual({ width: 336, height: 224 });
    expect(evalResizeSize(300, 451, sq)).toEqual({ width: 224, height: 336 });
    expect(evalResizeSize(640, 427, sq)).toEqual({ width: 335, height: 224 });
    expect(evalResizeSize(500, 500, { inputSize: [224, 224], cropPct: 0.875 })).toEqual({ width: 256, height: 256 });
    expect(evalResizeSize(500, 400, { inputSize: [288, 288], cropPct: 0.95 })).toEqual({ width: 378, height: 303 });
    // Non-square targets ignore the source aspect ratio.
    expect(evalResizeSize(100, 1000, { inputSize: [256, 192], cropPct: 0.9 })).toEqual({ width: 213, height: 284 });
  });

  it('rejects invalid configs', async () => {
    const img: RGBImage = { data: new Uint8Array(12), width: 2, height: 2, channels: 3 };
    await expect(preprocessImage(img, { inputSize: [0, 224] })).rejects.toThrow(/inputSize/);
    await expect(preprocessImage(img, { cropPct: 0 })).rejects.toThrow(/cropPct/);
    await expect(preprocessImage(img, { std: [1, 0, 1] })).rejects.toThrow(/std/);
    await expect(
      preprocessImage(img, { interpolation: 'lanczos' as PreprocessConfig['interpolation'] }),
    ).rejects.toThrow(/interpolation/);
  });

  it('handles an empty batch and names the failing input', async () => {
    expect(await preprocessBatch([])).toEqual({ data: new Float32Array(0), shape: [0, 3, 224, 224] });
    await expect(
      preprocessBatch([imagePath('chelsea.png'), Buffer.from('nope')]),
    ).rejects.toThrow(/input 1: cannot decode image from buffer/);
  });
});

/* ---------------------------------------------------------------------- */
/* Geometry                                                                */
/* ---------------------------------------------------------------------- */

function patternImage(width: number, height: number, seed = 1): RGBImage {
  const data = new Uint8Array(width * height * 3);
  let s = seed >>> 0;
  for (let i = 0; i < data.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    data[i] = s >>> 24;
  }
  return { data, width, height, channels: 3 };
}

/**
 * sha256 of Pillow 11.3 `Image.resize` output for `patternImage(97, 61)`:
 * 40x25 bicubic, bilinear, nearest; 150x77 bicubic; 97x30 bicubic;
 * 13x61 bilinear; 31x17 bicubic with box (3.25, 5.5, 90.75, 58).
 */
const PILLOW_RESIZE_HASHES: readonly string[] = [
  '056238c047c3a37c105e544f6d3f4342cc2fecf07a3d79c981bbbc14b1dc2d3c',
  '8285ad3b661fd6895a5b30f8863f5bdaf3978c610d75bc15eaec469807ea0328',
  'a29dfd15b9467d66f28ace1062be19ece7efc140c0027d789e5e0fcc9a3b83d7',
  'ab277d6d3cd1394d8c2d757f84fa208f043852d76088b312fadc31b7bafa1c22',
  'c78091d09d7b31d6c49949b521d8ace248ee857bdf85dceca652d0e2d559bb0e',
  'df1743f186490e2ddfb7070b7ba96f67c64326bc72884d58ddc3fd37ece31e2b',
  'f45b386353586d4b4f87324335fcd06102044a63cabe7b1f0caf1c8f7a772a5e',
];

describe('resizeRGB / centerCrop', () => {
  it('matches Pillow byte for byte (hashes from Pillow 11.3)', () => {
    // A deterministic 97x61 image (the LCG above), resized by Pillow with
    // Image.resize((w, h), method).
    const img = patternImage(97, 61);
    const cases: [number, number, 'bicubic' | 'bilinear' | 'nearest', string][] = [
      [40, 25, 'bicubic', PILLOW_RESIZE_HASHES[0]!],
      [40, 25, 'bilinear', PILLOW_RESIZE_HASHES[1]!],
      [40, 25, 'nearest', PILLOW_RESIZE_HASHES[2]!],
      [150, 77, 'bicubic', PILLOW_RESIZE_HASHES[3]!],
      [97, 30, 'bicubic', PILLOW_RESIZE_HASHES[4]!],
      [13, 61, 'bilinear', PILLOW_RESIZE_HASHES[5]!],
    ];
    for (const [w, h, m, hash] of cases) {
      const out = resizeRGB(img, w, h, m);
      expect([out.width, out.height, out.channels]).toEqual([w, h, 3]);
      expect(sha256(out.data), `${w}x${h} ${m}`).toBe(hash);
    }
  });

  it('supports a source box like Image.resize(..., box=...)', () => {
    const img = patternImage(97, 61);
    const out = resampleRGB8(img.data, 97, 61, 31, 17, 'bicubic', [3.25, 5.5, 90.75, 58]);
    expect(sha256(out)).toBe(PILLOW_RESIZE_HASHES[6]);
  });

  it('returns a copy when the size is unchanged', () => {
    const img = patternImage(9, 7);
    const out = resizeRGB(img, 9, 7, 'bicubic');
    expect(out.data).toEqual(img.data);
    expect(out.data).not.toBe(img.data);
  });

  it('rounds crop offsets half to even and pads small images with zeros', () => {
    const img = patternImage(7, 4);
    // (7 - 2) / 2 = 2.5 -> 2 (Python round); (4 - 1) / 2 = 1.5 -> 2.
    const c = centerCrop(img, 2, 1);
    expect([...c.data]).toEqual([...img.data.subarray((2 * 7 + 2) * 3, (2 * 7 + 4) * 3)]);
    // Larger than the image: pad left/top by floor(d/2), right/bottom by ceil(d/2).
    const p = centerCrop(img, 10, 5);
    expect([p.width, p.height]).toEqual([10, 5]);
    for (let y = 0; y < 5; y++) {
      for (let x = 0; x < 10; x++) {
        const inside = x >= 1 && x < 8 && y >= 0 && y < 4;
        const px = [...p.data.subarray((y * 10 + x) * 3, (y * 10 + x) * 3 + 3)];
        const want = inside ? [...img.data.subarray((y * 7 + x - 1) * 3, (y * 7 + x - 1) * 3 + 3)] : [0, 0, 0];
        expect(px).toEqual(want);
      }
    }
  });

  it('validates sizes', () => {
    const img = patternImage(4, 4);
    expect(() => resizeRGB(img, 0, 4)).toThrow(RangeError);
    expect(() => centerCrop(img, 2.5, 2)).toThrow(RangeError);
    expect(() => resizeRGB({ ...img, data: new Uint8Array(5) }, 2, 2)).toThrow(/expected 48/);
  });

  it('resizes 1024x768 to 298x224 (bicubic) quickly', () => {
    const img = patternImage(1024, 768);
    for (let i = 0; i < 3; i++) resizeRGB(img, 298, 224, 'bicubic');
    const runs = 10;
    const t0 = performance.now();
    for (let i = 0; i < runs; i++) resizeRGB(img, 298, 224, 'bicubic');
    const ms = (performance.now() - t0) / runs;
    console.log(`bicubic 1024x768 -> 298x224: ${ms.toFixed(2)} ms`);
    // Generous bound: only catches pathological slowdowns on loaded machines.
    expect(ms).toBeLessThan(250);
  });
});

/* ---------------------------------------------------------------------- */
/* Decoding semantics                                                      */
/* ---------------------------------------------------------------------- */

/** Small encoded images made with Pillow 11.3 and their `convert('RGB')` bytes. */
const PIL_SAMPLES: Record<string, { width: number; height: number; b64: string; rgb: string }> = {
  // 16-bit grey [0, 200, 255, 256, 37898, ...]: PIL clamps to [0, 255].
  gray16: {
    width: 4,
    height: 3,
    b64: 'iVBORw0KGgoAAAANSUhEUgAAAAQAAAADEAAAAADBDy1ZAAAAJElEQVR42mNgYGA4wfCfkYFhCtexyVezLJcz8Jn7XPf4dX8hAGxFCgktCpsOAAAAAElFTkSuQmCC',
    rgb: '000000c8c8c8ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff',
  },
  // 16-bit RGB and grey+alpha: high byte of each sample.
  rgb16: {
    width: 3,
    height: 2,
    b64: 'iVBORw0KGgoAAAANSUhEUgAAAAMAAAACEAIAAABChi0OAAAAL0lEQVR42mN4uZAxsv7TJRvFZWd45GrKT11kZvCdHF7s7rZD39H+b1/hh6r0Ri0ARcYQyE4rHdYAAAAASUVORK5CYII=',
    rgb: 'e9017fd221cc1e77d14d5747b841fd717a81',
  },
  la16: {
    width: 3,
    height: 2,
    b64: 'iVBORw0KGgoAAAANSUhEUgAAAAMAAAACEAQAAABn7XLSAAAAI0lEQVR42mOYqti7qSn7381zh0+9ZtjsOt893PevTnmUuRwAuIkM0fXojeQAAAAASUVORK5CYII=',
    rgb: '959595828282cececeb3b3b3575757777777',
  },
  // Adobe CMYK JPEG: PIL's cmyk2rgb, no colour management.
  cmyk: {
    width: 6,
    height: 4,
    b64:
      '/9j/7gAOQWRvYmUAZAAAAAAA/9sAQwACAQEBAQECAQEBAgICAgIEAwICAgIFBAQDBAYFBgYGBQYGBgcJCAYHCQcGBggLCAkKCgoKCgYICwwLCgwJCgoK/8AAFAgABAAGBEMRAE0RAFkRAEsRAP/EAB8AAAEFAQEBAQEBAAAAAAAAAAABAgMEBQYHCAkKC//EALUQAAIBAwMCBAMFBQQEAAABfQECAwAEEQUSITFBBhNRYQcicRQygZGhCCNCscEVUtHwJDNicoIJChYXGBkaJSYnKCkqNDU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6g4SFhoeIiYqSk5SVlpeYmZqio6Slpqeoqaqys7S1tre4ubrCw8TFxsfIycrS09TV1tfY2drh4uPk5ebn6Onq8fLz9PX29/j5+v/aAA4EQwBNAFkASwAAPwCz+3P8K/hx+zD8F9V/aW8BeH9QlvT8SbTwzp/hpvF+r2Gl6bZfZdQsF8ldNvLW4Li08MaRB+8mkUrblmVnO8ep/tp/sl/szy/tfaP8FfFPwhh8ReHNH+FFvqiWniHxDqlzPeajJqt5p5vbq6N0Lm7mW00y1gj82RlhjDJGqK20afhHUvE9v4a+JHg3RviH4u0ew0Lxl4Xm0KPw54y1HS2sYdT8Of2tPaB7OeJpoUmu/Ki84yPHb2tpCHKW6Afv5X//2Q==',
    rgb: '22a354d5e7ab05276dcd82d73d66d09c18dd5d1e8fca400c08b5dc71bd5b2207861c4021f5becf7ffb4066f92f4658758755f2d2d681caeb727bd0d4c7f913a33173fe73cf36a085',
  },
};

describe('decodeImage', () => {
  it.each(Object.keys(PIL_SAMPLES))('%s matches PIL convert("RGB")', async (name) => {
    const s = PIL_SAMPLES[name]!;
    const img = await decodeImage(Buffer.from(s.b64, 'base64'));
    expect([img.width, img.height, img.channels]).toEqual([s.width, s.height, 3]);
    expect(hex(img.data)).toBe(s.rgb);
  });

  it("gray16: 'scale' keeps the high byte instead of PIL's clamp", async () => {
    const img = await decodeImage(Buffer.from(PIL_SAMPLES.gray16!.b64, 'base64'), { gray16: 'scale' });
    // Samples 0, 200, 255, 256, 37898 -> high bytes 0, 0, 0, 1, 148.
    expect([...img.data.subarray(0, 15)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 148, 148, 148]);
  });

  it('replicates grey and drops alpha without compositing', async () => {
    const camera = await decodeImage(imagePath('camera.png'));
    expect([camera.width, camera.height]).toEqual([512, 512]);
    for (let i = 0; i < camera.data.length; i += 3 * 997) {
      expect(camera.data[i + 1]).toBe(camera.data[i]);
      expect(camera.data[i + 2]).toBe(camera.data[i]);
    }
    // RGBA with fully transparent pixels: colour survives (PIL discards alpha).
    const rgba = Buffer.from([255, 0, 0, 0, 0, 255, 0, 128, 0, 0, 255, 255, 10, 20, 30, 0]);
    const png = await sharp(rgba, { raw: { width: 2, height: 2, channels: 4 } }).png().toBuffer();
    const img = await decodeImage(png);
    expect([...img.data]).toEqual([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]);
  });

  it('ignores EXIF orientation unless autoOrient is set', async () => {
    const raw = patternImage(5, 3).data;
    const jpeg = await sharp(Buffer.from(raw), { raw: { width: 5, height: 3, channels: 3 } })
      .jpeg({ quality: 95 })
      .withMetadata({ orientation: 6 })
      .toBuffer();
    const plain = await decodeImage(jpeg);
    expect([plain.width, plain.height]).toEqual([5, 3]);
    const oriented = await decodeImage(jpeg, { autoOrient: true });
    expect([oriented.width, oriented.height]).toEqual([3, 5]);
  });

  it('ignores embedded ICC profiles', async () => {
    const raw = Buffer.from(patternImage(6, 4).data);
    const plain = await sharp(raw, { raw: { width: 6, height: 4, channels: 3 } }).png().toBuffer();
    // Borrow a wide-gamut (Display P3) profile and attach it to the same
    // samples as an iCCP chunk right after IHDR. A colour-managed decoder
    // would convert the pixels; PIL returns them as stored.
    const withP3 = await sharp(raw, { raw: { width: 6, height: 4, channels: 3 } })
      .withIccProfile('p3')
      .png()
      .toBuffer();
    const icc = (await sharp(withP3).metadata()).icc;
    expect(icc).toBeDefined();
    const iccp = pngChunk('iCCP', Buffer.concat([Buffer.from('p3\0\0', 'latin1'), deflateSync(icc!)]));
    const ihdrEnd = 8 + 8 + 13 + 4;
    const tagged = Buffer.concat([plain.subarray(0, ihdrEnd), iccp, plain.subarray(ihdrEnd)]);
    expect((await sharp(tagged).metadata()).icc).toBeDefined();
    const managed = await sharp(tagged).toColourspace('srgb').raw().toBuffer();
    expect(hex(managed)).not.toBe(hex(raw)); // the profile does change pixels
    expect(hex((await decodeImage(tagged)).data)).toBe(hex(raw));
  });
});

/* ---------------------------------------------------------------------- */
/* Bad input                                                               */
/* ---------------------------------------------------------------------- */

function crc32(bytes: Uint8Array): number {
  let c = ~0;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

function pngChunk(type: string, data: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

/** A PNG whose header claims width x height (pixel data only for tiny sizes). */
function fakePng(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(Buffer.alloc(Math.min(height * (1 + 3 * width), 1 << 16)))),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

describe('decodeImage rejects bad input with a clear Error', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'metaformer-image-'));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const bad = async (input: string | Uint8Array, pattern: RegExp): Promise<void> => {
    const err = await decodeImage(input).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(pattern);
  };

  it('random bytes', async () => {
    const bytes = new Uint8Array(4096);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7919 + 13) & 255;
    await bad(bytes, /^cannot decode image from buffer: not an image/);
  });

  it('empty buffer', async () => {
    await bad(Buffer.alloc(0), /buffer: input is empty/);
    await bad(new Uint8Array(0), /buffer: input is empty/);
  });

  it('truncated PNG and JPEG', async () => {
    const png = await readFile(imagePath('chelsea.png'));
    await bad(png.subarray(0, png.length >> 1), /buffer: truncated or corrupt image data/);
    await bad(png.subarray(0, 20), /buffer: corrupt or truncated image header/);
    const jpg = await readFile(imagePath('rocket.jpg'));
    await bad(jpg.subarray(0, jpg.length >> 1), /buffer: truncated or corrupt image data/);
  });

  it('a text file, a missing file and a directory name the path', async () => {
    const txt = path.join(dir, 'notes.txt');
    await writeFile(txt, 'this is not an image\n');
    await bad(txt, new RegExp(`^cannot decode image from '${escapeRe(txt)}': not an image`));
    const missing = path.join(dir, 'missing.png');
    await bad(missing, new RegExp(`^cannot read image file '${escapeRe(missing)}': ENOENT`));
    await bad(dir, /^cannot read image file '.*': EISDIR/);
  });

  it('zero and absurd dimensions', async () => {
    await bad(fakePng(0, 10), /buffer: corrupt or truncated image header/);
    await bad(fakePng(20000, 4), /dimensions 20000x4 exceed the limit/);
    await bad(fakePng(16385, 1), /dimensions 16385x1 exceed the limit/);
    await bad(fakePng(12000, 9000), /dimensions 12000x9000 exceed the limit/);
    // Exactly at the per-side limit is accepted.
    const edge = await decodeImage(fakePng(16384, 1));
    expect([edge.width, edge.height]).toEqual([16384, 1]);
  });

  it('non-buffer input', async () => {
    await expect(decodeImage(42 as unknown as string)).rejects.toThrow(TypeError);
  });
});

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
