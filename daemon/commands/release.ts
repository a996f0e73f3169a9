/**
 * `slotflip release add DIR ...`: build a payload from an image (compress, chunk, index), add it as
 * a signed TUF target with its slotflip custom block, re-sign targets, snapshot and timestamp.
 * `slotflip release export DIR --out OUT`: write an offline bundle for a USB stick (repo.ts
 * exportBundle; format in manifests/README.md "Offline bundles").
 */
import { stat } from 'node:fs/promises';
import { estimateDelta } from '../../manifests/delta-publish.js';
import { DEFAULT_DELTA_LEVEL, DELTA_FORMAT_1, DELTA_FORMAT_2 } from '../../manifests/delta.js';
import { SlotflipError } from '../../hal/errors.js';
import { addRelease, earlierDeltaIndex, exportBundle, releaseTargetName } from '../../manifests/repo.js';
import { DEFAULT_CHUNK_SIZE } from '../../manifests/payload.js';
import type { Compression } from '../../manifests/types.js';
import type { Command } from './command.js';
import { nodeUtil } from '../../hal/builtins.js';
const { parseArgs } = nodeUtil;

const HELP = [
  'usage: slotflip release add DIR --image F --version V --security-version N --hardware H',
  '                            [--hardware H2 ...] --channel C [options]',
  '       slotflip release export DIR --out OUT [--valid-days D] [--target T ...] [--json]',
  '',
  'Build a payload from image F and publish it as a signed release in repository DIR (needs the',
  'targets, snapshot and timestamp keys). The payload lands in DIR/repository/targets/ as',
  '<dir>/<sha256>.<name>; the target name defaults to releases/V/<image name>.zst (.gz, or none).',
  'Its chunk index (every chunk\'s SHA-256 and its compressed frame\'s) is the target <name>.index.',
  '',
  'options:',
  '  --image F               image file (the whole root filesystem image)',
  '  --version V             semver for people, e.g. 1.4.0',
  '  --security-version N    anti-rollback counter; devices never install below their committed one',
  '  --hardware H            exact compatible string of a board that may install it (repeatable)',
  '  --channel C             release channel, e.g. stable, beta',
  '  --compression X         zstd (default), gzip or none',
  `  --chunk-size N          uncompressed chunk size in bytes (default ${DEFAULT_CHUNK_SIZE})`,
  '  --device ID             only these device ids may install it (repeatable)',
  '  --rollout P             staged rollout: only devices whose bucket is below P percent',
  '  --migration PATH        data migration: an executable inside the image, run from the new slot on',
  '                          its first boot before the health checks (argument array, no shell)',
  '  --migration-snapshot P  a data-partition path (relative) the migration may change: snapshotted',
  '                          first, restored if the trial rolls back (repeatable; needed with --migration)',
  '  --migration-timeout S   seconds the migration may take (default and cap: the health deadline)',
  '  --name T                TUF target name instead of the default',
  '  --expires-days D        targets metadata lifetime (default from repo.json, 90)',
  '  --inline-index          format 1: the chunk index inline in targets.json (~190 bytes per chunk),',
  '                          for devices whose daemon predates format 2; default: format 2, the index',
  '                          is a signed target file of its own (<target>.index) fetched over HTTP',
  '  --no-delta              publish no delta files. By default a format 2 release also gets a',
  '                          delta index and pack (content-defined chunks, targets <target>.delta-',
  '                          index and .delta-pack): devices holding any earlier image copy what',
  '                          their slots hold and download only the rest; devices without delta',
  '                          support (or with install.delta "off") ignore them and download the',
  '                          full payload. It costs publishing time (a 1 GiB image: 10 s of 16 s)',
  '                          and server space (a pack ~1.1x the payload)',
  '  --delta                 publish the delta files (the default; an error with --inline-index)',
  `  --delta-level N         zstd level of the pack frames (1-22, default ${DEFAULT_DELTA_LEVEL})`,
  '  --delta-format 1|2      delta index format (default 2: frames of x86 code chunks filtered, ~5 %',
  '                          smaller; daemons before it refuse format 2 and download the full',
  '                          payload, so publish 1 while a fleet still runs them)',
  '  --delta-against F       print what a device holding F downloads and what in the image',
  '                          defeats reuse; F is an earlier image or .delta-index file; repeatable.',
  '                          Default: against the best earlier release of the same hardware in',
  '                          the repository (its .delta-index), as a device holding it would',
  '',
  'export: write an offline bundle to OUT (an empty directory, e.g. on a USB stick): the current',
  'metadata, the payloads, and offline.json, signed with the targets key, which lets a device',
  'install from that stick (`slotflip install OUT`) after the 1-day timestamp has expired, until',
  'the bundle\'s own expiry. Needs the targets key.',
  '  --out OUT               bundle directory',
  '  --valid-days D          offline validity, days (default 30; never beyond the targets expiry)',
  '  --target T              export only this target (repeatable; default: all current targets)',
  '',
  '  --json                  machine-readable output',
  '  -h, --help              this help',
].join('\n');

export const command: Command = {
  help: HELP,
  async run(argv, io) {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        image: { type: 'string' },
        version: { type: 'string' },
        'security-version': { type: 'string' },
        hardware: { type: 'string', multiple: true },
        channel: { type: 'string' },
        compression: { type: 'string' },
        'chunk-size': { type: 'string' },
        device: { type: 'string', multiple: true },
        rollout: { type: 'string' },
        migration: { type: 'string' },
        'migration-snapshot': { type: 'string', multiple: true },
        'migration-timeout': { type: 'string' },
        name: { type: 'string' },
        'expires-days': { type: 'string' },
        out: { type: 'string' },
        'valid-days': { type: 'string' },
        target: { type: 'string', multiple: true },
        'inline-index': { type: 'boolean' },
        json: { type: 'boolean' },
        delta: { type: 'boolean' },
        'no-delta': { type: 'boolean' },
        'delta-level': { type: 'string' },
        'delta-format': { type: 'string' },
        'delta-against': { type: 'string', multiple: true },
      },
    });
    const [sub, dir, ...extra] = positionals;
    if ((sub !== 'add' && sub !== 'export') || !dir || extra.length > 0) {
      io.stderr.write(`slotflip release: expected "add DIR" or "export DIR --out OUT"\n\n${HELP}\n`);
      return 2;
    }
    // encrypted key files: passphrase from $SLOTFLIP_KEY_PASSPHRASE; external signers get the environment
    const keys = { ...(io.env['SLOTFLIP_KEY_PASSPHRASE'] ? { passphrase: io.env['SLOTFLIP_KEY_PASSPHRASE'] } : {}), env: io.env };
    if (sub === 'export') {
      if (!values.out) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', 'release export needs --out OUT');
      const days = values['valid-days'] === undefined ? undefined : Number(values['valid-days']);
      const r = await exportBundle(dir, values.out, { keys, ...(days !== undefined ? { validDays: days } : {}), ...(values.target ? { targets: values.target } : {}) });
      if (values.json) io.stdout.write(JSON.stringify(r) + '\n');
      else io.stdout.write(`exported ${r.targets.length} target${r.targets.length === 1 ? '' : 's'} to ${r.out} (${r.files} files); offline until ${r.expires}\n`);
      return 0;
    }
    const need = (v: string | undefined, flag: string): string => {
      if (v === undefined || v === '') throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `release add needs ${flag}`);
      return v;
    };
    const int = (v: string, flag: string): number => {
      if (!/^\d+$/.test(v)) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `${flag} must be a non-negative integer, got ${JSON.stringify(v)}`);
      return Number(v);
    };
    const compression = (values.compression ?? 'zstd') as Compression;
    if (!['zstd', 'gzip', 'none'].includes(compression)) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', '--compression must be zstd, gzip or none');
    if (values.migration === undefined && (values['migration-snapshot'] || values['migration-timeout'])) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', '--migration-snapshot and --migration-timeout need --migration PATH');
    const migration = values.migration === undefined ? undefined : {
      path: values.migration,
      snapshot: values['migration-snapshot'] ?? [],
      ...(values['migration-timeout'] !== undefined ? { timeoutSeconds: int(values['migration-timeout'], '--migration-timeout') } : {}),
    };
    // delta files by default for format 2 (format 1 cannot name them); --no-delta opts out
    const askedDelta = values.delta === true || values['delta-against'] !== undefined || values['delta-level'] !== undefined || values['delta-format'] !== undefined;
    if (values['no-delta'] && askedDelta) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', '--no-delta contradicts --delta / --delta-against / --delta-level / --delta-format: give one or the other');
    const fmt = values['delta-format'];
    if (fmt !== undefined && fmt !== '1' && fmt !== '2') throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `--delta-format must be 1 or 2, got ${JSON.stringify(fmt)}`);
    const deltaFormat = fmt === undefined ? undefined : fmt === '1' ? DELTA_FORMAT_1 : DELTA_FORMAT_2;
    const wantDelta = askedDelta || (!values['no-delta'] && !values['inline-index']);
    const deltaLevel = values['delta-level'] === undefined ? undefined : int(values['delta-level'], '--delta-level');
    if (deltaLevel !== undefined && (deltaLevel < 1 || deltaLevel > 22)) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `--delta-level must be 1-22, got ${deltaLevel}`);
    // the earlier release to compare with, found before this one replaces anything: the one a device
    // of the same hardware would hold (best by securityVersion, then semver), through its delta index
    const against: { path: string; release?: string }[] = (values['delta-against'] ?? []).map((path) => ({ path }));
    for (const a of against) {
      if (!(await stat(a.path).then((st) => st.isFile(), () => false))) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `--delta-against ${a.path}: not a file (an earlier image or .delta-index); nothing was published`);
    }
    let noSeed: string | undefined;
    if (wantDelta && against.length === 0 && values.image && values.version && values.hardware?.length) {
      const name = releaseTargetName({ image: values.image, version: values.version, compression, ...(values.name ? { name: values.name } : {}) });
      const prev = await earlierDeltaIndex(dir, values.hardware, name);
      if (prev?.path) against.push({ path: prev.path, release: `${prev.targetName} (${prev.version})` });
      else if (prev) noSeed = `${prev.targetName} (${prev.version}) has no delta index (published with --no-delta or --inline-index): no estimate; devices holding it download what they cannot find in their slots (pass --delta-against IMAGE to see how much)`;
    }
    const r = await addRelease(dir, {
      ...(wantDelta ? { delta: true } : {}),
      ...(deltaLevel !== undefined ? { deltaLevel } : {}),
      ...(deltaFormat !== undefined ? { deltaFormat } : {}),
      keys,
      image: need(values.image, '--image'),
      version: need(values.version, '--version'),
      securityVersion: int(need(values['security-version'], '--security-version'), '--security-version'),
      hardware: values.hardware ?? [],
      channel: need(values.channel, '--channel'),
      compression,
      chunkSize: values['chunk-size'] ? int(values['chunk-size'], '--chunk-size') : DEFAULT_CHUNK_SIZE,
      ...(values.device ? { devices: values.device } : {}),
      ...(values.rollout !== undefined ? { rollout: { percent: Number(values.rollout) } } : {}),
      ...(migration ? { migration } : {}),
      ...(values.name ? { name: values.name } : {}),
      ...(values['expires-days'] ? { expiresDays: int(values['expires-days'], '--expires-days') } : {}),
      ...(values['inline-index'] ? { format: 1 as const } : {}),
    });
    const estimates = [];
    if (r.delta) {
      // the release is published by now: an estimate that cannot be made is said, never an error
      for (const a of against) {
        const e = await estimateDelta(values.image!, r.delta.index, r.delta.section.index.length, a.path).catch((cause: unknown) => {
          noSeed = `no estimate against ${a.release ?? a.path}: ${(cause as Error).message}`;
          return undefined;
        });
        if (e) estimates.push({ against: a.path, ...(a.release ? { release: a.release } : {}), ...e, percentOfFull: Math.round((1000 * e.expectedBytes) / r.length) / 10 });
      }
    }
    const deltaJson = r.delta ? { delta: { index: r.delta.section.index, pack: r.delta.section.pack, level: deltaLevel ?? DEFAULT_DELTA_LEVEL, format: r.delta.section.format, ...(r.delta.section.thin ? { thin: r.delta.section.thin } : {}), cdc: r.delta.index.header.cdc, chunks: r.delta.index.header.chunkCount, distinct: r.delta.index.header.uniqueCount, estimates, ...(noSeed ? { noEstimate: noSeed } : {}) } } : {};
    if (values.json) io.stdout.write(JSON.stringify({ targetName: r.targetName, path: r.path, length: r.length, sha256: r.sha256, targetsVersion: r.targetsVersion, version: r.custom.version, securityVersion: r.custom.securityVersion, format: r.custom.slotflip, chunks: r.chunks, ...(r.index ? { index: r.index } : {}), ...deltaJson }) + '\n');
    else {
      io.stdout.write(`added ${r.targetName} (${r.custom.version}, securityVersion ${r.custom.securityVersion}, ${r.chunks} chunks, ${r.length} bytes) in targets v${r.targetsVersion}${r.index ? `; chunk index ${r.index.targetName} (${r.index.length} bytes)` : ' (format 1: chunk index inline)'}\n`);
      if (r.delta) io.stdout.write(`delta: ${r.delta.section.index.target} (${r.delta.section.index.length} bytes) and ${r.delta.section.pack.target} (${r.delta.section.pack.length} bytes), ${r.delta.index.header.chunkCount} chunks, ${r.delta.index.header.uniqueCount} distinct (${[r.delta.index.header.cdc.min, r.delta.index.header.cdc.avg, r.delta.index.header.cdc.max].map((n) => n >> 10).join('/')} KiB${r.delta.index.header.cdc.dirBlock ? ', ext4 directory blocks on their own' : ''})\n`);
      for (const e of estimates) {
        io.stdout.write(`a device holding ${e.release ?? e.against} downloads about ${(e.expectedBytes / 1e6).toFixed(1)} MB (${e.percentOfFull} % of the full payload)\n`);
        for (const why of e.reasons) io.stdout.write(`  ${why}\n`);
      }
      if (r.delta && noSeed) io.stdout.write(`${noSeed}\n`);
    }
    return 0;
  },
};
