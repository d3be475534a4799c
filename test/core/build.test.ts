/**
 * `npm install` runs scripts/build-native.js: without the build tools it stops with one clear message
 * that names the Debian packages to install, before cmake-js is ever started.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

describe('native build script', () => {
  it('names the apt packages when cmake, a compiler and make are missing', () => {
    const emptyBin = mkdtempSync(path.join(tmpdir(), 'mf-nopath-'));
    const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'build-native.js')], {
      cwd: root, encoding: 'utf8', env: { ...process.env, PATH: emptyBin }, timeout: 30_000,
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/cannot build the native addon: missing cmake, a C\+\+17 compiler, make/);
    expect(r.stderr).toMatch(/install with: sudo apt-get install -y cmake g\+\+ make/);
  });
});
