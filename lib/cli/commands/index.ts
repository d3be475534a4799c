/**
 * The registry of `metaformer` commands. Adding a command: write `commands/<name>.ts` exporting a Command,
 * then add one line below.
 */
import type { Command } from '../command.js';
import { classifyCommand } from './classify.js';
import { convertCommand } from './convert.js';
import { infoCommand } from './info.js';
import { listModelsCommand } from './list-models.js';
import { trainCommand } from './train.js';
import { evalCommand } from './eval.js';
import { benchCommand } from './bench.js';
import { exportOnnxCommand } from './export-onnx.js';

export const COMMANDS: readonly Command[] = [
  classifyCommand,
  convertCommand,
  infoCommand,
  listModelsCommand,
  trainCommand,
  evalCommand,
  benchCommand,
  exportOnnxCommand,
];
