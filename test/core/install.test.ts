// Installing: concurrent migrate() from many processes, installSql by hand, drift guard.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl, setupSchema } from '../helpers/db.js';
import { killAll, within } from '../helpers/core.js';
import { startChild, type Child } from '../helpers/processes.js';
import { oneFleetAtATime } from '../helpers/heavy.js';
import { PgSemaphore, functionsSql, installSql } from '../../src/index.js';
import { loadMigrations } from '../../src/migrations.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
const children: Child[] = [];
const extraSchemas: string[] = [];
// 10 migrating processes with a pool each: beside a fleet file they ran the shared Postgres out
// of connections ("sorry, too many clients already"), so this file takes the fleet slot too
oneFleetAtATime();
beforeAll(async () => {
  ctx = await setupSchema('install');
});
afterAll(async () => {
  await killAll(children);
  for (const s of extraSchemas) await ctx.admin.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
  await ctx?.drop();
});

/** A schema name derived from this file's, not created yet. */
function freshSchema(suffix: string): string {
  const s = `${ctx.schema}_${suffix}`;
  extraSchemas.push(s);
  return s;
}

async function schemaExists(schema: string): Promise<boolean> {
  const { rows } = await ctx.admin.query(`SELECT 1 FROM pg_namespace WHERE nspname = $1`, [schema]);
  return rows.length === 1;
}

const tags = loadMigrations().map((m) => m.tag);

describe('migrate()', () => {
  it('is safe when 10 processes call it at the same moment on a fresh schema', async () => {
    expect(tags.slice(0, 2)).toEqual(['0000_tables', '0001_functions']);
    const schema = freshSchema('m');
    expect(await schemaExists(schema)).toBe(false);
    for (let i = 0; i < 10; i++) children.push(startChild('core-migrate', { DATABASE_URL: databaseUrl(), SCHEMA: schema }));
    // (ten start-ups at once on two cores: generous, still bounded)
    await within(Promise.all(children.map((c) => c.next((m: { type: string }) => m.type === 'ready', 60_000))), 60_000, 'children ready');
    for (const c of children) c.send({ type: 'go' });
    const reports = await within(
      Promise.all(children.map((c) => c.next<{ type: string; applied?: string[] }>((m) => m.type === 'migrated' || m.type === 'error'))),
      30_000,
      'every child to migrate',
    );
    for (const r of reports) expect(r, JSON.stringify(r)).toMatchObject({ type: 'migrated' });
    const applied = reports.map((r) => r.applied!);
    expect(applied.filter((a) => a.length > 0)).toEqual([tags]);
    expect(applied.filter((a) => a.length === 0)).toHaveLength(9);
    expect(await Promise.all(children.map((c) => within(c.exited, 10_000, 'child exit')))).toEqual(Array(10).fill(0));

    const { rows } = await ctx.admin.query(`SELECT tag FROM "${schema}".__pg_semaphore_migrations ORDER BY tag`);
    expect(rows.map((r) => r.tag)).toEqual(tags);
    // the result works, and migrating again applies nothing
    const sem = new PgSemaphore({ connection: databaseUrl(), schema });
    try {
      expect(await sem.migrate()).toEqual({ applied: [] });
      await sem.make('m', 1);
      expect(await sem.withTickets('m', ({ tickets }) => tickets.length)).toBe(1);
    } finally {
      await sem.close();
    }
  }, 120_000);
});

describe('installSql()', () => {
  it('applied by hand to a fresh schema gives a working install', async () => {
    const schema = freshSchema('h');
    const text = installSql(schema);
    expect(text).not.toContain('"semaphore"');
    await ctx.admin.query(text);
    const sem = new PgSemaphore({ connection: databaseUrl(), schema });
    const other = new PgSemaphore({ connection: databaseUrl(), schema });
    try {
      await sem.make('by-hand', 2);
      const hold = await sem.hold({ name: 'by-hand', tickets: 2 });
      expect((await other.status('by-hand')).held).toBe(2);
      expect(await other.tryHold('by-hand')).toBeNull();
      await hold.release();
      expect(await other.withTickets('by-hand', ({ tickets }) => tickets.length)).toBe(1);
      // the functions part alone re-applies cleanly (CREATE OR REPLACE)
      await ctx.admin.query(installSql(schema, { part: 'functions' }));
      expect((await sem.status('by-hand')).tickets).toBe(2);
    } finally {
      await sem.close();
      await other.close();
    }
  });

  it('the newest functions migration is exactly functionsSql("semaphore") (drift guard: run `npm run generate`)', () => {
    const newest = tags.filter((t) => t.endsWith('_functions')).at(-1);
    expect(newest).toBe('0006_functions');
    const onDisk = readFileSync(new URL(`../../drizzle/${newest}.sql`, import.meta.url), 'utf8');
    expect(onDisk).toBe(functionsSql('semaphore'));
    // the functions part is that migration alone: it installs and upgrades by itself
    expect(installSql('semaphore', { part: 'functions' })).toBe(`-- pg-semaphore ${newest}\n${onDisk.trim()}\n`);
  });
});
