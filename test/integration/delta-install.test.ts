/**
 * Delta installs over real HTTP (`repo serve` and nginx) into file slots: the seed in the running
 * slot, the seed in the target slot itself (the release before), a seed chunk that stops matching
 * after the slots were indexed (detected, fetched instead), a resume after an abort mid-way, and the
 * server side's multi-range answers.
 */
import t, { type Test } from 'tap';
import { execFile, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { once } from 'node:events';
import { randomBytes, createHash } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';
import { access, mkdir, readFile, writeFile, open } from 'node:fs/promises';
import http from 'node:http';
import { join } from 'node:path';
import { buildDelta, parseDeltaIndex } from '../../manifests/delta.js';
import { serveRepository, type AccessLogEntry } from '../../manifests/serve.js';
import { createSlotWriter } from '../../hal/file-slot.js';
import { installDelta, coalesce, type DeltaInstallOptions } from '../../daemon/install/delta.js';
import { freePort } from '../harness/mosquitto.js';
import { deriveImage, makeImage } from '../harness/delta-images.js';
import { codeOf } from '../../hal/errors.js';

const SIZE = 8 << 20;

interface Env {
  dir: string;
  oldImg: Buffer;
  newImg: Buffer;
  log: AccessLogEntry[];
  base: string;
  opts(extra?: Partial<DeltaInstallOptions>): Promise<DeltaInstallOptions>;
  built: Awaited<ReturnType<typeof buildDelta>>;
}

async function setup(t: Test): Promise<Env> {
  const dir = t.testdir();
  const oldImg = makeImage(7, SIZE);
  const newImg = deriveImage(oldImg);
  await mkdir(join(dir, 'repo/targets'), { recursive: true });
  await writeFile(join(dir, 'new.img'), newImg);
  const built = await buildDelta(join(dir, 'new.img'), join(dir, 'repo/targets/image.delta-index'), join(dir, 'repo/targets/image.delta-pack'), { level: 3 });
  const log: AccessLogEntry[] = [];
  const srv = await serveRepository(join(dir, 'repo'), { onRequest: (e) => log.push(e) });
  t.teardown(() => srv.close());
  await writeFile(join(dir, 'running.img'), oldImg);
  await writeFile(join(dir, 'target.img'), Buffer.alloc(SIZE));
  const base = srv.url;
  return {
    dir, oldImg, newImg, log, base, built,
    async opts(extra = {}) {
      return {
        index: { urls: [`${base}targets/image.delta-index`], ...built.index },
        pack: { urls: [`${base}targets/image.delta-pack`], ...built.pack },
        slot: createSlotWriter('B', { path: join(dir, 'target.img') }),
        running: { path: join(dir, 'running.img'), size: SIZE },
        ...extra,
      };
    },
  };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

t.test('seed in the running slot: copies hits, fetches misses in few multi-range requests, verifies', async (t) => {
  const e = await setup(t);
  const progress: { reused: number; downloaded: number }[] = [];
  const r = await installDelta(await e.opts({ onProgress: (p) => progress.push(p) }));
  t.equal(sha(await readFile(join(e.dir, 'target.img'))), sha(e.newImg), 'target holds NEW');
  t.equal(r.readBackSha256, sha(e.newImg));
  t.ok(r.copied > SIZE / 2, `most bytes copied from the running slot (${r.copied})`);
  t.ok(r.downloaded < e.built.pack.length / 3, `downloaded ${r.downloaded} of a ${e.built.pack.length}-byte pack`);
  t.ok(r.requests <= 50, `${r.requests} requests`);
  t.equal(r.requests, e.log.length, 'every request counted');
  t.equal(r.seedMismatches, 0);
  t.equal(e.log.filter((l) => l.range).length, r.requests - 1, 'one request for the index, the rest ranged, none retried');
  const served = e.log.reduce((n, l) => n + l.bytes, 0);
  // the client stops reading at its last frame: what the server still had queued (the closing
  // multipart boundary) may be sent but not counted
  t.ok(served >= r.downloaded && served - r.downloaded < 256 * r.requests, `downloaded ${r.downloaded} ~ bytes the server sent ${served}`);
  t.ok(e.log.some((l) => l.range?.includes(',') && l.status === 206), 'a multi-range request answered 206');
  t.same(progress.at(-1), { bytes: SIZE, total: SIZE, reused: r.copied + r.inPlace, downloaded: r.downloaded }, 'progress reports reused and downloaded bytes');
  t.equal((await readFile(join(e.dir, 'running.img'))).equals(e.oldImg), true, 'running slot untouched');
});

t.test('seed in the target slot (the release before): chunks found in place or ahead, none fetched twice', async (t) => {
  const e = await setup(t);
  await writeFile(join(e.dir, 'target.img'), e.oldImg);
  const r = await installDelta(await e.opts({ running: undefined }));
  t.equal(sha(await readFile(join(e.dir, 'target.img'))), sha(e.newImg));
  t.ok(r.inPlace > SIZE / 2, `in place: ${r.inPlace}`);
  t.ok(r.downloaded < e.built.pack.length / 2, `downloaded ${r.downloaded} of a ${e.built.pack.length}-byte pack`);
});

t.test('a seed chunk that no longer matches is detected and fetched instead', async (t) => {
  const e = await setup(t);
  let corrupted = false;
  const r = await installDelta(await e.opts({
    onProgress: () => {
      if (corrupted) return;
      corrupted = true;
      // after the slots were indexed: garbage over half of the running slot
      corruptHalf(join(e.dir, 'running.img'));
    },
  }));
  t.ok(corrupted);
  t.ok(r.seedMismatches > 0, `${r.seedMismatches} mismatching seed chunks detected`);
  t.equal(sha(await readFile(join(e.dir, 'target.img'))), sha(e.newImg), 'image still correct');
});

/** overwrites half the running slot synchronously, so it lands before the next chunk is read. */
function corruptHalf(path: string): void {
  const fd = openSync(path, 'r+');
  writeSync(fd, randomBytes(SIZE / 2), 0, SIZE / 2, SIZE / 4);
  closeSync(fd);
}

t.test('resumed mid-way: the written part is found in place, the rest completes', async (t) => {
  const e = await setup(t);
  const ac = new AbortController();
  const err = await installDelta(await e.opts({
    signal: ac.signal,
    onProgress: (p) => {
      if (p.bytes > SIZE / 2) ac.abort();
    },
  })).catch((x: unknown) => x);
  t.ok(err instanceof Error, 'first run aborted');
  const r = await installDelta(await e.opts());
  t.ok(r.inPlace >= SIZE / 2 - (64 << 10), `resume found ${r.inPlace} bytes in place`);
  t.equal(sha(await readFile(join(e.dir, 'target.img'))), sha(e.newImg));
});

t.test('a damaged index or pack is refused', async (t) => {
  const e = await setup(t);
  const o = await e.opts();
  const bad = await installDelta({ ...o, index: { ...o.index, sha256: '0'.repeat(64) } }).catch((x: unknown) => x);
  t.equal(codeOf(bad), 'INSTALL_PAYLOAD_CORRUPT');
  // a pack whose frames were swapped on the mirror: every fetched chunk fails its hash
  const packPath = join(e.dir, 'repo/targets/image.delta-pack');
  const fh = await open(packPath, 'r+');
  const len = e.built.pack.length;
  await fh.write(randomBytes(len - 100), 0, len - 100, 50);
  await fh.close();
  const bad2 = await installDelta(o).catch((x: unknown) => x);
  t.equal(codeOf(bad2), 'INSTALL_CHUNK_HASH_MISMATCH');
  t.throws(() => parseDeltaIndex(Buffer.from('not brotli')), { code: 'MANIFEST_DELTA_INVALID' });
});

t.test('coalesce keeps the range count within budget', async (t) => {
  const frames = Array.from({ length: 1000 }, (_, i) => ({ start: i * 100, end: i * 100 + 50 }));
  t.equal(coalesce(frames, 5000).length, 1000);
  const c = coalesce(frames, 10);
  t.ok(c.length <= 10);
  t.same([c[0]!.start, c.at(-1)!.end], [0, 99_950]);
  t.equal(coalesce([{ start: 0, end: 10 }, { start: 10, end: 20 }], 5).length, 1, 'adjacent frames merge');
});

function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((ok, fail) => {
    http.get(url, { headers, agent: false }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => ok({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts) }));
    }).on('error', fail);
  });
}

t.test('repo serve answers multi-range requests with multipart/byteranges', async (t) => {
  const dir = t.testdir();
  const data = randomBytes(10_000);
  await writeFile(join(dir, 'f.bin'), data);
  const srv = await serveRepository(dir);
  t.teardown(() => srv.close());
  const r = await get(`${srv.url}f.bin`, { range: 'bytes=0-9,100-199,9990-' });
  t.equal(r.status, 206);
  const m = /boundary=(\S+)/.exec(String(r.headers['content-type']));
  t.ok(m, 'multipart/byteranges with a boundary');
  t.equal(Number(r.headers['content-length']), r.body.length, 'content-length exact');
  const parts = r.body.toString('latin1').split(`--${m![1]}`).slice(1, -1);
  t.equal(parts.length, 3);
  const got = parts.map((p) => {
    const [head, body] = p.split('\r\n\r\n') as [string, string];
    return { range: /content-range: (.*)/.exec(head)![1]!.trim(), body: Buffer.from(body.replace(/\r\n$/, ''), 'latin1') };
  });
  t.same(got.map((g) => g.range), ['bytes 0-9/10000', 'bytes 100-199/10000', 'bytes 9990-9999/10000']);
  t.ok(got[1]!.body.equals(data.subarray(100, 200)));
  t.ok(got[2]!.body.equals(data.subarray(9990)));
  t.equal((await get(`${srv.url}f.bin`, { range: 'bytes=20000-20001,30000-' })).status, 416, 'nothing satisfiable: 416');
  const one = await get(`${srv.url}f.bin`, { range: 'bytes=5-6,20000-' });
  t.equal(one.status, 206, 'one satisfiable range: a plain 206');
  t.equal(one.headers['content-range'], 'bytes 5-6/10000');
  const many = await get(`${srv.url}f.bin`, { range: `bytes=${Array.from({ length: 1025 }, (_, i) => `${i}-${i}`).join(',')}` });
  t.equal(many.status, 200, 'more ranges than the cap: the whole file');
});

const NGINX = '/usr/sbin/nginx';
t.test('a delta install from nginx (its own multipart/byteranges)', async (t) => {
  if (!(await access(NGINX).then(() => true, () => false))) return t.fail('nginx not installed (apt-get install nginx-light)');
  const e = await setup(t);
  const port = await freePort();
  const ng = join(e.dir, 'nginx');
  await mkdir(join(ng, 'tmp'), { recursive: true });
  const conf = join(ng, 'nginx.conf');
  await writeFile(conf, [
    'daemon off;', 'master_process off;', `pid ${ng}/nginx.pid;`, `error_log ${ng}/error.log warn;`,
    'events { worker_connections 64; }',
    'http {', `  access_log ${ng}/access.log;`,
    ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `  ${k}_temp_path ${ng}/tmp/${k};`),
    '  default_type application/octet-stream;',
    `  server { listen 127.0.0.1:${port}; root ${e.dir}/repo; location / { } }`,
    '}',
  ].join('\n') + '\n');
  const nginx = spawn(NGINX, ['-c', conf, '-p', ng], { stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = once(nginx, 'exit');
  t.teardown(async () => {
    nginx.kill('SIGTERM');
    await exited;
  });
  const base = `http://127.0.0.1:${port}/`;
  let up = false;
  for (let i = 0; i < 100 && !up; i++) {
    up = await get(`${base}targets/image.delta-index`).then((r) => r.status === 200, () => false);
    if (!up) await new Promise((r) => setTimeout(r, 50));
  }
  t.ok(up, 'nginx is up');
  const o = await e.opts();
  const r = await installDelta({ ...o, index: { ...o.index, urls: [`${base}targets/image.delta-index`] }, pack: { ...o.pack, urls: [`${base}targets/image.delta-pack`] } });
  t.equal(sha(await readFile(join(e.dir, 'target.img'))), sha(e.newImg));
  t.ok(r.requests <= 50 && r.copied > 0);
  const logText = await readFile(join(ng, 'access.log'), 'utf8');
  t.match(logText, / 206 /, 'nginx answered 206');
});

t.test('an installer process killed mid-way (SIGKILL) resumes from what it wrote', async (t) => {
  const e = await setup(t);
  const built = join(e.dir, 'built.json');
  await writeFile(built, JSON.stringify(e.built));
  const child = fileURLToPath(new URL('../../dist/test/bench/delta-child.js', import.meta.url));
  const args = ['--built', built, '--index-url', `${e.base}targets/image.delta-index`, '--pack-url', `${e.base}targets/image.delta-pack`, '--slot', join(e.dir, 'target.img'), '--running', join(e.dir, 'running.img')];
  const c = spawn(process.execPath, [child, ...args, '--progress'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let killedAt = -1;
  let out = '';
  c.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    for (const line of out.split('\n').slice(0, -1)) {
      const m = /"bytes":(\d+)/.exec(line);
      if (m && Number(m[1]) > SIZE / 3 && killedAt < 0) {
        killedAt = Number(m[1]);
        c.kill('SIGKILL');
      }
    }
    out = out.slice(out.lastIndexOf('\n') + 1);
  });
  const [code, signal] = (await once(c, 'exit')) as [number | null, string | null];
  t.ok(killedAt > 0 && signal === 'SIGKILL' && code === null, `killed at ${killedAt} bytes`);
  t.not(sha(await readFile(join(e.dir, 'target.img'))), sha(e.newImg), 'the slot is half-written');
  const again = await new Promise<string>((ok, fail) => execFile(process.execPath, [child, ...args], (err, stdout) => (err ? fail(err) : ok(stdout))));
  const r = JSON.parse(again.trim().split('\n').at(-1)!).result;
  t.ok(r.inPlace >= killedAt - (64 << 10), `the rerun found ${r.inPlace} bytes in place (killed at ${killedAt})`);
  t.equal(sha(await readFile(join(e.dir, 'target.img'))), sha(e.newImg), 'slot holds NEW after the rerun');
});
