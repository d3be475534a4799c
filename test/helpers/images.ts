/** Small synthetic image datasets written as PNG files (for the training and device tests). */
import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import sharp from 'sharp';

/**
 * `folder`/train and `folder`/val with two classes, corner_a and corner_b: a bright square in the top-left or the
 * bottom-right corner of 24x24 noise (seeded). Separable, so a tiny model learns it in a few steps.
 */
export async function writeCornerFolder(folder: string, counts: { train: number; val: number } = { train: 24, val: 8 }, seed = 7): Promise<void> {
  let s = seed;
  const rand = (): number => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  for (const split of ['train', 'val'] as const) {
    for (let i = 0; i < counts[split]; ++i) {
      const cls = i % 2 === 0 ? 'corner_a' : 'corner_b';
      const px = new Uint8Array(24 * 24 * 3);
      for (let y = 0; y < 24; ++y) {
        for (let x = 0; x < 24; ++x) {
          const inA = x < 12 && y < 12, inB = x >= 12 && y >= 12;
          const v = (cls === 'corner_a' ? inA : inB) ? 220 : 40;
          for (let c = 0; c < 3; ++c) px[(y * 24 + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(v + 40 * (rand() - 0.5))));
        }
      }
      const dir = path.join(folder, split, cls);
      mkdirSync(dir, { recursive: true });
      writeFileSync(path.join(dir, `${i}.png`), await sharp(px, { raw: { width: 24, height: 24, channels: 3 } }).png().toBuffer());
    }
  }
}
