/**
 * `slotflip verify --root ROOT --repo URL|DIR --hardware H ...`: run the device's TUF refresh and
 * release selection from the outside, and print the release it would pick or the stable rejection
 * code. Writes only to its own trusted-state directory (a temporary one unless --state is given).
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { SlotflipError, codeOf } from '../../hal/errors.js';
import { TrustClient, dirSource, httpSource, type MetadataSource } from '../../manifests/client.js';
import { selectRelease } from '../../manifests/select.js';
import type { Command } from './command.js';
import { EXIT, exitCodeForRefusal } from '../exit-codes.js';
import { nodeUtil } from '../../hal/builtins.js';
const { parseArgs } = nodeUtil;

const HELP = [
  'usage: slotflip verify --root ROOT --repo URL|DIR --hardware H [--channel C] [--device-id ID]',
  '                       [--committed-security-version N] [--state DIR] [--json]',
  '',
  'Refresh the signed metadata exactly as a device does (root chain, timestamp, snapshot, targets,',
  'delegations; expiry, rollback and size checks; a format 2 release\'s chunk index fetched and',
  'checked against its signed hash) and print the release a device with this hardware',
  'and channel would install, or the stable MANIFEST_* code saying why not. Exit codes: 0 a release',
  'is selected, 4 no release applies to this device, 5 the metadata (or the selected release\'s',
  'description) was rejected, 1 error, 2 usage.',
  '',
  'options:',
  '  --root ROOT                      trusted root.json (the one shipped in the OS image)',
  '  --repo URL|DIR                   repository: an HTTP(S) base serving metadata/ and targets/, or a',
  '                                   directory (a `repo init` DIR, its repository/, or a metadata dir)',
  '  --hardware H                     the device\'s compatible string',
  '  --channel C                      release channel (default stable)',
  '  --device-id ID                   device id, for explicit targeting and rollout buckets',
  '  --committed-security-version N   the device\'s committed securityVersion (default 0)',
  '  --state DIR                      keep trusted metadata here between runs (default: temporary)',
  '  --json                           machine-readable output',
  '  -h, --help                       this help',
].join('\n');

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

/** metadata source and payload base URL for a --repo argument. */
export async function resolveRepo(repo: string): Promise<{ source: MetadataSource; targetsBase: string }> {
  if (/^https?:\/\//.test(repo)) {
    const base = repo.endsWith('/') ? repo : repo + '/';
    return { source: httpSource(base + 'metadata/'), targetsBase: base + 'targets/' };
  }
  const dir = resolve(repo);
  for (const root of [join(dir, 'repository'), dir]) {
    if (await isDir(join(root, 'metadata'))) return { source: dirSource(join(root, 'metadata')), targetsBase: pathToFileURL(join(root, 'targets')).href + '/' };
  }
  if (await isDir(dir)) return { source: dirSource(dir), targetsBase: pathToFileURL(join(dir, '..', 'targets')).href + '/' };
  throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `--repo ${repo} is neither an http(s) URL nor a directory`);
}

export const command: Command = {
  help: HELP,
  async run(argv, io) {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        root: { type: 'string' },
        repo: { type: 'string' },
        hardware: { type: 'string' },
        channel: { type: 'string' },
        'device-id': { type: 'string' },
        'committed-security-version': { type: 'string' },
        state: { type: 'string' },
        json: { type: 'boolean' },
      },
    });
    const json = values.json ?? false;
    if (positionals.length > 0 || !values.root || !values.repo || !values.hardware) {
      io.stderr.write(`slotflip verify: --root, --repo and --hardware are required\n\n${HELP}\n`);
      return 2;
    }
    const committed = Number(values['committed-security-version'] ?? '0');
    if (!Number.isSafeInteger(committed) || committed < 0) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', '--committed-security-version must be an integer >= 0');
    const { source, targetsBase } = await resolveRepo(values.repo);
    const state = values.state ?? (await mkdtemp(join(tmpdir(), 'slotflip-verify-')));
    try {
      const client = new TrustClient({ trustedDir: state, shippedRootPath: resolve(values.root), source, now: Date.now });
      let refreshed;
      try {
        refreshed = await client.refresh();
      } catch (e) {
        const code = codeOf(e);
        const message = (e as Error).message;
        io.stdout.write((json ? JSON.stringify({ ok: false, code, message }) : `rejected: ${code}: ${message}`) + '\n');
        return code === undefined || !code.startsWith('MANIFEST_') ? EXIT.error : exitCodeForRefusal(code);
      }
      const device = { deviceId: values['device-id'] ?? 'verify', hardware: values.hardware, channel: values.channel ?? 'stable', committedSecurityVersion: committed };
      const sel = selectRelease(refreshed.releases, device, Date.now());
      const meta = { root: refreshed.rootVersion, timestamp: refreshed.timestampVersion, snapshot: refreshed.snapshotVersion, targets: refreshed.targetsVersion };
      if (sel.ok) {
        const r = sel.release;
        const url = client.targetUrl(targetsBase, r);
        if (r.custom.slotflip === 2) {
          // format 2: fetch and judge the chunk index exactly as a device does before it changes anything
          const { IndexResolver } = await import('../install/index-file.js');
          const where = (target: { targetName: string; hashes: Record<string, string> }): { urls: string[] } | { path: string } => {
            const u = client.targetUrl(targetsBase, target);
            return u.startsWith('file:') ? { path: fileURLToPath(u) } : { urls: [u] };
          };
          const resolver = new IndexResolver({ locate: where, cacheDir: join(state, 'verify-index') });
          try {
            await resolver.payloadOf(r);
          } catch (e) {
            const code = codeOf(e);
            const message = (e as Error).message;
            io.stdout.write((json ? JSON.stringify({ ok: false, code, message, metadata: meta }) : `rejected: ${code}: ${message}`) + '\n');
            return code.startsWith('MANIFEST_') ? exitCodeForRefusal(code) : EXIT.error;
          } finally {
            await resolver.settle(undefined);
          }
        }
        if (json) {
          io.stdout.write(JSON.stringify({ ok: true, release: { targetName: r.targetName, version: r.custom.version, securityVersion: r.custom.securityVersion, channel: r.custom.channel, length: r.length, hashes: r.hashes, format: r.custom.slotflip, ...(r.custom.slotflip === 1 ? { chunks: r.custom.payload.chunks.length } : { index: r.index ?? null }), url }, metadata: meta, invalidTargets: refreshed.invalidTargets, warnings: refreshed.warnings }) + '\n');
        } else {
          io.stdout.write(`selected ${r.targetName}: version ${r.custom.version}, securityVersion ${r.custom.securityVersion}, ${r.length} bytes\n  payload ${url}\n  metadata root v${meta.root}, timestamp v${meta.timestamp}, snapshot v${meta.snapshot}, targets v${meta.targets}\n`);
          for (const w of [...refreshed.warnings, ...refreshed.invalidTargets]) io.stdout.write(`  warning ${w.code}: ${w.message}\n`);
        }
        return 0;
      }
      io.stdout.write((json ? JSON.stringify({ ok: false, code: sel.code, message: sel.message, metadata: meta, invalidTargets: refreshed.invalidTargets, warnings: refreshed.warnings }) : `rejected: ${sel.code}: ${sel.message}`) + '\n');
      return exitCodeForRefusal(sel.code);
    } finally {
      if (!values.state) await rm(state, { recursive: true, force: true });
    }
  },
};
