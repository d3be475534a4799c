import { describe, expect, it } from 'vitest';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../lib/io/halfs.js';

const f32 = (...v: number[]): Float32Array => Float32Array.from(v);
const h = (...v: number[]): Uint16Array => Uint16Array.from(v);

describe('float16', () => {
  it('encodes normal values, subnormals, overflow, infinities and NaN', () => {
    expect(f32ToF16(f32(0, -0, 1, -2, 0.5, 65504, 65519.99, 65520, 1e9, -Infinity, Infinity)))
      .toEqual(h(0, 0x8000, 0x3c00, 0xc000, 0x3800, 0x7bff, 0x7bff, 0x7c00, 0x7c00, 0xfc00, 0x7c00));
    expect(f32ToF16(f32(2 ** -24, 2 ** -14, 2 ** -14 - 2 ** -24, 2 ** -25, 2 ** -25 * 1.0001, 3 * 2 ** -26, 3 * 2 ** -25,
      5 * 2 ** -25, 1e-10))).toEqual(h(0x0001, 0x0400, 0x03ff, 0x0000, 0x0001, 0x0001, 0x0002, 0x0002, 0x0000));
    const nan = f32ToF16(f32(NaN))[0];
    expect(nan & 0x7c00).toBe(0x7c00);
    expect(nan & 0x3ff).not.toBe(0);
  });

  it('rounds to nearest, ties to even', () => {
    // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to the even mantissa (1).
    expect(f32ToF16(f32(1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -11 + 2 ** -20))).toEqual(h(0x3c00, 0x3c02, 0x3c01));
    // Mantissa carry into the exponent.
    expect(f32ToF16(f32(2 - 2 ** -12))).toEqual(h(0x4000));
  });

  it('decodes every finite half exactly and round-trips all 65536 bit patterns', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = f32ToF16(f16ToF32(all));
    for (let i = 0; i < 65536; i++) {
      const isNaN = (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
      if (isNaN) expect(Number.isNaN(f16ToF32(h(i))[0])).toBe(true);
      else if (back[i] !== i) throw new Error(`half 0x${i.toString(16)} round-trips to 0x${back[i].toString(16)}`);
    }
    expect(Array.from(f16ToF32(h(0x3c00, 0xc000, 0x0001, 0x8001, 0x7bff, 0x7c00, 0xfc00))))
      .toEqual([1, -2, 2 ** -24, -(2 ** -24), 65504, Infinity, -Infinity]);
  });
});

describe('bfloat16', () => {
  it('encodes with round to nearest even and keeps NaN a NaN', () => {
    expect(f32ToBf16(f32(1, -2, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, 3.4e38, Infinity)))
      .toEqual(h(0x3f80, 0xc000, 0x3f80, 0x3f82, 0x3f81, 0x7f80, 0x7f80));
    expect(Number.isNaN(bf16ToF32(f32ToBf16(f32(NaN)))[0])).toBe(true);
  });

  it('round-trips all bit patterns', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = f32ToBf16(bf16ToF32(all));
    for (let i = 0; i < 65536; i++) {
      const isNaN = (i & 0x7f80) === 0x7f80 && (i & 0x7f) !== 0;
      if (!isNaN && back[i] !== i) throw new Error(`bf16 0x${i.toString(16)} round-trips to 0x${back[i].toString(16)}`);
    }
  });
});
