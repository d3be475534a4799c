/**
 * Conversions between float32 and the 16-bit float formats used in stored weights: IEEE binary16 (float16) and
 * bfloat16. Decoding is exact. Encoding rounds to nearest, ties to even, like PyTorch's `.half()` / `.bfloat16()`;
 * overflow gives infinity and NaN stays NaN (quiet, sign kept).
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f16ToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) {
    const h = src[i];
    const sign = (h & 0x8000) << 16;
    const exp = (h >> 10) & 0x1f;
    const man = h & 0x3ff;
    if (exp === 0) {
      out[i] = (sign ? -man : man) * 2 ** -24; // zero or subnormal, exact in float32
    } else if (exp === 0x1f) {
      bits[i] = (sign | 0x7f800000 | (man << 13)) >>> 0;
    } else {
      bits[i] = (sign | ((exp + 112) << 23) | (man << 13)) >>> 0;
    }
  }
  return out;
}

export function bf16ToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16 >>> 0;
  return out;
}

/** Rounds `value >>> shift` to nearest, ties to even. */
function roundShift(value: number, shift: number): number {
  const q = value >>> shift;
  const rem = value - (q << shift >>> 0);
  const half = 2 ** (shift - 1);
  return rem > half || (rem === half && (q & 1) === 1) ? q + 1 : q;
}

export function f32ToF16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    f32[0] = src[i];
    const x = u32[0];
    const sign = (x >>> 16) & 0x8000;
    const abs = x & 0x7fffffff;
    if (abs >= 0x7f800000) {
      out[i] = sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 | ((abs >>> 13) & 0x3ff) : 0);
    } else if (abs >= 0x477ff000) {
      out[i] = sign | 0x7c00; // >= 65520 rounds to infinity
    } else if (abs >= 0x38800000) {
      out[i] = sign | (roundShift(abs, 13) - (112 << 10)); // normal: rebias the exponent; a mantissa carry is fine
    } else {
      const exp = abs >>> 23;
      // subnormal: value = man * 2^(exp - 150) and the result counts units of 2^-24
      out[i] = exp < 102 ? sign : sign | roundShift((abs & 0x7fffff) | 0x800000, 126 - exp);
    }
  }
  return out;
}

export function f32ToBf16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    f32[0] = src[i];
    const x = u32[0];
    out[i] = (x & 0x7fffffff) > 0x7f800000 ? (x >>> 16) | 0x40 : roundShift(x, 16);
  }
  return out;
}
