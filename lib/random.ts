/**
 * Random numbers: a seedable, serialisable xoshiro128** generator (class Rng) and one global instance.
 * The global generator draws the seeds of dropout / drop-path masks and the randomness of initialisers,
 * so a run is reproducible from one seed and resumable from getRngState(). Data loaders and worker
 * threads use Rng instances of their own.
 */
function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

function splitmix32(state: { v: number }): number {
  state.v = (state.v + 0x9e3779b9) >>> 0;
  let z = state.v;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

export class Rng {
  private st = new Uint32Array(4);

  constructor(seed = 0) {
    this.seed(seed);
  }

  seed(seed: number): void {
    const st = { v: (seed >>> 0) ^ (Math.floor(seed / 2 ** 32) >>> 0) };
    this.st = new Uint32Array([splitmix32(st), splitmix32(st), splitmix32(st), splitmix32(st) | 1]);
  }

  /** A uniform 32-bit integer. */
  uint32(): number {
    const q = this.st;
    const result = Math.imul(rotl(Math.imul(q[1]!, 5) >>> 0, 7), 9) >>> 0;
    const t = (q[1]! << 9) >>> 0;
    q[2]! ^= q[0]!;
    q[3]! ^= q[1]!;
    q[1]! ^= q[2]!;
    q[0]! ^= q[3]!;
    q[2]! ^= t;
    q[3] = rotl(q[3]!, 11);
    return result;
  }

  /** Uniform in [0, 1), 53 random bits. */
  random(): number {
    return ((this.uint32() >>> 5) * 2 ** 26 + (this.uint32() >>> 6)) / 2 ** 53;
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.random() * n);
  }

  /** Uniform in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.random();
  }

  /** A standard normal draw (Box-Muller). */
  normal(): number {
    let u = 0;
    while (u === 0) u = this.random();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.random());
  }

  /** A 48-bit seed for the native mask generator. */
  seed48(): number {
    return this.uint32() * 2 ** 16 + (this.uint32() >>> 16);
  }

  /** In-place Fisher-Yates shuffle. */
  shuffle<T>(a: T[] | Int32Array): void {
    for (let i = a.length - 1; i > 0; --i) {
      const j = this.int(i + 1);
      const t = a[i]!;
      a[i] = a[j]!;
      a[j] = t;
    }
  }

  getState(): number[] {
    return [...this.st];
  }

  setState(state: readonly number[]): void {
    if (state.length !== 4 || state.some((x) => !Number.isInteger(x) || x < 0 || x > 0xffffffff) || state.every((x) => x === 0)) {
      throw new RangeError('Rng.setState: expected four unsigned 32-bit integers, not all zero');
    }
    this.st = Uint32Array.from(state);
  }
}

/** The global generator. */
export const globalRng = new Rng(0);

export function manualSeed(seed: number): void {
  globalRng.seed(seed);
}

export function nextSeed(): number {
  return globalRng.seed48();
}

export function getRngState(): number[] {
  return globalRng.getState();
}

export function setRngState(state: readonly number[]): void {
  globalRng.setState(state);
}
