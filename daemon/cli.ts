#!/usr/bin/env node
/**
 * `slotflip` entry: one registry of subcommands, each a module exporting `command`.
 * Adding a subcommand touches this map and one new file under daemon/commands/.
 */
import type { Command } from './commands/command.js';

const registry: Record<string, () => Promise<{ command: Command }>> = {
  doctor: () => import('./commands/doctor.js'),
  health: () => import('./commands/doctor.js').then((m) => ({ command: m.healthCommand })),
  daemon: () => import('./commands/daemon.js'),
  update: () => import('./commands/update.js'),
  status: () => import('./commands/status.js'),
  history: () => import('./commands/history.js'),
  check: () => import('./commands/check.js'),
  'mark-good': () => import('./commands/mark-good.js'),
  rollback: () => import('./commands/rollback.js'),
  install: () => import('./commands/install.js'),
  repo: () => import('./commands/repo.js'),
  release: () => import('./commands/release.js'),
  verify: () => import('./commands/verify.js'),
  'tuf-client': () => import('./commands/tuf-client.js'),
  board: () => import('./commands/board.js'),
  fleet: () => import('./commands/fleet.js'),
  demo: () => import('./commands/demo.js'),
};

function usage(): string {
  const rows = Object.keys(registry).sort().map((n) => `  ${n}`);
  return ['usage: slotflip <command> [options]', '', 'commands:', ...rows, '', 'Run `slotflip <command> --help` for a command\'s options.'].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage() + '\n');
    return name ? 0 : 2;
  }
  const load = registry[name];
  if (!load) {
    process.stderr.write(`slotflip: unknown command "${name}"\n\n${usage()}\n`);
    return 2;
  }
  const { command } = await load();
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(command.help + '\n');
    return 0;
  }
  return command.run(rest, { stdout: process.stdout, stderr: process.stderr, env: process.env });
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err: unknown) => {
    const e = err as { code?: string; message?: string };
    process.stderr.write(`slotflip: ${e.code ? e.code + ': ' : ''}${e.message ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
