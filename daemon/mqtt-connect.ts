/**
 * The device's MQTT connector: builds one MQTT.js `MqttClient` for one `mqtt://` or `mqtts://` URL
 * over a plain `net` or `tls` socket, without MQTT.js's `connect()`.
 *
 * Why: MQTT.js's `connect()` registers every transport it knows at the first connection, which
 * loads `ws` (and with it node:http, node:https, node:tls, node:zlib) and `socks` (ip-address,
 * smart-buffer) into a daemon that only ever speaks TCP or TLS to its broker: about 8 MiB of RSS for
 * an idle device (bench:memory, issue 16). Here node:tls is loaded only for an `mqtts://` URL (or
 * client certificates), and the WebSocket URLs the config also accepts (`ws://`, `wss://`) go to
 * MQTT.js's own `connect()`, loaded on first use.
 *
 * What is kept from MQTT.js's `connect()` (build/lib/connect/index.js, tcp.js, tls.js): the URL's
 * host and port (default 1883 / 8883), user and password from the URL, `mqtt://` turned into TLS
 * when a client certificate and key are given, the server name taken from a host name (not from an
 * IP), `rejectUnauthorized` on unless explicitly false, a handshake that completes unauthorized
 * refused with an error, and a no-op `error` listener on the client (the transport listens itself).
 * Not kept: SOCKS proxies (`MQTTJS_SOCKS_PROXY`), unix sockets, `?clientId=` in the URL — the
 * device config offers none of them.
 */
import net from 'node:net';
import stream from 'node:stream';
import type { ConnectionOptions, TLSSocket } from 'node:tls';
import type { IClientOptions, MqttClient } from 'mqtt';
import { SlotflipError } from '../hal/errors.js';
import { lazyRequire, standIn } from '../hal/lazy.js';

// loaded at the first connection: a command that never connects (`slotflip install URL`, status)
// does not load MQTT.js (~60 modules with its streams and timers)
// build/lib/client.js is CommonJS: its module.exports holds the class as `default`
const loadClient = lazyRequire<typeof import('mqtt/lib/client')>('mqtt/lib/client');
const loadMqtt = lazyRequire<typeof import('mqtt')>('mqtt');
// MQTT.js's keepalive timer is `setInterval`, except in a browser page where it is the
// `worker-timers` package's (Web Workers, a Babel runtime and a broker: ~0.8 MiB of idle RSS, issue
// 16), which MQTT.js loads at once all the same: Node's own timers stand in for it.
// MQTT.js, mqtt-packet and bl take their streams from `readable-stream`, a copy of Node's stream
// implementation for browsers and old Nodes (24 modules): Node's own streams stand in for it, as
// readable-stream itself does when READABLE_STREAM=disable (the same exports, taken from node:stream).
// MQTT.js's topic-alias-send.js keeps the aliases of an MQTT 5 broker's CONNACK in lru-cache's
// LRUCache, and lru-cache reads the global `performance` at load, which loads node:perf_hooks
// (~0.3 MiB of idle RSS, bench:memory): `TopicAliasLru` stands in for it (the only user of that copy
// of lru-cache here; the daemon never sends topic aliases, but MQTT.js builds the map all the same).
const nodeStandIns = (): void => {
  standIn('worker-timers', 'mqtt/lib/client', { setInterval, clearInterval, setTimeout, clearTimeout });
  standIn('readable-stream', 'mqtt/lib/client', nodeStreams());
  standIn('lru-cache', 'mqtt/lib/client', { LRUCache: TopicAliasLru });
};

/** lru-cache's `LRUCache` as far as MQTT.js uses it (topic-alias-send.js): `{ max }`, get (which
 * makes the entry the most recently used), set (evicting the least recently used beyond `max`),
 * size, clear, and keys() from the most to the least recently used. */
export class TopicAliasLru<K, V> {
  // least recently used first (a Map iterates in insertion order)
  private readonly entries = new Map<K, V>();
  private readonly max: number;
  constructor(options: { max: number }) {
    this.max = options.max;
  }
  get size(): number {
    return this.entries.size;
  }
  get(key: K): V | undefined {
    if (!this.entries.has(key)) return undefined;
    const value = this.entries.get(key) as V;
    this.entries.delete(key);
    this.entries.set(key, value);
    return value;
  }
  set(key: K, value: V): this {
    this.entries.delete(key);
    this.entries.set(key, value);
    if (this.entries.size > this.max) this.entries.delete(this.entries.keys().next().value as K);
    return this;
  }
  clear(): void {
    this.entries.clear();
  }
  *keys(): IterableIterator<K> {
    yield* [...this.entries.keys()].reverse();
  }
}

/**
 * The `debug` package that MQTT.js and mqtt-packet log through (output only when the DEBUG variable
 * names them) stood in for by a logger that writes nothing, for a process that will never show it
 * (the daemon, when its DEBUG is unset: the composition root decides): `debug` checks the terminal
 * (node:tty, supports-color) at load, ~0.5 MiB of an idle daemon's RSS (bench:memory, issue 16).
 * Call before the first connection; once MQTT.js is loaded nothing changes.
 */
export function silenceMqttDebug(): void {
  const logger = (namespace: string): unknown => Object.assign(() => undefined, { enabled: false, namespace, extend: (sub: string) => logger(`${namespace}:${sub}`), destroy: () => true });
  const createDebug = Object.assign(logger, { enable: () => undefined, disable: () => '', enabled: () => false, names: [] as RegExp[], skips: [] as RegExp[] });
  standIn('debug', 'mqtt/lib/client', createDebug);
  standIn('debug', 'mqtt-packet', createDebug);
}
const mqttClientModule = (): typeof import('mqtt/lib/client') => (nodeStandIns(), loadClient());
const mqttModule = (): typeof import('mqtt') => (nodeStandIns(), loadMqtt());

/** readable-stream's exports with READABLE_STREAM=disable (its lib/ours/index.js), from node:stream. */
function nodeStreams(): object {
  const s = stream as unknown as Record<string, unknown>;
  const names = ['_uint8ArrayToBuffer', '_isUint8Array', 'isDisturbed', 'isErrored', 'isReadable', 'Readable', 'Writable', 'Duplex', 'Transform', 'PassThrough', 'addAbortSignal', 'finished', 'destroy', 'pipeline', 'compose', 'Stream', 'promises'];
  return Object.fromEntries(names.map((n) => [n, s[n]]));
}
const tlsModule = lazyRequire<typeof import('node:tls')>('node:tls');

/** One MQTT.js client for `url`; the socket opens on the client's first stream build (at once). */
export function connectMqtt(url: string, options: IClientOptions): MqttClient {
  let u: URL;
  try {
    u = new URL(url);
  } catch (cause) {
    throw new SlotflipError('DAEMON_MQTT_CONNECT', `broker URL ${JSON.stringify(url)} is not a URL`, { cause, details: { url } });
  }
  let protocol = u.protocol.replace(/:$/, '') as 'mqtt' | 'mqtts' | 'ws' | 'wss';
  if (protocol === 'ws' || protocol === 'wss') {
    // WebSockets: MQTT.js's own connect, loaded only by a device configured for them
    return mqttModule().connect(url, options);
  }
  if ((protocol as string) !== 'mqtt' && (protocol as string) !== 'mqtts') {
    throw new SlotflipError('DAEMON_MQTT_CONNECT', `broker URL ${url}: unsupported protocol ${protocol}; use mqtt://, mqtts://, ws:// or wss://`, { details: { url } });
  }
  // as MQTT.js: a client certificate means TLS, whatever the scheme says
  if (options.cert && options.key) protocol = 'mqtts';
  const tlsOn = protocol === 'mqtts';
  // WHATWG URL keeps the brackets of an IPv6 literal; sockets want the bare address
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1') || 'localhost';
  const port = u.port ? Number(u.port) : tlsOn ? 8883 : 1883;
  const opts: IClientOptions = { ...options, protocol, host, hostname: host, port };
  if (u.username) opts.username = decodeURIComponent(u.username);
  if (u.password) opts.password = decodeURIComponent(u.password);
  const client = new (mqttClientModule().default)(tlsOn ? (c: MqttClient) => tlsStream(c, opts) : () => net.createConnection({ host, port }), opts);
  // as MQTT.js's connect(): an unhandled 'error' must not kill the process; the transport listens
  client.on('error', () => undefined);
  return client;
}

function tlsStream(client: MqttClient, opts: IClientOptions): TLSSocket {
  const tls = tlsModule();
  const rejectUnauthorized = opts.rejectUnauthorized !== false;
  const host = String(opts.host);
  const o: ConnectionOptions = {
    host,
    port: Number(opts.port),
    rejectUnauthorized,
    ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
    ...(opts.cert !== undefined ? { cert: opts.cert } : {}),
    ...(opts.key !== undefined ? { key: opts.key } : {}),
    ...(opts.servername ? { servername: opts.servername } : net.isIP(host) === 0 ? { servername: host } : {}),
    ...(opts.ALPNProtocols !== undefined ? { ALPNProtocols: opts.ALPNProtocols as string[] } : {}),
  };
  const socket = tls.connect(o);
  const onError = (err: Error): void => {
    if (rejectUnauthorized) client.emit('error', err);
    socket.end();
  };
  socket.on('secureConnect', () => {
    if (rejectUnauthorized && !socket.authorized) socket.emit('error', new Error('TLS not authorized'));
    else socket.removeListener('error', onError);
  });
  socket.on('error', onError);
  return socket;
}
