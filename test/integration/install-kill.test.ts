/**
 * A process killed mid-install (SIGKILL: no cleanup at all) resumes in a new process from the
 * persisted hint, after re-hashing what is on the slot, with a Range request at the next chunk.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { startHttpServer } from '../harness/http-server.js';
import { makePayload, makeSlotFile, sha256File } from '../bench/install-fixtures.js';

const CHILD = fileURLToPath(new URL('../bench/install-child.ts', import.meta.url));
const CHUNK = 64 << 10;
const SIZE = 4 << 20;

interface ChildOutcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  lines: Array<Record<string, unknown>>;
}

/** Runs the installer in a child process; kills it with SIGKILL once `killAt` image bytes are done. */
function runChild(args: string[], killAt?: number): Promise<ChildOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, CHILD, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    const lines: Array<Record<string, unknown>> = [];
    createInterface({ input: child.stdout! }).on('line', (l) => {
      const m = JSON.parse(l) as Record<string, unknown>;
      lines.push(m);
      const p = m.progress as { bytes: number } | undefined;
      if (killAt !== undefined && p && p.bytes >= killAt) child.kill('SIGKILL');
    });
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, lines }));
  });
}

t.test('SIGKILL mid-install, then resume in a new process', async (t) => {
  const dir = t.testdir();
  const p = await makePayload(dir, { size: SIZE, chunkSize: CHUNK, compression: 'zstd' });
  await writeFile(join(dir, 'built.json'), JSON.stringify(p));
  const srv = await startHttpServer({ root: dir, faults: { bytesPerSecond: [500_000] } });
  t.teardown(() => srv.stop());
  const slotPath = join(dir, 'slot');
  await makeSlotFile(slotPath, SIZE);
  const state = join(dir, 'resume.json');
  const args = ['--payload', join(dir, 'built.json'), '--source', srv.url + p.name, '--slot', slotPath, '--state', state, '--progress', '--flush-mib', '1'];

  const first = await runChild(args, 2.5 * (1 << 20));
  t.equal(first.signal, 'SIGKILL', 'the first installer was killed');
  const hint = JSON.parse(await readFile(state, 'utf8')) as { nextChunk: number; complete: boolean };
  t.equal(hint.complete, false);
  t.ok(hint.nextChunk >= 16 && hint.nextChunk < p.payload.chunks.length, `hint persisted at a flush boundary: ${hint.nextChunk}`);
  t.equal(hint.nextChunk % 16, 0, 'hints only at flushes (every 1 MiB = 16 chunks)');

  const second = await runChild(args);
  t.equal(second.code, 0);
  const result = second.lines.at(-1)!.result as { resumedFromChunk: number; transfers: number };
  // the killed process's writes past the last flush are still in the page cache: the re-hash finds them
  t.ok(result.resumedFromChunk >= hint.nextChunk, `resumed at or past the hint (${result.resumedFromChunk} >= ${hint.nextChunk}) after re-hashing the slot`);
  const resumeReq = srv.requests[1]!;
  t.equal(resumeReq.range, `bytes=${p.payload.chunks[result.resumedFromChunk]!.offset}-`);
  t.equal(await sha256File(slotPath), p.payload.sha256);
  t.ok(srv.requests[0]!.bytesSent + resumeReq.bytesSent < p.length + 2 * (1 << 20), 'did not start over');
});
