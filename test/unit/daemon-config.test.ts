import t, { type Test } from 'tap';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadConfig, validateConfig, configDefaults, type ConfigProblem } from '../../daemon/config.js';
import { isCoded } from '../../hal/errors.js';

const minimal = {
  deviceId: 'dev-1',
  hardware: 'acme,board-v1',
  trust: { shippedRoot: '/usr/share/slotflip/root.json' },
  board: { slots: { A: { path: '/dev/mmcblk0p2' }, B: { path: '/dev/mmcblk0p3' } }, boot: { type: 'emulated', stateFile: '/var/lib/board/boot.json' } },
};

async function problems(t: Test, cfg: unknown, dir = t.testdir()): Promise<ConfigProblem[]> {
  const path = join(dir, 'config.json');
  await writeFile(path, typeof cfg === 'string' ? cfg : JSON.stringify(cfg));
  try {
    await loadConfig(path);
  } catch (e) {
    t.ok(isCoded(e, 'DAEMON_CONFIG_INVALID'), 'DAEMON_CONFIG_INVALID');
    t.match((e as Error).message, path, 'message names the file');
    return (e as { details: { errors: ConfigProblem[] } }).details.errors;
  }
  t.fail('config was accepted');
  return [];
}

t.test('a minimal config gets every default from the one defaults object', async (t) => {
  const dir = t.testdir();
  const path = join(dir, 'config.json');
  await writeFile(path, JSON.stringify(minimal));
  const c = await loadConfig(path);
  t.equal(c.channel, configDefaults.channel);
  t.equal(c.stateDir, configDefaults.stateDir);
  t.same(c.trust.sources, [{ type: 'mqtt' }]);
  t.same(c.trust.payloadBaseUrls, []);
  t.equal(c.board.tries, configDefaults.tries);
  t.same(c.poll, configDefaults.poll);
  t.same(c.reboot.command, ['systemctl', 'reboot']);
  t.equal(c.health.deadlineSeconds, 300);
  t.same(c.health.checks, []);
  t.equal(c.policies.minFreeSpaceMiB, 0);
  t.equal(c.log.level, 'info');
  t.equal(c.broker, undefined, 'no broker unless configured');
  t.same(c.retry, { delaySeconds: 60, maxDelaySeconds: 3600 }, 'retry delay: 60 s doubling up to 1 h');
  t.same(c.download, { maxChunkFailures: 3, maxBytesFactor: 3, maxMinutes: 1440 }, 'download budget per attempt');
  t.same(c.install, { delta: 'auto' }, 'delta installs when a release offers one');
  t.same(minimal.trust, { shippedRoot: '/usr/share/slotflip/root.json' }, 'input not mutated');
});

t.test('a full config with the other modules\' fragments validates', async (t) => {
  const r = validateConfig({
    ...minimal,
    channel: 'beta',
    stateDir: '/data/slotflip',
    trust: { shippedRoot: '/usr/share/slotflip/root.json', sources: [{ type: 'mqtt' }, { type: 'http', url: 'https://updates.example.com/repo' }, { type: 'dir', path: '/media/usb' }], payloadBaseUrls: ['https://cdn.example.com/targets/'] },
    board: { ...minimal.board, slots: { A: { path: '/slots/a.img', size: 1048576 }, B: { path: '/slots/b.img', size: 1048576 } }, tries: 2 },
    broker: { urls: ['mqtts://broker.example.com:8883'], tls: { ca: '/etc/slotflip/ca.pem', cert: '/etc/slotflip/dev.pem', key: '/etc/slotflip/dev.key' } },
    health: { deadlineSeconds: 60, checks: [{ type: 'command', name: 'app', argv: ['/usr/bin/app-check'], timeoutSeconds: 10 }, { type: 'systemd-unit', unit: 'app.service' }] },
    policies: { minFreeSpaceMiB: 64, updateLock: { path: '/run/app/update.lock', maxDeferralMinutes: 120 } },
    poll: { cron: '*/15 * * * *' },
    reboot: { command: ['/sbin/reboot'] },
    log: { level: 'debug' },
  });
  t.ok(r.ok, JSON.stringify(!r.ok && r.errors));
  if (r.ok) t.equal((r.value['broker'] as { keepaliveSeconds: number }).keepaliveSeconds, 60, 'broker defaults applied');
});

t.test('every problem is listed by path; unknown keys refused', async (t) => {
  const errs = await problems(t, {
    ...minimal,
    bogus: true,
    deviceId: 'has space',
    trust: { shippedRoot: 'relative/root.json', sources: [{ type: 'http' }, { type: 'dir', path: '/d', extra: 1 }, { type: 'ftp' }] },
    board: { slots: { A: { path: '/a', sise: 3 } }, boot: { type: 'uboot', convention: 'barebox' }, tries: 0 },
    health: { checks: [{ type: 'command', name: 'x' }] },
    poll: { cron: 5 },
  });
  const paths = errs.map((e) => e.path);
  for (const p of [
    '/bogus', '/deviceId', '/trust/shippedRoot', '/trust/sources/0/url', '/trust/sources/1/extra', '/trust/sources/2/type',
    '/board/slots/A/sise', '/board/slots/B', '/board/boot/convention', '/board/boot/fwEnvConfig', '/board/tries',
    '/health/checks/0/argv', '/health/checks/0/timeoutSeconds', '/poll/cron',
  ]) {
    t.ok(paths.includes(p), `lists ${p}`);
  }
  t.match(errs.find((e) => e.path === '/bogus'), { message: /unknown key/ });
  t.match(errs.find((e) => e.path === '/board/slots/B'), { message: 'is required' });
  t.notOk(paths.some((p) => p.startsWith('/board/boot/stateFile') || p === '/board/boot/envFile'), 'other boot backends\' branches are not reported');
});

t.test('cron expressions are checked: poll schedule and maintenance windows', async (t) => {
  const errs = await problems(t, {
    ...minimal,
    poll: { cron: 'every tuesday' },
    policies: { maintenanceWindows: { reboot: [{ cron: '0 3 * * 1-5', durationMinutes: 60 }, { cron: '99 3 * * *', durationMinutes: 60, timezone: 'Mars/Olympus' }] } },
  });
  t.same(errs.map((e) => e.path).sort(), ['/policies/maintenanceWindows/reboot/1/cron', '/policies/maintenanceWindows/reboot/1/timezone', '/poll/cron']);
});

t.test('cron problems are listed in the same run as schema problems (issue 14)', async (t) => {
  const errs = await problems(t, {
    ...minimal,
    deviceId: 'has spaces',
    log: { level: 'loud' },
    colour: 'blue',
    poll: { cron: '61 * * * * *' },
    retry: { delaySeconds: 0, maxDelaySeconds: 10 },
    download: { maxChunkFailures: 0 },
    policies: { maintenanceWindows: { reboot: [{ cron: '0 25 * * *', durationMinutes: 60 }, { cron: 5, durationMinutes: 60 }] } },
  });
  t.same(errs.map((e) => e.path).sort(), ['/colour', '/deviceId', '/download/maxChunkFailures', '/log/level', '/policies/maintenanceWindows/reboot/0/cron', '/policies/maintenanceWindows/reboot/1/cron', '/poll/cron', '/retry/delaySeconds']);
});

t.test('retry delays must not shrink', async (t) => {
  const errs = await problems(t, { ...minimal, retry: { delaySeconds: 600, maxDelaySeconds: 60 } });
  t.same(errs, [{ path: '/retry/maxDelaySeconds', message: 'must be at least /retry/delaySeconds (600)' }]);
});

t.test('missing required keys and bad JSON', async (t) => {
  const errs = await problems(t, {});
  t.same(errs.map((e) => e.path).sort(), ['/board', '/deviceId', '/hardware', '/trust']);
  const bad = await problems(t, '{ "deviceId": ');
  t.equal(bad[0]?.path, '/');
  t.match(bad[0]?.message, /not valid JSON/);
});

t.test('hardware read from a file (device-tree compatible, NUL-separated)', async (t) => {
  const dir = t.testdir({ compatible: 'acme,board-v2\0acme,board\0', empty: '\n' });
  const path = join(dir, 'config.json');
  await writeFile(path, JSON.stringify({ ...minimal, hardware: { path: join(dir, 'compatible') } }));
  const c = await loadConfig(path);
  t.equal(c.hardware, 'acme,board-v2');
  t.equal(c.hardwarePath, join(dir, 'compatible'));
  const errs = await problems(t, { ...minimal, hardware: { path: join(dir, 'missing') } }, dir);
  t.match(errs, [{ path: '/hardware/path', message: /cannot read/ }]);
  const empty = await problems(t, { ...minimal, hardware: { path: join(dir, 'empty') } }, dir);
  t.match(empty, [{ path: '/hardware/path', message: /no compatible string/ }]);
});

t.test('an unreadable config file is DAEMON_CONFIG_READ', async (t) => {
  await t.rejects(loadConfig(join(t.testdir(), 'nope.json')), { code: 'DAEMON_CONFIG_READ' });
});

t.test('install.delta is "auto" or "off"; anything else is named', async (t) => {
  const dir = t.testdir();
  await writeFile(join(dir, 'off.json'), JSON.stringify({ ...minimal, install: { delta: 'off' } }));
  t.same((await loadConfig(join(dir, 'off.json'))).install, { delta: 'off' }, '"off" validates');
  const errs = await problems(t, { ...minimal, install: { delta: 'yes', deltaLevel: 3 } });
  t.same(errs.map((e) => e.path).sort(), ['/install/delta', '/install/deltaLevel'], 'a wrong value and an unknown key, each by path');
});
