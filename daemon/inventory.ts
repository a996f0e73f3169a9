/**
 * Inventory for the reported device state: slots and versions, last result, uptime, boot id, free
 * space, OS and kernel. Readings come from systeminformation and /proc, with every path injectable;
 * the slot/version/result facts come from the caller (boot control and the state record), so this
 * module never guesses them. Nothing from the network or a manifest is passed to systeminformation.
 */
import { readFile } from 'node:fs/promises';
import si from 'systeminformation';
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

/** The systeminformation calls used (injectable for tests). */
export interface SystemInfo {
  time(): { uptime: number };
  fsSize(): Promise<Array<{ mount: string; available: number }>>;
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
export async function freeSpaceMiB(path: string, info: Pick<SystemInfo, 'fsSize'> = si): Promise<number | undefined> {
  const mounts = await info.fsSize();
  const m = mounts
    .filter((x) => path === x.mount || path.startsWith(x.mount.endsWith('/') ? x.mount : `${x.mount}/`))
    .sort((a, b) => b.mount.length - a.mount.length)[0];
  return m ? Math.floor(m.available / (1024 * 1024)) : undefined;
}

/**
 * Collects the inventory. Read-only; never throws for a reading that fails (the field is left out),
 * so a report can always be sent.
 */
export async function collectInventory(input: InventoryInput, deps: InventoryDeps = {}): Promise<Inventory> {
  const info = deps.si ?? si;
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
