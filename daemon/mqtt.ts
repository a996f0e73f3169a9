/**
 * MQTT transport (MQTT.js 5, MQTT 3.1.1 and 5): the `broker` config fragment and `MqttTransport`,
 * which keeps a device connected (mutual TLS, last will, backoff with jitter, TCP_NODELAY, bounded
 * packets), fills the retained-metadata map, and delivers the persisted outbox at least once.
 * Topic layout: daemon/topics.ts.
 */
import { EventEmitter } from 'node:events';
import type { IClientOptions, MqttClient, IPublishPacket } from 'mqtt';
import { pino, type Logger } from 'pino';
import { readFileCapped } from '../hal/atomic-file.js';
import { SlotflipError } from '../hal/errors.js';
import type { Outbox, OutboxEntry } from './outbox.js';
import { deviceTopics, metaFileOfTopic, commandOf, META_FILTERS, type DeviceTopics } from './topics.js';
import { RetainedMeta, ProblemLog, type MetaProblem } from './retained-meta.js';
import { connectMqtt } from './mqtt-connect.js';

/** Broker connection settings (config key `broker`). */
export interface BrokerConfig {
  /** broker URLs tried in order: `mqtt://host:1883`, `mqtts://host:8883`. */
  urls: string[];
  /** 4 = MQTT 3.1.1 only, 5 = MQTT 5 only; absent (default): MQTT 5, falling back to 3.1.1 when the
   * broker refuses 5 (RabbitMQ before 3.13), and remembering what worked (ProtocolMemory). */
  protocolVersion?: 4 | 5;
  /** MQTT client id; defaults to the device id when absent. */
  clientId?: string;
  /** mutual TLS: file paths of the CA bundle, the device certificate and its key (PEM). */
  tls?: { ca?: string; cert?: string; key?: string; servername?: string };
  /** file holding `{"username": "...", "password": "..."}` (JSON); never inline in the config. */
  credentialsFile?: string;
  keepaliveSeconds: number;
  /** largest packet accepted or sent, bytes (also configure the broker's limit). */
  maxPacketSize: number;
  /** reconnect backoff: exponential from minMs to maxMs, with jitter (see backoffDelay). */
  reconnect: { minMs: number; maxMs: number };
  /** give up a single connect attempt after this long. */
  connectTimeoutMs: number;
  /** retained metadata held in memory from the broker, all files together, bytes. */
  maxRetainedMetadataBytes: number;
  /** refresh metadata over HTTP when MQTT has delivered no new timestamp for this long, seconds
   * (the broker is a fast path: a clustered broker may never deliver a retained release). */
  httpRefreshSeconds: number;
}

export const brokerConfigDefaults = {
  keepaliveSeconds: 60,
  maxPacketSize: 256 * 1024,
  reconnect: { minMs: 1000, maxMs: 300_000 },
  connectTimeoutMs: 30_000,
  maxRetainedMetadataBytes: 2 * 1024 * 1024,
  httpRefreshSeconds: 900,
} as const;

/** JSON Schema (ajv, draft-07 keywords). Carries `default`s: compile with `useDefaults: true`. */
export const brokerConfigSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['urls'],
  properties: {
    urls: {
      type: 'array',
      minItems: 1,
      items: { type: 'string', pattern: '^(mqtt|mqtts|ws|wss)://[^\\s]+$' },
    },
    protocolVersion: { enum: [4, 5] },
    clientId: { type: 'string', minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9._:-]+$' },
    tls: {
      type: 'object',
      additionalProperties: false,
      properties: {
        ca: { type: 'string', minLength: 1 },
        cert: { type: 'string', minLength: 1 },
        key: { type: 'string', minLength: 1 },
        servername: { type: 'string', minLength: 1 },
      },
      dependencies: { cert: ['key'], key: ['cert'] },
    },
    credentialsFile: { type: 'string', minLength: 1 },
    keepaliveSeconds: { type: 'integer', minimum: 5, maximum: 3600, default: brokerConfigDefaults.keepaliveSeconds },
    maxPacketSize: { type: 'integer', minimum: 1024, maximum: 268435455, default: brokerConfigDefaults.maxPacketSize },
    reconnect: {
      type: 'object',
      additionalProperties: false,
      default: { ...brokerConfigDefaults.reconnect },
      properties: {
        minMs: { type: 'integer', minimum: 10, maximum: 3_600_000, default: brokerConfigDefaults.reconnect.minMs },
        maxMs: { type: 'integer', minimum: 10, maximum: 86_400_000, default: brokerConfigDefaults.reconnect.maxMs },
      },
    },
    connectTimeoutMs: { type: 'integer', minimum: 100, maximum: 600_000, default: brokerConfigDefaults.connectTimeoutMs },
    maxRetainedMetadataBytes: { type: 'integer', minimum: 65536, maximum: 67108864, default: brokerConfigDefaults.maxRetainedMetadataBytes },
    httpRefreshSeconds: { type: 'integer', minimum: 10, maximum: 604800, default: brokerConfigDefaults.httpRefreshSeconds },
  },
} as const;

// ---------------------------------------------------------------------------------------------
// Transport
//
// Trade-offs: MQTT.js's own reconnect (fixed interval) and its in-memory offline queue are turned off.
// Each connection attempt builds a fresh client through the injectable factory, so a reconnect starts
// from a clean slate; reconnects are scheduled here with exponential backoff and jitter; and events
// are re-sent from the persisted outbox after every reconnect, which is what makes delivery
// at-least-once across broker restarts and device reboots. Duplicates are possible; `seq` orders them.
//
// INVARIANTS: at most one live client; the delivery loop runs at most once at a time, only while
// connected, and acks an outbox entry only after its PUBACK (reason < 0x80).

/** Builds one MQTT.js client for one connection attempt (tests inject a wrapper or a fake). */
export type ClientFactory = (url: string, options: IClientOptions) => MqttClient;

/** Remembers, per broker URL, the protocol version that worked (a file in the state directory). */
export interface ProtocolMemory {
  load(url: string): Promise<4 | 5 | undefined>;
  save(url: string, version: 4 | 5): Promise<void>;
}

export interface TimerApi {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface MqttTransportOptions {
  config: BrokerConfig;
  deviceId: string;
  outbox: Outbox;
  /** retained metadata lands here by file name (the trust layer's `memorySource(map)` reads it). */
  metadata?: Map<string, Uint8Array>;
  connect?: ClientFactory;
  /** uniform [0, 1): backoff jitter. */
  random?: () => number;
  timers?: TimerApi;
  logger?: Logger;
  /** largest metadata file accepted, bytes; default 1 MiB (and never more than maxPacketSize). */
  maxMetadataBytes?: number;
  /** where the protocol that worked is remembered (default: nowhere, MQTT 5 first every start). */
  protocolMemory?: ProtocolMemory;
  /** outbox events in flight at once (ordered on the wire); default 8. */
  inflight?: number;
  now?: () => number;
}

export interface MetadataUpdate {
  file: string;
  /** undefined when the retained message was cleared (empty payload). */
  bytes: Uint8Array | undefined;
  retained: boolean;
}

export interface MqttTransportEvents {
  metadata: [MetadataUpdate];
  command: [{ name: 'check' | 'factory-reset'; payload: Uint8Array }];
  connected: [{ url: string }];
  disconnected: [{ url: string; error?: string }];
  reconnectScheduled: [{ attempt: number; delayMs: number }];
  delivered: [{ seq: number }];
  /** a non-fatal problem (publish refused, oversize message, bad TLS file); the transport keeps going. */
  problem: [SlotflipError];
  /** the broker's retained metadata problems changed (see `brokerReport`). */
  report: [];
}

export const KNOWN_COMMANDS = ['check'] as const;

/**
 * Exponential backoff with "equal jitter": the n-th consecutive retry (n from 0) waits between half
 * and all of min(maxMs, minMs·2ⁿ). Never a fixed interval, never a thundering herd, never zero.
 */
export function backoffDelay(attempt: number, range: { minMs: number; maxMs: number }, random: () => number): number {
  const base = Math.min(range.maxMs, range.minMs * 2 ** Math.min(attempt, 40));
  return Math.round(base / 2 + (random() * base) / 2);
}

const defaultTimers: TimerApi = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** Bytes a PUBLISH adds around topic and payload (fixed header, lengths, packet id, v5 properties). */
const PUBLISH_OVERHEAD = 32;

/**
 * A connection must stay up this long before the backoff starts again from `minMs`; otherwise a
 * broker that accepts and then drops (a duplicate client id, an ACL kick) would be hammered.
 */
export const STABLE_CONNECTION_MS = 30_000;

export class MqttTransport extends EventEmitter<MqttTransportEvents> {
  readonly topics: DeviceTopics;
  readonly metadata: Map<string, Uint8Array>;
  private readonly retained: RetainedMeta;
  private readonly problems = new ProblemLog();
  private readonly memory: ProtocolMemory | undefined;
  /** the protocol version of the next attempt; undefined until the memory was read. */
  private protocol: 4 | 5 | undefined;
  private protocolInUse: 4 | 5 | undefined;
  private brokerUrl: string | undefined;
  private readonly cfg: BrokerConfig;
  private readonly deviceId: string;
  private readonly outbox: Outbox;
  private readonly factory: ClientFactory;
  private readonly random: () => number;
  private readonly timers: TimerApi;
  private readonly log: Logger;
  private readonly maxMetadataBytes: number;
  private readonly inflight: number;
  private client: MqttClient | undefined;
  private generation = 0;
  private attempt = 0;
  private reconnectTimer: unknown;
  private running = false;
  private pumping = false;
  private pumpAgain = false;
  private stateJson: string | undefined;
  private stateDirty = false;
  private offAppend: (() => void) | undefined;
  private isConnected = false;
  private publishFailures = 0;
  private connectedAt = 0;
  private readonly now: () => number;
  private retryTimer: unknown;
  /** rejects when the current connection closes, so no in-flight publish can wait forever. */
  private closed: Promise<never> = new Promise<never>(() => undefined);
  private signalClosed: (e: Error) => void = () => undefined;

  constructor(opts: MqttTransportOptions) {
    super();
    this.cfg = opts.config;
    this.deviceId = opts.deviceId;
    this.topics = deviceTopics(opts.deviceId);
    this.outbox = opts.outbox;
    this.metadata = opts.metadata ?? new Map();
    this.retained = new RetainedMeta(this.metadata, { maxTotalBytes: this.cfg.maxRetainedMetadataBytes ?? brokerConfigDefaults.maxRetainedMetadataBytes, maxRoots: 32 });
    this.memory = opts.protocolMemory;
    this.protocol = this.cfg.protocolVersion;
    this.factory = opts.connect ?? connectMqtt;
    this.random = opts.random ?? Math.random;
    this.timers = opts.timers ?? defaultTimers;
    this.log = (opts.logger ?? pino({ level: 'silent' })).child({ module: 'daemon.mqtt' });
    this.maxMetadataBytes = Math.min(opts.maxMetadataBytes ?? 1 << 20, this.cfg.maxPacketSize);
    this.inflight = Math.max(1, opts.inflight ?? 8);
    this.now = opts.now ?? Date.now;
  }

  get connected(): boolean {
    return this.isConnected;
  }

  /** What `status` and the retained state say about the broker: the protocol in use and the
   * metadata problems seen (each once), newest last. */
  brokerReport(): { url?: string; protocolVersion?: 4 | 5; connected: boolean; retainedMetadataBytes: number; problems: MetaProblem[] } {
    return {
      ...(this.brokerUrl ? { url: this.brokerUrl } : {}),
      ...(this.protocolInUse ? { protocolVersion: this.protocolInUse } : {}),
      connected: this.isConnected,
      retainedMetadataBytes: this.retained.bytesHeld,
      problems: this.problems.list(),
    };
  }

  /**
   * The trust client rejected the broker's copy of `file` (code, message): drop it, refuse the same
   * bytes from now on (the repository over HTTP is used instead), and log that once at warn.
   */
  distrustMetadata(file: string, code: string, message: string): void {
    const topic = this.retained.distrust(file);
    this.metaProblem({ code, file, ...(topic ? { topic } : {}), message: `${message}; the broker's copy is dropped and the repository over HTTP used instead until the manufacturer republishes it` });
  }

  /** A broker copy of `file` verified: forget its past problems. */
  metadataVerified(file: string): void {
    const before = this.problems.list().length;
    this.problems.clearFile(file);
    if (this.problems.list().length !== before) this.emit('report');
  }

  private metaProblem(p: Omit<MetaProblem, 'at'>): void {
    const full: MetaProblem = { ...p, at: this.now() };
    // once per distinct cause, not on every check
    if (!this.problems.add(full)) return;
    this.problem(p.code, p.message, { ...(p.file ? { file: p.file } : {}), ...(p.topic ? { topic: p.topic } : {}) });
    this.emit('report');
  }

  /** Starts connecting in the background and returns at once. Idempotent. Never throws for a broker that is down. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.offAppend = this.outbox.onAppend(() => void this.pump());
    void this.connectOnce();
  }

  /**
   * Publishes `offline` (retained) when connected, disconnects cleanly and cancels reconnects.
   * Idempotent. Undelivered events stay in the outbox for the next start.
   */
  async stop(timeoutMs = 2000): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.offAppend?.();
    if (this.reconnectTimer !== undefined) this.timers.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    if (this.retryTimer !== undefined) this.timers.clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const client = this.client;
    this.client = undefined;
    this.generation++;
    this.isConnected = false;
    this.signalClosed(new SlotflipError('DAEMON_MQTT_CLOSED', 'transport stopped', { retryable: true }));
    if (!client) return;
    if (client.connected) {
      await withTimeout(client.publishAsync(this.topics.online, 'offline', { qos: 1, retain: true }), timeoutMs).catch(() => undefined);
      await new Promise<void>((resolve) => client.end(false, {}, () => resolve()));
    } else {
      await new Promise<void>((resolve) => client.end(true, {}, () => resolve()));
    }
  }

  /**
   * Publishes the device state retained at `.../state` (QoS 1). When not connected, keeps only the
   * newest state and publishes it on the next connection. Resolves true once the broker acked it.
   */
  async publishState(state: unknown): Promise<boolean> {
    this.stateJson = JSON.stringify(state);
    this.stateDirty = true;
    return this.flushState();
  }

  /**
   * Deletes the retained factory-reset command on this device's own topic (an empty retained
   * message), once it has run: a command kept until it expires would only be refused as a replay
   * at every connect. True when the broker acked it; never throws (the replay memory is what counts).
   */
  async clearFactoryResetCommand(timeoutMs = 5000): Promise<boolean> {
    const client = this.client;
    if (!client || !this.isConnected) return false;
    return withTimeout(client.publishAsync(this.topics.cmdFactoryReset, '', { qos: 1, retain: true }), timeoutMs).then(() => true, () => false);
  }

  /**
   * Broker reachability for health checks: true when connected now or within `timeoutMs`.
   * Never throws.
   */
  probe(timeoutMs: number): Promise<boolean> {
    if (this.isConnected) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ok: boolean): void => {
        this.timers.clearTimeout(timer);
        this.off('connected', onConn);
        resolve(ok);
      };
      const onConn = (): void => done(true);
      const timer = this.timers.setTimeout(() => done(false), timeoutMs);
      this.on('connected', onConn);
    });
  }

  private async flushState(): Promise<boolean> {
    const client = this.client;
    if (!client || !this.isConnected || !this.stateDirty || this.stateJson === undefined) return !this.stateDirty;
    const json = this.stateJson;
    if (Buffer.byteLength(json) + this.topics.state.length + PUBLISH_OVERHEAD > this.cfg.maxPacketSize) {
      this.problem('DAEMON_MQTT_OVERSIZE', `state is larger than broker.maxPacketSize (${this.cfg.maxPacketSize} bytes); raise the limit`, { topic: this.topics.state });
      return false;
    }
    try {
      await Promise.race([client.publishAsync(this.topics.state, json, { qos: 1, retain: true }), this.closed]);
      if (this.stateJson === json) this.stateDirty = false;
      return true;
    } catch (e) {
      this.problem('DAEMON_MQTT_PUBLISH', `state publish to ${this.topics.state} failed; will retry after reconnect`, { topic: this.topics.state }, e);
      return false;
    }
  }

  private async clientOptions(version: 4 | 5): Promise<IClientOptions> {
    const c = this.cfg;
    const o: IClientOptions = {
      protocolVersion: version,
      clientId: c.clientId ?? this.deviceId,
      clean: true,
      keepalive: c.keepaliveSeconds,
      connectTimeout: c.connectTimeoutMs,
      reconnectPeriod: 0,
      resubscribe: false,
      queueQoSZero: false,
      // mqtt-packet's default pre-builds 65 536 two-byte Buffers for packet ids at the first write:
      // ~6.5 MiB of heap for an idle daemon that sends a few packets a minute (bench:memory)
      writeCache: false,
      will: { topic: this.topics.online, payload: Buffer.from('offline'), qos: 1, retain: true },
      rejectUnauthorized: true,
    };
    if (version === 5) o.properties = { maximumPacketSize: c.maxPacketSize, sessionExpiryInterval: 0 };
    if (c.tls) {
      if (c.tls.ca) o.ca = await this.readSmall(c.tls.ca, 'broker.tls.ca');
      if (c.tls.cert) o.cert = await this.readSmall(c.tls.cert, 'broker.tls.cert');
      if (c.tls.key) o.key = await this.readSmall(c.tls.key, 'broker.tls.key');
      if (c.tls.servername) o.servername = c.tls.servername;
    }
    if (c.credentialsFile) {
      const raw = await this.readSmall(c.credentialsFile, 'broker.credentialsFile');
      let creds: { username?: unknown; password?: unknown };
      try {
        creds = JSON.parse(raw.toString('utf8')) as typeof creds;
      } catch (cause) {
        throw new SlotflipError('DAEMON_MQTT_CREDENTIALS', `${c.credentialsFile}: not JSON; expected {"username": "...", "password": "..."}`, { cause, details: { path: c.credentialsFile } });
      }
      if (typeof creds.username === 'string') o.username = creds.username;
      if (typeof creds.password === 'string') o.password = creds.password;
    }
    return o;
  }

  private async readSmall(path: string, field: string): Promise<Buffer> {
    try {
      return await readFileCapped(path, 1 << 20);
    } catch (cause) {
      throw new SlotflipError('DAEMON_MQTT_FILE', `${field}: cannot read ${path}; check the path and permissions`, { cause, details: { path, field }, retryable: true });
    }
  }

  private async connectOnce(): Promise<void> {
    if (!this.running) return;
    const gen = ++this.generation;
    const url = this.cfg.urls[this.attempt % this.cfg.urls.length]!;
    let client: MqttClient;
    let version: 4 | 5;
    try {
      if (this.protocol === undefined) this.protocol = (await this.memory?.load(url).catch(() => undefined)) ?? 5;
      version = this.protocol;
      const opts = await this.clientOptions(version);
      if (!this.running || gen !== this.generation) return;
      client = this.factory(url, opts);
    } catch (e) {
      this.problem('DAEMON_MQTT_CONNECT', `cannot prepare the connection to ${url}`, { url }, e);
      this.scheduleReconnect(gen);
      return;
    }
    this.client = client;
    this.closed = new Promise<never>((_, reject) => { this.signalClosed = reject; });
    this.closed.catch(() => undefined);
    // Without TCP_NODELAY each small publish waits for a delayed ACK (40–90 ms on loopback).
    (client.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
    // a socket that opened and closed again without a CONNACK is how brokers that speak only
    // MQTT 3.1.1 (RabbitMQ before 3.13) answer an MQTT 5 CONNECT
    let socketOpen = false;
    let refusal: string | undefined;
    const stream = client.stream as unknown as { on?: (ev: string, fn: () => void) => void } | undefined;
    stream?.on?.('connect', () => { socketOpen = true; });
    stream?.on?.('secureConnect', () => { socketOpen = true; });
    let sawConnack = false;
    client.on('packetreceive', (packet) => { if (packet.cmd === 'connack') sawConnack = true; });
    client.on('connect', () => {
      if (gen !== this.generation) return;
      this.connectedAt = this.now();
      this.isConnected = true;
      this.protocolInUse = version;
      this.brokerUrl = url;
      if (this.cfg.protocolVersion === undefined) void this.memory?.save(url, version).catch(() => undefined);
      this.log.info({ url, protocolVersion: version }, 'broker connected');
      void this.onConnected(client, gen, url);
    });
    client.on('message', (topic, payload, packet) => {
      if (gen === this.generation) this.onMessage(topic, payload, packet);
    });
    client.on('error', (e) => {
      if (gen !== this.generation) return;
      const code = (e as { code?: unknown }).code;
      if (!this.isConnected && (code === 0x84 || (version === 4 && code === 1))) refusal = `CONNACK refused: ${e.message} (code ${String(code)})`;
      if (code === 149 || /max(imum)? ?packet ?size|exceeded/i.test(e.message)) {
        this.metaProblem({ code: 'DAEMON_MQTT_OVERSIZE', message: `${url}: the broker sent a message larger than broker.maxPacketSize (${this.cfg.maxPacketSize} bytes) and the client disconnected; metadata comes from the HTTP repository meanwhile. Keep every published message at most 64 KiB (repo publish enforces it) or raise maxPacketSize` });
      }
      this.log.warn({ url, err: e.message, code }, 'broker error');
    });
    client.on('disconnect', (packet) => {
      if (gen !== this.generation) return;
      const rc = (packet as { reasonCode?: number }).reasonCode;
      if (rc === 149) this.metaProblem({ code: 'DAEMON_MQTT_OVERSIZE', message: `${url}: the broker disconnected: packet too large (reason 0x95, broker.maxPacketSize ${this.cfg.maxPacketSize} bytes)` });
    });
    client.on('close', () => {
      if (gen !== this.generation) return;
      const was = this.isConnected;
      if (!was && version === 5 && this.cfg.protocolVersion === undefined && ((socketOpen && !sawConnack) || refusal !== undefined)) {
        // fall back at once: the broker answered, it just does not speak MQTT 5
        const answer = refusal ?? 'connection closed before CONNACK';
        this.log.warn({ url, protocol: 'MQTT 5', answer, fallback: 'MQTT 3.1.1' }, 'broker refused MQTT 5 (' + answer + '): falling back to MQTT 3.1.1');
        this.protocol = 4;
        this.isConnected = false;
        this.client = undefined;
        this.signalClosed(new SlotflipError('DAEMON_MQTT_CLOSED', `connection to ${url} closed`, { retryable: true }));
        client.end(true);
        void this.connectOnce();
        return;
      }
      if (!was && socketOpen) this.log.warn({ url, protocol: version === 5 ? 'MQTT 5' : 'MQTT 3.1.1', answer: refusal ?? 'connection closed before CONNACK' }, 'broker closed the connection before accepting it (check credentials, client id and the broker log)');
      if (was && this.now() - this.connectedAt >= STABLE_CONNECTION_MS) this.attempt = 0;
      this.isConnected = false;
      this.client = undefined;
      this.signalClosed(new SlotflipError('DAEMON_MQTT_CLOSED', `connection to ${url} closed`, { retryable: true }));
      client.end(true);
      if (was) this.emit('disconnected', { url });
      this.log.info({ url, wasConnected: was }, 'broker connection closed');
      this.scheduleReconnect(gen);
    });
  }

  private scheduleReconnect(gen: number): void {
    if (!this.running || gen !== this.generation || this.reconnectTimer !== undefined) return;
    const delayMs = backoffDelay(this.attempt, this.cfg.reconnect, this.random);
    const attempt = ++this.attempt;
    this.emit('reconnectScheduled', { attempt, delayMs });
    this.reconnectTimer = this.timers.setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.connectOnce();
    }, delayMs);
  }

  private async onConnected(client: MqttClient, gen: number, url: string): Promise<void> {
    try {
      await client.publishAsync(this.topics.online, 'online', { qos: 1, retain: true });
      const subs: Record<string, { qos: 1 }> = { [this.topics.cmdFilter]: { qos: 1 } };
      for (const f of META_FILTERS) subs[f] = { qos: 1 };
      const granted = await client.subscribeAsync(subs);
      for (const g of granted) if (g.qos >= 0x80) this.problem('DAEMON_MQTT_SUBSCRIBE', `broker refused subscription ${g.topic} (reason 0x${g.qos.toString(16)}); check the broker ACL`, { topic: g.topic });
    } catch (e) {
      if (gen === this.generation) this.problem('DAEMON_MQTT_SUBSCRIBE', `setting up the session on ${url} failed; reconnecting`, { url }, e);
      return;
    }
    if (gen !== this.generation) return;
    this.emit('connected', { url });
    await this.flushState();
    await this.pump();
  }

  private onMessage(topic: string, payload: Buffer, packet: IPublishPacket): void {
    const meta = metaFileOfTopic(topic);
    if (meta !== undefined) {
      const { file, layout } = meta;
      if (payload.length > this.maxMetadataBytes) {
        this.metaProblem({ code: 'DAEMON_MQTT_OVERSIZE', file, topic, message: `metadata ${topic} is ${payload.length} bytes, more than the ${this.maxMetadataBytes} accepted; ignored (fetched over HTTP instead)` });
        return;
      }
      const bytes = Uint8Array.from(payload);
      const r = this.retained.accept(file, layout, topic, bytes);
      if (!r.ok) {
        if (r.code === 'DAEMON_MQTT_META_UNWANTED') this.log.debug({ topic, code: r.code }, r.message);
        else this.metaProblem({ code: r.code, file, topic, message: r.message });
        return;
      }
      if (r.changed) this.emit('metadata', { file, bytes: payload.length === 0 ? undefined : bytes, retained: packet.retain });
      return;
    }
    const name = commandOf(this.topics, topic);
    if (name === 'check') {
      this.emit('command', { name, payload: Uint8Array.from(payload) });
      return;
    }
    if (name === 'factory-reset') {
      // empty: the retained command was cleared (by this device, after running it)
      if (payload.length === 0) return;
      // bounded by maxPacketSize; manifests/command.ts caps it again before parsing; the verdict
      // (and its report) is the service's
      this.emit('command', { name, payload: Uint8Array.from(payload) });
      return;
    }
    this.log.debug({ topic }, 'message on an unknown topic ignored');
  }

  /** Sends pending outbox events in seq order, `inflight` at a time; acks each on PUBACK. */
  private async pump(): Promise<void> {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.pumpAgain = false;
        const client = this.client;
        if (!client || !this.isConnected) return;
        const gen = this.generation;
        const pending = await this.outbox.pending();
        if (pending.length === 0) continue;
        const { droppedUndelivered } = await this.outbox.stats();
        for (let i = 0; i < pending.length; i += this.inflight) {
          if (gen !== this.generation || !this.isConnected) return;
          const batch = pending.slice(i, i + this.inflight);
          const results = await Promise.allSettled(batch.map((e) => this.publishEvent(client, e, droppedUndelivered)));
          const ok = batch.filter((_, j) => results[j]!.status === 'fulfilled').map((e) => e.seq);
          // one durable write per batch: cheaper on flash than one per event
          if (ok.length > 0) await this.outbox.ack(ok);
          for (const seq of ok) this.emit('delivered', { seq });
          if (gen !== this.generation) return; // connection lost mid-batch: the rest is resent after reconnect
          let failed = false;
          for (let j = 0; j < batch.length; j++) {
            const r = results[j]!;
            if (r.status === 'rejected') {
              failed = true;
              const code = (r.reason as { code?: unknown })?.code;
              this.problem('DAEMON_MQTT_PUBLISH', `event seq ${batch[j]!.seq} not accepted by the broker${typeof code === 'number' ? ` (reason 0x${code.toString(16)})` : ''}; kept in the outbox for retry`, { seq: batch[j]!.seq, topic: this.topics.events, reason: code }, r.reason);
            }
          }
          if (failed) {
            // A refused event stays pending, never dropped: retry with backoff (or on the next append/reconnect).
            this.scheduleRetry();
            return;
          }
          this.publishFailures = 0;
        }
      } while (this.pumpAgain);
    } finally {
      this.pumping = false;
    }
  }

  private scheduleRetry(): void {
    if (!this.running || this.retryTimer !== undefined) return;
    const delayMs = backoffDelay(this.publishFailures++, this.cfg.reconnect, this.random);
    this.retryTimer = this.timers.setTimeout(() => {
      this.retryTimer = undefined;
      void this.pump();
    }, delayMs);
  }

  private publishEvent(client: MqttClient, entry: OutboxEntry, droppedUndelivered: number): Promise<unknown> {
    const body: Record<string, unknown> = { ...entry.event, seq: entry.seq, deviceId: this.deviceId };
    if (droppedUndelivered > 0) body.droppedUndelivered = droppedUndelivered;
    let json = JSON.stringify(body);
    const room = this.cfg.maxPacketSize - this.topics.events.length - PUBLISH_OVERHEAD;
    if (Buffer.byteLength(json) > room) {
      // Too big to ever be delivered: send a truthful stub rather than block the outbox forever.
      json = JSON.stringify({ type: entry.event.type, seq: entry.seq, deviceId: this.deviceId, truncated: true, originalBytes: Buffer.byteLength(json) });
    }
    return Promise.race([client.publishAsync(this.topics.events, json, { qos: 1 }), this.closed]);
  }

  private problem(code: string, message: string, details: Record<string, unknown>, cause?: unknown): void {
    const err = new SlotflipError(code, message, { details, retryable: true, ...(cause === undefined ? {} : { cause }) });
    this.log.warn({ code, ...details, problem: message, err: cause instanceof Error ? cause.message : undefined }, 'mqtt problem');
    this.emit('problem', err);
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('timeout')), ms);
    p.then((v) => { clearTimeout(t); resolve(v); }, (e: unknown) => { clearTimeout(t); reject(e); });
  });
}
