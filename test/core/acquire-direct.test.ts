// One ticket of one semaphore without the SQL function (issue 11, eleventh round): once the
// function has answered a try of an instance, hold() takes such a ticket with two plain
// statements (find and lock, then a re-read with a snapshot of its own). These tests warm an
// instance up first and then check that the two statements do what acquire()'s fast path did:
// the label, the idle timeout and the held-tickets setting; missing, createWith and busy;
// the search from the last ticket with its wrap-around; and a ticket deleted by a concurrent
// shrink between the find and the lock.
import pg from 'pg';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PgSemaphore } from '../../src/index.js';
import { databaseUrl, setupSchema, waitFor } from '../helpers/db.js';
import { gatedLockShim } from '../helpers/core.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let sem: PgSemaphore;
beforeAll(async () => {
  ctx = await setupSchema('direct');
  sem = ctx.another({ connection: { connectionString: databaseUrl(), max: 3 }, livenessTimeout: 7_000 });
  // the instance's first try goes through the SQL function; from the second on, it does not
  await ctx.sem.make('warm', 1);
  await (await sem.hold('warm')).release();
});
afterAll(async () => {
  await sem?.close();
  await ctx?.drop();
});

/** The statements prepared on the hold's connection that are the direct acquire's find and the function call. */
async function acquireTexts(hold: { tx: { execute(q: unknown): Promise<unknown> } }): Promise<{ find: number; fn: number }> {
  const { rows } = (await hold.tx.execute(sql`SELECT statement FROM pg_prepared_statements`)) as { rows: Array<{ statement: string }> };
  return {
    find: rows.filter((r) => r.statement.startsWith('SELECT m.id, c.id AS ticket')).length,
    fn: rows.filter((r) => /\.acquire\(/.test(r.statement)).length,
  };
}

describe('one ticket of one semaphore, without the SQL function', () => {
  it('sets the label, the idle timeout and the held-tickets setting, as acquire() does', async () => {
    await ctx.sem.make('d-settings', 2);
    const hold = await sem.hold('d-settings', { label: 'direct-job' });
    try {
      expect(await acquireTexts(hold)).toMatchObject({ find: 1 });
      expect((await ctx.sem.status('d-settings')).holders.map((h) => h.label)).toEqual(['direct-job']);
      const { rows } = (await hold.tx.execute(sql`SELECT current_setting('idle_in_transaction_session_timeout') AS t`)) as { rows: Array<{ t: string }> };
      expect(rows[0]!.t).toBe('7s');
      // the held-tickets setting: an acquire inside the hold's own transaction takes the other
      // ticket, not the one this transaction holds already (advisory locks are re-entrant)
      const nested = await sem.tryAcquire(hold.tx, 'd-settings');
      expect(nested?.tickets).toEqual([{ name: 'd-settings', ticket: 3 - hold.tickets[0]!.ticket }]);
      expect(await sem.tryAcquire(hold.tx, 'd-settings')).toBeNull();
    } finally {
      await hold.release();
    }
    expect((await ctx.sem.status('d-settings')).held).toBe(0);
  });

  it('a missing semaphore: UnknownSemaphoreError, or made with createWith and held', async () => {
    await expect(sem.hold('d-nowhere')).rejects.toMatchObject({ name: 'UnknownSemaphoreError', names: ['d-nowhere'] });
    const hold = await sem.hold('d-made', { createWith: 2 });
    try {
      expect(hold.tickets).toEqual([{ name: 'd-made', ticket: 1 }]);
      expect(await acquireTexts(hold)).toMatchObject({ find: 1 });
      expect((await ctx.sem.status('d-made')).tickets).toBe(2);
    } finally {
      await hold.release();
    }
  });

  it('busy: SemaphoreBusyError naming it, tryHold null with onBusy, and nothing left held', async () => {
    await ctx.sem.make('d-busy', 1);
    const holder = await ctx.sem.hold('d-busy');
    try {
      await expect(sem.hold('d-busy')).rejects.toMatchObject({ name: 'SemaphoreBusyError', names: ['d-busy'] });
      const short: string[][] = [];
      expect(await sem.tryHold('d-busy', { onBusy: (names) => void short.push([...names]) })).toBeNull();
      expect(short).toEqual([['d-busy']]);
      expect((await ctx.sem.status('d-busy')).holders).toHaveLength(1);
    } finally {
      await holder.release();
    }
    const hold = await sem.hold('d-busy');
    expect(hold.tickets).toEqual([{ name: 'd-busy', ticket: 1 }]);
    await hold.release();
    // a paused semaphore (no tickets at all) is busy too, not missing
    await ctx.sem.make('d-paused', 0);
    const paused: string[][] = [];
    expect(await sem.tryHold('d-paused', { onBusy: (names) => void paused.push([...names]) })).toBeNull();
    expect(paused).toEqual([['d-paused']]);
  });

  it('starts at the ticket it returned last and wraps around to the lower ones', async () => {
    await ctx.sem.make('d-wrap', 3);
    const others = [await ctx.sem.hold('d-wrap'), await ctx.sem.hold('d-wrap')]; // tickets 1 and 2
    const third = await sem.hold('d-wrap');
    expect(third.tickets[0]!.ticket).toBe(3);
    await third.release();
    // 3 is where the next search starts: it is free again, so it is taken again
    const again = await sem.hold('d-wrap');
    expect(again.tickets[0]!.ticket).toBe(3);
    await others[0]!.release(); // ticket 1 free, 3 held by `again`: the search wraps around
    const wrapped = await sem.hold('d-wrap');
    expect(wrapped.tickets[0]!.ticket).toBe(1);
    expect(await sem.tryHold('d-wrap')).toBeNull();
    for (const h of [again, wrapped, others[1]!]) await h.release();
    expect((await ctx.sem.status('d-wrap')).held).toBe(0);
  });
});

describe('a ticket deleted by a concurrent shrink between the find and its lock', () => {
  // Provoked as in acquire-vanished.test.ts: the instance's connections put a schema of the
  // test before pg_catalog on their search_path, whose pg_try_advisory_xact_lock waits on a
  // gate (held by the test) before trying the lock of the ticket being deleted. The find has
  // its snapshot by then; the shrink commits while it waits.
  it('answers busy and holds nothing; without the re-read it would hold a ticket the semaphore no longer has', async () => {
    const s = ctx.schema;
    await ctx.sem.make('d-vanish', 3);
    const ticket3 = (
      await ctx.admin.query(`SELECT t.id FROM "${s}".tickets t JOIN "${s}".semaphores m ON m.id = t.semaphore_id WHERE m.name = 'd-vanish' AND t.no = 3`)
    ).rows[0].id as number;
    const shim = await gatedLockShim(ctx.admin, s, ticket3, 'pg_try_advisory_xact_lock');
    const gate = new pg.Client({ connectionString: databaseUrl() });
    const shimmed = ctx.another({ connection: { connectionString: databaseUrl(), max: 1, options: shim.searchPath }, applicationName: 'direct-shimmed' });
    try {
      await gate.connect();
      // warm up (the function answers once), then tickets 1 and 2 taken elsewhere: the next
      // search meets ticket 3 first
      await (await shimmed.hold('d-vanish')).release();
      const others = [await ctx.sem.hold('d-vanish'), await ctx.sem.hold('d-vanish')];
      expect(others.map((h) => h.tickets[0]!.ticket).sort()).toEqual([1, 2]);
      await gate.query('SELECT pg_advisory_lock(4243, $1)', [ticket3]);
      const pending = shimmed.tryHold('d-vanish');
      await waitFor(
        async () => {
          const { rows } = await ctx.admin.query(`SELECT 1 FROM pg_stat_activity WHERE application_name = 'direct-shimmed' AND wait_event_type = 'Lock'`);
          return rows.length > 0;
        },
        { what: 'the find to wait at the gate' },
      );
      // the shrink deletes ticket 3 (nobody holds it) and commits while the find waits
      await ctx.sem.make('d-vanish', 2);
      await gate.query('SELECT pg_advisory_unlock(4243, $1)', [ticket3]);
      expect(await pending).toBeNull();
      const status = await ctx.sem.status('d-vanish');
      expect(status.tickets).toBe(2);
      expect(status.holders.map((h) => h.ticket).sort()).toEqual([1, 2]);
      for (const h of others) await h.release();
      // and the instance goes on: the next try takes a ticket that exists
      const next = await shimmed.hold('d-vanish');
      expect(next.tickets[0]!.ticket).toBeLessThanOrEqual(2);
      await next.release();
    } finally {
      await shimmed.close();
      await gate.end().catch(() => undefined);
      await shim.drop();
    }
  });
});
