/**
 * A factory reset as a signed fleet command for one device (issue 18), from outside: the
 * manufacturer runs the BUILT `slotflip fleet factory-reset` against a real Mosquitto, the device is
 * the built `slotflip daemon`, and the test watches only what either side can see: the device's
 * events on the broker, the retained command topic, the files on the device's data partition, and
 * whether its reboot command ran.
 *
 * Every refusal (a command signed by another repository's key, a tampered one, one for another
 * device replayed onto this device's topic, an expired one, a mode the device does not permit, a
 * replay of the one it ran) is reported with its code and leaves the trusted state (trust anchors,
 * update record, replay memory) and the data partition byte-identical. The accepted one leaves the
 * marker the local command leaves, is reported, clears its retained message and reboots the device;
 * the reset applied at boot (`factory-reset --apply`, what slotflip-factory-reset.service runs)
 * keeps the replay memory, and the daemon on the reset device reports FactoryResetApplied and still
 * refuses the old command.
 */
import t from 'tap';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import mqtt from 'mqtt';
import { startMosquitto } from '../harness/mosquitto.js';
import { deviceTopics } from '../../daemon/topics.js';
import { createBoard, initFleet, msg, publishToBroker, sha256, slotflip, slotflipJson, startDaemon, until, writeDeviceConfig, type Daemon } from './harness.js';

const DEVICE = 'gw-reset-1';
const MIB = 1 << 20;

interface DeviceEvent {
  seq: number;
  type: string;
  commandId?: string;
  mode?: string;
  via?: string;
  reason?: { code?: string; message?: string };
}

/** every file under `dir` as `relative path → sha256`: the data partition and the trusted state on
 * it, what a refusal must not touch. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = join(d, e.name);
      const rel = relative(dir, p);
      // of slotflip's state dir: the trust anchors, the update record, the replay memory (the
      // outbox, lock and broker report change with every report and connection)
      if (rel.startsWith('var/lib/slotflip/') && !/^var\/lib\/slotflip\/(trusted(\/|$)|update-record\.json$|fleet-commands\.json$)/.test(rel)) continue;
      if (e.isDirectory()) await walk(p);
      else out[rel] = sha256(await readFile(p));
    }
  };
  await walk(dir);
  return out;
}

const broker = await startMosquitto();
t.teardown(() => broker.stop());

t.test('fleet factory-reset: signed for one device, refused with a code and nothing changed when wrong, run once when right', async (t) => {
  const dir = t.testdir();
  const fleet = await initFleet(dir);
  await publishToBroker(fleet, broker.url);
  // another manufacturer's repository: its targets key is not one this device trusts
  const stranger = await initFleet(join(dir, 'stranger'));
  const board = await createBoard(join(dir, 'board'), 2 * MIB);
  const data = join(dir, 'data');
  const stateDir = join(data, 'var/lib/slotflip');
  const defaults = join(dir, 'factory-defaults');
  await mkdir(join(defaults, 'var/lib/app'), { recursive: true });
  await writeFile(join(defaults, 'var/lib/app/README'), 'factory default\n');
  await mkdir(join(data, 'var/lib/app'), { recursive: true });
  await writeFile(join(data, 'var/lib/app/db'), 'owner data\n');
  const rebootFlag = join(dir, 'rebooted');
  const configPath = await writeDeviceConfig(join(dir, 'config.json'), {
    deviceId: DEVICE, board, fleet, stateDir, brokerUrl: broker.url, payloadBaseUrls: ['http://127.0.0.1:9/targets/'],
    extra: {
      data: { dir: data },
      // the test plays the reboot: the command leaves a flag; the daemon's grace for the shutdown is 1 s
      reboot: { command: [process.execPath, '-e', 'require("fs").writeFileSync(process.argv[1], "reboot\\n")', rebootFlag], graceSeconds: 1 },
    },
  });

  // the fleet's view: the device's events, and its retained command topic
  const topics = deviceTopics(DEVICE);
  const events: DeviceEvent[] = [];
  const retained = new Map<string, Buffer>();
  const copies: Buffer[] = [];
  const watcher = await mqtt.connectAsync(broker.url, { clientId: 'fleet-reset-watch' });
  t.teardown(() => watcher.endAsync());
  watcher.on('message', (topic, payload) => {
    if (topic === topics.events) {
      const e = JSON.parse(payload.toString()) as DeviceEvent;
      if (!events.some((x) => x.seq === e.seq)) events.push(e);
    } else {
      retained.set(topic, payload);
      if (payload.length > 0) copies.push(payload);
    }
  });
  await watcher.subscribeAsync([topics.events, topics.cmdFactoryReset], { qos: 1 });
  const rejection = async (n: number): Promise<DeviceEvent> => until(() => events.filter((e) => e.type === 'FleetCommandRejected')[n - 1], 20_000, `rejection #${n}; events so far: ${JSON.stringify(events)}`, 50);
  // a command as an attacker (or a stale tool) would put it on this device's topic
  const inject = async (bytes: string | Buffer): Promise<void> => {
    await watcher.publishAsync(topics.cmdFactoryReset, bytes, { qos: 1, retain: true });
  };

  let daemon: Daemon = startDaemon(configPath);
  t.teardown(() => daemon.kill());
  await daemon.waitFor(msg('broker connected'), 30_000, 'daemon connected');
  await daemon.waitFor(msg('cycle done'), 30_000, 'first cycle');
  // the retained timestamp's arrival triggers a second check: wait until the device is quiet
  const cyclesNow = (): number => daemon.lines.filter(msg('cycle done')).length;
  let quiet = { cycles: cyclesNow(), since: Date.now() };
  await until(() => {
    if (cyclesNow() !== quiet.cycles) quiet = { cycles: cyclesNow(), since: Date.now() };
    return Date.now() - quiet.since > 2000;
  }, 30_000, 'the daemon quiet for 2 s', 100);
  const before = await snapshot(data);
  const cyclesBefore = cyclesNow();
  t.ok(before['var/lib/slotflip/trusted/root.json'], 'the device trusts the fleet\'s root (stored on its data partition)');
  t.equal(before['var/lib/app/db'], sha256(Buffer.from('owner data\n')));

  const refusals: Array<[string, () => Promise<void>, string]> = [
    ['signed by a key this device does not trust', async () => {
      const r = await slotflip(['fleet', 'factory-reset', stranger.repo, '--device', DEVICE, '--broker', broker.url]);
      t.equal(r.code, 0, `the stranger's tool publishes (${r.stderr})`);
    }, 'MANIFEST_COMMAND_SIGNATURE'],
    ['tampered after signing (mode changed)', async () => {
      const file = join(dir, 'tampered.json');
      await slotflipJson(['fleet', 'factory-reset', fleet.repo, '--device', DEVICE, '--out', file, '--json']);
      const cmd = JSON.parse(await readFile(file, 'utf8')) as { signed: Record<string, unknown> };
      cmd.signed['mode'] = 'keep-identity';
      await inject(JSON.stringify(cmd));
    }, 'MANIFEST_COMMAND_SIGNATURE'],
    ['signed for another device, replayed onto this one', async () => {
      const file = join(dir, 'other.json');
      await slotflipJson(['fleet', 'factory-reset', fleet.repo, '--device', 'gw-reset-2', '--out', file, '--json']);
      await inject(await readFile(file));
    }, 'MANIFEST_COMMAND_WRONG_DEVICE'],
    ['expired before it arrived', async () => {
      const file = join(dir, 'expired.json');
      await slotflipJson(['fleet', 'factory-reset', fleet.repo, '--device', DEVICE, '--valid-for', '1s', '--out', file, '--json']);
      await new Promise((r) => setTimeout(r, 2100));
      await inject(await readFile(file));
    }, 'MANIFEST_COMMAND_EXPIRED'],
    ['a mode the device does not permit (as-shipped forgets the floor)', async () => {
      const r = await slotflip(['fleet', 'factory-reset', fleet.repo, '--device', DEVICE, '--mode', 'as-shipped', '--broker', broker.url]);
      t.equal(r.code, 0, r.stderr);
    }, 'DAEMON_COMMAND_NOT_PERMITTED'],
    ['not JSON at all', async () => inject('reset please'), 'MANIFEST_COMMAND_INVALID'],
  ];
  let n = 0;
  for (const [what, send, code] of refusals) {
    await send();
    const e = await rejection(++n);
    t.equal(e.reason?.code, code, `${what}: refused with ${code} (${e.reason?.message ?? ''})`);
    t.same(await snapshot(data), before, `${what}: trusted state and data byte-identical`);
    t.notOk(existsSync(join(data, '.slotflip-factory-reset')), `${what}: no reset marker`);
    t.notOk(existsSync(rebootFlag), `${what}: no reboot`);
  }
  // a refused command that stays retained comes again at every reconnect: reported once. The
  // same bytes again, then a new refusal: commands are judged in order, so the next event being the
  // new one's proves the repeat was judged and not reported.
  await inject('reset please');
  await inject('{"signed": 1}');
  const next = await rejection(++n);
  t.equal(events.filter((e) => e.type === 'FleetCommandRejected').length, n, 'a refused command delivered again is not reported again');
  t.equal(next.reason?.code, 'MANIFEST_COMMAND_INVALID', 'the new refusal is the one reported');
  t.not(next.reason?.message, events.filter((e) => e.type === 'FleetCommandRejected')[n - 2]?.reason?.message, 'and it is the new command\'s, not the repeat\'s');
  t.equal(daemon.child.exitCode, null, 'the daemon kept running through every refusal');
  t.equal(cyclesNow(), cyclesBefore, 'a command runs no update cycle of its own');

  // the right command: this device, the fleet's targets key, a permitted mode
  const sent = await slotflipJson<{ commandId: string; nonce: string; topic: string; expires: string }>(['fleet', 'factory-reset', fleet.repo, '--device', DEVICE, '--broker', broker.url, '--json']);
  t.equal(sent.topic, topics.cmdFactoryReset, 'published on the device\'s own command topic');
  const requested = await until(() => events.find((e) => e.type === 'FactoryResetRequested'), 20_000, 'FactoryResetRequested', 50);
  t.match(requested, { commandId: sent.commandId, mode: 'full', via: 'fleet' }, 'the device reports the reset it accepted, naming the command');
  const marker = JSON.parse(await readFile(join(data, '.slotflip-factory-reset'), 'utf8')) as Record<string, unknown>;
  t.match(marker, { mode: 'full', securityDir: 'var/lib/slotflip', stateDir: 'var/lib/slotflip', command: { id: sent.commandId, nonce: sent.nonce } }, 'the marker the local command leaves, naming the command');
  await until(() => existsSync(rebootFlag), 20_000, 'the reboot command', 50);
  t.pass('the device ran its reboot command');
  await until(() => retained.get(topics.cmdFactoryReset)?.length === 0, 20_000, 'the retained command cleared', 50);
  t.pass('the device cleared the retained command it ran');
  const memory = JSON.parse(await readFile(join(stateDir, 'fleet-commands.json'), 'utf8')) as { seen: Array<{ nonce: string }> };
  t.same(memory.seen.map((e) => e.nonce), [sent.nonce], 'the replay memory holds the one command that ran');
  t.equal(await readFile(join(data, 'var/lib/app/db'), 'utf8'), 'owner data\n', 'nothing is wiped before the reboot');

  // replayed to the same device before the reboot (the copy a listener on the topic kept): refused
  const wire = copies.at(-1)!;
  t.match(JSON.parse(wire.toString()), { signed: { nonce: sent.nonce } }, 'the signed command as it went over the wire');
  const afterAccept = await snapshot(data);
  await inject(wire);
  t.equal((await rejection(++n)).reason?.code, 'DAEMON_COMMAND_REPLAYED', 'the same command again: refused as a replay');
  t.same(await snapshot(data), afterAccept, 'the replay changed nothing');

  // the reboot: the daemon stops, slotflip-factory-reset.service applies the reset before anything
  // mounts the data, the daemon starts on the reset device
  await daemon.stop();
  const applied = await slotflipJson(['factory-reset', '--apply', data, '--defaults', defaults, '--json']);
  t.match(applied, { applied: true, mode: 'full' });
  t.notOk(existsSync(join(data, 'var/lib/app/db')), 'the owner data is gone');
  t.equal(await readFile(join(data, 'var/lib/app/README'), 'utf8'), 'factory default\n', "the image's defaults are back");
  t.notOk(existsSync(join(data, '.slotflip-factory-reset')), 'the reset is done');
  const reset = await snapshot(data);
  t.equal(reset['var/lib/slotflip/trusted/root.json'], before['var/lib/slotflip/trusted/root.json'], 'the trust anchors survived (mode full)');
  t.equal(reset['var/lib/slotflip/fleet-commands.json'], afterAccept['var/lib/slotflip/fleet-commands.json'], 'the replay memory survived the reset');

  daemon = startDaemon(configPath);
  const done = await until(() => events.find((e) => e.type === 'FactoryResetApplied'), 30_000, 'FactoryResetApplied', 50);
  t.match(done, { commandId: sent.commandId, mode: 'full', via: 'fleet' }, 'after the reset boot the device reports the reset it applied');
  t.ok(done.seq > requested.seq, 'in sequence after the request (the outbox survived mode full)');
  await daemon.waitFor(msg('cycle done'), 30_000, 'a cycle on the reset device');
  t.notOk(existsSync(join(stateDir, 'factory-reset-done.json')), 'reported once');
  await inject(wire);
  t.equal((await rejection(++n)).reason?.code, 'DAEMON_COMMAND_REPLAYED', 'the old command replayed after the reset: still refused, no second reset');
  t.notOk(existsSync(join(data, '.slotflip-factory-reset')), 'no new marker');
  t.equal(await daemon.stop(), 0, 'the daemon stops cleanly');

  // a device without a daemon (cron runs `update --once`): a local reset, applied at boot, is
  // reported by the next `update --once`
  const local = await slotflip(['factory-reset', '--config', configPath]);
  t.equal(local.code, 0, `a local reset request (${local.stderr})`);
  t.match(await slotflipJson(['factory-reset', '--apply', data, '--defaults', defaults, '--json']), { applied: true, mode: 'full' }, 'applied at the next boot');
  t.ok(existsSync(join(stateDir, 'factory-reset-done.json')), 'the apply left its report for slotflip to send');
  const once = await slotflip(['update', '--once', '--config', configPath]);
  t.equal(once.code, 0, `update --once on the reset device exits 0 (${once.stderr})`);
  const appliedLocal = await until(() => events.find((e) => e.type === 'FactoryResetApplied' && e.seq > done.seq), 30_000, 'FactoryResetApplied from update --once', 50);
  t.match(appliedLocal, { mode: 'full', via: 'local' }, 'update --once reports the local reset applied at boot');
  t.notOk(existsSync(join(stateDir, 'factory-reset-done.json')), 'and drops the apply\'s note: reported once');
});
