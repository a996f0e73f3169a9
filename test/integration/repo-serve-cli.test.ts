/**
 * `slotflip repo serve` from outside: the built CLI as a child process serving a repository made
 * with `slotflip repo init`, asked over real HTTP what a device (and an attacker) would ask.
 * Also `slotflip board image`: the image it writes is one an emulated board reads as bootable.
 */
import t from 'tap';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, readFile, symlink, writeFile, copyFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { within } from '../harness/wait.js';

const execFileP = promisify(execFile);
const CLI = fileURLToPath(new URL('../../dist/daemon/cli.js', import.meta.url));

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await execFileP(process.execPath, [CLI, ...args], { timeout: 60_000 });
    return { code: 0, ...r };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

interface Served {
  proc: ChildProcess;
  url: string;
  lines: Array<Record<string, unknown>>;
  exited: Promise<number | null>;
}

async function serve(dir: string, extra: string[] = []): Promise<Served> {
  const proc = spawn(process.execPath, [CLI, 'repo', 'serve', dir, '--port', '0', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Array<Record<string, unknown>> = [];
  let buf = '';
  let resolveUrl: (u: string) => void;
  const url = new Promise<string>((r) => (resolveUrl = r));
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = JSON.parse(buf.slice(0, i)) as Record<string, unknown>;
      buf = buf.slice(i + 1);
      lines.push(line);
      if (line.msg === 'listening') resolveUrl(line.url as string);
    }
  });
  const exited = once(proc, 'exit').then(([code]) => code as number | null);
  const u = await within(Promise.race([url, exited.then((c) => { throw new Error(`repo serve exited ${c}`); })]), 60_000, () => { throw new Error('repo serve did not start in 60 s'); });
  return { proc, url: u, lines, exited };
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

function request(url: string, opts: { method?: string; headers?: Record<string, string> } = {}): Promise<Reply> {
  return new Promise((ok, fail) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers ?? {}, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => ok({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts) }));
    });
    req.on('error', fail);
    req.end();
  });
}

/** A request with a raw, unnormalised path (http.request and URL would resolve the `..`). */
function rawStatus(base: string, path: string): Promise<number> {
  const u = new URL(base);
  return new Promise((ok, fail) => {
    const s = net.connect(Number(u.port), u.hostname, () => s.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
    let data = '';
    s.on('data', (d) => (data += d.toString()));
    s.on('end', () => ok(Number(/^HTTP\/1\.1 (\d+)/.exec(data)?.[1] ?? 0)));
    s.on('error', fail);
  });
}

t.test('repo serve: what a device needs, nothing more', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  t.equal((await cli(['repo', 'init', repo])).code, 0, 'repo init');
  const payload = Buffer.alloc(100_000);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
  await mkdir(join(repo, 'repository/targets'), { recursive: true });
  await writeFile(join(repo, 'repository/targets/image.bin'), payload);
  await writeFile(join(dir, 'secret.txt'), 'secret');
  await symlink(join(dir, 'secret.txt'), join(repo, 'repository/targets/escape.bin'));
  await writeFile(join(repo, 'repository/targets/.hidden'), 'x');

  const s = await serve(repo);
  t.teardown(() => { s.proc.kill('SIGKILL'); });
  const root = JSON.parse(await readFile(join(repo, 'repository/metadata/1.root.json'), 'utf8')) as unknown;

  const meta = await request(`${s.url}metadata/1.root.json`);
  t.equal(meta.status, 200);
  t.same(JSON.parse(meta.body.toString()), root, 'metadata served byte for byte');
  t.equal(meta.headers['content-type'], 'application/json');

  const whole = await request(`${s.url}targets/image.bin`);
  t.equal(whole.status, 200);
  t.ok(whole.body.equals(payload), 'whole payload');
  const etag = whole.headers.etag!;
  t.match(etag, /^"[0-9a-f-]+"$/, 'strong ETag');
  t.equal(whole.headers['accept-ranges'], 'bytes');

  const part = await request(`${s.url}targets/image.bin`, { headers: { range: 'bytes=1000-', 'if-range': etag } });
  t.equal(part.status, 206, 'resume: 206');
  t.equal(part.headers['content-range'], `bytes 1000-${payload.length - 1}/${payload.length}`);
  t.ok(part.body.equals(payload.subarray(1000)), 'resume: the rest of the file');
  const tail = await request(`${s.url}targets/image.bin`, { headers: { range: 'bytes=-10' } });
  t.ok(tail.status === 206 && tail.body.equals(payload.subarray(-10)), 'suffix range');
  const changed = await request(`${s.url}targets/image.bin`, { headers: { range: 'bytes=1000-', 'if-range': '"other"' } });
  t.equal(changed.status, 200, 'If-Range with another ETag: the whole file, never a splice');
  t.equal(changed.body.length, payload.length);
  const bad = await request(`${s.url}targets/image.bin`, { headers: { range: `bytes=${payload.length}-` } });
  t.equal(bad.status, 416, 'unsatisfiable range');
  t.equal(bad.headers['content-range'], `bytes */${payload.length}`);
  const head = await request(`${s.url}targets/image.bin`, { method: 'HEAD' });
  t.equal(head.status, 200);
  t.equal(head.headers['content-length'], String(payload.length), 'HEAD: length');
  t.equal(head.body.length, 0, 'HEAD: no body');
  const notModified = await request(`${s.url}targets/image.bin`, { headers: { 'if-none-match': etag } });
  t.equal(notModified.status, 304, 'If-None-Match');

  t.equal((await request(`${s.url}targets/image.bin`, { method: 'POST' })).status, 405, 'POST refused');
  t.equal((await request(`${s.url}metadata/`)).status, 404, 'no directory listing');
  t.equal((await request(`${s.url}targets/escape.bin`)).status, 404, 'a symlink out of the tree is not followed');
  t.equal((await request(`${s.url}targets/.hidden`)).status, 404, 'dotfiles are not served');
  t.equal((await request(`${s.url}targets/nope.bin`)).status, 404);
  for (const p of ['/../keys/timestamp.json', '/%2e%2e/keys/timestamp.json', '/targets/..%2f..%2fkeys%2ftimestamp.json', '/../../../../etc/passwd', '/metadata/%00x']) {
    t.equal(await rawStatus(s.url, p), 404, `refused: ${p}`);
  }

  const log = s.lines.filter((l) => l.msg === 'request');
  t.ok(log.length >= 15, `one access-log line per request (${log.length})`);
  const resumeLine = log.find((l) => l.range === 'bytes=1000-' && l.status === 206);
  t.ok(resumeLine, 'the access log carries the range and the status');
  t.equal(resumeLine?.bytes, payload.length - 1000, 'and the bytes sent');
  t.equal(log.find((l) => l.status === 405)?.method, 'POST');

  s.proc.kill('SIGTERM');
  t.equal(await s.exited, 0, 'SIGTERM: exit 0');
  t.equal(s.lines.at(-1)?.msg, 'stopped');
});

t.test('repo serve: bounded concurrency answers 503 + Retry-After beyond the limit', async (t) => {
  const dir = t.testdir();
  const repo = join(dir, 'repo');
  t.equal((await cli(['repo', 'init', repo])).code, 0);
  await mkdir(join(repo, 'repository/targets'), { recursive: true });
  await writeFile(join(repo, 'repository/targets/big.bin'), Buffer.alloc(64 << 20));
  const s = await serve(repo, ['--max-concurrent', '1']);
  t.teardown(() => { s.proc.kill('SIGKILL'); });
  // a client that does not read keeps its response in flight (backpressure)
  const held = await new Promise<http.IncomingMessage>((ok, fail) => {
    const req = http.get(`${s.url}targets/big.bin`, { agent: false }, (res) => { res.pause(); ok(res); });
    req.on('error', fail);
  });
  t.equal(held.statusCode, 200);
  const busy = await request(`${s.url}metadata/1.root.json`);
  t.equal(busy.status, 503, 'over the limit: 503');
  t.equal(busy.headers['retry-after'], '1');
  held.destroy();
  let after = 503;
  for (let i = 0; i < 50 && after === 503; i++) {
    await new Promise((r) => setTimeout(r, 100));
    after = (await request(`${s.url}metadata/1.root.json`)).status;
  }
  t.equal(after, 200, 'served again once the slot is free');
  s.proc.kill('SIGTERM');
  t.equal(await s.exited, 0);
});

t.test('repo serve: usage and a directory that is not a repository', async (t) => {
  const dir = t.testdir();
  const r = await cli(['repo', 'serve', dir, '--port', '0']);
  t.equal(r.code, 1, 'not a repository: exit 1');
  t.match(r.stderr, /MANIFEST_REPO_INVALID.*repository\/metadata is not a directory/);
  t.equal((await cli(['repo', 'serve', dir, '--port', 'x'])).code, 2, 'bad --port: usage');
  t.equal((await cli(['repo', 'serve', dir, '--bogus'])).code, 2, 'unknown option: usage');
  t.match((await cli(['repo', '--help'])).stdout, /serve DIR \[--port P\] \[--bind ADDR\]/);
});

t.test('board image: an image the emulated board boots; any other file does not', async (t) => {
  const dir = t.testdir();
  const board = join(dir, 'board');
  t.equal((await cli(['board', 'create', board, '--backend', 'emulated', '--slot-size', '256K'])).code, 0);
  const desc = JSON.parse(await readFile(join(board, 'board.json'), 'utf8')) as { slots: { A: string; B: string } };
  const img = join(dir, 'rootfs.img');
  const w = await cli(['board', 'image', img, '--version', '2.0.0', '--size', '192K', '--json']);
  t.equal(w.code, 0, w.stderr);
  t.match(JSON.parse(w.stdout), { version: '2.0.0', size: 192 * 1024, boots: true, healthy: true });
  await copyFile(img, desc.slots.B);
  let st = JSON.parse((await cli(['board', 'status', board, '--json'])).stdout) as { images: Record<string, { version?: string; boots: boolean; healthy?: boolean }> };
  t.match(st.images.B, { version: '2.0.0', boots: true, healthy: true }, 'the board reads it as bootable');

  t.equal((await cli(['board', 'image', img, '--version', '2.0.1', '--size', '64K', '--unhealthy'])).code, 0);
  await copyFile(img, desc.slots.B);
  st = JSON.parse((await cli(['board', 'status', board, '--json'])).stdout) as typeof st;
  t.match(st.images.B, { version: '2.0.1', boots: true, healthy: false }, '--unhealthy: boots, health check fails');

  await writeFile(desc.slots.B, Buffer.alloc(64 * 1024, 7));
  st = JSON.parse((await cli(['board', 'status', board, '--json'])).stdout) as typeof st;
  t.equal(st.images.B!.boots, false, 'a random image never comes up');

  t.equal((await cli(['board', 'image', img, '--version', '1', '--size', '4K'])).code, 2, 'too small: usage');
  t.equal((await cli(['board', 'image', img, '--size', '64K'])).code, 2, 'no --version: usage');
  t.equal((await cli(['board', 'image', img, '--version', '1', '--size', '64K', '--unhealthy', '--no-boot'])).code, 2);
});
