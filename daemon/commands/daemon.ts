/**
 * `slotflip daemon --config FILE`: run on a device for months. Resumes any update in flight, then
 * checks on the poll schedule, on new metadata from the broker and on `check` commands; reports
 * through the persisted outbox over MQTT. Logs are JSON lines on stdout (journald collects them).
 * Stops cleanly on SIGTERM/SIGINT (the running effect chain finishes first).
 *
 * One daemon per state directory: the state lock is taken before anything else starts (broker
 * included) and held for the process's life; a second daemon exits 1 with DAEMON_LOCKED naming the
 * holder's pid. A lock left by a dead process is taken over.
 */
import { createNotifier, notifyOptionsFromEnv } from '../sd-notify.js';
import { configDefaults, loadConfig, requireHealthChecks } from '../config.js';
import { statePaths } from '../compose.js';
import { commandLogger, parseCommandArgs } from '../command-support.js';
import { UpdateService } from '../service.js';
import { exposedGc, persistCompileCache, reclaimHeap } from '../footprint.js';
import { silenceMqttDebug } from '../mqtt-connect.js';
import type { Command } from './command.js';

export const command: Command = {
  help: [
    'usage: slotflip daemon --config FILE',
    '',
    'Run the update daemon: resume a pending update, then check for releases on the poll schedule',
    '(config poll.cron), on new metadata from the broker and on `check` commands; install, reboot',
    'into a trial boot, validate, commit or roll back; report over MQTT. Stops on SIGTERM/SIGINT.',
    '',
    'options:',
    '  --config FILE   device config (JSON); default $SLOTFLIP_CONFIG or /etc/slotflip/config.json',
    '  -h, --help      this help',
    '',
    'One daemon per state directory: a second one exits 1 with DAEMON_LOCKED (naming the pid that',
    'holds it); a lock left by a dead process is taken over.',
  ].join('\n'),
  async run(argv, io) {
    const p = parseCommandArgs(argv, io);
    const config = await loadConfig(p.config);
    requireHealthChecks(config, p.config);
    const log = commandLogger(config, true);
    const env = notifyOptionsFromEnv(io.env, process.pid);
    const notifier = createNotifier({ socketPath: env.socketPath, watchdogUsec: env.watchdogUsec, onError: (e) => log.warn({ err: e.toJSON() }, 'sd_notify failed') });
    // MQTT.js's own debug output goes to stderr only when DEBUG names it: otherwise not even loaded
    if (!io.env.DEBUG) silenceMqttDebug();
    const gc = exposedGc();
    const service = new UpdateService({
      config,
      log,
      processLock: true,
      // the unit runs node with --expose-gc: idle, the daemon returns its free heap pages
      ...(gc ? { reclaim: () => log.debug(reclaimHeap(gc), 'heap reclaimed') } : {}),
      // idle: build the delta seed index of a slot that has none (install/idle-index.ts)
      ...((config.install ?? configDefaults.install).delta === 'auto' ? { idleWork: async (signal: AbortSignal) => (await import('../install/idle-index.js')).indexSlotsWhileIdle({ stateDir: config.stateDir, resumeStatePath: statePaths(config.stateDir).resume, slots: config.board.slots, signal, log: log.child({ module: 'daemon.idle-index' }) }) } : {}),
      onCycle: (r) => {
        const text = 'error' in r ? `last cycle failed: ${r.error}` : `phase ${r.phase}${r.finished.length ? `, ${r.finished.map((h) => h.outcome).join(', ')}` : ''}`;
        notifier.status(text).catch(() => undefined);
      },
    });
    const stopped = new Promise<void>((resolve) => {
      const stop = (signal: string): void => {
        log.info({ signal }, 'stopping');
        notifier.stopping().catch(() => undefined);
        service.stop().then(resolve, resolve);
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
    log.info({ deviceId: config.deviceId, channel: config.channel, poll: config.poll.cron, broker: config.broker?.urls ?? null }, 'daemon starting');
    // DAEMON_LOCKED ends the command here (exit 1), before the broker or the watchdog are started
    await service.start();
    notifier.startWatchdog();
    await notifier.ready('running').catch(() => undefined);
    // the modules of a started daemon, compiled: the next start (after the reboot) reads them
    persistCompileCache();
    await stopped;
    notifier.stop();
    return 0;
  },
};
