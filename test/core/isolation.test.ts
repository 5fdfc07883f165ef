import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError, type PgSemaphore } from '../../src/index.js';
import { databaseUrl, setupSchema } from '../helpers/db.js';
import { errorOf } from '../helpers/core.js';

// acquire's re-read against a concurrent shrink needs a fresh snapshot per statement, which
// only READ COMMITTED gives. The library opens its holding transactions READ COMMITTED
// whatever the session's default; acquire itself refuses any other level (SQLSTATE PSB02),
// and tryAcquire turns that into an InvalidArgumentError.

/** A connection string whose sessions default to REPEATABLE READ. */
function repeatableReadUrl(): string {
  const url = new URL(databaseUrl());
  url.searchParams.set('options', '-c default_transaction_isolation=repeatable\\ read');
  return url.toString();
}

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let rr: PgSemaphore;
let rrPool: pg.Pool;
beforeAll(async () => {
  ctx = await setupSchema('isolation');
  rr = ctx.another({ connection: repeatableReadUrl() });
  rrPool = new pg.Pool({ connectionString: repeatableReadUrl(), max: 2 });
});
afterAll(async () => {
  await rr?.close();
  await rrPool?.end();
  await ctx?.drop();
});

describe('isolation level', () => {
  it('the test connection really defaults to REPEATABLE READ', async () => {
    const { rows } = await rrPool.query('SHOW default_transaction_isolation');
    expect(rows[0].default_transaction_isolation).toBe('repeatable read');
  });

  it('holds on a REPEATABLE READ default still work, READ COMMITTED, and never exceed the cap across a shrink', async () => {
    await ctx.sem.make('iso', 3);
    const holds = await Promise.all([rr.hold('iso'), rr.hold('iso'), rr.hold('iso')]);
    const level = await holds[0]!.tx.execute('SHOW transaction_isolation');
    expect((level as unknown as { rows: { transaction_isolation: string }[] }).rows[0]!.transaction_isolation).toBe('read committed');
    expect(await rr.tryHold('iso')).toBeNull();
    await Promise.all(holds.map((h) => h.release()));
    await ctx.sem.make('iso', 2);
    const two = [await rr.hold('iso'), await rr.hold('iso')];
    expect(await rr.tryHold('iso')).toBeNull();
    expect((await ctx.sem.status('iso')).held).toBe(2);
    await Promise.all(two.map((h) => h.release()));
  });

  it('raw SQL acquire in a REPEATABLE READ transaction raises PSB02, even after a concurrent shrink', async () => {
    await ctx.sem.make('iso-raw', 3);
    const c = await rrPool.connect();
    try {
      await c.query('BEGIN');
      await c.query('SELECT 1'); // the snapshot is taken here
      await ctx.sem.make('iso-raw', 2); // shrinks and commits after it
      const err = await errorOf(() => c.query(`SELECT * FROM "${ctx.schema}".acquire('{iso-raw}', '{1}', NULL, NULL, '{3}')`));
      expect(err).toMatchObject({ code: 'PSB02' });
      expect(String((err as Error).message)).toMatch(/READ COMMITTED/);
    } finally {
      await c.query('ROLLBACK').catch(() => undefined);
      c.release();
    }
    expect((await ctx.sem.status('iso-raw')).held).toBe(0);
  });

  it('tryAcquire in a REPEATABLE READ transaction is an InvalidArgumentError telling to use READ COMMITTED', async () => {
    await ctx.sem.make('iso-tx', 1);
    const c = await rrPool.connect();
    try {
      await c.query('BEGIN');
      const err = await errorOf(() => ctx.sem.tryAcquire(c, 'iso-tx'));
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message).toMatch(/READ COMMITTED.*got "repeatable read"/);
      await c.query('ROLLBACK');
      await c.query('BEGIN ISOLATION LEVEL READ COMMITTED');
      expect(await ctx.sem.tryAcquire(c, 'iso-tx')).toMatchObject({ names: ['iso-tx'] });
    } finally {
      await c.query('ROLLBACK').catch(() => undefined);
      c.release();
    }
  });
});
