// Writes the library's newest functions migration (the last `*_functions` entry of
// drizzle/meta/_journal.json) from src/functions-sql.ts. Run by `npm run generate`.
//
// Every functions migration holds the complete set of functions, written so that it upgrades
// any older install; older functions migrations are history and never change (installs that
// applied them have recorded their tags). So after a release, before changing
// src/functions-sql.ts, start a new one:
//   npx drizzle-kit generate --custom --name functions && npm run generate
import { readFileSync, writeFileSync } from 'node:fs';
import { functionsSql } from '../src/functions-sql.js';
import { latestFunctionsTag } from '../src/migrations.js';

const drizzle = new URL('../drizzle/', import.meta.url);
const journal = JSON.parse(readFileSync(new URL('meta/_journal.json', drizzle), 'utf8')) as { entries: { tag: string }[] };
const tag = latestFunctionsTag(journal.entries.map((e) => e.tag));
writeFileSync(new URL(`${tag}.sql`, drizzle), functionsSql('semaphore'));
console.log(`wrote drizzle/${tag}.sql`);
