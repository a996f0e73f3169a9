/**
 * Issue 22, sequence 5: a health config that checks nothing is refused by the device-side commands
 * that judge a boot, through the BUILT CLI (`npm run build` first): `slotflip daemon` and
 * `slotflip health` exit non-zero with DAEMON_HEALTH_NO_CHECKS, the config path and the field;
 * `"allowNoChecks": true` says it was meant.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr });
    });
  });
}

async function writeConfig(dir: string, health: unknown): Promise<string> {
  const path = join(dir, 'config.json');
  await writeFile(path, JSON.stringify({
    deviceId: 'dev-1',
    hardware: 'acme,board-v1',
    stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(dir, 'root.json'), sources: [{ type: 'dir', path: join(dir, 'repo') }] },
    board: { slots: { A: { path: join(dir, 'a.img'), size: 4096 }, B: { path: join(dir, 'b.img'), size: 4096 } }, boot: { type: 'emulated', stateFile: join(dir, 'boot.json') } },
    ...(health === undefined ? {} : { health }),
  }));
  return path;
}

t.before(() => {
  if (!existsSync(CLI)) throw new Error(`${CLI} missing: run npm run build first`);
});

for (const health of [undefined, {}, { checks: [] }, { checks: [], dropInDirs: { wanted: '/etc/greenboot/check/wanted.d' } }]) {
  t.test(`"health": ${JSON.stringify(health)} is refused by slotflip daemon and slotflip health`, async (t) => {
    const path = await writeConfig(t.testdir(), health);
    for (const cmd of ['daemon', 'health']) {
      const r = await cli([cmd, '--config', path]);
      t.equal(r.code, 1, `slotflip ${cmd} exits 1`);
      t.match(r.stderr, 'DAEMON_HEALTH_NO_CHECKS', `slotflip ${cmd} says the code`);
      t.match(r.stderr, path, 'names the config file');
      t.match(r.stderr, '/health', 'names the field');
      t.match(r.stderr, 'allowNoChecks', 'says how to mean it');
      t.notMatch(r.stdout, /daemon starting|healthy/, 'did not start / judge');
    }
  });
}

t.test('"allowNoChecks": true is accepted (slotflip health judges nothing and says healthy)', async (t) => {
  const path = await writeConfig(t.testdir(), { allowNoChecks: true });
  const r = await cli(['health', '--config', path]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, 'health: healthy');
});

t.test('a config with only settle.bootComplete or required drop-ins counts as checking', async (t) => {
  for (const health of [{ settle: { timeoutSeconds: 5, bootComplete: true } }, { dropInDirs: { required: join(t.testdir(), 'none.d') } }]) {
    const path = await writeConfig(t.testdir(), health);
    const r = await cli(['health', '--config', path]);
    t.notMatch(r.stderr, 'DAEMON_HEALTH_NO_CHECKS', JSON.stringify(health));
  }
});
