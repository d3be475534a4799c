#!/usr/bin/env node
// Builds the native addon with cmake-js, after checking the build tools, so a missing tool gives one
// clear message naming the Debian package to install. Run by `npm install`.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

function has(cmd, args = ['--version']) {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return r.status === 0;
}

const missing = [];
if (!has('cmake')) missing.push(['cmake', 'cmake']);
if (!has('c++') && !has('g++')) missing.push(['a C++17 compiler', 'g++']);
if (!has('make') && !has('ninja')) missing.push(['make', 'make']);
const dnnlHeaders = ['/usr/include/oneapi/dnnl/dnnl.hpp', '/usr/local/include/oneapi/dnnl/dnnl.hpp'];
const dnnlRoot = process.env.DNNL_ROOT;
if (!dnnlHeaders.some((p) => existsSync(p)) && !(dnnlRoot && existsSync(path.join(dnnlRoot, 'include/oneapi/dnnl/dnnl.hpp')))) {
  missing.push(['oneDNN (oneapi/dnnl/dnnl.hpp)', 'libdnnl-dev']);
}
if (missing.length > 0) {
  const pkgs = [...new Set(missing.map((m) => m[1]))].join(' ');
  console.error(`metaformer: cannot build the native addon: missing ${missing.map((m) => m[0]).join(', ')}.`);
  console.error(`metaformer: install with: sudo apt-get install -y ${pkgs}`);
  process.exit(1);
}

const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const args = [cmakeJs, process.argv.includes('--force') ? 'rebuild' : 'compile', '--out', 'build'];
if (process.env.METAFORMER_CUDA) args.push(`--CDMETAFORMER_CUDA=${process.env.METAFORMER_CUDA}`);
if (process.env.METAFORMER_DEBUG) args.push('--debug');
const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit', env: { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: process.env.CMAKE_BUILD_PARALLEL_LEVEL ?? '2' } });
process.exit(r.status ?? 1);
