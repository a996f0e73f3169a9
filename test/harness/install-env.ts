/**
 * Shared set-up for the installer's HTTP tests: a payload built from a generated image, the real
 * HTTP harness serving it (with fault knobs), a file slot pre-filled with a pattern, and an
 * `install()` bound to them with fast retries.
 */
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { installPayload, type InstallOptions, type InstallResult } from '../../daemon/install/index.js';
import { startHttpServer, type HttpFaults, type HttpServerHandle } from './http-server.js';
import { createPathSlot } from '../bench/path-slot.js';
import { makePayload, makeSlotFile, type PayloadFixture } from '../bench/install-fixtures.js';
import type { Compression } from '../../manifests/types.js';

export const CHUNK = 64 << 10;
export const SIZE = (2 << 20) + 12345; // 33 chunks, the last one short
export const PATTERN = 0xa5;

export interface Env {
  dir: string;
  p: PayloadFixture;
  srv: HttpServerHandle;
  slotPath: string;
  install(extra?: Partial<InstallOptions>): Promise<InstallResult>;
  slotMatches(): Promise<boolean>;
}

/** the part of tap's Test that setup needs */
export interface TestLike {
  testdir(): string;
  teardown(fn: () => unknown): void;
}

/** An HTTP-served payload and a slot file. `format` 1 (default): the chunk list without per-frame
 * `packedSha256`, so the chunk hashes (and, when a test passes `targetSha256`, the payload target's
 * own hash) are what catch a changed byte; 2: every chunk carries its frame's `packedSha256`, as
 * `release add` writes by default (then a changed frame is INSTALL_PACKED_HASH_MISMATCH first). */
export async function setup(t: TestLike, compression: Compression = 'zstd', faults: HttpFaults = {}, chunkSize = CHUNK, format: 1 | 2 = 1): Promise<Env> {
  const dir = t.testdir();
  const built = await makePayload(dir, { size: SIZE, chunkSize, compression });
  const p: PayloadFixture = format === 2 ? built : { ...built, payload: { ...built.payload, chunks: built.payload.chunks.map(({ packedSha256: _, ...c }) => c) } };
  const srv = await startHttpServer({ root: dir, faults });
  t.teardown(() => srv.stop());
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE + 4096);
  return {
    dir,
    p,
    srv,
    slotPath,
    install: (extra = {}) =>
      installPayload({
        payload: p.payload,
        length: p.length,
        source: { urls: [srv.url + p.name] },
        slot: createPathSlot('B', slotPath),
        resumeStatePath: join(dir, 'resume.json'),
        retry: { baseDelayMs: 1, maxDelayMs: 5, maxAttempts: 4 },
        watchdog: { stallTimeoutMs: 5000 },
        ...extra,
      }),
    async slotMatches() {
      const [slot, img] = await Promise.all([readFile(slotPath), readFile(p.image)]);
      return slot.subarray(0, SIZE).equals(img) && slot.subarray(SIZE).every((b) => b === PATTERN);
    },
  };
}
