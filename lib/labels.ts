/**
 * ImageNet class labels in head order, read once from the package's assets/labels files: the synset id and
 * WordNet names of each class of the 1000-way (ImageNet-1k) and 21841-way (ImageNet-21k, fall11) heads.
 */
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { expectation } from './tensor.js';

export type LabelSet = '1k' | '21k';

export interface ClassLabel {
  /** Position in the classifier head. */
  index: number;
  /** WordNet synset id, e.g. 'n01440764'. */
  synset: string;
  /** Every name of the class, e.g. ['tench', 'Tinca tinca']. */
  names: string[];
  /** The first name: a short readable label. */
  label: string;
}

const FILES: Readonly<Record<LabelSet, { file: string; count: number }>> = {
  '1k': { file: 'imagenet1k.tsv', count: 1000 },
  '21k': { file: 'imagenet21k.tsv.gz', count: 21841 },
};

const cache = new Map<LabelSet, readonly ClassLabel[]>();

/** The package's assets/labels folder (from lib/ when run from source, from dist/lib/ when built). */
function labelsDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; ++i) {
    const candidate = path.join(dir, 'assets', 'labels');
    if (existsSync(path.join(candidate, FILES['1k'].file))) return candidate;
    dir = path.dirname(dir);
  }
  throw new Error('metaformer: the label files (assets/labels) are missing from the package installation');
}

function parse(text: string, file: string, count: number): readonly ClassLabel[] {
  const lines = text.split('\n').filter((l) => l.length > 0);
  if (lines.length !== count) throw new Error(`${file}: expected ${count} classes but found ${lines.length}`);
  return Object.freeze(lines.map((line, index) => {
    const tab = line.indexOf('\t');
    const synset = line.slice(0, tab);
    const names = line.slice(tab + 1).split(', ').map((s) => s.trim()).filter(Boolean);
    if (tab < 0 || !/^n\d{8}$/.test(synset) || names.length === 0) throw new Error(`${file}: line ${index + 1} is not "<synset>\\t<names>"`);
    return Object.freeze({ index, synset, names, label: names[0]! });
  }));
}

/** The classes of the ImageNet-1k ('1k', 1000) or ImageNet-21k ('21k', 21841) heads, in head order. */
export function imagenetLabels(kind: LabelSet = '1k'): readonly ClassLabel[] {
  if (kind !== '1k' && kind !== '21k') throw new TypeError(expectation("'1k' or '21k'", 'kind', kind));
  let labels = cache.get(kind);
  if (!labels) {
    const { file, count } = FILES[kind];
    const full = path.join(labelsDir(), file);
    const bytes = readFileSync(full);
    labels = parse((file.endsWith('.gz') ? gunzipSync(bytes) : bytes).toString('utf8'), full, count);
    cache.set(kind, labels);
  }
  return labels;
}

/** The label set that fits a head of `numClasses` outputs, or null (1000 -> '1k', 21841 -> '21k'). */
export function labelSetFor(numClasses: number): LabelSet | null {
  if (numClasses === FILES['1k'].count) return '1k';
  if (numClasses === FILES['21k'].count) return '21k';
  return null;
}

/**
 * Readable labels for a head of `numClasses` outputs: the user's list when given (it must have exactly
 * numClasses entries), else ImageNet's when the size fits, else the class indices as strings.
 */
export function labelsFor(numClasses: number, custom?: readonly string[]): { label: (i: number) => string; synset: (i: number) => string | undefined } {
  if (!Number.isSafeInteger(numClasses) || numClasses < 1) throw new TypeError(expectation('a positive integer', 'numClasses', numClasses));
  if (custom !== undefined) {
    if (!Array.isArray(custom) || custom.length !== numClasses || custom.some((s) => typeof s !== 'string')) {
      throw new TypeError(expectation(`an array of ${numClasses} strings (one per class)`, 'labels', custom));
    }
    return { label: (i) => custom[i]!, synset: () => undefined };
  }
  const set = labelSetFor(numClasses);
  if (set === null) return { label: (i) => String(i), synset: () => undefined };
  const table = imagenetLabels(set);
  return { label: (i) => table[i]!.label, synset: (i) => table[i]!.synset };
}
