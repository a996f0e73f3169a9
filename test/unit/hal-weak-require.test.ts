// hal/lazy.ts weakRequire: a module it loaded is garbage once its caller lets go of it, also when
// it was the first to load a dependency (Node >= 22 keeps a module's first requirer as the child's
// parent: ajv's runtime helpers held the generated config validator for good), and a later call loads
// a working copy again. Run in a child with --expose-gc against the built module.
import t from 'tap';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT, requireBuilt } from '../e2e/harness.js';

requireBuilt();

const PROBE = `
import { createRequire } from 'node:module';
const { weakRequire } = await import(process.argv[2]);
const dir = process.argv[3];
const tick = () => new Promise((r) => setImmediate(r));
// a WeakRef keeps its target until the current job ends: collect after a turn of the event loop
const collected = async (ref) => { await tick(); gc(); await tick(); gc(); return ref.deref() === undefined; };
const get = weakRequire(dir + '/validator.cjs');
let first = get();
const sum = first.check(2);
const ref = new WeakRef(first);
first = undefined;
const gone = await collected(ref);
const again = get().check(2);
// control: the same module kept by require's own cache stays (the probe can see retention)
let kept = createRequire(import.meta.url)(dir + '/plain.cjs');
const keptRef = new WeakRef(kept);
kept = undefined;
const stays = !(await collected(keptRef));
console.log(JSON.stringify({ sum, gone, again, stays }));
`;

t.test('a weakly required module that loaded its own dependency is collected, and loads again', async (t) => {
  const dir = t.testdir({
    'helper.cjs': 'module.exports = (x) => x * 21;',
    'validator.cjs': "const helper = require('./helper.cjs'); module.exports = { check: (x) => helper(x), table: new Array(10000).fill('v') };",
    'plain.cjs': "module.exports = { table: new Array(10000).fill('p') };",
  });
  await writeFile(join(dir, 'probe.mjs'), PROBE);
  const out = await new Promise<string>((resolve, reject) => execFile(process.execPath, ['--expose-gc', join(dir, 'probe.mjs'), pathToFileURL(join(ROOT, 'dist/hal/lazy.js')).href, dir], { timeout: 60_000 }, (e, stdout, stderr) => (e ? reject(new Error(`${e.message}\n${stderr}`)) : resolve(String(stdout)))));
  t.same(JSON.parse(out), { sum: 42, gone: true, again: 42, stays: true }, 'collected once let go (its first-loaded dependency does not hold it), a working copy on the next call; a cached module stays');
});
