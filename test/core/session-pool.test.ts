// Session holding keeps its holding connection (and, while anyone waits, the LISTEN
// connection) checked out of the pool: a pool too small to leave one connection for every
// other statement is refused with a typed error instead of hanging, and the smallest pool
// accepted works while the process holds, waits and asks for status at once.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl, setupSchema, waitFor } from '../helpers/db.js';
import { within } from '../helpers/core.js';
import { InvalidArgumentError, PgSemaphore } from '../../src/index.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
beforeAll(async () => {
  ctx = await setupSchema('sessionpool');
  await ctx.sem.make('a', 3);
  await ctx.sem.make('b', 1);
});
afterAll(async () => {
  await ctx?.drop();
});

function refusal(fn: () => unknown): InvalidArgumentError | undefined {
  try {
    const made = fn() as PgSemaphore;
    void made.close();
    return undefined;
  } catch (err) {
    return err as InvalidArgumentError;
  }
}

describe('session holding and the pool size', () => {
  it('refuses a pool of fewer than 3 connections (2 without LISTEN) with an InvalidArgumentError', async () => {
    for (const max of [1, 2]) {
      const err = refusal(() => new PgSemaphore({ connection: { connectionString: databaseUrl(), max }, schema: ctx.schema, holding: 'session' }));
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect(err!.argument).toBe('connection.max');
      expect(err!.received).toBe(max);
    }
    const given = new pg.Pool({ connectionString: databaseUrl(), max: 2 });
    try {
      expect(refusal(() => new PgSemaphore({ connection: given, schema: ctx.schema, holding: 'session' }))).toBeInstanceOf(InvalidArgumentError);
    } finally {
      await given.end();
    }
    expect(refusal(() => new PgSemaphore({ connection: { connectionString: databaseUrl(), max: 1 }, schema: ctx.schema, holding: 'session', listen: false }))).toBeInstanceOf(
      InvalidArgumentError,
    );
    // accepted: enough connections, or a mode that keeps none checked out
    expect(refusal(() => new PgSemaphore({ connection: { connectionString: databaseUrl(), max: 2 }, schema: ctx.schema, holding: 'session', listen: false }))).toBe(undefined);
    expect(refusal(() => new PgSemaphore({ connection: { connectionString: databaseUrl(), max: 1 }, schema: ctx.schema }))).toBe(undefined);
    expect(refusal(() => new PgSemaphore({ connection: { connectionString: databaseUrl(), max: 1 }, schema: ctx.schema, holding: 'session', disabled: true }))).toBe(undefined);
  });

  it('with the smallest pool accepted, a process that holds and waits can still run other statements', async () => {
    const sem = new PgSemaphore({ connection: { connectionString: databaseUrl(), max: 3 }, schema: ctx.schema, holding: 'session' });
    const other = await ctx.sem.hold('b');
    try {
      const a = await sem.hold('a');
      // waits for b: the LISTEN connection is checked out beside the holding one
      const waiting = sem.hold('b', { wait: { timeout: 20_000 } });
      await waitFor(() => sem.hearsWakeUps, { timeout: 10_000, what: 'the LISTEN connection' });
      expect((await within(sem.status('a'), 5_000, 'status while holding and waiting')).held).toBe(1);
      await other.release();
      const b = await within(waiting, 10_000, 'the wait for b');
      await b.release();
      await a.release();
    } finally {
      await other.release().catch(() => undefined);
      await sem.close();
    }
  });
});
