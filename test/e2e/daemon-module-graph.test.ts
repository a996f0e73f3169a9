/**
 * What an idle daemon loads (issue 16): the built `slotflip daemon`, up to date, connected to a real
 * Mosquitto, after its first check, must not have loaded the code only other commands or an update
 * use — systeminformation (resource health checks), the install path (installer, decoder, HTTP source,
 * read-back), the data migration, the manufacturer side (repository signing, tuf-js, aedes, the
 * fleet tools, the demo), nor Ajv's schema compiler (the validators are generated ahead of time:
 * test/tools/gen-validators.ts) — and `slotflip --help` must load no command at all. `slotflip
 * install URL` (an HTTP source, no broker) loads neither MQTT.js nor Ajv's compiler. Memory figures belong
 * to `npm run bench:memory`; this test keeps the lazy loading from silently regressing, untimed.
 *
 * Two views: the modules the running daemon actually loaded (a `module.registerHooks` load hook
 * preloaded with --import, its list written at exit), and the static import graph of the built
 * daemon command (dist/daemon/commands/daemon.js), which is what gets loaded before the first line
 * runs whatever the config says.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { startMosquitto } from '../harness/mosquitto.js';
import { addRelease, CLI, createBoard, initFleet, publishToBroker, requireBuilt, slotSha256, writeDeviceConfig } from './harness.js';
import { startHttpServer } from '../harness/http-server.js';

/** The config and release validators are Ajv standalone code: only ajv/dist/runtime/* at run time. */
const AJV_COMPILER: [RegExp, string] = [/\/node_modules\/ajv\/dist\/(?!runtime\/)/, "Ajv's schema compiler"];

/** Loaded by the daemon only for other commands, an update or a trial boot. */
const NOT_AT_IDLE: Array<[RegExp, string]> = [
  [/\/node_modules\/systeminformation\//, 'systeminformation'],
  [/\/node_modules\/tuf-js\//, 'tuf-js'],
  [/\/node_modules\/aedes[^/]*\//, 'aedes'],
  [/\/dist\/daemon\/install\/(installer|decode|hasher|source|read-back|preflight|resume-state)\.js$/, 'the install path'],
  [/\/dist\/daemon\/migration\.js$/, 'the data migration'],
  [/\/dist\/manifests\/(repo|signers|keys|serve|payload)\.js$/, 'the manufacturer side'],
  [/\/dist\/daemon\/fleet\//, 'the fleet tools'],
  [/\/dist\/daemon\/demo\.js$/, 'the demo'],
  [/\/dist\/daemon\/commands\/(?!daemon\.js|command\.js)[^/]+\.js$/, 'another command'],
  // MQTT.js's connect() registers every transport: WebSockets and SOCKS come with it (daemon/mqtt-connect.ts)
  [/\/node_modules\/ws\//, 'ws (MQTT over WebSockets)'],
  [/\/node_modules\/socks\//, 'socks (MQTT through a SOCKS proxy)'],
  // MQTT.js's Web Worker timers for browsers: Node's timers stand in (daemon/mqtt-connect.ts)
  [/\/node_modules\/(worker-timers[^/]*|broker-factory|fast-unique-numbers|@babel\/runtime)\//, "MQTT.js's browser timers (worker-timers)"],
  // Node's fetch: metadata and health checks use node:http (manifests/http-get.ts)
  [/^node:internal\/deps\/undici\//, 'undici (fetch)'],
  AJV_COMPILER,
];

/** Not loaded by a command that never connects to a broker. */
const NOT_WITHOUT_BROKER: Array<[RegExp, string]> = [
  [/\/node_modules\/(mqtt|mqtt-packet|worker-timers[^/]*|readable-stream)\//, 'MQTT.js'],
];

/** Not loaded by a daemon whose broker is mqtt:// and whose metadata comes only from it. */
const NOT_WITHOUT_HTTP: Array<[RegExp, string]> = [
  [/^node:(http|https|tls)$/, 'node:http, node:https or node:tls'],
];

/** Loaded only when an ES module imports node:http or node:fs (their ES namespace runs every lazy
 * getter: undici behind `http.WebSocket`, readline behind `fs.promises`' FileHandle): slotflip takes
 * those builtins through require (hal/builtins.ts). */
const NOT_BY_NAMESPACE: Array<[RegExp, string]> = [
  [/^node:internal\/deps\/undici\//, 'undici (node:http imported as an ES module?)'],
  [/^node:http2$/, 'node:http2 (node:http imported as an ES module?)'],
];

function offenders(urls: string[], rules = NOT_AT_IDLE): string[] {
  return urls.flatMap((u) => rules.filter(([re]) => re.test(u)).map(([, what]) => `${what}: ${u}`));
}

const PRELOAD = `
import { registerHooks } from 'node:module';
import { writeFileSync } from 'node:fs';
const seen = new Set();
registerHooks({ load(url, context, next) { seen.add(url); return next(url, context); } });
// Node's own modules (node:http, undici behind fetch) never pass the hooks: process.moduleLoadList has them
const builtins = () => process.moduleLoadList.filter((m) => m.startsWith('NativeModule ')).map((m) => 'node:' + m.slice('NativeModule '.length));
process.on('exit', () => writeFileSync(process.env.SLOTFLIP_TEST_MODULES_OUT, JSON.stringify([...seen, ...builtins()])));
`;

/** Runs the built CLI with the load-recording preload; `until` decides when to SIGTERM it. */
async function loadedBy(dir: string, args: string[], until?: (line: Record<string, unknown>) => boolean): Promise<{ urls: string[]; code: number | null; stderr: string }> {
  const preload = join(dir, 'record-loads.mjs');
  const out = join(dir, `loaded-${args[0] ?? 'none'}.json`);
  await writeFile(preload, PRELOAD);
  const child = spawn(process.execPath, ['--import', pathToFileURL(preload).href, CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SLOTFLIP_TEST_MODULES_OUT: out } });
  let stderr = '';
  let buf = '';
  let signalled = false;
  child.stderr!.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  child.stdout!.setEncoding('utf8').on('data', (c: string) => {
    buf += c;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const text = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        // once: a second SIGTERM would find the daemon's one-shot handler gone and kill it outright
        if (!signalled && until?.(JSON.parse(text) as Record<string, unknown>)) {
          signalled = true;
          child.kill('SIGTERM');
        }
      } catch {
        /* not a log line */
      }
    }
  });
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  clearTimeout(timer);
  return { urls: existsSync(out) ? (JSON.parse(await readFile(out, 'utf8')) as string[]) : [], code, stderr };
}

requireBuilt();

t.test('an idle daemon (up to date, broker connected, first check done) loaded none of the update-only or manufacturer code', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const dir = t.testdir();
  const fleet = await initFleet(dir);
  await publishToBroker(fleet, broker.url);
  const board = await createBoard(join(dir, 'board'), 1 << 20);
  const config = await writeDeviceConfig(join(dir, 'config.json'), { deviceId: 'dev-graph', board, fleet, stateDir: join(dir, 'state'), brokerUrl: broker.url, payloadBaseUrls: ['http://127.0.0.1:9/targets/'] });
  let connected = false;
  const r = await loadedBy(dir, ['daemon', '--config', config], (l) => {
    if (l.msg === 'broker connected') connected = true;
    return connected && l.msg === 'cycle done';
  });
  t.equal(r.code, 0, `the daemon stopped cleanly on SIGTERM: ${r.stderr}`);
  t.ok(connected, 'it connected to the broker first');
  // the recording works: what an idle daemon does need is in the list
  for (const needed of [/\/dist\/daemon\/service\.js$/, /\/dist\/daemon\/mqtt\.js$/, /\/dist\/manifests\/client\.js$/, /\/node_modules\/mqtt\//]) {
    t.ok(r.urls.some((u) => needed.test(u)), `loaded ${needed.source}`);
  }
  t.same(offenders(r.urls), [], 'nothing an idle daemon never uses');
  t.ok(r.urls.includes('node:internal/modules/esm/loader'), 'Node\'s own modules were recorded too');
  t.same(offenders(r.urls, NOT_WITHOUT_HTTP), [], 'no HTTP or TLS stack for an mqtt:// broker and metadata from it');
});

t.test('an idle daemon reading metadata over HTTP did not load fetch (undici) either', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const dir = t.testdir();
  const fleet = await initFleet(dir);
  const srv = await startHttpServer({ root: fleet.repository });
  t.teardown(() => srv.stop());
  const board = await createBoard(join(dir, 'board'), 1 << 20);
  const config = await writeDeviceConfig(join(dir, 'config.json'), { deviceId: 'dev-graph-http', board, fleet, stateDir: join(dir, 'state'), brokerUrl: broker.url, metadataUrl: srv.url, payloadBaseUrls: [`${srv.url}targets/`] });
  const r = await loadedBy(dir, ['daemon', '--config', config], (l) => l.msg === 'cycle done');
  t.equal(r.code, 0, `the daemon stopped cleanly on SIGTERM: ${r.stderr}`);
  t.ok(srv.requests.some((q) => q.path.endsWith('timestamp.json') && q.status === 200), 'it read timestamp.json over HTTP');
  t.ok(r.urls.includes('node:http'), 'over node:http');
  t.same(offenders(r.urls), [], 'nothing an idle daemon never uses');
});

t.test('`slotflip install URL` installs without loading MQTT.js or Ajv\'s schema compiler', async (t) => {
  const dir = t.testdir();
  const fleet = await initFleet(dir);
  const rel = await addRelease(fleet, dir, { version: '1.1.0', securityVersion: 1, size: 256 << 10, chunkSize: 64 << 10 });
  const srv = await startHttpServer({ root: fleet.repository });
  t.teardown(() => srv.stop());
  const board = await createBoard(join(dir, 'board'), 1 << 20);
  const config = await writeDeviceConfig(join(dir, 'config.json'), { deviceId: 'dev-graph-install', board, fleet, stateDir: join(dir, 'state'), metadataUrl: srv.url, payloadBaseUrls: [`${srv.url}targets/`] });
  const r = await loadedBy(dir, ['install', srv.url, '--config', config, '--json']);
  t.equal(r.code, 0, r.code === 0 ? "installed and armed" : `installed and armed: ${r.stderr.slice(-500)}`);
  t.equal(await slotSha256(board.slots.B, rel.size), rel.imageSha256, 'slot B holds the image');
  // the recording works: the install path and the config validator were loaded
  for (const needed of [/\/dist\/daemon\/install\/installer\.js$/, /\/dist\/daemon\/config-validate\.generated\.cjs$/, /\/node_modules\/pino\//]) {
    t.ok(r.urls.some((u) => needed.test(u)), `loaded ${needed.source}`);
  }
  t.same(offenders(r.urls, [...NOT_WITHOUT_BROKER, AJV_COMPILER]), [], 'no MQTT.js, no Ajv compiler');
  t.ok(r.urls.includes('node:http'), 'the recording sees Node\'s own modules (node:http is loaded)');
  t.same(offenders(r.urls, NOT_BY_NAMESPACE), [], 'no undici, no http2: node:http and node:fs were not imported as ES modules');
});

t.test('`slotflip --help` loads no command module', async (t) => {
  const dir = t.testdir();
  const r = await loadedBy(dir, ['--help']);
  t.equal(r.code, 0);
  t.ok(r.urls.some((u) => u.endsWith('/dist/daemon/cli.js')), 'the entry was recorded');
  t.same(r.urls.filter((u) => /\/dist\/daemon\/commands\//.test(u) || /\/node_modules\//.test(u)), [], 'no command, no dependency');
});

/** The static `import`/`export ... from` graph of a built ES module (dynamic `import()` excluded). */
function staticGraph(entry: string): string[] {
  const seen = new Set<string>();
  const packages = new Set<string>();
  const queue = [entry];
  const re = /^\s*(?:import|export)\s[^;]*?\sfrom\s*['"]([^'"]+)['"]|^\s*import\s*['"]([^'"]+)['"]/gm;
  while (queue.length) {
    const file = queue.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    for (const m of readFileSync(file, 'utf8').matchAll(re)) {
      const spec = m[1] ?? m[2]!;
      if (spec.startsWith('node:')) continue;
      if (spec.startsWith('.')) queue.push(resolve(dirname(file), spec));
      // a package: named as its directory (its own imports are its business; `mqtt/lib/client` is mqtt)
      else packages.add(`/node_modules/${/^(@[^/]+\/)?[^/]+/.exec(spec)![0]}/`);
    }
  }
  return [...[...seen].map((f) => pathToFileURL(f).href), ...packages];
}

t.test('the built daemon command statically imports none of it either', async (t) => {
  const graph = staticGraph(join(dirname(CLI), 'commands', 'daemon.js'));
  // MQTT.js is loaded at the first connection (hal/lazy.ts), so not part of the static graph
  t.ok(graph.some((u) => u.endsWith('/dist/daemon/service.js')) && graph.includes('/node_modules/pino/'), 'the graph was walked');
  t.same(offenders(graph), []);
});
