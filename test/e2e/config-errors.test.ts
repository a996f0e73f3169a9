/**
 * Config errors (issue 14): a device owner's config with several planted problems — schema ones and
 * the ones a schema cannot see (cron expressions of the poll schedule and of maintenance windows, a
 * time zone) — is refused by `slotflip daemon` with exit 1 and EVERY problem listed by path in one
 * run, not the cron expression only once the others are fixed.
 */
import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createBoard, initFleet, slotflip, writeDeviceConfig } from './harness.js';

t.test('every config problem is listed in one run, cron expressions and time windows included', async (t) => {
  const dir = t.testdir();
  const fleet = await initFleet(dir);
  const board = await createBoard(join(dir, 'board'), 1 << 20);
  const path = await writeDeviceConfig(join(dir, 'config.json'), { deviceId: 'dev-cfg', board, fleet, stateDir: join(dir, 'state'), payloadBaseUrls: ['http://127.0.0.1:9/targets/'] });
  const good = await slotflip(['status', '--config', path, '--json']);
  t.equal(good.code, 0, `the generated config itself is valid (${good.stderr})`);

  const c = JSON.parse(await readFile(path, 'utf8')) as Record<string, any>;
  c.deviceId = 'has spaces';                                  // 1 pattern
  c.board.tries = 0;                                          // 2 minimum
  c.log.level = 'loud';                                       // 3 enum
  c.trust.payloadBaseUrls = ['ftp://mirror/'];                // 4 pattern
  c.colour = 'blue';                                          // 5 unknown key
  c.poll = { cron: '61 * * * * *' };                          // 6 not a cron expression
  c.policies = { maintenanceWindows: { reboot: [{ cron: '0 25 * * *', durationMinutes: 60 }, { cron: '0 3 * * *', durationMinutes: 60, timezone: 'Mars/Olympus' }] } }; // 7, 8
  c.retry = { delaySeconds: 600, maxDelaySeconds: 60 };       // 9 order
  await writeFile(path, JSON.stringify(c, null, 2));

  const r = await slotflip(['daemon', '--config', path], { timeoutMs: 20_000 });
  t.equal(r.code, 1, 'the daemon refuses to start (exit 1)');
  t.match(r.stderr, /DAEMON_CONFIG_INVALID/);
  const paths = ['/deviceId', '/board/tries', '/log/level', '/trust/payloadBaseUrls/0', '/colour', '/poll/cron',
    '/policies/maintenanceWindows/reboot/0/cron', '/policies/maintenanceWindows/reboot/1/timezone', '/retry/maxDelaySeconds'];
  for (const p of paths) t.match(r.stderr, new RegExp(`^\\s+${p.replace(/\//g, '\\/')}: `, 'm'), `lists ${p}`);
  t.match(r.stderr, /\(9 problems\)/, 'and counts all nine');
});
