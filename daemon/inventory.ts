/**
 * Inventory for the reported device state: slots and versions, last result, uptime, boot id, free
 * space, OS and kernel. Readings come from the kernel (/proc, statfs, node:os) and /etc/os-release,
 * with every path injectable; the slot/version/result facts come from the caller (boot control and
 * the state record), so this module never guesses them.
 *
 * Trade-off: the daemon collects this after every cycle, so it reads files and makes syscalls only;
 * systeminformation (which spawned `cat`, `df` and UUID probes per call and kept ~8 MiB of code
 * resident in the daemon) is no longer used here (issue 16, bench:memory). The fields keep its
 * meaning: `distro`/`release` as it derives them from os-release, `kernel` = uname -r, `arch`.
 */
import { readFile, statfs } from 'node:fs/promises';
import { arch, release as kernelRelease, uptime } from 'node:os';
import type { SlotName, SlotBootState } from '../hal/boot-control.js';

export interface SlotInventory {
  /** version installed in this slot, when known (from the state record). */
  version?: string;
  /** bootloader view of the slot. */
  boot?: SlotBootState;
}

/** A type alias (not an interface) so it is assignable to `Record<string, unknown>` state payloads. */
export type Inventory = {
  deviceId: string;
  hardware?: string;
  bootedSlot?: SlotName;
  slots: Partial<Record<SlotName, SlotInventory>>;
  uptimeSeconds: number;
  bootId?: string;
  freeSpaceMiB?: number;
  os?: { distro: string; release: string; kernel: string; arch: string };
  collectedAtMs: number;
};

export interface InventoryInput {
  deviceId: string;
  hardware?: string;
  bootedSlot?: SlotName;
  slots?: Partial<Record<SlotName, SlotInventory>>;
}

/** The readings used (injectable for tests); `builtinSystemInfo()` is the real one. */
export interface SystemInfo {
  time(): { uptime: number };
  /** mounted filesystems and their free bytes; `forPath` (a hint) lets an implementation measure
   * only the mounts that can hold that path. */
  fsSize(forPath?: string): Promise<Array<{ mount: string; available: number }>>;
  osInfo(): Promise<{ distro: string; release: string; kernel: string; arch: string }>;
}

export interface InventoryDeps {
  /** default /proc/sys/kernel/random/boot_id */
  bootIdPath?: string;
  /** free space is measured on the filesystem holding this path (the state directory). */
  dataPath?: string;
  si?: SystemInfo;
  now?: () => number;
}

const BOOT_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Reads the current boot id; undefined when the file is missing or not a UUID. */
export async function readBootId(path = '/proc/sys/kernel/random/boot_id'): Promise<string | undefined> {
  try {
    const id = (await readFile(path, 'utf8')).trim();
    return BOOT_ID.test(id) ? id : undefined;
  } catch {
    return undefined;
  }
}

/** Free MiB on the filesystem that holds `path` (longest matching mount point). */
export async function freeSpaceMiB(path: string, info: Pick<SystemInfo, 'fsSize'> = builtinSystemInfo()): Promise<number | undefined> {
  const mounts = await info.fsSize(path);
  const m = mounts
    .filter((x) => path === x.mount || path.startsWith(x.mount.endsWith('/') ? x.mount : `${x.mount}/`))
    .sort((a, b) => b.mount.length - a.mount.length)[0];
  return m ? Math.floor(m.available / (1024 * 1024)) : undefined;
}

/** Mount points from /proc/self/mounts (octal escapes such as \\040 decoded). */
async function mountPoints(mountsPath: string): Promise<string[]> {
  const text = await readFile(mountsPath, 'utf8');
  return text.split('\n').map((l) => l.split(' ')[1]).filter((m): m is string => !!m).map((m) => m.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
}

/** `/etc/os-release` (else `/usr/lib/os-release`) as KEY → unquoted value. */
async function osRelease(paths: string[]): Promise<Record<string, string>> {
  for (const p of paths) {
    let text: string;
    try {
      text = await readFile(p, 'utf8');
    } catch {
      continue;
    }
    const out: Record<string, string> = {};
    for (const line of text.split('\n')) {
      const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
      if (m) out[m[1]!] = m[2]!.replace(/^(["'])(.*)\1$/, '$2');
    }
    return out;
  }
  throw new Error(`none of ${paths.join(', ')} is readable`);
}

/**
 * Readings from the kernel and os-release without spawning anything. `fsSize(path)` measures (statfs)
 * only the mounts that can hold `path` (a hung network mount elsewhere is never touched); without a
 * path, every mount. `osInfo` derives distro and release as systeminformation did: distro = NAME,
 * release = PRETTY_NAME after the distro name (else VERSION, else VERSION_ID) without "(codename)".
 */
export function builtinSystemInfo(o: { mountsPath?: string; osReleasePaths?: string[] } = {}): SystemInfo {
  return {
    time: () => ({ uptime: uptime() }),
    async fsSize(forPath) {
      const mounts = (await mountPoints(o.mountsPath ?? '/proc/self/mounts'))
        .filter((m) => forPath === undefined || forPath === m || forPath.startsWith(m.endsWith('/') ? m : `${m}/`));
      const out: Array<{ mount: string; available: number }> = [];
      for (const mount of new Set(mounts)) {
        try {
          const s = await statfs(mount);
          out.push({ mount, available: Number(s.bavail) * Number(s.bsize) });
        } catch {
          /* gone or not ours to read: left out */
        }
      }
      return out;
    },
    async osInfo() {
      const r = await osRelease(o.osReleasePaths ?? ['/etc/os-release', '/usr/lib/os-release']);
      const distro = r.NAME ?? r.ID ?? 'unknown';
      let release = r.VERSION ?? '';
      const pretty = r.PRETTY_NAME ?? '';
      if (pretty.startsWith(`${distro} `)) release = pretty.slice(distro.length + 1).trim();
      if (release.includes('(')) release = release.split('(')[0]!.trim();
      return { distro, release: release || r.VERSION_ID || 'unknown', kernel: kernelRelease(), arch: arch() };
    },
  };
}

/**
 * Collects the inventory. Read-only; never throws for a reading that fails (the field is left out),
 * so a report can always be sent.
 */
export async function collectInventory(input: InventoryInput, deps: InventoryDeps = {}): Promise<Inventory> {
  const info = deps.si ?? builtinSystemInfo();
  const [bootId, free, os] = await Promise.all([
    readBootId(deps.bootIdPath),
    freeSpaceMiB(deps.dataPath ?? '/', info).catch(() => undefined),
    info.osInfo().then((o) => ({ distro: o.distro, release: o.release, kernel: o.kernel, arch: o.arch })).catch(() => undefined),
  ]);
  return {
    deviceId: input.deviceId,
    ...(input.hardware ? { hardware: input.hardware } : {}),
    ...(input.bootedSlot ? { bootedSlot: input.bootedSlot } : {}),
    slots: input.slots ?? {},
    uptimeSeconds: Math.floor(info.time().uptime),
    ...(bootId ? { bootId } : {}),
    ...(free === undefined ? {} : { freeSpaceMiB: free }),
    ...(os ? { os } : {}),
    collectedAtMs: (deps.now ?? Date.now)(),
  };
}
