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
import { REPO_SERVE_HELP, runRepoServe } from './repo-serve.js';

const HELP = [
  'usage: slotflip repo <subcommand> DIR [options]',
  '',
  'Manage a signed (TUF) release repository in DIR. Metadata is written under DIR/repository/metadata/,',
  'payloads under DIR/repository/targets/; serve DIR/repository with `slotflip repo serve DIR` or any static HTTP server or CDN with Range',
  'support (nginx, S3-style object stores); devices\' payloadBaseUrls point at <served URL>/targets/.',
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
  '  publish DIR --broker URL [--prefix P] [--username U] [--ca F] [--cert F] [--key F]',
  '        put the metadata on the broker as retained messages, topic slotflip/v1/meta/<file>',
  '        (password from $SLOTFLIP_BROKER_PASSWORD).',
  REPO_SERVE_HELP,
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
        const r = await publishToBroker(dir, values.broker, {
          ...(values.prefix ? { prefix: values.prefix } : {}),
          ...(values.username ? { username: values.username } : {}),
          ...(io.env['SLOTFLIP_BROKER_PASSWORD'] ? { password: io.env['SLOTFLIP_BROKER_PASSWORD'] } : {}),
          ...(values.ca ? { ca: await readFile(values.ca) } : {}),
          ...(values.cert ? { cert: await readFile(values.cert) } : {}),
          ...(values.key ? { key: await readFile(values.key) } : {}),
        });
        out(io, json, r, `published ${r.published.length} retained messages${r.cleared.length ? `, cleared ${r.cleared.length} stale ones` : ''}`);
        return 0;
      }
      default:
        io.stderr.write(`slotflip repo: unknown subcommand "${sub}"\n\n${HELP}\n`);
        return 2;
    }
  },
};
