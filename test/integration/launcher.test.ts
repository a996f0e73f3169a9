/**
 * /usr/bin/slotflip (systemd/packaging/slotflip.sh), run from a tree laid out as the .deb installs
 * it (bin/slotflip beside lib/slotflip/{dist,node_modules}): `slotflip daemon` starts Node with
 * V8's optimizing compilers off from the first line (issue 16: they would otherwise compile what
 * gets hot while the daemon loads, and their code stays resident), every other command with them
 * on (an install run from the CLI is JS-heavy), and both with the young generation capped. Node's
 * own view of its flags (`process.execArgv`, recorded by a module preloaded through NODE_OPTIONS) are what count. That a daemon started with these flags still turns the compilers on for an
 * install: test/unit/daemon-footprint.test.ts.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT, requireBuilt } from '../e2e/harness.js';

requireBuilt();

const RECORD = `
import { writeFileSync } from 'node:fs';
writeFileSync(process.env.SLOTFLIP_TEST_ARGV_OUT, JSON.stringify(process.execArgv));
`;

function run(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => execFile(file, args, { env: { ...process.env, ...env }, timeout: 60_000 }, (e, _out, stderr) => resolve({ code: e ? Number((e as { code?: number }).code ?? 1) : 0, stderr: String(stderr) })));
}

t.test('the launcher starts `slotflip daemon` interpreted-only and every other command with the compilers on', async (t) => {
  const dir = t.testdir();
  // the installed layout: /usr/bin/slotflip finds /usr/lib/slotflip relative to itself; Node from PATH
  mkdirSync(join(dir, 'bin'));
  mkdirSync(join(dir, 'lib', 'slotflip'), { recursive: true });
  copyFileSync(join(ROOT, 'systemd', 'packaging', 'slotflip.sh'), join(dir, 'bin', 'slotflip'));
  symlinkSync(join(ROOT, 'dist'), join(dir, 'lib', 'slotflip', 'dist'));
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'lib', 'slotflip', 'node_modules'));
  await writeFile(join(dir, 'record.mjs'), RECORD);
  const PATH = `${join(process.execPath, '..')}:${process.env.PATH ?? ''}`;
  const argvOf = async (args: string[]): Promise<{ execArgv: string[]; code: number; stderr: string }> => {
    const out = join(dir, `argv-${args[0]}.json`);
    const r = await run('/bin/sh', [join(dir, 'bin', 'slotflip'), ...args], { PATH, NODE_OPTIONS: `--import ${pathToFileURL(join(dir, 'record.mjs')).href}`, SLOTFLIP_TEST_ARGV_OUT: out });
    return { execArgv: JSON.parse(readFileSync(out, 'utf8')) as string[], ...r };
  };
  // a config that does not exist: the daemon starts, records its flags, and refuses the config
  const daemon = await argvOf(['daemon', '--config', join(dir, 'missing.json')]);
  t.not(daemon.code, 0, `the daemon refused the missing config: ${daemon.stderr.trim()}`);
  t.match(daemon.stderr, /missing\.json/, 'and said which file');
  t.same(daemon.execArgv, ['--max-semi-space-size=1', '--no-turbofan', '--no-maglev'], 'slotflip daemon: compilers off from the start, young generation capped');
  const status = await argvOf(['status', '--config', join(dir, 'missing.json')]);
  t.same(status.execArgv, ['--max-semi-space-size=1'], 'slotflip status: compilers on (the default), young generation capped');
});
