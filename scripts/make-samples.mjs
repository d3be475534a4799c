#!/usr/bin/env node
// Writes assets/samples/: the first test image of each Fashion-MNIST class, as 28x28 grey PNGs named
// <index>-<class>.png, for the quick start (`metaformer classify assets/samples/*.png`) and its test.
// Reads the IDX files of Debian's dataset-fashion-mnist (METAFORMER_FASHION_MNIST overrides the folder).
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';

const train = await import(new URL('../dist/lib/train/idx.js', import.meta.url).href);
const dir = train.fashionMnistDir();
const images = train.readIdx(path.join(dir, 't10k-images-idx3-ubyte.gz'));
const labels = train.readIdx(path.join(dir, 't10k-labels-idx1-ubyte.gz'));
const out = new URL('../assets/samples/', import.meta.url).pathname;
mkdirSync(out, { recursive: true });
const seen = new Set();
for (let i = 0; i < labels.data.length && seen.size < 10; ++i) {
  const c = labels.data[i];
  if (seen.has(c)) continue;
  seen.add(c);
  const name = train.FASHION_MNIST_CLASSES[c].toLowerCase().replace(/[^a-z]+/g, '-');
  const pixels = Buffer.from(images.data.subarray(i * 784, (i + 1) * 784));
  await sharp(pixels, { raw: { width: 28, height: 28, channels: 1 } }).png().toFile(path.join(out, `${String(i).padStart(4, '0')}-${name}.png`));
}
console.log(`wrote ${seen.size} samples to ${out}`);
