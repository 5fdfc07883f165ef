// examples/drizzle-migrations: pg-semaphore installed through the app's own drizzle-kit
// history (tables re-exported, functions and semaphores in --custom migrations). The test
// replays the README's workflow on a copy of the example, under a fresh schema name.
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PgSemaphore, installSql } from '../../src/index.js';
import { databaseUrl, testSchemaName } from '../helpers/db.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const EXAMPLE = join(ROOT, 'examples/drizzle-migrations');
const DRIZZLE_KIT = join(ROOT, 'node_modules/.bin/drizzle-kit');
const CUSTOM_HEADER = '-- Custom SQL migration file, put your code below! --';

const sh = promisify(execFile);

/** Runs drizzle-kit in `cwd` (never interactive: stdin is closed). */
async function drizzleKit(cwd: string, args: string[]): Promise<string> {
  const { stdout, stderr } = await sh(DRIZZLE_KIT, args, { cwd, env: { ...process.env, DATABASE_URL: databaseUrl() }, timeout: 30_000 });
  return stdout + stderr;
}

/** Replaces `from` (which must occur) with `to` in a file. */
async function rewrite(file: string, from: string | RegExp, to: string): Promise<void> {
  const text = await readFile(file, 'utf8');
  const out = text.replaceAll(from, to);
  expect(out, `${file} should contain ${String(from)}`).not.toBe(text);
  await writeFile(file, out);
}

/**
 * Copies the example (with or without its generated drizzle/ folder) to
 * `<root>/examples/drizzle-migrations`, beside `<root>/src` and `<root>/node_modules`
 * (symlinks to the repo's), so its `../../src` imports and bare imports resolve unchanged.
 * @returns the copy's folder
 */
async function scaffold(root: string, withMigrations: boolean): Promise<string> {
  const app = join(root, 'examples/drizzle-migrations');
  const migrations = join(EXAMPLE, 'drizzle');
  await cp(EXAMPLE, app, { recursive: true, filter: (src) => withMigrations || (src !== migrations && !src.startsWith(migrations + sep)) });
  await symlink(join(ROOT, 'src'), join(root, 'src'), 'dir');
  await symlink(join(ROOT, 'node_modules'), join(root, 'node_modules'), 'dir');
  await writeFile(join(root, 'package.json'), JSON.stringify({ type: 'module' }));
  return app;
}

/** The names of the functions a piece of SQL creates. */
function functionNames(sql: string, schema: string): string[] {
  return [...sql.matchAll(new RegExp(`CREATE OR REPLACE FUNCTION "${schema}"\\.(\\w+)\\(`, 'g'))].map((m) => m[1]!).sort();
}

describe('the committed example', () => {
  it('holds the four migrations of the README, up to date with schema.ts and the library', async () => {
    const journal = JSON.parse(await readFile(join(EXAMPLE, 'drizzle/meta/_journal.json'), 'utf8')) as { entries: { tag: string }[] };
    expect(journal.entries.map((e) => e.tag)).toEqual(['0000_init', '0001_pg_semaphore_functions', '0002_semaphores', '0003_resize_openai']);
    const file = (tag: string) => readFile(join(EXAMPLE, `drizzle/${tag}.sql`), 'utf8');
    const init = await file('0000_init');
    expect(init).toContain('CREATE SCHEMA "semaphore";');
    for (const table of ['"semaphore"."semaphores"', '"semaphore"."tickets"', '"semaphore"."waiting_jobs"', '"app_reports"']) {
      expect(init).toContain(`CREATE TABLE ${table}`);
    }
    const functions = await file('0001_pg_semaphore_functions');
    expect(functions).not.toContain('--> statement-breakpoint');
    expect(
      functionNames(functions, 'semaphore'),
      'the example lacks functions the library now has: refresh drizzle/0001_pg_semaphore_functions.sql with `npx tsx src/cli.ts sql --part functions`',
    ).toEqual(functionNames(installSql('semaphore', { part: 'functions' }), 'semaphore'));
    expect(await file('0002_semaphores')).toMatch(/^SELECT semaphore\.make\('openai', 5\);$/m);
    expect(await file('0003_resize_openai')).toMatch(/^SELECT semaphore\.make\('openai', 8\);$/m);
  });

  it("has snapshots matching schema.ts and the library's tables (drizzle-kit generate finds nothing to do)", async () => {
    const root = await mkdtemp(join(tmpdir(), 'pg-semaphore-dzmig-'));
    try {
      const app = await scaffold(root, true);
      const out = await drizzleKit(app, ['generate']);
      expect(out).toMatch(/No schema changes/);
      expect(await readdir(join(app, 'drizzle'))).toEqual(await readdir(join(EXAMPLE, 'drizzle')));
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe('the README workflow under a fresh schema', () => {
  const schema = testSchemaName('dzmig');
  // drizzle-kit's migrator creates its migrations schema before the first migration runs
  // `CREATE SCHEMA "<schema>"`, so its table cannot live in the semaphore schema itself.
  const migrationsSchema = `${schema}_drizzle`;
  let root: string;
  let app: string;
  let admin: pg.Pool;

  beforeAll(async () => {
    admin = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
    admin.on('error', () => undefined);
    root = await mkdtemp(join(tmpdir(), 'pg-semaphore-dzmig-'));
    app = await scaffold(root, false);

    await rewrite(join(app, 'schema.ts'), "semaphoreTables('semaphore')", `semaphoreTables('${schema}')`);
    // the app's own table too, so that the test touches no schema but its own
    await rewrite(join(app, 'schema.ts'), "pgTable('app_reports'", "semaphoreSchema.table('app_reports'");
    await rewrite(join(app, 'drizzle.config.ts'), 'dbCredentials:', `migrations: { schema: '${migrationsSchema}', table: '__drizzle_migrations' },\n  dbCredentials:`);
    await rewrite(join(app, 'run.ts'), "const SCHEMA = 'semaphore'", `const SCHEMA = '${schema}'`);
  });

  afterAll(async () => {
    await admin?.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await admin?.query(`DROP SCHEMA IF EXISTS "${migrationsSchema}" CASCADE`);
    await admin?.end();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('generates, migrates and serves tickets without PgSemaphore.migrate()', async () => {
    // (1) tables: CREATE SCHEMA, the library's tables and the app's own
    await drizzleKit(app, ['generate', '--name', 'init']);
    const init = await readFile(join(app, 'drizzle/0000_init.sql'), 'utf8');
    expect(init).toContain(`CREATE SCHEMA "${schema}";`);
    for (const table of ['semaphores', 'tickets', 'waiting_jobs', 'app_reports']) expect(init).toContain(`CREATE TABLE "${schema}"."${table}"`);

    // (2) the library's SQL functions, for this schema, in a custom migration
    await drizzleKit(app, ['generate', '--custom', '--name', 'pg_semaphore_functions']);
    const functionsFile = join(app, 'drizzle/0001_pg_semaphore_functions.sql');
    expect((await readFile(functionsFile, 'utf8')).trim()).toBe(CUSTOM_HEADER);
    await writeFile(functionsFile, `${CUSTOM_HEADER}\n${installSql(schema, { part: 'functions' })}`);

    // (3) the semaphores, and a later resize, copied from the committed example
    for (const name of ['semaphores', 'resize_openai']) {
      const tag = name === 'semaphores' ? '0002_semaphores' : '0003_resize_openai';
      await drizzleKit(app, ['generate', '--custom', '--name', name]);
      const committed = await readFile(join(EXAMPLE, `drizzle/${tag}.sql`), 'utf8');
      expect(committed).toMatch(/\bsemaphore\.make\(/);
      await writeFile(join(app, `drizzle/${tag}.sql`), committed.replace(/\bsemaphore\.make\(/g, `"${schema}".make(`));
    }

    await drizzleKit(app, ['migrate']);
    const { rows } = await admin.query(`SELECT name, tickets, held FROM "${schema}".list()`);
    expect(rows).toEqual([{ name: 'openai', tickets: 8, held: 0 }]);
    const applied = await admin.query(`SELECT count(*)::int AS n FROM "${migrationsSchema}".__drizzle_migrations`);
    expect(applied.rows[0].n).toBe(4);
    // one owner: the library's own migrator never ran here
    const own = await admin.query(`SELECT to_regclass($1) AS t`, [`"${schema}".__pg_semaphore_migrations`]);
    expect(own.rows[0].t).toBeNull();
    await admin.query(`INSERT INTO "${schema}".app_reports (title) VALUES ('works')`);

    const sem = new PgSemaphore({ connection: databaseUrl(), schema });
    try {
      const held = await sem.withTickets('openai', async ({ tickets }) => {
        expect(tickets).toHaveLength(1);
        return (await sem.status('openai')).holders.map((h) => h.label);
      }, { label: 'dzmig-test' });
      expect(held).toEqual(['dzmig-test']);
      expect((await sem.list()).map(({ name, tickets, held: h }) => ({ name, tickets, held: h }))).toEqual([{ name: 'openai', tickets: 8, held: 0 }]);
    } finally {
      await sem.close();
    }

    // run.ts, as a user would run it
    const { stdout } = await sh(process.execPath, ['--import', 'tsx', 'run.ts'], {
      cwd: app,
      env: { ...process.env, DATABASE_URL: databaseUrl() },
      timeout: 30_000,
    });
    expect(stdout).toMatch(/^holding ticket \d+ of "openai"$/m);
    expect(stdout).toMatch(/^openai: 1 of 8 tickets held$/m);
  }, 120_000); // ~13 s on an idle 2-core machine: six drizzle-kit/tsx processes; room for a loaded CI box
});
