// A schema without pg-semaphore (migrate() forgotten), with the tables but not the functions
// (install path 2 half done), or owned by another migration history (migrate() on a schema
// drizzle-kit installed): every entry point says so with a NotInstalledError, and changes nothing.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl, testSchemaName } from '../helpers/db.js';
import { errorOf } from '../helpers/core.js';
import { NotInstalledError, PgSemaphore, PgSemaphoreError, installSql } from '../../src/index.js';

let admin: pg.Pool;
const schemas: string[] = [];
const sems: PgSemaphore[] = [];
beforeAll(() => {
  admin = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
  admin.on('error', () => undefined);
});
afterAll(async () => {
  for (const sem of sems) await sem.close();
  for (const s of schemas) await admin.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
  await admin.end();
});

function semOn(label: string): { sem: PgSemaphore; schema: string } {
  const schema = testSchemaName(label);
  schemas.push(schema);
  const sem = new PgSemaphore({ connection: databaseUrl(), schema, maxPollInterval: 50 });
  sems.push(sem);
  return { sem, schema };
}

/** Every entry point that talks to the schema, by name. */
function entryPoints(sem: PgSemaphore): Array<[string, () => Promise<unknown>]> {
  const fn = () => 'ran';
  return [
    ['make', () => sem.make('x', 1)],
    ['destroy', () => sem.destroy('x')],
    ['list', () => sem.list()],
    ['status', () => sem.status('x')],
    ['hold', () => sem.hold('x')],
    ['hold with wait', () => sem.hold('x', { wait: 2_000 })],
    ['tryHold', () => sem.tryHold('x')],
    ['withTickets', () => sem.withTickets('x', fn)],
    ['withTickets createWith', () => sem.withTickets('x', fn, { createWith: 2 })],
    ['withMutex', () => sem.withMutex('x', fn)],
    ['withShared', () => sem.withShared('x', fn)],
    ['withExclusive', () => sem.withExclusive('x', fn)],
    [
      'tryAcquire',
      async () => {
        const client = await admin.connect();
        try {
          await client.query('BEGIN');
          return await sem.tryAcquire(client, 'x');
        } finally {
          await client.query('ROLLBACK');
          client.release();
        }
      },
    ],
  ];
}

async function expectNotInstalled(fn: () => Promise<unknown>, what: string, schema: string, problem: NotInstalledError['problem']) {
  const err = await errorOf(fn, what);
  expect(err, `${what}: ${String(err)}`).toBeInstanceOf(NotInstalledError);
  expect(err).toBeInstanceOf(PgSemaphoreError);
  const e = err as NotInstalledError;
  expect(e.name).toBe('NotInstalledError');
  expect(e.schema).toBe(schema);
  expect(e.problem, what).toBe(problem);
  expect(e.message).toContain(`"${schema}"`);
  expect(e.cause, 'the Postgres error is kept as the cause').toMatchObject({ code: e.code });
  return e;
}

async function schemaExists(schema: string): Promise<boolean> {
  const { rows } = await admin.query(`SELECT 1 FROM pg_namespace WHERE nspname = $1`, [schema]);
  return rows.length === 1;
}

describe('migrate() forgotten', () => {
  it('every entry point fails with a NotInstalledError that says to run migrate()', async () => {
    const { sem, schema } = semOn('noinst');
    for (const [what, fn] of entryPoints(sem)) {
      const e = await expectNotInstalled(fn, what, schema, 'missing');
      expect(e.code).toBe('3F000');
      expect(e.message).toContain('await sem.migrate()');
      expect(e.message).toContain(`pg-semaphore migrate --schema ${schema}`);
    }
    expect(sem.openHolds).toBe(0);
    expect(await schemaExists(schema)).toBe(false);
    // and once migrated, the same instance works
    await sem.migrate();
    await sem.make('x', 1);
    expect(await sem.withMutex('x', () => 'ran')).toBe('ran');
  });
});

describe('install path 2 with the tables but not the functions', () => {
  it('every entry point fails with a NotInstalledError that says to add the functions migration', async () => {
    const { sem, schema } = semOn('tblonly');
    await admin.query(installSql(schema, { part: 'tables' }));
    const tablesBefore = await admin.query(`SELECT count(*)::int AS n FROM "${schema}".semaphores`);
    for (const [what, fn] of entryPoints(sem)) {
      const e = await expectNotInstalled(fn, what, schema, 'functions-missing');
      expect(e.code).toBe('42883');
      expect(e.message).toContain(`pg-semaphore sql --part functions --schema ${schema}`);
    }
    expect(sem.openHolds).toBe(0);
    expect((await admin.query(`SELECT count(*)::int AS n FROM "${schema}".semaphores`)).rows).toEqual(tablesBefore.rows);
    // adding the functions completes the install
    await admin.query(installSql(schema, { part: 'functions' }));
    await sem.make('x', 1);
    expect(await sem.withTickets('x', () => 'ran')).toBe('ran');
  });
});

describe('migrate() on a schema another migration history installed', () => {
  it('fails with a NotInstalledError that says to pick one path, and changes nothing', async () => {
    const { sem, schema } = semOn('owned');
    // what a drizzle-kit history of re-exported tables plus the custom functions migration creates
    await admin.query(installSql(schema));
    await sem.make('kept', 3);
    const e = await expectNotInstalled(() => sem.migrate(), 'migrate()', schema, 'owned-elsewhere');
    expect(['42P07', '42710']).toContain(e.code);
    expect(e.message).toMatch(/owned by another migration history/);
    expect(e.message).toMatch(/Pick one path/);
    // rolled back: no migrations table of ours, and the install still works
    const { rows } = await admin.query(`SELECT to_regclass($1) AS t`, [`"${schema}".__pg_semaphore_migrations`]);
    expect(rows[0].t).toBeNull();
    expect((await sem.status('kept')).tickets).toBe(3);
    expect(await sem.withTickets('kept', () => 'ran')).toBe('ran');
  });
});
