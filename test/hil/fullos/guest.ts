/**
 * Turns the cached Debian base into slot images of a device running slotflip, installed as a
 * Debian image build would (systemd/packaging/README.md):
 *
 *   slotflip                             `dpkg --root=STAGING -i` of the .deb that `npm run package:deb
 *                                        -- --with-node` builds (Node 24 in /usr/lib/slotflip/node: Debian
 *                                        12 ships Node 18): /usr/bin/slotflip, /usr/lib/slotflip, every
 *                                        unit, tmpfiles, preset, the example config. No file copied by hand.
 *   /usr/lib/systemd/system/slotflip.service.d/board.conf
 *                                        the board drop-in made from systemd/examples/x86-grub-efi
 *   /usr/share/slotflip/root.json        the repository's root (trust.shippedRoot)
 *   /etc/slotflip/config.json            grub backend, greenboot convention, as the x86-grub-efi example
 *   /data                                mount point of the data partition (p4), the state model of
 *                                        systemd/README.md: /var/lib/slotflip and /var/lib/app are bound
 *                                        from /data/var/lib/…, after slotflip-factory-reset.service
 *   /usr/share/factory/data              the data partition's first-boot contents (a reset re-creates them)
 *   /boot/efi                            mount point of the ESP (p1): the grubenv the HAL writes
 *
 * Units are enabled with the host's `systemctl --root=STAGING preset`, as an image build would. The
 * journal is forwarded to the serial console so a failed run shows the guest's own logs.
 *
 * Per release only a few things differ: /etc/slotflip-release (the version), the greenboot-style
 * required health check /etc/greenboot/check/required.d/50-application.sh (exit 0, or exit 1 for a
 * release whose application is broken), and optionally an application that keeps data on the data
 * partition and the data migration a release ships. Nothing in the guest knows it is a test.
 */
import { chmod, mkdir, readFile, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { execTool, runChecked, type ToolRunner } from '../../../hal/exec.js';

export const GUEST_DEVICE_ID = 'hil-debian-01';
export const GUEST_HARDWARE = 'slotflip-hil-x86-64';
/** Addresses the guest uses for the host's services (QEMU user networking `guestfwd`, see vm.ts). */
export const GUEST_BROKER = { ip: '10.0.2.100', port: 1883 } as const;
export const GUEST_HTTP = { ip: '10.0.2.101', port: 80 } as const;
export const ESP_GRUBENV = 'EFI/slotflip/grubenv';

export interface StageOptions {
  baseDir: string;
  /** the slotflip .deb to install (buildDeb). */
  deb: string;
  /** staging directory (replaced). */
  dir: string;
  /** the repository checkout: dist/ must be built, node_modules installed. */
  projectDir: string;
  /** the TUF root the device ships with. */
  rootJson: string;
  /** health checks' deadline inside the guest, seconds. */
  healthDeadlineSeconds?: number;
  runner?: ToolRunner;
}

/** The daemon's config inside the guest (pure). */
export function guestConfig(opts: { healthDeadlineSeconds?: number } = {}): Record<string, unknown> {
  return {
    deviceId: GUEST_DEVICE_ID,
    hardware: GUEST_HARDWARE,
    channel: 'stable',
    trust: {
      shippedRoot: '/usr/share/slotflip/root.json',
      sources: [{ type: 'mqtt' }],
      payloadBaseUrls: [`http://${GUEST_HTTP.ip}/targets/`],
    },
    board: {
      slots: { A: { path: '/dev/vda2' }, B: { path: '/dev/vda3' } },
      boot: { type: 'grub', convention: 'greenboot', envFile: `/boot/efi/${ESP_GRUBENV}`, cmdline: { key: 'slotflip.slot' } },
      tries: 2,
    },
    broker: { urls: [`mqtt://${GUEST_BROKER.ip}:${GUEST_BROKER.port}`] },
    health: {
      deadlineSeconds: opts.healthDeadlineSeconds ?? 120,
      checks: [{ type: 'systemd-unit', name: 'network', unit: 'systemd-networkd.service' }],
      dropInDirs: { required: '/etc/greenboot/check/required.d' },
    },
    log: { level: 'info' },
  };
}

async function put(root: string, path: string, content: string | Buffer, mode = 0o644): Promise<void> {
  const p = join(root, path);
  await mkdir(dirname(p), { recursive: true });
  await writeFile(p, content);
  await chmod(p, mode);
}

/** Builds the .deb exactly as `npm run package:deb -- --with-node` does (dist/ already built),
 * uncompressed (the lane installs it at once). Returns its path. */
export async function buildDeb(projectDir: string, outDir: string, runner: ToolRunner = execTool): Promise<string> {
  const r = await runChecked(runner, 'HIL_ROOTFS', 'bash', [join(projectDir, 'systemd/packaging/debian/build-deb.sh'), '--no-build', '--with-node', '--compression', 'none', '--out', outDir], { cwd: projectDir, timeoutMs: 15 * 60_000, maxOutputBytes: 4 << 20 });
  const deb = r.stdout.trim().split('\n').pop() ?? '';
  if (!deb.endsWith('.deb')) throw new Error(`build-deb printed no .deb path: ${r.stdout.slice(-500)}`);
  return deb;
}

/** The data partition's first-boot contents (also what a factory reset re-creates). */
export const FACTORY_DATA = 'usr/share/factory/data';

/** Copies the base and installs slotflip into it. Release-specific files come later (buildSlotImage). */
export async function stageGuest(opts: StageOptions): Promise<void> {
  const runner = opts.runner ?? execTool;
  const root = opts.dir;
  await rm(root, { recursive: true, force: true });
  // coreutils cp: device nodes (dev/ptmx, dev/null …), ownership, modes and links exactly as debootstrap left them.
  // The base's real path: `cp -a` copies a symlinked base as the link, and everything below would
  // then write into the shared cached base.
  await runChecked(runner, 'HIL_ROOTFS', 'cp', ['-a', '--reflink=auto', '--', await realpath(opts.baseDir), root], { timeoutMs: 5 * 60_000 });
  await rm(join(root, '.slotflip-base-complete'), { force: true });

  // slotflip from its package, as an image build installs it (no maintainer scripts to run)
  await runChecked(runner, 'HIL_ROOTFS', 'dpkg', [`--root=${root}`, '-i', opts.deb], { timeoutMs: 5 * 60_000 });
  const sd = join(opts.projectDir, 'systemd');
  const dropIn = (await readFile(join(sd, 'examples/x86-grub-efi/slotflip.service.d/board.conf'), 'utf8')).replaceAll('/dev/nvme0n1p2', '/dev/vda2').replaceAll('/dev/nvme0n1p3', '/dev/vda3');
  await put(root, 'usr/lib/systemd/system/slotflip.service.d/board.conf', dropIn);
  await put(root, 'usr/share/slotflip/root.json', await readFile(opts.rootJson));
  await put(root, 'etc/slotflip/config.json', JSON.stringify(guestConfig(opts), null, 2) + '\n', 0o600);

  // the board: ESP and data partition, network, console
  await mkdir(join(root, 'boot/efi'), { recursive: true });
  for (const d of ['data', 'var/lib/slotflip', 'var/lib/app', `${FACTORY_DATA}/var/lib/slotflip`]) await mkdir(join(root, d), { recursive: true });
  await put(root, `${FACTORY_DATA}/var/lib/app/README`, 'application data (factory default)\n');
  // the data partition, and the parts of /var bound from it once a pending factory reset is done
  const bind = (what: string) => `/data${what} ${what} none bind,x-systemd.requires-mounts-for=/data,x-systemd.after=slotflip-factory-reset.service 0 0`;
  await put(root, 'etc/fstab', ['/dev/vda1 /boot/efi vfat umask=0077 0 2', '/dev/vda4 /data ext4 defaults 0 2', bind('/var/lib/slotflip'), bind('/var/lib/app'), ''].join('\n'));
  await put(root, 'etc/hostname', `${GUEST_DEVICE_ID}\n`);
  await put(root, 'etc/systemd/network/20-wired.network', '[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\n');
  await put(root, 'etc/systemd/journald.conf.d/console.conf', '[Journal]\nForwardToConsole=yes\nTTYPath=/dev/ttyS0\nMaxLevelConsole=info\n');
  await runChecked(runner, 'HIL_ROOTFS', 'systemctl', [`--root=${root}`, 'preset', 'slotflip.service', 'slotflip-health.service', 'slotflip-trial-deadline.timer', 'slotflip-factory-reset.service', 'slotflip-migration-settle.service']);
  await runChecked(runner, 'HIL_ROOTFS', 'systemctl', [`--root=${root}`, 'enable', 'systemd-networkd.service', 'systemd-networkd-wait-online.service']);
}

export interface ReleaseSpec {
  version: string;
  /** false: the release's required application health check fails on every boot. */
  healthy: boolean;
  /** true: in this image slotflip.service's process is SIGKILLed at every start (a drop-in replaces
   * ExecStart= with a shell that kills itself), so the daemon never judges anything. */
  daemonKilled?: boolean;
  /** true: in this image the first start of slotflip.service in each boot fails (an ExecStartPre=
   * that exits 1 once per boot id) and systemd restarts it only after DAEMON_RESTART_SEC: the daemon
   * sits in `activating (auto-restart)` while slotflip-health.service gives its verdict. */
  daemonRestartsLate?: boolean;
  /** true: the image runs the application (hil-app.service): at every boot it appends the version
   * to /var/lib/app/boots and creates /var/lib/app/db ("schema 1 (created by V)") if absent. */
  app?: boolean;
  /** true: the image ships the data migration MIGRATION_PATH (schema 1 → 2 of /var/lib/app/db); the
   * release names it (custom.migration). */
  migration?: boolean;
}

/** The migration an image with `migration: true` ships, and what its release names. */
export const MIGRATION_PATH = '/usr/lib/hil-app/migrate-2';
export const RELEASE_MIGRATION = { path: MIGRATION_PATH, snapshot: ['var/lib/app'] };

const APP_UNIT = 'usr/lib/systemd/system/hil-app.service';
const APP_WANTS = 'etc/systemd/system/multi-user.target.wants/hil-app.service';
const APP_START = `#!/bin/sh
v=$(cat /etc/slotflip-release)
echo "$v" >> /var/lib/app/boots
test -e /var/lib/app/db || echo "schema 1 (created by $v)" > /var/lib/app/db
sync
echo "hil-app: $v runs on db $(cat /var/lib/app/db)"
`;
const MIGRATE = `#!/bin/sh
db="$SLOTFLIP_DATA_DIR/var/lib/app/db"
case "$(cat "$db")" in "schema 1"*) ;; *) echo "unknown data: $(cat "$db")"; exit 3 ;; esac
echo "schema 2 (migrated by $SLOTFLIP_RELEASE_ID)" > "$db.new" && mv "$db.new" "$db" || exit 1
logger -t hil-migrate "migrated $db to schema 2"
echo migrated
`;

/** The drop-in that makes `daemonKilled` images' daemon die by SIGKILL at every start. */
export const KILLED_DAEMON_DROPIN = 'etc/systemd/system/slotflip.service.d/zz-hil-killed.conf';

/** `daemonRestartsLate`: the drop-in, its ExecStartPre= script, and the restart delay (longer than a
 * loaded TCG boot takes to reach slotflip-health's verdict and the guard's decision on it). */
export const LATE_RESTART_DROPIN = 'etc/systemd/system/slotflip.service.d/zz-hil-late-restart.conf';
export const LATE_RESTART_SCRIPT = 'usr/lib/slotflip-hil/first-start-fails';
export const DAEMON_RESTART_SEC = 240;
const FIRST_START_FAILS = `#!/bin/sh
# slotflip-hil: the first start of slotflip.service in each boot fails (the unit then waits
# RestartSec= in activating/auto-restart); later starts go on. Keyed by the kernel's boot id, kept in
# the daemon's state directory (writable in its sandbox).
b=$(cat /proc/sys/kernel/random/boot_id)
f=/var/lib/slotflip/hil-first-start
if [ "$(cat "$f" 2>/dev/null)" != "$b" ]; then
  echo "$b" > "$f"
  echo "slotflip-hil: first start of this boot fails; restart in ${DAEMON_RESTART_SEC} s"
  exit 1
fi
echo "slotflip-hil: restarted"
`;

/** Pure: the release-specific files. */
export function releaseFiles(spec: ReleaseSpec): Record<string, { content: string; mode: number }> {
  const check = spec.healthy ? '#!/bin/sh\necho "application self-test passed"\nexit 0\n' : '#!/bin/sh\necho "application self-test failed: cannot open /dev/app0" >&2\nexit 1\n';
  return {
    'etc/slotflip-release': { content: `${spec.version}\n`, mode: 0o644 },
    'etc/greenboot/check/required.d/50-application.sh': { content: check, mode: 0o755 },
    // `$$$$` is systemd's escape for the shell's `$$` (its own pid): the process SIGKILLs itself
    ...(spec.daemonKilled ? { [KILLED_DAEMON_DROPIN]: { content: "[Service]\nExecStart=\nExecStart=/bin/sh -c 'echo slotflip-hil: daemon killed; kill -KILL $$$$'\n", mode: 0o644 } } : {}),
    ...(spec.daemonRestartsLate
      ? {
          [LATE_RESTART_SCRIPT]: { content: FIRST_START_FAILS, mode: 0o755 },
          [LATE_RESTART_DROPIN]: { content: `[Service]\nExecStartPre=/${LATE_RESTART_SCRIPT}\nRestartSec=${DAEMON_RESTART_SEC}s\n`, mode: 0o644 },
        }
      : {}),
    ...(spec.app
      ? {
          'usr/lib/hil-app/start': { content: APP_START, mode: 0o755 },
          [APP_UNIT]: { content: '[Unit]\nDescription=HIL application (data in /var/lib/app)\nRequiresMountsFor=/var/lib/app\nAfter=slotflip-migration-settle.service\n\n[Service]\nType=oneshot\nExecStart=/usr/lib/hil-app/start\n\n[Install]\nWantedBy=multi-user.target\n', mode: 0o644 },
        }
      : {}),
    ...(spec.migration ? { [MIGRATION_PATH.slice(1)]: { content: MIGRATE, mode: 0o755 } } : {}),
  };
}

/** Writes `spec`'s files into the staging tree and builds an ext4 image of it (`mkfs.ext4 -d`, no
 * mount, no root needed for this step). */
export async function buildSlotImage(stagingDir: string, spec: ReleaseSpec, out: string, sizeMiB: number, runner: ToolRunner = execTool): Promise<void> {
  // the staging tree is shared by every image: drop what an earlier release spec added
  for (const p of [KILLED_DAEMON_DROPIN, LATE_RESTART_DROPIN, dirname(LATE_RESTART_SCRIPT), 'usr/lib/hil-app', APP_UNIT, APP_WANTS]) await rm(join(stagingDir, p), { recursive: true, force: true });
  for (const [path, f] of Object.entries(releaseFiles(spec))) await put(stagingDir, path, f.content, f.mode);
  // enabled as `systemctl enable` would (WantedBy=multi-user.target)
  if (spec.app) {
    await mkdir(dirname(join(stagingDir, APP_WANTS)), { recursive: true });
    await symlink(`/${APP_UNIT}`, join(stagingDir, APP_WANTS));
  }
  await rm(out, { force: true });
  await runChecked(runner, 'HIL_ROOTFS', 'mkfs.ext4', ['-q', '-F', '-L', `slotflip-${spec.version}`, '-E', 'root_owner=0:0', '-d', stagingDir, out, `${sizeMiB}M`], { timeoutMs: 5 * 60_000 });
}
