/** `metaformer list-models [filter]`: the official models of the registry. */
import { listModels, getModelConfig } from '../../models/zoo.js';
import type { Command } from '../command.js';

export const listModelsCommand: Command = {
  name: 'list-models',
  summary: 'list the official models (optionally those whose name contains a filter)',
  usage: '[filter] [--json]',
  options: {
    json: { type: 'boolean' },
  },
  async run({ positionals, values, io }) {
    const names = positionals.length ? listModels().filter((n) => positionals.some((f) => n.includes(f))) : listModels();
    const rows = names.map((n) => {
      const c = getModelConfig(n);
      return { name: n, family: c.family, inputSize: c.inputSize, numClasses: c.numClasses, pretrain: c.pretrain, depths: c.depths, dims: c.dims, url: c.url };
    });
    if (values.json) {
      io.out(JSON.stringify(rows, null, 2));
      return;
    }
    const width = Math.max(4, ...rows.map((r) => r.name.length));
    io.out(`${'name'.padEnd(width)}  ${'family'.padEnd(14)}  ${'input'.padEnd(7)}  ${'classes'.padStart(7)}  pretrain`);
    for (const r of rows) {
      io.out(`${r.name.padEnd(width)}  ${r.family.padEnd(14)}  ${r.inputSize.join('x').padEnd(7)}  ${String(r.numClasses).padStart(7)}  ${r.pretrain}`);
    }
    if (rows.length === 0) {
      io.err(`no model name contains ${positionals.map((f) => JSON.stringify(f)).join(' or ')}`);
      return 1;
    }
  },
};
