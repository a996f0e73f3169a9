/**
 * A real Mosquitto broker for tests: Debian's `mosquitto -c CONF` started as a child process on
 * 127.0.0.1 with free ports, `set_tcp_nodelay true`, optional persistence, and an optional mutual-TLS
 * listener with per-device certificates (CA + server + one cert per device, made with `openssl` argv
 * calls) and per-device `pattern` ACLs.
 *
 * Listeners (per_listener_settings true):
 * - plain `url` (mqtt://127.0.0.1:PORT): anonymous, no ACL — the test's own "fleet operator" and observer;
 * - `tlsUrl` (mqtts://127.0.0.1:TLSPORT): client certificate required, the certificate CN becomes the
 *   username, and the ACL confines each device to `slotflip/v2/devices/<CN>/#` plus read access to
 *   `slotflip/v2/meta/#` and `slotflip/v1/meta/#`. Users listed in `tls.admins` get `slotflip/#`.
 *
 * `stop()` kills only this broker's pid. `restart()` stops and starts it again on the same ports and
 * the same persistence directory (to test delivery across a broker restart).
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, writeFile, readFile, mkdir, rm } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface MosquittoOptions {
  /** working directory (config, certs, persistence, log); default: a fresh temp dir removed by stop(). */
  dir?: string;
  /** keep retained messages and queued QoS 1 sessions across restart(). */
  persistence?: boolean;
  /** broker-side max_packet_size, bytes. */
  maxPacketSize?: number;
  /** add the mutual-TLS listener with a certificate per device id. */
  tls?: { devices: string[]; admins?: string[] };
  /** how long to wait for the broker to accept connections, ms (default 10 000). */
  startTimeoutMs?: number;
}

export interface DeviceCert {
  cert: string;
  key: string;
}

export interface MosquittoCerts {
  /** CA certificate path (PEM). */
  ca: string;
  /** client certificate and key paths by device id / admin name. */
  clients: Record<string, DeviceCert>;
}

export interface Mosquitto {
  url: string;
  port: number;
  tlsUrl?: string;
  tlsPort?: number;
  certs?: MosquittoCerts;
  dir: string;
  pid(): number | undefined;
  /** the broker's log so far (for assertion messages). */
  log(): Promise<string>;
  /** kills this broker (SIGTERM, then SIGKILL after 2 s); with `cleanup` (default) removes a temp dir. */
  stop(opts?: { cleanup?: boolean }): Promise<void>;
  /** stop (no cleanup) and start again on the same ports, config and persistence. */
  restart(opts?: { downMs?: number }): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

async function openssl(args: string[], cwd: string): Promise<void> {
  await execFileP('openssl', args, { cwd, timeout: 20_000 });
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

async function makeCerts(dir: string, names: string[]): Promise<MosquittoCerts> {
  await mkdir(dir, { recursive: true });
  await openssl(['req', '-x509', ...EC, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=slotflip-test-ca'], dir);
  await writeFile(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  await writeFile(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  const sign = async (base: string, cn: string, ext: string): Promise<void> => {
    await openssl(['req', ...EC, '-keyout', `${base}.key`, '-out', `${base}.csr`, '-subj', `/CN=${cn}`], dir);
    await openssl(['x509', '-req', '-in', `${base}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${base}.crt`, '-days', '2', '-extfile', ext], dir);
  };
  await sign('server', 'localhost', 'server.ext');
  const clients: Record<string, DeviceCert> = {};
  for (const name of names) {
    if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new Error(`mosquitto harness: unsafe device id ${name}`);
    await sign(`client-${name}`, name, 'client.ext');
    clients[name] = { cert: join(dir, `client-${name}.crt`), key: join(dir, `client-${name}.key`) };
  }
  return { ca: join(dir, 'ca.crt'), clients };
}

async function waitForPort(port: number, child: ChildProcess, timeoutMs: number, logPath: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const log = await readFile(logPath, 'utf8').catch(() => '');
      throw new Error(`mosquitto exited (${child.exitCode ?? child.signalCode}) before accepting on ${port}:\n${log}`);
    }
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ port, host: '127.0.0.1' });
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`mosquitto did not accept on 127.0.0.1:${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function startMosquitto(opts: MosquittoOptions = {}): Promise<Mosquitto> {
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'slotflip-mosq-')));
  await mkdir(join(dir, 'data'), { recursive: true });
  const port = await freePort();
  const tlsPort = opts.tls ? await freePort() : undefined;
  const certs = opts.tls ? await makeCerts(join(dir, 'certs'), [...opts.tls.devices, ...(opts.tls.admins ?? [])]) : undefined;
  const logPath = join(dir, 'mosquitto.log');

  const lines = [
    'per_listener_settings true',
    'user root',
    `log_dest file ${logPath}`,
    'log_type all',
    'connection_messages true',
    `persistence ${opts.persistence ? 'true' : 'false'}`,
    `persistence_location ${join(dir, 'data')}/`,
    'autosave_interval 1',
    ...(opts.maxPacketSize ? [`max_packet_size ${opts.maxPacketSize}`] : []),
    `listener ${port} 127.0.0.1`,
    'set_tcp_nodelay true',
    'allow_anonymous true',
  ];
  if (opts.tls && certs && tlsPort) {
    const acl = [
      ...(opts.tls.admins ?? []).flatMap((a) => [`user ${a}`, 'topic readwrite slotflip/#', '']),
      'pattern read slotflip/v2/meta/#',
      'pattern read slotflip/v1/meta/#',
      'pattern readwrite slotflip/v2/devices/%u/#',
      '',
    ];
    await writeFile(join(dir, 'acl'), acl.join('\n'));
    lines.push(
      `listener ${tlsPort} 127.0.0.1`,
      'set_tcp_nodelay true',
      `cafile ${certs.ca}`,
      `certfile ${join(dir, 'certs', 'server.crt')}`,
      `keyfile ${join(dir, 'certs', 'server.key')}`,
      'require_certificate true',
      'use_identity_as_username true',
      'allow_anonymous false',
      `acl_file ${join(dir, 'acl')}`,
    );
  }
  const confPath = join(dir, 'mosquitto.conf');
  await writeFile(confPath, lines.join('\n') + '\n');

  let child: ChildProcess | undefined;
  const launch = async (): Promise<void> => {
    const c = spawn('mosquitto', ['-c', confPath], { stdio: ['ignore', 'ignore', 'pipe'] });
    c.stderr?.resume();
    child = c;
    await waitForPort(port, c, opts.startTimeoutMs ?? 10_000, logPath);
    if (tlsPort) await waitForPort(tlsPort, c, opts.startTimeoutMs ?? 10_000, logPath);
  };
  const kill = async (): Promise<void> => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(t);
  };
  await launch();

  return {
    url: `mqtt://127.0.0.1:${port}`,
    port,
    ...(tlsPort ? { tlsUrl: `mqtts://127.0.0.1:${tlsPort}`, tlsPort } : {}),
    ...(certs ? { certs } : {}),
    dir,
    pid: () => child?.pid,
    log: () => readFile(logPath, 'utf8').catch(() => ''),
    async stop({ cleanup = true } = {}) {
      await kill();
      if (cleanup && ownDir) await rm(dir, { recursive: true, force: true });
    },
    async restart({ downMs = 0 } = {}) {
      await kill();
      if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
      await launch();
    },
  };
}
