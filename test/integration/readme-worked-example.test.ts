/**
 * The README's worked example, verbatim: the ```sh worked-example block is extracted from README.md
 * and run by bash in an empty directory, with `slotflip` on PATH (the built CLI), against a real
 * Mosquitto; the placeholders BROKER, PORT, PAYLOAD_HOST and HTTP_PORT are set in the environment,
 * as the README tells the reader to. The block ends by printing `slotflip status`, which must show
 * the release committed on slot B; the README's expected output is compared line by line.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, startMosquitto } from '../harness/mosquitto.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = join(ROOT, 'dist/daemon/cli.js');

/** The body of the first fenced block whose info string is `lang tag`. */
export function fencedBlock(markdown: string, info: string): string {
  const start = markdown.indexOf('```' + info + '\n');
  if (start < 0) throw new Error(`README.md has no \`\`\`${info} block`);
  const body = start + info.length + 4;
  const end = markdown.indexOf('\n```\n', body);
  return markdown.slice(body, end + 1);
}

t.test('the README worked example runs verbatim: keys, release, publish, serve, device, daemon, status', async (t) => {
  const readme = await readFile(join(ROOT, 'README.md'), 'utf8');
  const script = fencedBlock(readme, 'sh worked-example');
  const expected = fencedBlock(readme.slice(readme.indexOf('```sh worked-example')), 'text');
  t.match(script, /slotflip repo serve/, 'the example serves the repository with slotflip');
  t.match(script, /payloadBaseUrls.*\/targets\//, 'the example points payloadBaseUrls at <served>/targets/');

  const dir = t.testdir();
  const bin = join(dir, 'bin');
  const work = join(dir, 'work');
  await mkdir(bin);
  await mkdir(work);
  await writeFile(join(bin, 'slotflip'), `#!/bin/sh\nexec '${process.execPath}' '${CLI}' "$@"\n`);
  await chmod(join(bin, 'slotflip'), 0o755);
  await writeFile(join(dir, 'example.sh'), script);

  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const env = { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}`, BROKER: '127.0.0.1', PORT: String(broker.port), PAYLOAD_HOST: '127.0.0.1', HTTP_PORT: String(await freePort()) };
  // its own process group: the server and the daemon loop it leaves in the background are killed with it
  const sh = spawn('bash', [join(dir, 'example.sh')], { cwd: work, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    try {
      process.kill(-sh.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  });
  let out = '';
  let err = '';
  sh.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  sh.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const timer = setTimeout(() => process.kill(-sh.pid!, 'SIGKILL'), 240_000);
  const [code] = (await once(sh, 'exit')) as [number | null];
  clearTimeout(timer);
  const logs = async (f: string) => (await readFile(join(work, f), 'utf8').catch(() => '')).slice(-6000);
  if (code === 0) t.pass('the example exits 0');
  else t.fail(`the example exits 0 (got ${code})\nstderr: ${err.slice(-3000)}\ndaemon.log: ${await logs('daemon.log')}`);

  const shown = out.trim().split('\n').slice(-expected.trim().split('\n').length);
  const want = expected.trim().split('\n');
  t.equal(shown.length, want.length, 'status prints as many lines as the README shows');
  for (let i = 0; i < want.length; i++) {
    // the README elides times and release hashes with "…"
    const pattern = new RegExp('^' + want[i]!.split('…').map((x) => x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.+') + '$');
    t.match(shown[i], pattern, `status line ${i + 1}: ${want[i]}`);
  }

  const served = (await logs('serve.log')).split('\n').filter(Boolean).map((l) => JSON.parse(l) as { msg: string; path?: string; status?: number });
  t.ok(served.some((l) => l.msg === 'request' && l.path?.startsWith('/targets/') && (l.status === 200 || l.status === 206)), 'the payload came from `slotflip repo serve`');
  const daemonLog = await logs('daemon.log');
  t.match(daemonLog, /"msg":"daemon starting"/, 'the daemon ran');
  const full = await readFile(join(work, 'daemon.log'), 'utf8');
  t.notMatch(full, /"msg":"check failed"/, 'no check warning: a start before the retained metadata arrived is not one');
});
