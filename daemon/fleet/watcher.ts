/**
 * `fleet watch`'s broker side: subscribes to every device's retained `state` and `online` and to its
 * `events`, folds each message into the pure view (watch.ts), and, with a halt policy, halts the
 * rollout (rollout.ts: re-sign with `halted: true`, republish retained metadata) the first time the
 * failure rate crosses the threshold. Thin on purpose: every decision is in watch.ts.
 *
 * Trade-off: MQTT.js's own reconnect (fixed period, resubscribe) is used here. The watcher is an
 * operator tool with one connection, not a fleet of devices that could stampede a broker, and a
 * missed event while disconnected is recovered from the retained state's `lastResult`.
 *
 * INVARIANTS: at most one halt runs at a time; once a halt succeeded no other is attempted; a failed
 * halt is retried on a later message, not before `haltRetryMs`.
 */
import { randomBytes } from 'node:crypto';
import { connect as mqttConnect, type IClientOptions, type MqttClient } from 'mqtt';
import type { Logger } from 'pino';
import { SlotflipError } from '../../hal/errors.js';
import type { PublishOptions } from '../../manifests/repo.js';
import { TOPIC_ROOT, TOPIC_ROOT_V1 } from '../topics.js';
import { toErrorInfo } from '../runner.js';
import { haltRollout, type ApplyRolloutResult } from './rollout.js';
import { decideHalt, emptyView, foldMessage, releaseStats, summarize, type FleetSummary, type FleetView, type HaltDecision, type HaltPolicy } from './watch.js';

/** v2 device topics, and v1 ones from devices not yet updated. */
export const FLEET_FILTERS = [TOPIC_ROOT, TOPIC_ROOT_V1].flatMap((root) => [`${root}/devices/+/state`, `${root}/devices/+/events`, `${root}/devices/+/online`]);

export interface BrokerAuth {
  username?: string;
  password?: string;
  /** PEM contents. */
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
}

export interface FleetHaltConfig extends HaltPolicy {
  /** the repository whose targets are re-signed (needs the targets, snapshot, timestamp keys). */
  repoDir: string;
}

export interface HaltRecord {
  decision: Extract<HaltDecision, { halt: true }>;
  result: ApplyRolloutResult;
  at: number;
}

export interface FleetWatcherOptions {
  brokerUrl: string;
  auth?: BrokerAuth;
  /** target name of the release being rolled out (needed for a halt). */
  release?: string;
  halt?: FleetHaltConfig;
  stragglerAfterMs: number;
  now: () => number;
  log: Logger;
  /** builds the MQTT client (tests may wrap it). */
  connect?: (url: string, options: IClientOptions) => MqttClient;
  /** called once, after the rollout was halted and republished. */
  onHalt?: (h: HaltRecord) => void;
  /** called after every folded message (tests, live redraw). */
  onMessage?: (view: FleetView) => void;
  /** minimum spacing of halt retries after a failed halt (default 5 s). */
  haltRetryMs?: number;
}

export class FleetWatcher {
  readonly view: FleetView = emptyView();
  private client: MqttClient | undefined;
  private haltRunning = false;
  private haltFailedAt = -Infinity;
  private haltDone: HaltRecord | undefined;
  private readonly log: Logger;

  constructor(private readonly o: FleetWatcherOptions) {
    if (o.halt && o.release === undefined) throw new SlotflipError('DAEMON_USAGE', 'a halt policy needs --release TARGET: the release whose rollout is halted');
    this.log = o.log.child({ module: 'daemon.fleet' });
  }

  /** The halt that was applied, if any. */
  get halted(): HaltRecord | undefined {
    return this.haltDone;
  }

  /**
   * Connects and subscribes; resolves once the subscriptions are granted (retained state then
   * streams in). Throws DAEMON_FLEET_CONNECT when the broker cannot be reached or refuses.
   */
  async start(): Promise<void> {
    const options: IClientOptions = {
      clientId: `slotflip-fleet-watch-${randomBytes(4).toString('hex')}`,
      clean: true,
      connectTimeout: 10_000,
      reconnectPeriod: 2000,
      ...this.o.auth,
    };
    const client = (this.o.connect ?? mqttConnect)(this.o.brokerUrl, options);
    this.client = client;
    (client.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
    client.on('message', (topic, payload, packet) => this.onMessage(topic, payload, packet.retain));
    let started = false;
    // before the first CONNACK an error fails start() (reported once, by the caller)
    client.on('error', (e) => {
      if (started) this.log.warn({ err: e.message, brokerUrl: this.o.brokerUrl }, 'broker error');
    });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => onError(new Error(`no CONNACK within ${options.connectTimeout} ms`)), options.connectTimeout);
        const onConnect = (): void => { clearTimeout(timer); client.off('error', onError); resolve(); };
        const onError = (e: Error): void => { clearTimeout(timer); client.off('connect', onConnect); reject(e); };
        client.once('connect', onConnect);
        client.once('error', onError);
      });
      const granted = await client.subscribeAsync(Object.fromEntries(FLEET_FILTERS.map((f) => [f, { qos: 1 as const }])));
      const refused = granted.filter((g) => g.qos >= 0x80).map((g) => g.topic);
      if (refused.length > 0) throw new Error(`subscriptions refused: ${refused.join(', ')}`);
      started = true;
    } catch (cause) {
      await this.stop();
      throw new SlotflipError('DAEMON_FLEET_CONNECT', `cannot watch the fleet on ${this.o.brokerUrl}: check the URL, credentials and the broker's ACL for ${TOPIC_ROOT}/devices/#`, { cause, retryable: true, details: { brokerUrl: this.o.brokerUrl } });
    }
    this.log.info({ brokerUrl: this.o.brokerUrl, release: this.o.release ?? null }, 'watching fleet');
  }

  /** The live view summarised now. */
  summary(maxListed?: number): FleetSummary {
    return summarize(this.view, this.o.now(), {
      stragglerAfterMs: this.o.stragglerAfterMs,
      ...(this.o.release !== undefined ? { release: this.o.release } : {}),
      ...(maxListed !== undefined ? { maxListed } : {}),
    });
  }

  /** Waits for a halt in progress, then disconnects. Idempotent. */
  async stop(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    while (this.haltRunning) await new Promise((r) => setTimeout(r, 20));
    if (c) await new Promise<void>((resolve) => c.end(true, {}, () => resolve()));
  }

  private onMessage(topic: string, payload: Buffer, retained: boolean): void {
    foldMessage(this.view, { topic, payload, retained }, this.o.now());
    this.o.onMessage?.(this.view);
    this.maybeHalt();
  }

  private maybeHalt(): void {
    const h = this.o.halt;
    if (!h || this.haltDone || this.haltRunning || this.o.release === undefined) return;
    if (this.o.now() - this.haltFailedAt < (this.o.haltRetryMs ?? 5000)) return;
    const decision = decideHalt(releaseStats(this.view, this.o.release), h);
    if (!decision.halt) return;
    this.haltRunning = true;
    const release = this.o.release;
    this.log.warn({ release, reason: decision.reason, ...decision.stats }, 'failure threshold crossed: halting rollout');
    const auth = this.o.auth ?? {};
    const publish: PublishOptions = {
      ...(auth.username !== undefined ? { username: auth.username } : {}),
      ...(auth.password !== undefined ? { password: auth.password } : {}),
      ...(auth.ca !== undefined ? { ca: auth.ca } : {}),
      ...(auth.cert !== undefined ? { cert: auth.cert } : {}),
      ...(auth.key !== undefined ? { key: auth.key } : {}),
    };
    haltRollout(h.repoDir, release, { now: this.o.now, broker: this.o.brokerUrl, publish })
      .then((result) => {
        const rec: HaltRecord = { decision, result, at: this.o.now() };
        this.haltDone = rec;
        this.log.warn({ release, targetsVersion: result.targetsVersion, published: result.published?.published.length ?? 0 }, 'rollout halted');
        this.o.onHalt?.(rec);
      })
      .catch((e: unknown) => {
        this.haltFailedAt = this.o.now();
        this.log.error({ release, err: toErrorInfo(e) }, 'halting the rollout failed; will retry');
      })
      .finally(() => {
        this.haltRunning = false;
      });
  }
}
