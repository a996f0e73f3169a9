/**
 * The checked-in Ajv standalone validators (daemon/config-validate.generated.cjs,
 * manifests/release-validate.generated.cjs) are what test/tools/gen-validators.ts makes from the
 * schemas today: a schema changed without `npm run gen:validators` fails here, naming the file.
 */
import t from 'tap';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { generated, generatedSource, ROOT } from '../tools/gen-validators.js';

for (const g of generated) {
  t.test(`${g.file} is generated from ${g.from}`, async (t) => {
    const onDisk = await readFile(join(ROOT, g.file), 'utf8');
    const fresh = await generatedSource(g);
    t.ok(onDisk === fresh, `${g.file} matches its schema (else run: npm run gen:validators)`);
    t.ok(/^(export const |exports\.)validate/m.test(fresh.split('"use strict";')[1] ?? ''), 'exports a validator');
  });
}
