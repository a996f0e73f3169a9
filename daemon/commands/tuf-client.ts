/**
 * `slotflip tuf-client`: the tuf-conformance client-under-test CLI protocol
 * (theupdateframework/tuf-conformance CLIENT-CLI.md), so any TUF conformance suite can drive the
 * device's TUF client (manifests/client.ts):
 *
 *   --metadata-dir DIR init ROOT
 *   --metadata-dir DIR --metadata-url URL refresh
 *   --metadata-dir DIR --metadata-url URL --target-name P --target-base-url U --target-dir D download
 *
 * Exit 0 on success, 1 on any failure. Metadata in DIR uses non-versioned names (root.json, …).
 * Here the trust anchor is DIR/root.json itself (no separate shipped root), documents are persisted
 * as each verifies (spec-literal: the suite expects a verified new root to stay even when a later
 * step fails), there is no trusted-time floor (the suite fakes the clock forwards and back), and a
 * refresh fetches top-level metadata only; delegated roles are fetched by `download` while
 * searching for the target.
 */
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { codeOf } from '../../hal/errors.js';
import { readFileCapped, writeFileAtomic } from '../../hal/atomic-file.js';
import { DEFAULT_LIMITS, TrustClient, fetchCapped, httpSource, targetUrl, verifyTargetBytes } from '../../manifests/client.js';
import type { Command } from './command.js';
import { nodeUtil } from '../../hal/builtins.js';
const { parseArgs } = nodeUtil;

const HELP = [
  'usage: slotflip tuf-client --metadata-dir DIR init ROOT',
  '       slotflip tuf-client --metadata-dir DIR --metadata-url URL refresh',
  '       slotflip tuf-client --metadata-dir DIR --metadata-url URL --target-name P',
  '                           --target-base-url U --target-dir D download',
  '',
  'The TUF conformance client protocol (theupdateframework/tuf-conformance CLIENT-CLI.md) over the',
  'device\'s TUF client. init copies ROOT to DIR/root.json without contacting the repository;',
  'refresh runs the TUF client workflow; download refreshes, finds target P (following delegations),',
  'downloads and verifies it into D (an already downloaded, still matching file is not fetched',
  'again). Exit 0 on success, 1 on failure.',
  '',
  'options:',
  '  --metadata-dir DIR       trusted metadata directory (root.json, timestamp.json, ...)',
  '  --metadata-url URL       repository metadata base URL',
  '  --target-name P          TUF target path',
  '  --target-base-url U      repository targets base URL',
  '  --target-dir D           where downloaded targets are stored',
  '  -h, --help               this help',
].join('\n');

export const command: Command = {
  help: HELP,
  async run(argv, io) {
    try {
      const { values, positionals } = parseArgs({
        args: argv,
        allowPositionals: true,
        strict: true,
        options: {
          'metadata-dir': { type: 'string' },
          'metadata-url': { type: 'string' },
          'target-name': { type: 'string' },
          'target-base-url': { type: 'string' },
          'target-dir': { type: 'string' },
        },
      });
      const [cmd, ...args] = positionals;
      const dir = values['metadata-dir'];
      if (!dir) throw new Error('--metadata-dir is required');
      if (cmd === 'init') {
        if (args.length !== 1) throw new Error('init needs exactly one TRUSTED_ROOT file');
        await mkdir(dir, { recursive: true });
        await writeFileAtomic(join(dir, 'root.json'), await readFileCapped(args[0]!, DEFAULT_LIMITS.rootBytes));
        return 0;
      }
      const url = values['metadata-url'];
      if (!url) throw new Error('--metadata-url is required');
      if (args.length > 0) throw new Error(`unexpected arguments: ${args.join(' ')}`);
      const client = new TrustClient({ trustedDir: dir, shippedRootPath: join(dir, 'root.json'), source: httpSource(url), now: Date.now, trustedTimeFloor: false });
      if (cmd === 'refresh') {
        await client.refresh({ delegations: false, persist: 'as-verified' });
        return 0;
      }
      if (cmd === 'download') {
        const name = values['target-name'];
        const base = values['target-base-url'];
        const targetDir = values['target-dir'];
        if (!name || !base || !targetDir) throw new Error('download needs --target-name, --target-base-url and --target-dir');
        await client.refresh({ delegations: false, persist: 'as-verified' });
        const target = await client.findTarget(name);
        if (!target) throw new Error(`target ${name} not found in the signed metadata (MANIFEST_TARGET_NOT_FOUND)`);
        await mkdir(targetDir, { recursive: true });
        const dest = join(targetDir, encodeURIComponent(name));
        if (await stat(dest).then((s) => s.isFile(), () => false)) {
          try {
            verifyTargetBytes(target, await readFileCapped(dest, target.length));
            return 0; // cached and still matching
          } catch {
            // stale or damaged copy: download again
          }
        }
        const consistent = client.trustedRoot()?.signed.consistentSnapshot ?? true;
        const bytes = await fetchCapped(targetUrl(base, { targetName: target.path, hashes: target.hashes }, consistent), target.length);
        if (!bytes) throw new Error(`target ${name} is listed but not published`);
        verifyTargetBytes(target, bytes);
        await writeFileAtomic(dest, bytes);
        return 0;
      }
      throw new Error(`unknown command ${JSON.stringify(cmd ?? '')}; use init, refresh or download`);
    } catch (e) {
      io.stderr.write(`slotflip tuf-client: ${codeOf(e, 'USAGE')}: ${(e as Error).message}\n`);
      return 1;
    }
  },
};
