/**
 * Turns the cached Debian base into slot images of a device running slotflip, installed exactly as
 * systemd/README.md ("What goes where") tells an image builder to:
 *
 *   /usr/bin/node                        the host's Node binary (same Debian release, same glibc)
 *   /usr/lib/slotflip/                   dist/{daemon,hal,manifests}, package.json, production node_modules
 *   /usr/bin/slotflip                    symlink to /usr/lib/slotflip/dist/daemon/cli.js (mode 0755)
 *   /usr/lib/systemd/system/…            slotflip.service, slotflip-health.service, and the board drop-in
 *                                        made from systemd/examples/x86-grub-efi (device paths → /dev/vdaN)
 *   /usr/lib/tmpfiles.d/slotflip.conf, /usr/lib/systemd/system-preset/80-slotflip.preset
 *   /usr/share/slotflip/root.json        the repository's root (trust.shippedRoot)
 *   /etc/slotflip/config.json            grub backend, greenboot convention, as the x86-grub-efi example
 *   /var/lib/slotflip                    mount point of the data partition (p4): state survives slot switches
 *   /boot/efi                            mount point of the ESP (p1): the grubenv the HAL writes
 *
 * Units are enabled with the host's `systemctl --root=STAGING preset`, as an image build would. The
 * journal is forwarded to the serial console so a failed run shows the guest's own logs.
 *
 * Per release only two things differ: /etc/slotflip-release (the version) and the greenboot-style
 * required health check /etc/greenboot/check/required.d/50-application.sh (exit 0, or exit 1 for a
 * release whose application is broken). Nothing in the guest knows it is a test.
 */
import { chmod, copyFile, cp, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { execTool, runChecked, type ToolRunner } from '../../../hal/exec.js';

export const GUEST_DEVICE_ID = 'hil-debian-01';
export const GUEST_HARDWARE = 'slotflip-hil-x86-64';
/** Addresses the guest uses for the host's services (QEMU user networking `guestfwd`, see vm.ts). */
export const GUEST_BROKER = { ip: '10.0.2.100', port: 1883 } as const;
export const GUEST_HTTP = { ip: '10.0.2.101', port: 80 } as const;
export const ESP_GRUBENV = 'EFI/slotflip/grubenv';

export interface StageOptions {
  baseDir: string;
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

/** Production dependencies as paths relative to the project (npm's own view of the tree). */
async function productionModules(projectDir: string, runner: ToolRunner): Promise<string[]> {
  const r = await runChecked(runner, 'HIL_ROOTFS', 'npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: projectDir, maxOutputBytes: 4 << 20 });
  return r.stdout
    .split('\n')
    .filter((l) => l.startsWith(projectDir + '/node_modules/'))
    .map((l) => relative(projectDir, l));
}

/** Copies the base and installs slotflip into it. Release-specific files come later (buildSlotImage). */
export async function stageGuest(opts: StageOptions): Promise<void> {
  const runner = opts.runner ?? execTool;
  const root = opts.dir;
  await rm(root, { recursive: true, force: true });
  // coreutils cp: device nodes (dev/ptmx, dev/null …), ownership, modes and links exactly as debootstrap left them
  await runChecked(runner, 'HIL_ROOTFS', 'cp', ['-a', '--reflink=auto', '--', opts.baseDir, root], { timeoutMs: 5 * 60_000 });
  await rm(join(root, '.slotflip-base-complete'), { force: true });

  // Node and slotflip
  await copyFile(process.execPath, join(root, 'usr/bin/node'));
  await chmod(join(root, 'usr/bin/node'), 0o755);
  const app = join(root, 'usr/lib/slotflip');
  for (const d of ['daemon', 'hal', 'manifests']) await cp(join(opts.projectDir, 'dist', d), join(app, 'dist', d), { recursive: true });
  await copyFile(join(opts.projectDir, 'package.json'), join(app, 'package.json'));
  for (const m of await productionModules(opts.projectDir, runner)) await cp(join(opts.projectDir, m), join(app, m), { recursive: true, verbatimSymlinks: true });
  await chmod(join(app, 'dist/daemon/cli.js'), 0o755);
  await symlink('../lib/slotflip/dist/daemon/cli.js', join(root, 'usr/bin/slotflip'));

  // systemd units, drop-in, tmpfiles, preset: the files in systemd/, unchanged
  const sd = join(opts.projectDir, 'systemd');
  for (const u of ['slotflip.service', 'slotflip-health.service', 'slotflip-trial-failed@.service', 'slotflip-trial-deadline.timer']) await copyFile(join(sd, u), join(root, 'usr/lib/systemd/system', u));
  await put(root, 'usr/lib/slotflip/slotflip-trial-reboot', await readFile(join(sd, 'slotflip-trial-reboot')), 0o755);
  const dropIn = (await readFile(join(sd, 'examples/x86-grub-efi/slotflip.service.d/board.conf'), 'utf8')).replaceAll('/dev/nvme0n1p2', '/dev/vda2').replaceAll('/dev/nvme0n1p3', '/dev/vda3');
  await put(root, 'usr/lib/systemd/system/slotflip.service.d/board.conf', dropIn);
  await put(root, 'usr/lib/tmpfiles.d/slotflip.conf', await readFile(join(sd, 'slotflip.tmpfiles.conf')));
  await put(root, 'usr/lib/systemd/system-preset/80-slotflip.preset', await readFile(join(sd, '80-slotflip.preset')));
  await put(root, 'usr/share/slotflip/root.json', await readFile(opts.rootJson));
  await put(root, 'etc/slotflip/config.json', JSON.stringify(guestConfig(opts), null, 2) + '\n', 0o600);

  // the board: ESP and data partition, network, console
  await mkdir(join(root, 'boot/efi'), { recursive: true });
  await mkdir(join(root, 'var/lib/slotflip'), { recursive: true });
  await put(root, 'etc/fstab', ['/dev/vda1 /boot/efi vfat umask=0077 0 2', '/dev/vda4 /var/lib/slotflip ext4 defaults 0 2', ''].join('\n'));
  await put(root, 'etc/hostname', `${GUEST_DEVICE_ID}\n`);
  await put(root, 'etc/systemd/network/20-wired.network', '[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\n');
  await put(root, 'etc/systemd/journald.conf.d/console.conf', '[Journal]\nForwardToConsole=yes\nTTYPath=/dev/ttyS0\nMaxLevelConsole=info\n');
  await runChecked(runner, 'HIL_ROOTFS', 'systemctl', [`--root=${root}`, 'preset', 'slotflip.service', 'slotflip-health.service', 'slotflip-trial-deadline.timer']);
  await runChecked(runner, 'HIL_ROOTFS', 'systemctl', [`--root=${root}`, 'enable', 'systemd-networkd.service', 'systemd-networkd-wait-online.service']);
}

export interface ReleaseSpec {
  version: string;
  /** false: the release's required application health check fails on every boot. */
  healthy: boolean;
  /** true: in this image slotflip.service's process is SIGKILLed at every start (a drop-in replaces
   * ExecStart= with a shell that kills itself), so the daemon never judges anything. */
  daemonKilled?: boolean;
}

/** The drop-in that makes `daemonKilled` images' daemon die by SIGKILL at every start. */
export const KILLED_DAEMON_DROPIN = 'etc/systemd/system/slotflip.service.d/zz-hil-killed.conf';

/** Pure: the release-specific files. */
export function releaseFiles(spec: ReleaseSpec): Record<string, { content: string; mode: number }> {
  const check = spec.healthy ? '#!/bin/sh\necho "application self-test passed"\nexit 0\n' : '#!/bin/sh\necho "application self-test failed: cannot open /dev/app0" >&2\nexit 1\n';
  return {
    'etc/slotflip-release': { content: `${spec.version}\n`, mode: 0o644 },
    'etc/greenboot/check/required.d/50-application.sh': { content: check, mode: 0o755 },
    // `$$$$` is systemd's escape for the shell's `$$` (its own pid): the process SIGKILLs itself
    ...(spec.daemonKilled ? { [KILLED_DAEMON_DROPIN]: { content: "[Service]\nExecStart=\nExecStart=/bin/sh -c 'echo slotflip-hil: daemon killed; kill -KILL $$$$'\n", mode: 0o644 } } : {}),
  };
}

/** Writes `spec`'s files into the staging tree and builds an ext4 image of it (`mkfs.ext4 -d`, no
 * mount, no root needed for this step). */
export async function buildSlotImage(stagingDir: string, spec: ReleaseSpec, out: string, sizeMiB: number, runner: ToolRunner = execTool): Promise<void> {
  // the staging tree is shared by every image: drop what an earlier release spec added
  await rm(join(stagingDir, KILLED_DAEMON_DROPIN), { force: true });
  for (const [path, f] of Object.entries(releaseFiles(spec))) await put(stagingDir, path, f.content, f.mode);
  await rm(out, { force: true });
  await runChecked(runner, 'HIL_ROOTFS', 'mkfs.ext4', ['-q', '-F', '-L', `slotflip-${spec.version}`, '-E', 'root_owner=0:0', '-d', stagingDir, out, `${sizeMiB}M`], { timeoutMs: 5 * 60_000 });
}
