/**
 * `slotflip repo ...`: the manufacturer's repository tools (manifests/repo.ts): create keys and
 * metadata, re-sign the timestamp (for a timer), rotate keys, change a rollout, publish to a broker.
 * Root and targets keys belong offline; see manifests/README.md for key handling.
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { SlotflipError } from '../../hal/errors.js';
import { initRepo, publishTimeReset, publishToBroker, resignTimestamp, rotateKey, setRollout, type TopRole } from '../../manifests/repo.js';
import type { Rollout } from '../../manifests/types.js';
import type { Command, CommandIO } from './command.js';

const HELP = [
  'usage: slotflip repo <subcommand> DIR [options]',
  '',
  'Manage a signed (TUF) release repository in DIR. Metadata is written under DIR/repository/metadata/,',
  'payloads under DIR/repository/targets/; serve DIR/repository with any static HTTP server or CDN.',
  '',
  'subcommands:',
  '  init DIR [--root-keys N] [--root-threshold M]',
  '        create Ed25519 keys (root M-of-N, default 2-of-3; one key each for targets, snapshot,',
  '        timestamp) under DIR/keys/ (mode 0600) and version-1 metadata. Refuses an existing repo.',
  '  timestamp DIR',
  '        re-sign timestamp.json (and snapshot.json when it has less than half its validity left).',
  '        Run it from a timer well inside the timestamp lifetime (1 day): e.g. every 6 hours.',
  '  rotate DIR --role root|targets|snapshot|timestamp',
  '        replace a role\'s keys with new ones in a new root version (needs the root keys; a root',
  '        rotation is signed by the old and the new root keys).',
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
  '',
  'options:',
  '  --json          machine-readable output',
  '  -h, --help      this help',
].join('\n');

function out(io: CommandIO, json: boolean, value: unknown, text: string): void {
  io.stdout.write((json ? JSON.stringify(value) : text) + '\n');
}

export const command: Command = {
  help: HELP,
  async run(argv, io) {
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
        key: { type: 'string' },
        to: { type: 'string' },
        json: { type: 'boolean' },
      },
    });
    const [sub, dir, ...extra] = positionals;
    const json = values.json ?? false;
    if (!sub || !dir || extra.length > 0) {
      io.stderr.write(`slotflip repo: expected a subcommand and DIR\n\n${HELP}\n`);
      return 2;
    }
    switch (sub) {
      case 'init': {
        const s = await initRepo(dir, {
          ...(values['root-keys'] ? { rootKeys: Number(values['root-keys']) } : {}),
          ...(values['root-threshold'] ? { rootThreshold: Number(values['root-threshold']) } : {}),
        });
        out(io, json, s, `initialised ${dir}: root ${s.keyIds.root.length} keys; metadata in ${dir}/repository/metadata; ship ${dir}/repository/metadata/root.json in the OS image`);
        return 0;
      }
      case 'timestamp': {
        const r = await resignTimestamp(dir);
        out(io, json, r, `timestamp v${r.timestampVersion}${r.snapshotVersion ? `, snapshot v${r.snapshotVersion}` : ''}`);
        return 0;
      }
      case 'rotate': {
        const role = values.role as TopRole | undefined;
        if (!role) throw new SlotflipError('MANIFEST_BAD_ARGUMENT', 'repo rotate needs --role root|targets|snapshot|timestamp');
        const s = await rotateKey(dir, role);
        out(io, json, s, `rotated ${role}: root v${s.rootVersion}, ${role} key ${s.keyIds[role].join(', ')}`);
        return 0;
      }
      case 'time-reset': {
        const at = values.to === undefined ? Date.now() : Date.parse(values.to);
        const s = await publishTimeReset(dir, at);
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
        const v = await setRollout(dir, values.target, rollout);
        out(io, json, { targetsVersion: v, rollout: rollout ?? null }, `targets v${v}: rollout of ${values.target} is now ${rollout ? JSON.stringify(rollout) : 'cleared'}`);
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
          ...(values.key ? { key: await readFile(values.key) } : {}),
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
