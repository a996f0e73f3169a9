/**
 * Real RabbitMQ (3.10, MQTT 3.1.1 only, `rabbitmq_mqtt` plugin) and ejabberd (23.01, `mod_mqtt`)
 * brokers from Debian for tests, one or two nodes each, started as child processes on free loopback
 * ports with their own config, data and log directories under a temp dir:
 *
 * - one private `epmd -port P -address 127.0.0.1` per harness (no system epmd is touched);
 * - HOME per harness, holding the `.erlang.cookie` the nodes of one cluster share;
 * - RabbitMQ: `/usr/lib/rabbitmq/bin/rabbitmq-server` with RABBITMQ_NODENAME, RABBITMQ_NODE_PORT,
 *   RABBITMQ_DIST_PORT, RABBITMQ_MNESIA_BASE, RABBITMQ_LOG_BASE, RABBITMQ_ENABLED_PLUGINS_FILE
 *   (`[rabbitmq_mqtt].`) and a rabbitmq.conf with the MQTT listener; a second node joins the first
 *   through classic-config peer discovery at its first boot (no rabbitmqctl);
 * - ejabberd: `erl -sname ... -s ejabberd` with EJABBERD_CONFIG_PATH (what `ejabberdctl foreground`
 *   runs, without its switch to the `ejabberd` system user), `mod_mqtt` on a loopback port and
 *   anonymous login (every client gives a username and a non-empty password); a second node joins
 *   with `ejabberd_admin:join_cluster` over rpc.
 *
 * Each child runs in its own process group; `stop()` signals those groups (ours only) and removes
 * the temp dir. Both brokers keep retained messages on the node that received them: that is what
 * the cluster tests rely on.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, writeFile, mkdir, rm, readFile, chmod, readdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { freePort } from './mosquitto.js';

const execFileP = promisify(execFile);

export type ErlangBrokerKind = 'rabbitmq' | 'ejabberd';

export interface ErlangBroker {
  kind: ErlangBrokerKind;
  /** MQTT URL of each node (`urls[0]` = `url`). */
  urls: string[];
  url: string;
  /** what every client must send (ejabberd: anonymous login needs a non-empty password). */
  password?: string;
  dir: string;
  /** the nodes' logs so far (for assertion messages). */
  log(): Promise<string>;
  stop(): Promise<void>;
}

const RABBIT = '/usr/lib/rabbitmq/bin/rabbitmq-server';

export function hasRabbitMQ(): boolean {
  return existsSync(RABBIT) && existsSync('/usr/bin/epmd');
}

async function ejabberdLibs(): Promise<string | undefined> {
  for (const base of ['/usr/lib', ...(await readdir('/usr/lib').catch(() => [])).map((d) => join('/usr/lib', d))]) {
    const names = await readdir(base).catch(() => [] as string[]);
    if (names.some((n) => /^ejabberd-\d/.test(n))) return base;
  }
  return undefined;
}

export async function hasEjabberd(): Promise<boolean> {
  return existsSync('/usr/bin/erl') && existsSync('/usr/bin/epmd') && (await ejabberdLibs()) !== undefined;
}

function waitForPort(port: number, children: ChildProcess[], timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      const dead = children.find((c) => c.exitCode !== null || c.signalCode !== null);
      if (dead) return reject(new Error(`${what}: process exited (${dead.exitCode ?? dead.signalCode}) before port ${port} opened`));
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve(); });
      s.once('error', () => {
        s.destroy();
        if (Date.now() > until) reject(new Error(`${what}: port ${port} not open after ${timeoutMs} ms`));
        else setTimeout(attempt, 250);
      });
    };
    attempt();
  });
}

/** Spawns in a new process group, output to a log file. */
function spawnLogged(cmd: string, args: string[], env: NodeJS.ProcessEnv, cwd: string, logPath: string): { child: ChildProcess; done: Promise<void> } {
  const child = spawn(cmd, args, { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const append = (c: Buffer): void => { if (out.length < 1 << 20) out += c.toString(); };
  child.stdout!.on('data', append);
  child.stderr!.on('data', append);
  const done = new Promise<void>((resolve) => child.once('exit', () => { void writeFile(logPath, out).finally(resolve); }));
  child.unref();
  return { child, done };
}

async function killGroup(c: { child: ChildProcess; done: Promise<void> }): Promise<void> {
  const pid = c.child.pid;
  if (pid === undefined || c.child.exitCode !== null || c.child.signalCode !== null) return;
  try { process.kill(-pid, 'SIGTERM'); } catch { /* already gone */ }
  const t = setTimeout(() => { try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ } }, 5000);
  await c.done;
  clearTimeout(t);
  // the group may outlive its leader (beam children): make sure
  try { process.kill(-pid, 'SIGKILL'); } catch { /* gone */ }
}

interface Base {
  dir: string;
  home: string;
  epmdPort: number;
  epmd: { child: ChildProcess; done: Promise<void> };
  env: NodeJS.ProcessEnv;
}

async function erlangBase(prefix: string): Promise<Base> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  const home = join(dir, 'home');
  await mkdir(home, { recursive: true });
  const cookie = join(home, '.erlang.cookie');
  await writeFile(cookie, randomBytes(16).toString('hex').toUpperCase());
  await chmod(cookie, 0o400);
  const epmdPort = await freePort();
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', HOME: home, ERL_EPMD_PORT: String(epmdPort), ERL_EPMD_ADDRESS: '127.0.0.1', LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' };
  const epmd = spawnLogged('/usr/bin/epmd', ['-port', String(epmdPort), '-address', '127.0.0.1'], env, dir, join(dir, 'epmd.log'));
  await waitForPort(epmdPort, [epmd.child], 5000, 'epmd');
  return { dir, home, epmdPort, epmd, env };
}

export async function startRabbitMQ(opts: { nodes?: 1 | 2; startTimeoutMs?: number } = {}): Promise<ErlangBroker> {
  const base = await erlangBase('slotflip-rabbit-');
  const n = opts.nodes ?? 1;
  const names = Array.from({ length: n }, (_, i) => `sf${i}${randomBytes(3).toString('hex')}@localhost`);
  const procs: { child: ChildProcess; done: Promise<void> }[] = [];
  const urls: string[] = [];
  const logs: string[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const nd = join(base.dir, `node${i}`);
      await mkdir(nd, { recursive: true });
      const [amqp, dist, mqtt] = [await freePort(), await freePort(), await freePort()];
      await writeFile(join(nd, 'enabled_plugins'), '[rabbitmq_mqtt].\n');
      await writeFile(join(nd, 'rabbitmq-env.conf'), '');
      const conf = [
        `listeners.tcp.default = 127.0.0.1:${amqp}`,
        `mqtt.listeners.tcp.default = 127.0.0.1:${mqtt}`,
        'mqtt.allow_anonymous = true',
        'loopback_users = none',
        'log.console = true',
        'log.console.level = warning',
        ...(i > 0 ? ['cluster_formation.peer_discovery_backend = classic_config', `cluster_formation.classic_config.nodes.1 = ${names[0]}`] : []),
      ];
      await writeFile(join(nd, 'rabbitmq.conf'), conf.join('\n') + '\n');
      const env: NodeJS.ProcessEnv = {
        ...base.env,
        RABBITMQ_CONF_ENV_FILE: join(nd, 'rabbitmq-env.conf'),
        RABBITMQ_CONFIG_FILE: join(nd, 'rabbitmq'),
        RABBITMQ_ADVANCED_CONFIG_FILE: join(nd, 'advanced.config'),
        RABBITMQ_ENABLED_PLUGINS_FILE: join(nd, 'enabled_plugins'),
        RABBITMQ_MNESIA_BASE: join(nd, 'mnesia'),
        RABBITMQ_LOG_BASE: join(nd, 'log'),
        RABBITMQ_PLUGINS_EXPAND_DIR: join(nd, 'plugins-expand'),
        RABBITMQ_PID_FILE: join(nd, 'pid'),
        RABBITMQ_NODENAME: names[i],
        RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
        RABBITMQ_NODE_PORT: String(amqp),
        RABBITMQ_DIST_PORT: String(dist),
      };
      const logPath = join(nd, 'stdout.log');
      logs.push(logPath, join(nd, 'log', `${names[i]}.log`));
      const p = spawnLogged(RABBIT, [], env, nd, logPath);
      procs.push(p);
      await waitForPort(mqtt, [p.child], opts.startTimeoutMs ?? 90_000, `rabbitmq node ${i}`);
      urls.push(`mqtt://127.0.0.1:${mqtt}`);
    }
  } catch (e) {
    for (const p of procs.reverse()) await killGroup(p);
    await killGroup(base.epmd);
    throw e;
  }
  return finish('rabbitmq', base, procs, urls, logs);
}

export async function startEjabberd(opts: { nodes?: 1 | 2; startTimeoutMs?: number } = {}): Promise<ErlangBroker> {
  const libs = await ejabberdLibs();
  if (!libs) throw new Error('ejabberd is not installed (apt-get install ejabberd)');
  const base = await erlangBase('slotflip-ejabberd-');
  const n = opts.nodes ?? 1;
  const names = Array.from({ length: n }, (_, i) => `ej${i}${randomBytes(3).toString('hex')}@localhost`);
  const procs: { child: ChildProcess; done: Promise<void> }[] = [];
  const urls: string[] = [];
  const logs: string[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const nd = join(base.dir, `node${i}`);
      await mkdir(join(nd, 'spool'), { recursive: true });
      await mkdir(join(nd, 'log'), { recursive: true });
      const mqtt = await freePort();
      const dist = await freePort();
      const yml = [
        'hosts:', '  - localhost',
        'loglevel: info',
        'certfiles: []',
        'auth_method: [anonymous]',
        'anonymous_protocol: login_anon',
        'allow_multiple_connections: true',
        'listen:', '  -', `    port: ${mqtt}`, '    ip: "127.0.0.1"', '    module: mod_mqtt', '    backlog: 1000',
        'modules:', '  mod_mqtt: {}',
      ];
      await writeFile(join(nd, 'ejabberd.yml'), yml.join('\n') + '\n');
      const env: NodeJS.ProcessEnv = {
        ...base.env,
        ERL_LIBS: libs,
        EJABBERD_CONFIG_PATH: join(nd, 'ejabberd.yml'),
        EJABBERD_LOG_PATH: join(nd, 'log', 'ejabberd.log'),
        ERL_CRASH_DUMP: join(nd, 'log', 'erl_crash.dump'),
        ERL_CRASH_DUMP_BYTES: '0',
      };
      const logPath = join(nd, 'stdout.log');
      logs.push(logPath, join(nd, 'log', 'ejabberd.log'));
      const args = ['-sname', names[i]!, '+K', 'true', '-noinput', '-kernel', 'inet_dist_listen_min', String(dist), 'inet_dist_listen_max', String(dist), '-mnesia', 'dir', `"${join(nd, 'spool')}"`, '-s', 'ejabberd'];
      const p = spawnLogged('/usr/bin/erl', args, env, join(nd, 'spool'), logPath);
      procs.push(p);
      await waitForPort(mqtt, [p.child], opts.startTimeoutMs ?? 60_000, `ejabberd node ${i}`);
      if (i > 0) {
        // what `ejabberdctl join_cluster` does, over rpc from a hidden helper node
        const eval_ = `R = rpc:call('${names[i]}', ejabberd_admin, join_cluster, [<<"${names[0]}">>]), io:format("~p~n", [R]), init:stop().`;
        const { stdout } = await execFileP('/usr/bin/erl', ['-sname', `ctl${randomBytes(3).toString('hex')}@localhost`, '-hidden', '-noinput', '-eval', eval_], { env: base.env, timeout: 60_000 });
        if (!/ok/.test(stdout)) throw new Error(`ejabberd join_cluster: ${stdout}`);
        await waitForPort(mqtt, [p.child], 30_000, `ejabberd node ${i} after join`);
      }
      urls.push(`mqtt://127.0.0.1:${mqtt}`);
    }
  } catch (e) {
    for (const p of procs.reverse()) await killGroup(p);
    await killGroup(base.epmd);
    throw e;
  }
  const b = await finish('ejabberd', base, procs, urls, logs);
  return { ...b, password: 'anonymous' };
}

async function finish(kind: ErlangBrokerKind, base: Base, procs: { child: ChildProcess; done: Promise<void> }[], urls: string[], logs: string[]): Promise<ErlangBroker> {
  let stopped = false;
  return {
    kind,
    urls,
    url: urls[0]!,
    dir: base.dir,
    async log() {
      const parts = await Promise.all(logs.map((l) => readFile(l, 'utf8').catch(() => '')));
      return parts.join('\n');
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      for (const p of [...procs].reverse()) await killGroup(p);
      await killGroup(base.epmd);
      await rm(base.dir, { recursive: true, force: true }).catch(() => undefined);
    },
  };
}
