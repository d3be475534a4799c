#!/usr/bin/env node
// The `metaformer` command: runs the compiled CLI (dist/lib/cli/main.js; build it with `npm run build:ts`).
import { existsSync } from 'node:fs';

const entry = new URL('../dist/lib/cli/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write('metaformer: the compiled CLI is missing (dist/lib/cli/main.js); run `npm run build:ts`\n');
  process.exit(1);
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
