#!/usr/bin/env node
/**
 * `slotflip` entry: one registry of subcommands, each a module exporting `command`.
 * Adding a subcommand touches this map and one new file under daemon/commands/.
 */
import type { Command } from './commands/command.js';
import { exitCodeForError } from './exit-codes.js';

const registry: Record<string, () => Promise<{ command: Command }>> = {
  doctor: () => import('./commands/doctor.js'),
  health: () => import('./commands/doctor.js').then((m) => ({ command: m.healthCommand })),
  // V8's optimizing compilers off before the daemon's modules load (daemon/footprint.ts)
  daemon: () => import('./footprint.js').then((f) => (f.interpretOnly(), import('./commands/daemon.js'))),
  // so do the commands that install: only a delta install's chunking turns them on (daemon/compose.ts)
  update: () => import('./footprint.js').then((f) => (f.interpretOnly(), import('./commands/update.js'))),
  status: () => import('./commands/status.js'),
  history: () => import('./commands/history.js'),
  check: () => import('./commands/check.js'),
  'mark-good': () => import('./commands/mark-good.js'),
  rollback: () => import('./commands/rollback.js'),
  install: () => import('./footprint.js').then((f) => (f.interpretOnly(), import('./commands/install.js'))),
  repo: () => import('./commands/repo.js'),
  release: () => import('./commands/release.js'),
  verify: () => import('./commands/verify.js'),
  'tuf-client': () => import('./commands/tuf-client.js'),
  board: () => import('./commands/board.js'),
  fleet: () => import('./commands/fleet.js'),
  'factory-reset': () => import('./commands/factory-reset.js'),
  migration: () => import('./commands/migration.js'),
  demo: () => import('./commands/demo.js'),
};

const summaries: Record<string, string> = {
  board: 'create, power-cycle and inspect emulated boards',
  check: 'show which release would be installed now',
  daemon: 'run on a device: MQTT, polling, updates, health checks',
  demo: 'the whole loop on this machine: a commit and a rollback',
  doctor: "check this device's integration (bootloader, slots, trust root, broker)",
  'factory-reset': 'wipe the data partition at the next boot (or apply a pending reset)',
  fleet: 'staged rollouts and a live fleet view with automatic halt',
  health: 'run the configured health checks once (the boot-complete gate)',
  history: 'past update attempts and their outcomes',
  install: 'install a signed release from a repository directory or URL',
  migration: 'restore or drop the data-migration snapshot (early boot)',
  'mark-good': 'confirm the running slot',
  release: 'sign and add a release to a repository',
  repo: 'create, re-sign, rotate and publish a TUF repository',
  rollback: 'go back to the other slot',
  status: 'slots, versions, the update in flight',
  'tuf-client': 'the TUF conformance client protocol',
  update: 'one check-install cycle (--once)',
  verify: 'refresh metadata and print the release selected for a device',
};

function usage(): string {
  const width = Math.max(...Object.keys(registry).map((n) => n.length));
  const rows = Object.keys(registry).sort().map((n) => `  ${n.padEnd(width)}  ${summaries[n] ?? ''}`.trimEnd());
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
    // one table (exit-codes.ts, README "Exit codes"): 2 usage, 4 nothing applicable, 5 metadata
    // rejected, 6 busy, 1 anything else
    process.exitCode = exitCodeForError(e.code);
  },
);
