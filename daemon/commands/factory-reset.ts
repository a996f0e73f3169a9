/**
 * `slotflip factory-reset --config FILE [--keep-identity] [--json]`: request a reset of the data
 * partition at the next boot (an atomic marker file in `data.dir`; nothing is wiped now).
 * `slotflip factory-reset --apply DIR [--defaults DIR] [--json]`: apply a pending request (what
 * slotflip-factory-reset.service runs early at boot, before local-fs.target; reads no config).
 * See daemon/factory-reset.ts for the power-cut-safe order.
 */
import { SlotflipError } from '../../hal/errors.js';
import { applyFactoryReset, MARKER, type ResetStep } from '../factory-reset.js';
import type { Command, CommandIO } from './command.js';
import { nodeUtil } from '../../hal/builtins.js';
const { parseArgs } = nodeUtil;

// `--apply` runs early at boot on a slow board: it loads no config code (ajv, pino, mqtt); the
// request path imports config.js only when it runs
const DEFAULT_DATA_DIR = '/data';

function write(io: CommandIO, text: string): void {
  io.stdout.write(text + '\n');
}

const STEPS: ResetStep[] = ['keep', 'wipe', 'defaults', 'restore', 'dropKeep', 'dropMarker'];

export const command: Command = {
  help: [
    'usage: slotflip factory-reset --config FILE [--keep-identity | --forget-security] [--json]',
    '       slotflip factory-reset --apply DATA_DIR [--defaults DIR] [--json]',
    '',
    'Request: leave a marker (' + MARKER + ') in the data dir (config /data/dir, default ' + DEFAULT_DATA_DIR + ');',
    'at the next boot slotflip-factory-reset.service wipes the data dir and re-creates it from the',
    "image's defaults. Reboot to apply. A power cut during the apply repeats it at the next boot.",
    '',
    'options:',
    '  --config FILE      device config (JSON); default $SLOTFLIP_CONFIG or /etc/slotflip/config.json',
    "  (default)          everything goes but slotflip's anti-rollback floor (committed securityVersion)",
    '                     and trust anchors (the rotated root): the device starts again from the',
    "                     image's defaults, idle, and never accepts a release below its floor",
    "  --keep-identity    also keep the config's /data/identity paths (device config, client",
    "                     certificate, slotflip's state dir as it is)",
    '  --forget-security  keep nothing, not even the floor and trust anchors: the device trusts the root',
    '                     shipped in the image again and may install any release it signs (refurbishing)',
    '  --apply DATA_DIR   apply a pending request now (early boot only: nothing may use DATA_DIR)',
    "  --defaults DIR     the image's defaults for the data dir (e.g. /usr/share/factory/data)",
    '  --json             print the result as JSON',
    '',
    'exit codes: 0 requested / applied (or nothing pending), 1 error, 2 usage',
  ].join('\n'),
  async run(argv, io) {
    let v;
    try {
      v = parseArgs({
        args: argv,
        strict: true,
        options: { config: { type: 'string' }, 'keep-identity': { type: 'boolean', default: false }, 'forget-security': { type: 'boolean', default: false }, apply: { type: 'string' }, defaults: { type: 'string' }, json: { type: 'boolean', default: false } },
      }).values;
    } catch (cause) {
      throw new SlotflipError('DAEMON_USAGE', `${(cause as Error).message}; see --help`, { cause });
    }
    if (v.apply !== undefined) {
      if (v.config !== undefined || v['keep-identity'] || v['forget-security']) throw new SlotflipError('DAEMON_USAGE', '--apply reads the mode from the marker: it takes no --config, --keep-identity or --forget-security; see --help');
      // test seam (power-cut scenarios): die as a power cut would, right before the named step
      const cut = io.env['SLOTFLIP_TEST_RESET_CUT'] as ResetStep | undefined;
      if (cut !== undefined && !STEPS.includes(cut)) throw new SlotflipError('DAEMON_USAGE', `SLOTFLIP_TEST_RESET_CUT: "${cut}" is none of ${STEPS.join(', ')}`);
      const r = await applyFactoryReset({
        dataDir: v.apply,
        ...(v.defaults !== undefined ? { defaultsDir: v.defaults } : {}),
        beforeStep: (s) => { if (s === cut) process.kill(process.pid, 'SIGKILL'); },
      });
      write(io, v.json ? JSON.stringify(r) : r.applied ? `factory reset of ${v.apply} done (${r.mode}${r.kept?.length ? `, kept ${r.kept.join(', ')}` : ''})` : 'no factory reset pending');
      return 0;
    }
    if (v.defaults !== undefined) throw new SlotflipError('DAEMON_USAGE', '--defaults goes with --apply; see --help');
    if (v['keep-identity'] && v['forget-security']) throw new SlotflipError('DAEMON_USAGE', '--keep-identity and --forget-security exclude each other: keeping the identity keeps the security state with it; see --help');
    const { loadConfig } = await import('../config.js');
    const { requestResetFromConfig } = await import('../reset-request.js');
    const config = await loadConfig(v.config ?? io.env['SLOTFLIP_CONFIG'] ?? '/etc/slotflip/config.json');
    const mode = v['keep-identity'] ? 'keep-identity' : v['forget-security'] ? 'as-shipped' : 'full';
    const marker = await requestResetFromConfig(config, mode, Date.now());
    write(io, v.json ? JSON.stringify(marker) : `factory reset (${marker.mode}) of ${marker.dataDir} requested; it runs at the next boot`);
    return 0;
  },
};
