/**
 * nginx as the payload and metadata host (the README names it as known to work): Debian's nginx
 * started as a child process with its own config on a free loopback port, serving a repository made
 * with the built CLI. Checked: what devices rely on (single Range → 206, a strong ETag, If-Range with
 * another ETag → the whole file), then a device installs from it (`slotflip update --once` with an
 * `http` source on nginx). Fails when nginx is not installed (npm test installs nginx-light).
 */
import t from 'tap';
import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import { access, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { freePort } from '../harness/mosquitto.js';

const execFileP = promisify(execFile);
const CLI = fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));
const NGINX = '/usr/sbin/nginx';

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await execFileP(process.execPath, [CLI, ...args], { timeout: 120_000 });
    return { code: 0, ...r };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((ok, fail) => {
    http.get(url, { headers, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => ok({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts) }));
    }).on('error', fail);
  });
}

const haveNginx = await access(NGINX).then(() => true, () => false);

t.test('nginx serves a slotflip repository: Range, ETag/If-Range, and a device installs from it', async (t) => {
  // npm test installs nginx-light (test/ci/deps.sh): missing is a broken set-up, never a silent skip
  if (!haveNginx) return t.fail('nginx not installed (apt-get install nginx-light)');
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  const board = join(dir, 'board');
  t.equal((await cli(['repo', 'init', repo])).code, 0);
  t.equal((await cli(['board', 'image', join(dir, 'rootfs.img'), '--version', '1.1.0', '--size', '160K'])).code, 0);
  const added = await cli(['release', 'add', repo, '--image', join(dir, 'rootfs.img'), '--version', '1.1.0', '--security-version', '1', '--hardware', 'acme,nginx', '--channel', 'stable', '--chunk-size', '32768', '--json']);
  t.equal(added.code, 0, added.stderr);

  const port = await freePort();
  const ng = join(dir, 'nginx');
  await mkdir(join(ng, 'tmp'), { recursive: true });
  const conf = join(ng, 'nginx.conf');
  await writeFile(conf, [
    'daemon off;', 'master_process off;', `pid ${ng}/nginx.pid;`, `error_log ${ng}/error.log warn;`,
    'events { worker_connections 64; }',
    'http {',
    `  access_log ${ng}/access.log;`,
    ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `  ${k}_temp_path ${ng}/tmp/${k};`),
    '  types { application/json json; }', '  default_type application/octet-stream;',
    `  server { listen 127.0.0.1:${port}; root ${repo}/repository; location / { } }`,
    '}',
  ].join('\n') + '\n');
  const nginx = spawn(NGINX, ['-c', conf, '-p', ng], { stdio: ['ignore', 'ignore', 'pipe'] });
  let nginxErr = '';
  nginx.stderr!.on('data', (d: Buffer) => (nginxErr += d.toString()));
  const exited = once(nginx, 'exit');
  t.teardown(async () => {
    nginx.kill('SIGTERM');
    await exited;
  });
  const base = `http://127.0.0.1:${port}/`;
  let up = false;
  for (let i = 0; i < 100 && !up; i++) {
    up = await get(`${base}metadata/1.root.json`).then((r) => r.status === 200, () => false);
    if (!up) await new Promise((r) => setTimeout(r, 100));
  }
  t.ok(up, `nginx is up ${nginxErr}`);

  const payloadDir = join(repo, 'repository/targets/releases/1.1.0');
  const file = (await readdir(payloadDir)).find((f) => /^[0-9a-f]{64}\.rootfs\.img\.zst$/.test(f));
  t.ok(file, 'release add wrote the payload as <sha256>.<name>');
  const url = `${base}targets/releases/1.1.0/${file!}`;
  const whole = await get(url);
  t.equal(whole.status, 200, `payload at <served>/targets/<dir>/<sha256>.<name>: ${url}`);
  const etag = whole.headers.etag!;
  t.match(etag, /^"[^"]+"$/, 'a strong ETag');
  const part = await get(url, { range: 'bytes=100-', 'if-range': etag });
  t.equal(part.status, 206, 'Range with a matching If-Range: 206');
  t.ok(part.body.equals(whole.body.subarray(100)), 'the rest of the file');
  const changed = await get(url, { range: 'bytes=100-', 'if-range': '"something-else"' });
  t.equal(changed.status, 200, 'If-Range with another ETag: the whole file');

  // a device whose only source is nginx installs the release
  t.equal((await cli(['board', 'create', board, '--backend', 'emulated', '--slot-size', '256K'])).code, 0);
  const desc = JSON.parse(await readFile(join(board, 'board.json'), 'utf8')) as { slots: { A: string; B: string }; bootConfig: unknown };
  const cfg = join(dir, 'config.json');
  await writeFile(cfg, JSON.stringify({
    deviceId: 'ngx-1', hardware: 'acme,nginx', stateDir: join(dir, 'state'),
    trust: { shippedRoot: join(repo, 'repository/metadata/1.root.json'), sources: [{ type: 'http', url: base }] },
    board: { slots: { A: { path: desc.slots.A, size: 262144 }, B: { path: desc.slots.B, size: 262144 } }, boot: desc.bootConfig, tries: 2 },
    reboot: { command: ['true'] },
  }));
  const r = await cli(['update', '--once', '--config', cfg, '--json']);
  t.equal(r.code, 0, r.code === 0 ? "update --once against nginx" : `update --once against nginx: ${r.stderr.slice(-2000)}`);
  t.match(JSON.parse(r.stdout), { phase: 'rebooting', rebooted: true }, 'installed, verified and armed from nginx');
  const log = await readFile(join(ng, 'access.log'), 'utf8');
  t.match(log, /GET \/targets\/releases\/1\.1\.0\/[0-9a-f]{64}\.rootfs\.img\.zst HTTP\/1\.1" 200/, 'the payload came from nginx');
});
