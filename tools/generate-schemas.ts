/**
 * Writes the JSON Schemas listed in src/config/json-schemas.ts from the zod schemas.
 *
 *   npx tsx tools/generate-schemas.ts           write every file that changed
 *   npx tsx tools/generate-schemas.ts --check   write nothing; exit 1 if a file is missing or out of date
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PUBLISHED_SCHEMAS, renderJsonSchema } from '../src/config/json-schemas.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const check = process.argv.includes('--check');
let stale = 0;

for (const entry of PUBLISHED_SCHEMAS) {
  const file = resolve(root, entry.file);
  const text = renderJsonSchema(entry);
  const current = await readFile(file, 'utf8').catch(() => undefined);
  if (current === text) {
    console.log(`up to date  ${entry.file}`);
    continue;
  }
  stale++;
  if (check) {
    console.log(`${current === undefined ? 'missing' : 'stale'}  ${entry.file}`);
    continue;
  }
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, text);
  console.log(`wrote       ${entry.file}`);
}

if (check && stale > 0) {
  console.error('run `npx tsx tools/generate-schemas.ts` and commit the result');
  process.exitCode = 1;
}
