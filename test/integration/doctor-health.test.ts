/**
 * `slotflip health`, the boot-health gate slotflip-health.service runs before boot-complete.target:
 * real commands, a real HTTP endpoint and a TCP listener standing in for the broker. The exit status
 * is the verdict systemd sees.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { brokerTcpProbe, createHealthCommand, formatHealth } from '../../daemon/commands/doctor.js';
import type { HealthReport } from '../../daemon/health.js';

const CLI = join(import.meta.dirname, '../../daemon/cli.ts');

function sink(): { stream: Writable; text: () => string } {
  let buf = '';
  return {
    stream: new Writable({
      write(chunk: Buffer, _enc, cb) {
        buf += chunk.toString();
        cb();
      },
    }),
    text: () => buf,
  };
}

async function tcpListener(): Promise<{ server: Server; port: number }> {
  const server = createServer((s) => s.end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as { port: number }).port };
}

async function httpEndpoint(status: number): Promise<{ server: HttpServer; url: string }> {
  const server = createHttpServer((_req, res) => {
    res.statusCode = status;
    res.end('ok');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}/healthz` };
}

function writeConfig(dir: string, health: unknown, brokerUrl: string): string {
  const path = join(dir, 'config.json');
  writeFileSync(
    path,
    JSON.stringify({
      deviceId: 'dev-1',
      hardware: 'acme,board-1',
      stateDir: join(dir, 'state'),
      trust: { shippedRoot: join(dir, 'root.json') },
      board: { slots: { A: { path: join(dir, 'a.img') }, B: { path: join(dir, 'b.img') } }, boot: { type: 'emulated', stateFile: join(dir, 'boot.json') } },
      broker: { urls: [brokerUrl] },
      health,
    }),
  );
  return path;
}

async function health(path: string, json = true): Promise<{ code: number; out: string; err: string }> {
  const out = sink();
  const err = sink();
  const code = await createHealthCommand().run(['--config', path, ...(json ? ['--json'] : [])], { stdout: out.stream, stderr: err.stream, env: {} });
  return { code, out: out.text(), err: err.text() };
}

t.test('healthy: every required check passes, exit 0', async (t) => {
  const broker = await tcpListener();
  const http = await httpEndpoint(200);
  t.teardown(() => {
    broker.server.close();
    http.server.close();
  });
  const path = writeConfig(
    t.testdir(),
    {
      deadlineSeconds: 20,
      checks: [
        { type: 'command', name: 'app-selftest', argv: ['true'], timeoutSeconds: 5 },
        { type: 'http', url: http.url, expectStatus: 200, timeoutSeconds: 5 },
        { type: 'broker' },
        { type: 'command', name: 'optional', argv: ['false'], timeoutSeconds: 5, required: false },
      ],
    },
    `mqtt://127.0.0.1:${broker.port}`,
  );
  const r = await health(path);
  t.equal(r.code, 0, r.out + r.err);
  const report = JSON.parse(r.out) as HealthReport;
  t.equal(report.ok, true);
  t.same(report.results.map((x) => [x.name, x.ok]), [['app-selftest', true], [`http:${http.url}`, true], ['broker', true], ['optional', false]]);

  const human = await health(path, false);
  t.match(human.out, /^PASS  app-selftest \(command, \d+ ms\)$/m);
  t.match(human.out, /^WARN  optional/m, 'a failed optional check is a warning');
  t.match(human.out, /health: healthy$/m);
});

t.test('unhealthy: a failed required check or an unreachable broker, exit 1', async (t) => {
  const http = await httpEndpoint(503);
  t.teardown(() => http.server.close());
  const gone = await tcpListener();
  await new Promise((r) => gone.server.close(r));
  const path = writeConfig(
    t.testdir(),
    {
      deadlineSeconds: 20,
      checks: [
        { type: 'command', name: 'app-selftest', argv: ['sh', '-c', 'echo database missing; exit 3'], timeoutSeconds: 5 },
        { type: 'http', url: http.url, expectStatus: 200, timeoutSeconds: 5 },
        { type: 'broker' },
      ],
    },
    `mqtt://127.0.0.1:${gone.port}`,
  );
  const r = await health(path);
  t.equal(r.code, 1);
  const report = JSON.parse(r.out) as HealthReport;
  t.equal(report.ok, false);
  t.same(report.results.map((x) => x.ok), [false, false, false]);
  const human = await health(path, false);
  t.match(human.out, /^FAIL  app-selftest/m);
  t.match(human.out, /database missing/, 'the failing command output is shown');
  t.match(human.out, /health: UNHEALTHY$/m);
});

t.test('no config, no verdict: exit 1; usage errors exit 2', async (t) => {
  const r = await health(join(t.testdir(), 'missing.json'));
  t.equal(r.code, 1, 'a config that cannot be loaded is unhealthy');
  t.match(r.err, /DAEMON_CONFIG_READ/);
  const err = sink();
  const io = { stdout: sink().stream, stderr: err.stream, env: {} };
  t.equal(await createHealthCommand().run([], io), 2);
  t.equal(await createHealthCommand().run(['--config', 'x', '--bogus'], io), 2);
});

t.test('brokerTcpProbe tries every URL, skips unusable ones', async (t) => {
  const up = await tcpListener();
  t.teardown(() => up.server.close());
  const down = await tcpListener();
  await new Promise((r) => down.server.close(r));
  t.equal(await brokerTcpProbe(['nonsense', `mqtt://127.0.0.1:${down.port}`, `mqtt://127.0.0.1:${up.port}`])(2000), true);
  t.equal(await brokerTcpProbe([`mqtt://127.0.0.1:${down.port}`])(2000), false);
  t.equal(await brokerTcpProbe([])(2000), false, 'no broker configured: not reachable');
  t.match(formatHealth({ ok: false, deadlineExceeded: true, results: [] }), /deadline exceeded/);
});

t.test('the CLI entry runs `slotflip health` (registry wiring); exit status is the verdict', async (t) => {
  const dir = t.testdir();
  const path = writeConfig(dir, { deadlineSeconds: 20, checks: [{ type: 'command', name: 'fails', argv: ['false'], timeoutSeconds: 5 }] }, 'mqtt://127.0.0.1:1');
  const child = spawn(process.execPath, [...process.execArgv, CLI, 'health', '--config', path], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  t.equal(code, 1, out);
  t.match(out, /FAIL {2}fails/);
});
