/**
 * `slotflip repo ...`: the manufacturer's repository tools (manifests/repo.ts): create keys and
 * metadata, re-sign the timestamp (for a timer), rotate keys, change a rollout, publish to a broker;
 * key custody: holders' keys (keygen), pending roots they sign (sign-root), encrypted key files
 * (passphrase from --passphrase-fd or $SLOTFLIP_KEY_PASSPHRASE, never argv), external signers.
 * Root and targets keys belong offline; see manifests/README.md for key handling.
 */
import { readFile } from 'node:fs/promises';
import { SlotflipError } from '../../hal/errors.js';
import {
  generateKeyFile, initRepo, publishTimeReset, publishToBroker, pruneReleases, readPublicKeyFile, resignTimestamp, rotateKey, setRollout, signerFromKeyFile, signerFromSpecFile, signPendingRoot,
  type KeyAccess, type PendingRootStatus, type TopRole,
} from '../../manifests/repo.js';
import { parseSignerSpec, type ExternalSignerSpec, type Signer } from '../../manifests/signers.js';
import type { Rollout } from '../../manifests/types.js';
import type { Command, CommandIO } from './command.js';
import { REPO_SERVE_HELP, runRepoServe } from './repo-serve.js';
import { nodeFs, nodeUtil } from '../../hal/builtins.js';
const { readFileSync } = nodeFs;
const { parseArgs } = nodeUtil;

const HELP = [
  'usage: slotflip repo <subcommand> DIR [options]   (keygen: no DIR)',
  '',
  'Manage a signed (TUF) release repository in DIR. Metadata is written under DIR/repository/metadata/,',
  'payloads under DIR/repository/targets/; serve DIR/repository with `slotflip repo serve DIR` or any static HTTP server or CDN with Range',
  'support (nginx, S3-style object stores); devices\' payloadBaseUrls point at <served URL>/targets/.',
  '',
  'subcommands:',
  '  keygen --out HOLDER.pem',
  '        a new Ed25519 key for one root key holder, on the holder\'s own machine: HOLDER.pem (0600,',
  '        encrypted when a passphrase is given) and HOLDER.pub (public; give it to init/rotate).',
  '  init DIR [--root-keys N] [--root-threshold M] [--root-pubkey F ...] [--signer ROLE=FILE ...]',
  '        create keys (root M-of-N, default 2-of-3; one key each for targets, snapshot, timestamp)',
  '        under DIR/keys/ (mode 0600; encrypted when a passphrase is given) and version-1 metadata.',
  '        --root-pubkey (once per holder): root keys held apart, none is created here; root v1 is',
  '        PENDING (DIR/pending/) until M holders ran sign-root. --signer targets=F (or snapshot,',
  '        timestamp): that role\'s key is held by an external signer (F: see manifests/README.md).',
  '        Refuses an existing repo.',
  '  sign-root DIR (--key HOLDER.pem | --signer F) ...',
  '        add root key holders\' signatures to the pending root; the signature that completes the',
  '        threshold(s) publishes it as the trusted root (N.root.json, root.json).',
  '  timestamp DIR',
  '        re-sign timestamp.json (and snapshot.json when it has less than half its validity left).',
  '        Run it from a timer well inside the timestamp lifetime (1 day): e.g. every 6 hours.',
  '  rotate DIR --role root|targets|snapshot|timestamp [--root-pubkey F ...] [--root-threshold M]',
  '             [--signer F] [--pending]',
  '        replace a role\'s keys with new ones in a new root version, signed by the old root keys (a',
  '        root rotation by the old and the new ones). Root keys held apart (or --pending): the new',
  '        root is pending until the holders ran sign-root. --root-pubkey: the new root holders\'',
  '        public keys; --signer F: the role\'s new key is held by an external signer.',
  '  time-reset DIR [--to ISO-8601]',
  '        publish a new root version (same keys; needs the root keys) carrying a trusted-time reset:',
  '        devices whose time floor is wrong (MANIFEST_EXPIRED on valid metadata) set it to that time',
  '        (default: now). See manifests/README.md "Trusted time".',
  '  rollout DIR --target NAME (--percent P | --halt | --clear)',
  '        change a release\'s staged rollout (re-signs targets: needs the targets key).',
  '  publish DIR --broker URL [--layouts v2,v1] [--max-message-bytes N] [--oversize refuse|skip]',
  '              [--keep-strays] [--protocol 4|5] [--username U] [--ca F] [--cert F] [--key F]',
  '        put the metadata on the broker as retained messages: slotflip/v2/meta/<level> (timestamp,',
  '        <N>_root, <N>_snapshot, <N>_targets) and, for devices not yet on v2, slotflip/v1/meta/<file>.',
  '        No message exceeds --max-message-bytes (default 65536): a larger file is refused (exit 1,',
  '        MANIFEST_PUBLISH_OVERSIZE), or with --oversize skip left to HTTP. Retained topics under the',
  '        meta prefixes that are not part of DIR are cleared (and listed) unless --keep-strays.',
  '        MQTT 5, or 3.1.1 when the broker refuses 5. Password from $SLOTFLIP_BROKER_PASSWORD.',
  '  prune DIR --keep N [--dry-run]',
  '        remove old releases from the targets metadata (re-signs targets: needs the targets key) so',
  '        it stays small: per hardware and channel the N best releases stay (as devices rank them:',
  '        securityVersion, then semver), and every release some device of that group may still be',
  '        pointed at (below a partial rollout, a halted one or an explicit device list). Index targets',
  '        go with their release; payload files stay on disk (delete them once no device installs them).',
  REPO_SERVE_HELP,
  '',
  'options:',
  '  --passphrase-fd N   read the key passphrase from file descriptor N (or set',
  '                      $SLOTFLIP_KEY_PASSPHRASE); never on the command line',
  '  --json          machine-readable output',
  '  -h, --help      this help',
].join('\n');

/** The key passphrase: from a file descriptor (first line) or $SLOTFLIP_KEY_PASSPHRASE; never argv. */
function keyAccess(fd: string | undefined, io: CommandIO): KeyAccess {
  let passphrase: string | undefined;
  if (fd !== undefined) {
    const n = Number(fd);
    if (!Number.isInteger(n) || n < 0) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', '--passphrase-fd needs a file descriptor number');
    try {
      passphrase = readFileSync(n, 'utf8').split(/\r?\n/)[0];
    } catch (cause) {
      throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `--passphrase-fd ${n}: cannot read the passphrase`, { cause });
    }
  } else if (io.env['SLOTFLIP_KEY_PASSPHRASE'] !== undefined && io.env['SLOTFLIP_KEY_PASSPHRASE'] !== '') {
    passphrase = io.env['SLOTFLIP_KEY_PASSPHRASE'];
  }
  // external signers get the caller's environment (PINs, KMS credentials), minus the passphrase
  const env = { ...io.env };
  delete env['SLOTFLIP_KEY_PASSPHRASE'];
  return { ...(passphrase !== undefined ? { passphrase } : {}), env };
}

async function readSpec(path: string): Promise<ExternalSignerSpec> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(path, 'utf8'));
  } catch (cause) {
    throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `external signer file ${path} is unreadable or not JSON`, { cause });
  }
  return parseSignerSpec(raw, path);
}

function pendingText(st: PendingRootStatus): string {
  const part = (name: string, p: { have: number; need: number }): string => `${p.have} of ${p.need} ${name}`;
  const parts = [part('new root keys', st.newKeys), ...(st.trustedKeys ? [part('trusted root keys', st.trustedKeys)] : [])];
  return st.published ? `root v${st.version} is complete (${parts.join(', ')}) and published as the trusted root` : `root v${st.version} is pending: ${parts.join(', ')} signed`;
}

/** publish takes one TLS --key (the option repeats for sign-root). */
function oneKey(keys: string[]): string {
  if (keys.length !== 1) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', 'repo publish takes one --key FILE');
  return keys[0]!;
}

function out(io: CommandIO, json: boolean, value: unknown, text: string): void {
  io.stdout.write((json ? JSON.stringify(value) : text) + '\n');
}

export const command: Command = {
  help: HELP,
  async run(argv, io) {
    // its own options and a long-running process: see repo-serve.ts
    if (argv[0] === 'serve') return runRepoServe(argv.slice(1), io);
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        'root-keys': { type: 'string' },
        'root-threshold': { type: 'string' },
        role: { type: 'string' },
        target: { type: 'string' },
        percent: { type: 'string' },
        halt: { type: 'boolean' },
        clear: { type: 'boolean' },
        broker: { type: 'string' },
        prefix: { type: 'string' },
        layouts: { type: 'string' },
        'max-message-bytes': { type: 'string' },
        oversize: { type: 'string' },
        'keep-strays': { type: 'boolean' },
        protocol: { type: 'string' },
        username: { type: 'string' },
        ca: { type: 'string' },
        cert: { type: 'string' },
        key: { type: 'string', multiple: true },
        to: { type: 'string' },
        out: { type: 'string' },
        'root-pubkey': { type: 'string', multiple: true },
        signer: { type: 'string', multiple: true },
        pending: { type: 'boolean' },
        keep: { type: 'string' },
        'dry-run': { type: 'boolean' },
        'passphrase-fd': { type: 'string' },
        json: { type: 'boolean' },
      },
    });
    const [sub, dir, ...extra] = positionals;
    const json = values.json ?? false;
    if (sub === 'keygen' && !dir) {
      if (!values.out) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', 'repo keygen needs --out HOLDER.pem');
      const access = keyAccess(values['passphrase-fd'], io);
      const r = await generateKeyFile(values.out, access);
      out(io, json, { ...r, encrypted: access.passphrase !== undefined }, `key ${r.keyid}: private ${r.key}${access.passphrase !== undefined ? ' (encrypted)' : ''}, public ${r.pub}`);
      return 0;
    }
    if (!sub || !dir || extra.length > 0) {
      io.stderr.write(`slotflip repo: expected a subcommand and DIR\n\n${HELP}\n`);
      return 2;
    }
    switch (sub) {
      case 'init': {
        const rootPublicKeys = values['root-pubkey'] ? await Promise.all(values['root-pubkey'].map((f) => readPublicKeyFile(f))) : undefined;
        const signers: Partial<Record<'targets' | 'snapshot' | 'timestamp', ExternalSignerSpec>> = {};
        for (const sv of values.signer ?? []) {
          const m = /^(targets|snapshot|timestamp)=(.+)$/.exec(sv);
          if (!m) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `--signer ${sv}: expected targets=FILE, snapshot=FILE or timestamp=FILE`);
          signers[m[1] as 'targets'] = await readSpec(m[2]!);
        }
        const s = await initRepo(dir, {
          ...(values['root-keys'] ? { rootKeys: Number(values['root-keys']) } : rootPublicKeys ? { rootKeys: rootPublicKeys.length } : {}),
          ...(values['root-threshold'] ? { rootThreshold: Number(values['root-threshold']) } : rootPublicKeys && rootPublicKeys.length < 2 ? { rootThreshold: 1 } : {}),
          ...(rootPublicKeys ? { rootPublicKeys } : {}),
          signers,
          keys: keyAccess(values['passphrase-fd'], io),
        });
        out(io, json, s, s.pendingRoot
          ? `initialised ${dir}: root ${s.keyIds.root.length} keys held apart; ${pendingText(s.pendingRoot)}: each holder runs \`slotflip repo sign-root ${dir} --key HOLDER.pem\``
          : `initialised ${dir}: root ${s.keyIds.root.length} keys; metadata in ${dir}/repository/metadata; ship ${dir}/repository/metadata/root.json in the OS image`);
        return 0;
      }
      case 'sign-root': {
        const access = keyAccess(values['passphrase-fd'], io);
        const signers: Signer[] = [];
        for (const k of values.key ?? []) signers.push(await signerFromKeyFile(k, access));
        for (const f of values.signer ?? []) signers.push(await signerFromSpecFile(f, 'root', access));
        if (signers.length === 0) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', 'repo sign-root needs --key HOLDER.pem or --signer FILE');
        const st = await signPendingRoot(dir, signers, { keys: access });
        out(io, json, st, pendingText(st) + (st.published ? `; ship ${dir}/repository/metadata/root.json in the next OS image` : ''));
        return 0;
      }
      case 'timestamp': {
        const r = await resignTimestamp(dir, { keys: keyAccess(values['passphrase-fd'], io) });
        out(io, json, r, `timestamp v${r.timestampVersion}${r.snapshotVersion ? `, snapshot v${r.snapshotVersion}` : ''}`);
        return 0;
      }
      case 'rotate': {
        const role = values.role as TopRole | undefined;
        if (!role) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', 'repo rotate needs --role root|targets|snapshot|timestamp');
        const rootPublicKeys = values['root-pubkey'] ? await Promise.all(values['root-pubkey'].map((f) => readPublicKeyFile(f))) : undefined;
        if ((values.signer ?? []).length > 1) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', 'repo rotate takes one --signer FILE');
        const signer = values.signer?.[0] ? await readSpec(values.signer[0]) : undefined;
        const s = await rotateKey(dir, role, {
          keys: keyAccess(values['passphrase-fd'], io),
          ...(rootPublicKeys ? { rootPublicKeys } : {}),
          ...(values['root-threshold'] ? { rootThreshold: Number(values['root-threshold']) } : {}),
          ...(signer ? { signer } : {}),
          ...(values.pending ? { pending: true } : {}),
        });
        out(io, json, s, s.pendingRoot
          ? `rotating ${role}: ${pendingText(s.pendingRoot)}; root key holders run \`slotflip repo sign-root ${dir} --key HOLDER.pem\``
          : `rotated ${role}: root v${s.rootVersion}, ${role} key ${s.keyIds[role].join(', ')}`);
        return 0;
      }
      case 'time-reset': {
        const at = values.to === undefined ? Date.now() : Date.parse(values.to);
        const s = await publishTimeReset(dir, at, { keys: keyAccess(values['passphrase-fd'], io) });
        if (s.pendingRoot) {
          out(io, json, s, `time reset: ${pendingText(s.pendingRoot)}; root key holders run \`slotflip repo sign-root ${dir} --key HOLDER.pem\``);
          return 0;
        }
        out(io, json, s, `root v${s.rootVersion} resets the devices' trusted time to ${new Date(at).toISOString()}`);
        return 0;
      }
      case 'rollout': {
        if (!values.target) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', 'repo rollout needs --target NAME');
        let rollout: Rollout | undefined;
        if (values.clear) rollout = undefined;
        else if (values.halt) rollout = { percent: values.percent ? Number(values.percent) : 0, halted: true };
        else if (values.percent !== undefined) rollout = { percent: Number(values.percent) };
        else throw new SlotflipError('MANIFEST_BAD_ARGUMENT', 'repo rollout needs --percent P, --halt or --clear');
        const v = await setRollout(dir, values.target, rollout, { keys: keyAccess(values['passphrase-fd'], io) });
        out(io, json, { targetsVersion: v, rollout: rollout ?? null }, `targets v${v}: rollout of ${values.target} is now ${rollout ? JSON.stringify(rollout) : 'cleared'}`);
        return 0;
      }
      case 'prune': {
        if (values.keep === undefined || !/^\d+$/.test(values.keep)) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', 'repo prune needs --keep N (releases kept per hardware and channel, at least 1)');
        const r = await pruneReleases(dir, { keep: Number(values.keep), dryRun: values['dry-run'] ?? false, keys: keyAccess(values['passphrase-fd'], io) });
        const verb = values['dry-run'] ? 'would remove' : 'removed';
        out(io, json, r, [`${verb} ${r.removed.length} release${r.removed.length === 1 ? '' : 's'}, kept ${r.kept.length}${r.targetsVersion !== undefined ? ` (targets v${r.targetsVersion})` : ''}`, ...r.removed.map((n) => `  ${verb} ${n}`)].join('\n'));
        return 0;
      }
      case 'publish': {
        if (!values.broker) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', 'repo publish needs --broker URL');
        const layouts = values.layouts?.split(',').map((x) => x.trim());
        if (layouts && (layouts.length === 0 || layouts.some((l) => l !== 'v1' && l !== 'v2'))) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `--layouts ${values.layouts}: expected v2, v1 or v2,v1`);
        const maxBytes = values['max-message-bytes'] !== undefined ? Number(values['max-message-bytes']) : undefined;
        if (maxBytes !== undefined && (!Number.isSafeInteger(maxBytes) || maxBytes < 1024)) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `--max-message-bytes ${values['max-message-bytes']}: expected an integer >= 1024`);
        if (values.oversize !== undefined && values.oversize !== 'refuse' && values.oversize !== 'skip') throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `--oversize ${values.oversize}: expected refuse or skip`);
        if (values.protocol !== undefined && values.protocol !== '4' && values.protocol !== '5') throw new SlotflipError('MANIFEST_BAD_ARGUMENT', `--protocol ${values.protocol}: expected 4 (MQTT 3.1.1) or 5`);
        const r = await publishToBroker(dir, values.broker, {
          ...(values.prefix ? { prefix: values.prefix } : {}),
          ...(layouts ? { layouts: layouts as ('v1' | 'v2')[] } : {}),
          ...(maxBytes !== undefined ? { maxMessageBytes: maxBytes } : {}),
          ...(values.oversize ? { oversize: values.oversize as 'refuse' | 'skip' } : {}),
          ...(values['keep-strays'] ? { clearStrays: false } : {}),
          ...(values.protocol ? { protocolVersion: Number(values.protocol) as 4 | 5 } : {}),
          ...(values.username ? { username: values.username } : {}),
          ...(io.env['SLOTFLIP_BROKER_PASSWORD'] ? { password: io.env['SLOTFLIP_BROKER_PASSWORD'] } : {}),
          ...(values.ca ? { ca: await readFile(values.ca) } : {}),
          ...(values.cert ? { cert: await readFile(values.cert) } : {}),
          ...(values.key ? { key: await readFile(oneKey(values.key)) } : {}),
        });
        const lines = [`published ${r.published.length} retained messages (MQTT ${r.protocolVersion === 5 ? '5' : '3.1.1'}, largest ${r.largestMessageBytes} bytes)`];
        for (const c of r.cleared) lines.push(`cleared retained ${c} (not part of this repository's current metadata)`);
        for (const k of r.skipped) lines.push(`skipped ${k.file}: ${k.bytes} bytes, over the message cap; devices fetch it over HTTP`);
        out(io, json, r, lines.join('\n'));
        return 0;
      }
      default:
        io.stderr.write(`slotflip repo: unknown subcommand "${sub}"\n\n${HELP}\n`);
        return 2;
    }
  },
};
