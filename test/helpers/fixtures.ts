/**
 * Locates the shared golden fixtures: `../shared/fixtures` beside the repository root, or the directory named by
 * the METAFORMER_FIXTURES environment variable.
 */
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export function fixturesDir(): string {
  const override = process.env.METAFORMER_FIXTURES;
  return override ? path.resolve(override) : path.resolve(repoRoot, '../shared/fixtures');
}

export function fixturePath(...parts: string[]): string {
  return path.join(fixturesDir(), ...parts);
}
