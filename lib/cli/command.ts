/**
 * The command framework of the `metaformer` CLI: a command is a name, a one-line summary, a usage line,
 * node:util parseArgs options and a run function. Commands write through the Output they are given (so
 * tests and embedders can capture it) and signal bad usage with UsageError (exit code 2); any other error
 * exits with code 1.
 */
import type { ParseArgsConfig } from 'node:util';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

/** Parsed option values, as parseArgs returns them. */
export type OptionValues = Record<string, string | boolean | (string | boolean)[] | undefined>;

export interface Output {
  /** One line (or block) to standard output. */
  out(text: string): void;
  /** One line to standard error (diagnostics, progress). */
  err(text: string): void;
}

export interface CommandContext {
  values: OptionValues;
  positionals: string[];
  io: Output;
  verbose: boolean;
}

export interface Command {
  name: string;
  /** One line for the command list. */
  summary: string;
  /** Arguments after the command name, e.g. '<in> <out> [--dtype float16|float32]'. */
  usage: string;
  /** Longer help: what the options mean. */
  details?: string;
  options: OptionSpec;
  /** Returns the exit code (default 0). */
  run(ctx: CommandContext): Promise<number | void>;
}

/** Wrong arguments: reported with a pointer to --help, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** Reads a string option, or undefined. */
export function stringOption(values: OptionValues, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

/** Reads a positive integer option (with a default). */
export function intOption(values: OptionValues, name: string, fallback: number): number {
  const v = stringOption(values, name);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1) throw new UsageError(`Expected a positive integer for --${name} but received ${JSON.stringify(v)}`);
  return n;
}

/** Checks an option against a list of allowed values. */
/** The choices of the --device options. */
export const DEVICES = ['cpu', 'cuda', 'auto'] as const;

export function choiceOption<T extends string>(values: OptionValues, name: string, choices: readonly T[]): T | undefined {
  const v = stringOption(values, name);
  if (v === undefined) return undefined;
  if (!(choices as readonly string[]).includes(v)) {
    throw new UsageError(`Expected one of ${choices.join(', ')} for --${name} but received ${JSON.stringify(v)}`);
  }
  return v as T;
}

/** Numbers with thousands separators. */
export function formatCount(n: number): string {
  return n.toLocaleString('en-US');
}
