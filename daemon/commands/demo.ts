/**
 * `slotflip demo`: the whole loop on this machine (see daemon/demo.ts). Exit 0 only when release
 * 1.1 was committed and release 1.2 rolled back, and the fleet saw both reports on the broker.
 */
import { runDemo } from '../demo.js';
import type { Command } from './command.js';
import { nodeUtil } from '../../hal/builtins.js';
const { parseArgs } = nodeUtil;

export const command: Command = {
  help: [
    'usage: slotflip demo [--dir DIR] [--keep] [--image-mib N] [--compression gzip|zstd|none] [--json]',
    '',
    'Run the whole update loop on this machine: an embedded MQTT broker, an emulated A/B board, a',
    'TUF-signed repository served over HTTP. Release 1.1 installs, boots on trial, passes its health',
    'check and commits; release 1.2 fails its health check and rolls back to 1.1.',
    '',
    'options:',
    '  --dir DIR          work directory (kept); default: a temp directory removed at the end',
    '  --keep             keep the temp directory and print where it is',
    '  --image-mib N      image size in MiB (default 16)',
    '  --compression C    payload compression: gzip (default), zstd (needs the zstd tool), none',
    '  --json             print the result as JSON on stdout (the story goes to stderr)',
    '',
    'exit codes: 0 both outcomes happened as described, 1 otherwise',
  ].join('\n'),
  async run(argv, io) {
    const { values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        dir: { type: 'string' },
        keep: { type: 'boolean', default: false },
        'image-mib': { type: 'string', default: '16' },
        compression: { type: 'string', default: 'gzip' },
        json: { type: 'boolean', default: false },
      },
    });
    const mibs = Number(values['image-mib']);
    if (!Number.isInteger(mibs) || mibs < 1 || mibs > 4096) {
      io.stderr.write('slotflip demo: --image-mib must be a whole number from 1 to 4096\n');
      return 2;
    }
    const compression = values.compression;
    if (compression !== 'gzip' && compression !== 'zstd' && compression !== 'none') {
      io.stderr.write('slotflip demo: --compression must be gzip, zstd or none\n');
      return 2;
    }
    const out = values.json ? io.stderr : io.stdout;
    const result = await runDemo({
      ...(values.dir ? { dir: values.dir } : {}),
      keep: values.keep ?? false,
      imageSize: mibs << 20,
      compression,
      out,
      tty: Boolean((out as { isTTY?: boolean }).isTTY),
    });
    if (values.json) io.stdout.write(JSON.stringify(result) + '\n');
    if (values.keep && !values.dir) out.write(`work directory kept: ${result.dir}\n`);
    return result.ok ? 0 : 1;
  },
};
