// Health checks of every kind, with real commands, a real HTTP server and real drop-in executables.
import t from 'tap';
import { createServer } from 'node:http';
import { chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { runHealthChecks, systemResources, healthConfigSchema, type HealthConfig, type ResourceProbe } from '../../daemon/health.js';

const server = createServer((req, res) => {
  if (req.url === '/ok') { res.writeHead(200); res.end('healthy'); return; }
  if (req.url === '/slow') { setTimeout(() => { res.writeHead(200); res.end(); }, 3000); return; }
  res.writeHead(503); res.end('x'.repeat(20_000));
});
await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
t.teardown(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));
const port = (server.address() as { port: number }).port;

const cfg = (over: Partial<HealthConfig>): HealthConfig => ({ deadlineSeconds: 20, checks: [], ...over });

t.test('commands: pass, fail with output, expected exit, timeout, missing tool, optional', async (t) => {
  const r = await runHealthChecks(cfg({ checks: [
    { type: 'command', name: 'true', argv: ['true'], timeoutSeconds: 5 },
    { type: 'command', name: 'fails', argv: ['sh', '-c', 'echo starting; echo boom >&2; exit 3'], timeoutSeconds: 5 },
    { type: 'command', name: 'exit3-expected', argv: ['sh', '-c', 'exit 3'], timeoutSeconds: 5, expectExit: 3 },
    { type: 'command', name: 'hangs', argv: ['sleep', '10'], timeoutSeconds: 0.3 },
    { type: 'command', name: 'missing', argv: ['/nonexistent/tool'], timeoutSeconds: 5 },
    { type: 'command', name: 'optional', argv: ['false'], timeoutSeconds: 5, required: false },
  ] }));
  const by = Object.fromEntries(r.results.map((x) => [x.name, x]));
  t.equal(r.ok, false);
  t.match(by['true'], { ok: true, kind: 'command', required: true });
  t.match(by['fails'], { ok: false });
  t.match(by['fails']!.output, /exit 3 \(expected 0\)[\s\S]*starting[\s\S]*boom/);
  t.match(by['exit3-expected'], { ok: true });
  t.match(by['hangs'], { ok: false, output: /timed out after 300 ms/ });
  t.ok(by['hangs']!.durationMs < 3000);
  t.match(by['missing'], { ok: false, output: /HAL_TOOL_MISSING/ });
  t.match(by['optional'], { ok: false, required: false });
  t.same(r.results.map((x) => x.name), ['true', 'fails', 'exit3-expected', 'hangs', 'missing', 'optional'], 'results in config order');
  const onlyOptional = await runHealthChecks(cfg({ checks: [{ type: 'command', name: 'optional', argv: ['false'], timeoutSeconds: 5, required: false }, { type: 'command', name: 'ok', argv: ['true'], timeoutSeconds: 5 }] }));
  t.equal(onlyOptional.ok, true, 'a failing optional check does not fail the boot');
});

t.test('output is capped, keeping the tail', async (t) => {
  const r = await runHealthChecks(cfg({ checks: [{ type: 'command', name: 'noisy', argv: ['sh', '-c', 'head -c 20000 /dev/zero | tr "\\0" a; echo; echo LAST-LINE; exit 1'], timeoutSeconds: 5 }] }), { outputCap: 500 });
  t.ok(r.results[0]!.output.length <= 500);
  t.match(r.results[0]!.output, /LAST-LINE$/);
});

t.test('http endpoints', async (t) => {
  const dead = `http://127.0.0.1:1/`;
  const r = await runHealthChecks(cfg({ checks: [
    { type: 'http', url: `http://127.0.0.1:${port}/ok`, expectStatus: 200 },
    { type: 'http', url: `http://127.0.0.1:${port}/bad`, expectStatus: 200, name: 'bad' },
    { type: 'http', url: `http://127.0.0.1:${port}/bad`, expectStatus: 503, name: 'expects-503' },
    { type: 'http', url: `http://127.0.0.1:${port}/slow`, expectStatus: 200, name: 'slow', timeoutSeconds: 0.3 },
    { type: 'http', url: dead, expectStatus: 200, name: 'dead' },
  ] }), { outputCap: 1000 });
  t.match(r.results[0], { name: `http:http://127.0.0.1:${port}/ok`, ok: true, output: 'HTTP 200\nhealthy' });
  t.match(r.results[1], { ok: false, output: /^HTTP 503 \(expected 200\)/ });
  t.ok(r.results[1]!.output.length <= 1000, 'body capped');
  t.match(r.results[2], { ok: true });
  t.match(r.results[3], { ok: false, output: /TimeoutError|timeout|aborted/i });
  t.ok(r.results[3]!.durationMs < 2500);
  t.match(r.results[4], { ok: false });
  t.equal(r.ok, false);
});

t.test('systemd units via `systemctl is-active -- UNIT` (argv, no shell)', async (t) => {
  const dir = t.testdir({
    systemctl: '#!/bin/sh\necho "$@" >> "$(dirname "$0")/calls"\n[ "$3" = "good.service" ] && { echo active; exit 0; }\necho failed; exit 3\n',
  });
  await chmod(join(dir, 'systemctl'), 0o755);
  const r = await runHealthChecks(cfg({ checks: [
    { type: 'systemd-unit', unit: 'good.service' },
    { type: 'systemd-unit', unit: 'bad.service' },
  ] }), { systemctl: join(dir, 'systemctl') });
  t.match(r.results[0], { name: 'unit:good.service', kind: 'systemd-unit', ok: true, output: 'active' });
  t.match(r.results[1], { ok: false, output: /exit 3[\s\S]*failed/ });
  const { readFile } = await import('node:fs/promises');
  t.same((await readFile(join(dir, 'calls'), 'utf8')).trim().split('\n').sort(), ['is-active -- bad.service', 'is-active -- good.service']);
});

t.test('broker reachability through the injected probe', async (t) => {
  const checks: HealthConfig['checks'] = [{ type: 'broker' }];
  t.match((await runHealthChecks(cfg({ checks }), { brokerProbe: async () => true })).results[0], { ok: true, kind: 'broker' });
  t.match((await runHealthChecks(cfg({ checks }), { brokerProbe: async () => false })).results[0], { ok: false, output: 'broker not reachable' });
  t.match((await runHealthChecks(cfg({ checks }))).results[0], { ok: false, output: /no broker/ });
});

t.test('resources: real readings from systeminformation', async (t) => {
  const dir = t.testdir();
  const pass = await runHealthChecks(cfg({ checks: [{ type: 'resources', minFreeMemoryMiB: 1, minFreeDiskMiB: 1, path: dir, maxLoad1: 10_000 }] }));
  t.match(pass.results[0], { ok: true, kind: 'resources', output: /freeMemoryMiB=\d+.*ok\nfreeDiskMiB\(.*\)=\d+.*ok\nload1=/ });
  const fail = await runHealthChecks(cfg({ checks: [{ type: 'resources', minFreeMemoryMiB: 1e9, minFreeDiskMiB: 1e12 }] }));
  t.match(fail.results[0], { ok: false, output: /freeMemoryMiB=.*FAIL\nfreeDiskMiB\(\/\)=.*FAIL/ });
  t.ok((await systemResources().freeDiskMiB('/')) !== undefined);
});

t.test('resources: temperature and load thresholds, missing sensor fails', async (t) => {
  const fake = (temp: number | undefined, load: number): ResourceProbe => ({
    freeMemoryMiB: async () => 100, freeDiskMiB: async () => 100, temperatureC: async () => temp, load1: async () => load,
  });
  const checks: HealthConfig['checks'] = [{ type: 'resources', maxTemperatureC: 70, maxLoad1: 2 }];
  t.match((await runHealthChecks(cfg({ checks }), { resources: fake(55, 1) })).results[0], { ok: true });
  t.match((await runHealthChecks(cfg({ checks }), { resources: fake(80, 1) })).results[0], { ok: false, output: /temperatureC=80 \(max 70\) FAIL/ });
  t.match((await runHealthChecks(cfg({ checks }), { resources: fake(55, 3) })).results[0], { ok: false, output: /load1=3 \(max 2\) FAIL/ });
  t.match((await runHealthChecks(cfg({ checks }), { resources: fake(undefined, 1) })).results[0], { ok: false, output: /temperatureC: unavailable/ });
});

t.test('greenboot-style drop-ins: required.d must pass, wanted.d only reported', async (t) => {
  const dir = t.testdir({
    'required.d': { '10-ok.sh': '#!/bin/sh\necho fine\n', '20-fail.sh': '#!/bin/sh\necho app down >&2\nexit 1\n', 'README': 'not executable' },
    'wanted.d': { '50-meh.sh': '#!/bin/sh\nexit 2\n' },
    'okreq.d': { 'a.sh': '#!/bin/sh\nexit 0\n' },
  });
  for (const f of ['required.d/10-ok.sh', 'required.d/20-fail.sh', 'wanted.d/50-meh.sh', 'okreq.d/a.sh']) await chmod(join(dir, f), 0o755);
  const r = await runHealthChecks(cfg({ dropInDirs: { required: join(dir, 'required.d'), wanted: join(dir, 'wanted.d') } }));
  t.same(r.results.map((x) => [x.name.slice(dir.length + 1), x.required, x.ok]), [
    ['required.d/10-ok.sh', true, true],
    ['required.d/20-fail.sh', true, false],
    ['wanted.d/50-meh.sh', false, false],
  ], 'sorted, executables only');
  t.match(r.results[1]!.output, /app down/);
  t.equal(r.ok, false);
  const r2 = await runHealthChecks(cfg({ dropInDirs: { required: join(dir, 'okreq.d'), wanted: join(dir, 'wanted.d') } }));
  t.equal(r2.ok, true, 'a failing wanted drop-in does not fail the boot');
  const r3 = await runHealthChecks(cfg({ dropInDirs: { required: join(dir, 'absent.d') } }));
  t.same(r3, { ok: true, results: [], deadlineExceeded: false }, 'a missing drop-in dir is no check');
});

t.test('overall deadline bounds everything', async (t) => {
  const t0 = Date.now();
  const r = await runHealthChecks({ deadlineSeconds: 1, checks: [
    { type: 'command', name: 'slow', argv: ['sleep', '10'], timeoutSeconds: 60 },
    { type: 'broker' },
    { type: 'command', name: 'quick', argv: ['true'], timeoutSeconds: 60 },
  ] }, { brokerProbe: () => new Promise(() => undefined) });
  t.ok(Date.now() - t0 < 2500, `finished in ${Date.now() - t0} ms`);
  t.equal(r.ok, false);
  t.match(r.results[0], { ok: false });
  t.match(r.results[1], { ok: false, output: /deadline of 1 s exceeded/ });
  t.match(r.results[2], { ok: true });
  t.equal(r.deadlineExceeded, true);
});

t.test('config schema: unknown keys refused, each type checked on its own', async (t) => {
  const v = new Ajv({ allErrors: true, useDefaults: true, strict: true }).compile(healthConfigSchema);
  const good = { checks: [{ type: 'command', name: 'x', argv: ['true'], timeoutSeconds: 1 }, { type: 'systemd-unit', unit: 'app.service' }, { type: 'http', url: 'http://127.0.0.1/h', expectStatus: 200 }, { type: 'broker' }, { type: 'resources', maxLoad1: 3 }], dropInDirs: { required: '/etc/slotflip/required.d' } };
  t.ok(v(good), JSON.stringify(v.errors));
  t.equal((good as { deadlineSeconds?: number }).deadlineSeconds, 300, 'default filled');
  t.notOk(v({ checks: [{ type: 'http', url: 'http://x/', expectStatus: 200, argv: ['x'] }] }));
  t.same(v.errors?.map((e) => e.instancePath), ['/checks/0', '/checks/0'].slice(0, v.errors?.length), 'errors point at the bad check');
  t.notOk(v({ checks: [{ type: 'systemd-unit', unit: '--root=/tmp' }] }), 'a unit cannot look like an option');
  t.notOk(v({ checks: [{ type: 'shell', cmd: 'rm -rf /' }] }));
  t.notOk(v({ deadline: 3 }));
});
