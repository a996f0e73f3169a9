/**
 * The MANIFEST_* registry is complete: every code any source file throws or returns is listed in
 * manifests/codes.ts with a meaning, and every listed code has a one-line meaning.
 */
import t from 'tap';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MANIFEST_CODES } from '../../manifests/codes.js';

async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await sources(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

t.test('every MANIFEST_ code used in the sources is registered', async (t) => {
  const root = join(import.meta.dirname, '..', '..');
  const used = new Set<string>();
  for (const dir of ['manifests', 'daemon', 'hal']) {
    for (const f of await sources(join(root, dir))) {
      for (const m of (await readFile(f, 'utf8')).matchAll(/'(MANIFEST_[A-Z_]+)'/g)) used.add(m[1]!);
    }
  }
  t.ok(used.size > 20, `${used.size} codes in use`);
  for (const code of used) t.ok(code in MANIFEST_CODES, `${code} is registered`);
  for (const [code, meaning] of Object.entries(MANIFEST_CODES)) {
    t.match(code, /^MANIFEST_[A-Z_]+$/);
    t.ok(meaning.length > 15 && !meaning.includes('\n'), `${code} has a one-line meaning`);
  }
});
