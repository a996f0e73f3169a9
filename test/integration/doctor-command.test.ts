/**
 * `slotflip doctor` against a device laid out in a temp dir: file slots, a U-Boot environment read by
 * the real fw_printenv (RAUC convention, env image made by mkenvimage), a TUF root signed with a real
 * Ed25519 key, a TCP listener standing in for the broker, a state directory. Then the same device
 * broken in every way doctor knows, and the CLI wiring (registry entry, exit codes).
 */
import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Writable } from 'node:stream';
import { createDoctorCommand, endpointOf, findOnPath, type DoctorReport } from '../../daemon/commands/doctor.js';
import { generateSigningKey, publicKeyJson, signEnvelope } from '../../manifests/keys.js';

const execFileP = promisify(execFile);
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

async function listen(): Promise<{ server: Server; port: number }> {
  const server = createServer((s) => s.end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as { port: number }).port };
}

async function closedPort(): Promise<number> {
  const { server, port } = await listen();
  await new Promise((r) => server.close(r));
  return port;
}

function rootJson(opts: { tamper?: boolean } = {}): string {
  const key = generateSigningKey();
  const role = { keyids: [key.keyid], threshold: 1 };
  const signed = {
    _type: 'root',
    spec_version: '1.0.31',
    version: 1,
    expires: '2036-01-01T00:00:00Z',
    consistent_snapshot: true,
    keys: { [key.keyid]: publicKeyJson(key.publicHex) },
    roles: { root: role, targets: role, snapshot: role, timestamp: role },
  };
  const env = signEnvelope(signed, [key]);
  if (opts.tamper) (env.signed as { version: number }).version = 2;
  return JSON.stringify(env, null, 2);
}

interface Device {
  dir: string;
  configPath: string;
  config: Record<string, unknown>;
  mounts: string;
  write(): void;
}

async function device(dir: string, brokerPort: number): Promise<Device> {
  writeFileSync(join(dir, 'a.img'), Buffer.alloc(4 << 20));
  writeFileSync(join(dir, 'b.img'), Buffer.alloc(4 << 20));
  writeFileSync(join(dir, 'env.txt'), 'BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n');
  await execFileP('mkenvimage', ['-s', '0x4000', '-o', join(dir, 'env.bin'), join(dir, 'env.txt')]);
  writeFileSync(join(dir, 'fw_env.config'), `${join(dir, 'env.bin')} 0x0 0x4000\n`);
  writeFileSync(join(dir, 'cmdline'), 'console=ttyS0 root=/dev/mmcblk0p2 rauc.slot=A rootwait\n');
  writeFileSync(join(dir, 'root.json'), rootJson());
  mkdirSync(join(dir, 'state'), { mode: 0o700 });
  chmodSync(join(dir, 'state'), 0o700);
  const mounts = join(dir, 'mounts');
  writeFileSync(mounts, `${join(dir, 'a.img')} / ext4 ro 0 0\nproc /proc proc rw 0 0\n`);
  const config: Record<string, unknown> = {
    deviceId: 'dev-1',
    hardware: 'acme,board-1',
    stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(dir, 'root.json'), sources: [{ type: 'mqtt' }], payloadBaseUrls: [] },
    board: {
      slots: { A: { path: join(dir, 'a.img') }, B: { path: join(dir, 'b.img') } },
      boot: { type: 'uboot', convention: 'rauc', fwEnvConfig: join(dir, 'fw_env.config'), cmdline: { path: join(dir, 'cmdline'), key: 'rauc.slot' } },
    },
    broker: { urls: [`mqtt://127.0.0.1:${brokerPort}`] },
    health: { settle: { timeoutSeconds: 600, bootComplete: true }, checks: [{ type: 'broker' }] },
  };
  const configPath = join(dir, 'config.json');
  const d: Device = { dir, configPath, config, mounts, write: () => writeFileSync(configPath, JSON.stringify(d.config, null, 2)) };
  d.write();
  return d;
}

async function doctor(d: Device, args: string[] = ['--json']): Promise<{ code: number; out: string; err: string; report?: DoctorReport }> {
  const out = sink();
  const err = sink();
  const cmd = createDoctorCommand({ mountsFile: d.mounts });
  const code = await cmd.run(['--config', d.configPath, ...args], { stdout: out.stream, stderr: err.stream, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
  return { code, out: out.text(), err: err.text(), ...(args.includes('--json') ? { report: JSON.parse(out.text()) as DoctorReport } : {}) };
}

const byId = (r: DoctorReport): Record<string, DoctorReport['checks'][number]> => Object.fromEntries(r.checks.map((c) => [c.id, c]));

t.test('a well-integrated device passes every check', async (t) => {
  const broker = await listen();
  t.teardown(() => broker.server.close());
  const d = await device(t.testdir(), broker.port);
  const r = await doctor(d);
  t.equal(r.code, 0, `exit 0: ${r.out}`);
  const report = r.report!;
  t.equal(report.ok, true);
  t.same(report.checks.map((c) => c.id), ['config', 'health', 'boot-tools', 'boot-env', 'slots', 'trust-root', 'broker', 'payload-servers', 'state-dir']);
  const c = byId(report);
  for (const id of ['config', 'health', 'boot-tools', 'boot-env', 'slots', 'trust-root', 'broker', 'state-dir']) t.equal(c[id]!.status, 'pass', `${id}: ${c[id]!.summary}`);
  t.equal(c['payload-servers']!.status, 'skip', 'no payload server configured');
  t.match(c['boot-tools']!.summary, /fw_printenv/);
  t.match(c['boot-env']!.summary, /booted A; A good, primary; B good/, 'environment read through the real fw_printenv');
  t.match(c.slots!.summary, /A .*a\.img 4\.0 MiB; B .*b\.img 4\.0 MiB/);
  t.match(c['trust-root']!.summary, /root v1, 1 keys, self-signed/);
  t.same(readdirSync(join(d.dir, 'state')), [], 'the write probe leaves nothing behind');

  const human = await doctor(d, []);
  t.equal(human.code, 0);
  t.match(human.out, /^PASS  config /m);
  t.match(human.out, /^SKIP  payload-servers/m);
  t.match(human.out, /doctor: all checks passed/);
});

t.test('a broken device: every problem reported with what to do, exit 1', async (t) => {
  const d = await device(t.testdir(), await closedPort());
  const boot = (d.config.board as { boot: Record<string, unknown> }).boot;
  boot.fwPrintenv = join(d.dir, 'no-such-fw_printenv');
  (d.config.trust as Record<string, unknown>).shippedRoot = join(d.dir, 'missing-root.json');
  (d.config.trust as Record<string, unknown>).payloadBaseUrls = [`http://127.0.0.1:${await closedPort()}/payloads/`];
  d.config.stateDir = join(d.dir, 'no-state');
  writeFileSync(d.mounts, `${join(d.dir, 'a.img')} / ext4 ro 0 0\n${join(d.dir, 'b.img')} /mnt/other ext4 rw 0 0\n`);
  d.write();

  const r = await doctor(d);
  t.equal(r.code, 1, 'exit 1');
  const c = byId(r.report!);
  t.equal(r.report!.ok, false);
  t.equal(c['boot-tools']!.status, 'fail');
  t.match(c['boot-tools']!.summary, /no-such-fw_printenv/);
  t.match(c['boot-tools']!.fix, /libubootenv/);
  t.equal(c['boot-env']!.status, 'fail');
  t.equal(c['boot-env']!.code, 'HAL_TOOL_MISSING', 'the backend itself cannot run its tool');
  t.equal(c.slots!.status, 'fail');
  t.match(c.slots!.summary, /inactive slot B .* is mounted at \/mnt\/other/);
  t.match(c.slots!.fix, /never mount the inactive slot/);
  t.equal(c['trust-root']!.status, 'fail');
  t.match(c['trust-root']!.summary, /missing/);
  t.equal(c.broker!.status, 'fail');
  t.match(c.broker!.summary, /ECONNREFUSED/);
  t.equal(c['payload-servers']!.status, 'fail');
  t.equal(c['state-dir']!.status, 'fail');
  t.match(c['state-dir']!.fix, /systemd-tmpfiles --create slotflip\.conf/);
  for (const check of r.report!.checks.filter((x) => x.status === 'fail')) t.ok(check.fix && check.fix.length > 10, `${check.id} says what to do`);
  t.equal(c.config!.status, 'pass', 'the config itself is fine');

  const human = await doctor(d, []);
  t.match(human.out, /^FAIL  state-dir /m);
  t.match(human.out, /fix: create it/);
  t.match(human.out, /doctor: 7 checks failed/);
});

t.test('environment and root problems that need the real tools and signatures to see', async (t) => {
  const broker = await listen();
  t.teardown(() => broker.server.close());
  const d = await device(t.testdir(), broker.port);
  // an environment that is not there: fw_printenv itself fails
  writeFileSync(join(d.dir, 'fw_env.config'), `${join(d.dir, 'gone.bin')} 0x0 0x4000\n`);
  writeFileSync(join(d.dir, 'root.json'), rootJson({ tamper: true }));
  writeFileSync(join(d.dir, 'cmdline'), 'console=ttyS0 rootwait\n');
  chmodSync(join(d.dir, 'state'), 0o755);
  const r = await doctor(d);
  const c = byId(r.report!);
  t.equal(c['boot-tools']!.status, 'pass', 'the tools are there');
  t.equal(c['boot-env']!.status, 'fail');
  t.match(c['boot-env']!.summary, /booted slot: .*names no slot/, 'the booted slot cannot be told');
  t.equal(c['boot-env']!.code, 'HAL_BOOTED_SLOT_UNKNOWN');
  t.match(c['boot-env']!.summary, /slot A boot state: fw_printenv/, 'and the environment cannot be read');
  t.equal(c['trust-root']!.status, 'fail');
  t.equal(c['trust-root']!.code, 'MANIFEST_SIGNATURE', 'a root whose signature does not match is refused');
  t.equal(c['state-dir']!.status, 'warn', 'a state dir others can read is a warning');
  t.match(c['state-dir']!.fix, /chmod 0700/);
  t.equal(c.slots!.status, 'pass', 'booted slot unknown: no mount check, slots still sized');
});

t.test('an invalid config is one failing check listing every problem', async (t) => {
  const d = await device(t.testdir(), 1);
  d.config.board = { slots: { A: { path: 'relative.img' } } };
  d.config.colour = 'blue';
  d.write();
  const r = await doctor(d);
  t.equal(r.code, 1);
  t.equal(r.report!.checks.length, 1);
  const c = r.report!.checks[0]!;
  t.equal(c.id, 'config');
  t.equal(c.code, 'DAEMON_CONFIG_INVALID');
  t.match(c.summary, /\/colour: unknown key/);
  t.match(c.summary, /\/board\/boot: is required/);
  t.match(c.summary, /\/board\/slots\/A\/path/);
});

t.test('usage errors exit 2', async (t) => {
  const cmd = createDoctorCommand();
  const err = sink();
  const io = { stdout: sink().stream, stderr: err.stream, env: {} };
  t.equal(await cmd.run([], io), 2, 'no --config');
  t.match(err.text(), /--config FILE is required/);
  t.equal(await cmd.run(['--config', 'x', '--colour'], io), 2, 'unknown option');
  t.match(cmd.help, /^usage: slotflip doctor --config FILE \[--json\]/);
});

t.test('helpers', async (t) => {
  t.same(endpointOf('mqtts://broker.example.com'), { host: 'broker.example.com', port: 8883 });
  t.same(endpointOf('mqtt://10.0.0.1:1884'), { host: '10.0.0.1', port: 1884 });
  t.same(endpointOf('wss://[::1]/mqtt'), { host: '::1', port: 443 });
  t.same(endpointOf('https://cdn.example.com/p/'), { host: 'cdn.example.com', port: 443 });
  t.equal(endpointOf('gopher://x'), undefined);
  t.equal(endpointOf('not a url'), undefined);
  t.equal(await findOnPath('sh', '/nonexistent:/bin:/usr/bin'), existsSync('/bin/sh') ? '/bin/sh' : '/usr/bin/sh');
  t.equal(await findOnPath('sh', 'relative/dir'), undefined, 'relative PATH entries are ignored');
  const plain = join(t.testdir(), 'plain');
  writeFileSync(plain, 'x', { mode: 0o644 });
  t.equal(await findOnPath(plain, ''), undefined, 'not executable');
});

t.test('the CLI entry runs doctor (registry wiring)', async (t) => {
  const broker = await listen();
  t.teardown(() => broker.server.close());
  const d = await device(t.testdir(), broker.port);
  // the mount table is the real one here: the temp slot files are not mounted anywhere
  const child = spawn(process.execPath, [...process.execArgv, CLI, 'doctor', '--config', d.configPath, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  t.equal(code, 0, `exit 0: ${err}${out}`);
  t.equal((JSON.parse(out) as DoctorReport).ok, true);
});

t.test('health config: no checks fails, a racing unit or no settle warns (issue 22, 5)', async (t) => {
  const broker = await listen();
  t.teardown(() => broker.server.close());
  const d = await device(t.testdir(), broker.port);
  const cases: Array<[unknown, string, RegExp]> = [
    [{}, 'fail', /no check/],
    [{ allowNoChecks: true }, 'warn', /unjudged/],
    [{ settle: { timeoutSeconds: 600 }, checks: [{ type: 'systemd-unit', unit: 'multi-user.target' }] }, 'warn', /races its own start/],
    [{ checks: [{ type: 'broker' }] }, 'warn', /no settle/],
  ];
  for (const [health, status, summary] of cases) {
    d.config.health = health;
    d.write();
    const c = byId((await doctor(d)).report!).health!;
    t.equal(c.status, status, JSON.stringify(health));
    t.match(c.summary, summary);
    if (status === 'fail') t.equal(c.code, 'DAEMON_HEALTH_NO_CHECKS');
  }
});
