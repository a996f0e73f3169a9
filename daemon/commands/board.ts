/**
 * `slotflip board`: emulated boards for tests and the demo (hal/board.ts).
 *
 *   slotflip board create DIR --backend B [--convention C] --slot-size N
 *   slotflip board power-cycle DIR [--tryboot | --reboot-arg ARG] [--json]
 *   slotflip board status DIR [--json]
 *   slotflip board probe DIR --health
 *   slotflip board image OUT --version V --size N [--unhealthy | --no-boot]
 */
import { BOARD_BACKENDS, boardStatus, createBoard, powerCycle, type BoardBackend } from '../../hal/board.js';
import { SlotflipError } from '../../hal/errors.js';
import { writeTestImage } from '../../hal/image.js';
import type { Command, CommandIO } from './command.js';
import { nodeUtil } from '../../hal/builtins.js';
const { parseArgs } = nodeUtil;

const HELP = `usage: slotflip board <create|power-cycle|status|probe|image> DIR [options]

Emulated A/B boards: two slot image files and a bootloader environment in the real tool's format.
A power cycle runs that bootloader's own slot selection (tries counted down, fallback when exhausted)
and records which slot booted in DIR/cmdline and DIR/boot.log.

  create DIR --backend B --slot-size N [--convention C]
      B: ${BOARD_BACKENDS.join(' | ')}
      C: uboot: rauc (default) | mender;  grub: greenboot (default) | rauc
      N: bytes per slot (suffixes K, M, G allowed), at least 8K.
      Slot A gets a healthy factory image and boots; prints the boot config for the daemon.
  power-cycle DIR [--reboot-arg ARG | --tryboot] [--json]
      Power the board off and on. --reboot-arg passes the OS's reboot argument (e.g. "0 tryboot");
      --tryboot is short for --reboot-arg "0 tryboot". Exit 0 when a slot booted, 1 when none did.
  status DIR [--json]
      Booted slot, the image in each slot, the last boot attempt.
  probe DIR --health
      Health check for the demo: exit 0 iff the booted slot's image says healthy, 1 otherwise.
  image OUT --version V --size N [--unhealthy | --no-boot]
      Write a release image an emulated board can boot (hal/image.ts: a 4096-byte header naming the
      version, then a body whose hash the header carries). Emulated boards boot only such images: any
      other file, or one torn by a power cut, never comes up. N: whole image size (K, M, G allowed),
      more than 4K and at most the slot size. --unhealthy: it boots but \`board probe --health\` fails
      (a release that rolls back); --no-boot: the kernel never comes up (the bootloader falls back).

options:
  --json      machine-readable output
  -h, --help  this text`;

function parseSize(s: string, option = '--slot-size'): number {
  const m = /^(\d+)([KMG]?)i?B?$/i.exec(s.trim());
  if (!m) throw new SlotflipError('DAEMON_BAD_ARGUMENT', `${option} ${JSON.stringify(s)}: expected a byte count like 1048576 or 64M`);
  const mult = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(m[1]) * mult;
}

function out(io: CommandIO, json: boolean, obj: unknown, text: string): void {
  io.stdout.write((json ? JSON.stringify(obj, null, 2) : text) + '\n');
}

export const command: Command = {
  help: HELP,
  async run(argv: string[], io: CommandIO): Promise<number> {
    let parsed;
    try {
      parsed = parseArgs({
        args: argv,
        strict: true,
        allowPositionals: true,
        options: {
          backend: { type: 'string' },
          convention: { type: 'string' },
          'slot-size': { type: 'string' },
          'reboot-arg': { type: 'string' },
          tryboot: { type: 'boolean', default: false },
          health: { type: 'boolean', default: false },
          version: { type: 'string' },
          size: { type: 'string' },
          unhealthy: { type: 'boolean', default: false },
          'no-boot': { type: 'boolean', default: false },
          json: { type: 'boolean', default: false },
          help: { type: 'boolean', short: 'h', default: false },
        },
      });
    } catch (e) {
      io.stderr.write(`slotflip board: ${(e as Error).message}\n`);
      return 2;
    }
    const { values, positionals } = parsed;
    if (values.help) {
      io.stdout.write(HELP + '\n');
      return 0;
    }
    const [sub, dir, ...extra] = positionals;
    if (!sub || !dir || extra.length > 0) {
      io.stderr.write(`slotflip board: expected a subcommand and a board directory\n\n${HELP}\n`);
      return 2;
    }
    const json = values.json;
    const only = (allowed: string[]) => {
      const given = Object.entries(values).filter(([k, v]) => v !== undefined && v !== false && k !== 'json' && !allowed.includes(k));
      if (given.length > 0) throw new SlotflipError('DAEMON_BAD_ARGUMENT', `board ${sub}: option --${given[0]![0]} does not apply; see slotflip board --help`);
    };
    switch (sub) {
      case 'create': {
        only(['backend', 'convention', 'slot-size']);
        if (!values.backend || !values['slot-size']) {
          io.stderr.write('slotflip board create: --backend and --slot-size are required\n');
          return 2;
        }
        if (!BOARD_BACKENDS.includes(values.backend as BoardBackend)) {
          io.stderr.write(`slotflip board create: unknown backend "${values.backend}"; use one of ${BOARD_BACKENDS.join(', ')}\n`);
          return 2;
        }
        const desc = await createBoard(dir, {
          backend: values.backend as BoardBackend,
          slotSize: parseSize(values['slot-size']),
          ...(values.convention ? { convention: values.convention } : {}),
        });
        out(io, json, desc, `created ${desc.backend}${desc.convention ? `/${desc.convention}` : ''} board in ${desc.dir}\nslot A: ${desc.slots.A}\nslot B: ${desc.slots.B}\nboot config: ${JSON.stringify(desc.bootConfig)}`);
        return 0;
      }
      case 'power-cycle': {
        only(['reboot-arg', 'tryboot']);
        const arg = values.tryboot ? '0 tryboot' : values['reboot-arg'];
        const r = await powerCycle(dir, arg === undefined ? {} : { rebootArgument: arg });
        out(io, json, r, r.booted ? `booted slot ${r.booted} (${r.version}): ${r.reason}` : `no slot booted: ${r.reason}`);
        return r.booted ? 0 : 1;
      }
      case 'status': {
        only([]);
        const s = await boardStatus(dir);
        const img = (x: (typeof s.images)['A']) => (x.version ? `${x.version}${x.boots ? '' : ' (does not boot)'}${x.healthy === false ? ' (unhealthy)' : ''}` : `empty/invalid (${x.reason})`);
        out(io, json, s, `board ${s.board.dir} (${s.board.backend}${s.board.convention ? `/${s.board.convention}` : ''})\nbooted: ${s.booted ?? 'none'}\nslot A: ${img(s.images.A)}\nslot B: ${img(s.images.B)}`);
        return 0;
      }
      case 'probe': {
        only(['health']);
        if (!values.health) {
          io.stderr.write('slotflip board probe: say what to probe (--health)\n');
          return 2;
        }
        const s = await boardStatus(dir);
        const healthy = s.booted !== null && s.images[s.booted].boots && s.images[s.booted].healthy === true;
        out(io, json, { booted: s.booted, healthy }, healthy ? `slot ${s.booted} healthy` : `unhealthy (booted: ${s.booted ?? 'none'})`);
        return healthy ? 0 : 1;
      }
      case 'image': {
        only(['version', 'size', 'unhealthy', 'no-boot']);
        if (!values.version || !values.size) {
          io.stderr.write('slotflip board image: --version and --size are required\n');
          return 2;
        }
        if (values.unhealthy && values['no-boot']) {
          io.stderr.write('slotflip board image: --unhealthy and --no-boot exclude each other\n');
          return 2;
        }
        const size = parseSize(values.size, '--size');
        let h;
        try {
          h = await writeTestImage(dir, { version: values.version, size, healthy: !values.unhealthy, boots: !values['no-boot'] });
        } catch (e) {
          if ((e as { code?: string }).code === 'HAL_BAD_ARGUMENT') throw new SlotflipError('DAEMON_BAD_ARGUMENT', `board image: ${(e as Error).message}`, { cause: e });
          throw e;
        }
        out(io, json, { path: dir, ...h }, `wrote ${dir}: image ${h.version}, ${h.size} bytes${h.boots ? '' : ', does not boot'}${h.healthy ? '' : ', unhealthy'}`);
        return 0;
      }
      default:
        io.stderr.write(`slotflip board: unknown subcommand "${sub}"\n\n${HELP}\n`);
        return 2;
    }
  },
};
