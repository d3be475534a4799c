/**
 * The `metaformer` command line: `metaformer <command> [arguments]`. Commands live in commands/ and are
 * listed in commands/index.ts. Errors end the process with a one-line message (exit 1; 2 for bad usage);
 * --verbose adds the stack trace and the full message.
 */
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { UsageError, type Command, type Output } from './command.js';
import { COMMANDS } from './commands/index.js';

const PROGRAM = 'metaformer';

const COMMON_OPTIONS = {
  help: { type: 'boolean', short: 'h' },
  verbose: { type: 'boolean', short: 'v' },
} as const;

const processOutput: Output = {
  out: (text) => void process.stdout.write(`${text}\n`),
  err: (text) => void process.stderr.write(`${text}\n`),
};

function version(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; ++i) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        const json = JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string; version?: string };
        if (json.name === PROGRAM && json.version) return json.version;
      } catch {
        // keep looking
      }
    }
    dir = path.dirname(dir);
  }
  return 'unknown';
}

function overview(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    `usage: ${PROGRAM} <command> [arguments] [--verbose]`,
    '',
    'commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    `Run '${PROGRAM} <command> --help' for a command's arguments.`,
  ].join('\n');
}

function commandHelp(c: Command): string {
  return [`usage: ${PROGRAM} ${c.name} ${c.usage}`, '', c.summary, ...(c.details ? ['', c.details] : [])].join('\n');
}

/** The first line of an error, for the one-line report. */
function firstLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const lines = msg.split('\n');
  return lines.length > 1 ? `${lines[0]} (${lines.length - 1} more lines with --verbose)` : msg;
}

/** Runs the CLI on `argv` (without node and the script) and returns the exit code. */
export async function main(argv: readonly string[], io: Output = processOutput): Promise<number> {
  if (io === processOutput) {
    // Output piped into `head` and the like: a closed pipe ends the program quietly.
    process.stdout.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw e;
    });
  }
  const args = [...argv];
  const verbose = args.includes('--verbose') || args.includes('-v');
  while (args[0] === '--verbose' || args[0] === '-v') args.shift();  // a global flag may precede the command
  const name = args[0];
  if (name === undefined || name === '--help' || name === '-h' || name === 'help' && args.length === 1) {
    io.out(overview());
    return name === undefined ? 2 : 0;
  }
  if (name === '--version') {
    io.out(version());
    return 0;
  }
  const helpFor = name === 'help' ? args[1] : undefined;
  const command = COMMANDS.find((c) => c.name === (helpFor ?? name));
  if (!command) {
    const what = (helpFor ?? name).startsWith('-') ? `an option before the command` : `unknown command ${JSON.stringify(helpFor ?? name)}`;
    io.err(`${PROGRAM}: ${what}; commands: ${COMMANDS.map((c) => c.name).join(', ')} (see ${PROGRAM} --help)`);
    return 2;
  }
  if (helpFor) {
    io.out(commandHelp(command));
    return 0;
  }
  try {
    let parsed: ReturnType<typeof parseArgs>;
    try {
      parsed = parseArgs({ args: args.slice(1), options: { ...command.options, ...COMMON_OPTIONS }, allowPositionals: true, strict: true });
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    if (parsed.values.help) {
      io.out(commandHelp(command));
      return 0;
    }
    const code = await command.run({ values: parsed.values, positionals: parsed.positionals, io, verbose });
    return code ?? 0;
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`${PROGRAM} ${command.name}: ${e.message} (see ${PROGRAM} ${command.name} --help)`);
      return 2;
    }
    if (verbose) {
      io.err(`${PROGRAM} ${command.name}: ${e instanceof Error ? e.message : String(e)}`);
      if (e instanceof Error && e.stack) io.err(e.stack);
    } else {
      io.err(`${PROGRAM} ${command.name}: ${firstLine(e)}`);
    }
    return 1;
  }
}
