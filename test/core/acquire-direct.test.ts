// One ticket of one semaphore without the SQL function (issue 11, eleventh round): once the
// function has answered a call with start positions, hold() takes such a ticket with two plain
// statements (find and lock, then a re-read with a snapshot of its own). These tests warm an
// instance up first, check that the direct statements ran (the backend's last statement, or
// their runs on a one-connection pool), and that they do what acquire()'s fast path did: the
// label, the idle timeout and the held-tickets setting; missing, createWith, busy and paused;
// a stale session value of the setting; the search from the last ticket with its wrap-around;
// a role that may not read the tables; and a ticket deleted by a concurrent shrink between
// the find and the lock.
import pg from 'pg';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Hold, PgSemaphore } from '../../src/index.js';
import { databaseUrl, setupSchema, waitFor } from '../helpers/db.js';
import { gatedLockShim } from '../helpers/core.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let sem: PgSemaphore;
beforeAll(async () => {
  ctx = await setupSchema('direct');
  await ctx.sem.make('warm', 1);
  sem = await warmed({ max: 3 });
});
afterAll(async () => {
  await sem?.close();
  await ctx?.drop();
});

const FIND = 'SELECT m.id, c.id AS ticket';
const REREAD = 'SELECT t.id, t.no FROM';

/**
 * An instance on this schema whose tries for one ticket go the direct way: its first hold goes
 * through the SQL function without a start position, its second with one (the call only
 * 0003_functions and later answer), and from then on the function is skipped.
 */
async function warmed(connection: { max: number; options?: string }, extra: { applicationName?: string } = {}): Promise<PgSemaphore> {
  const s = ctx.another({ connection: { connectionString: databaseUrl(), ...connection }, livenessTimeout: 7_000, ...extra });
  for (let i = 0; i < 2; i++) await (await s.hold('warm')).release();
  return s;
}

/** The last statement the hold's backend ran: the re-read when it took its ticket the direct way, the function call otherwise. */
async function lastStatement(hold: Hold): Promise<string> {
  const pid = (await ctx.sem.status(hold.tickets[0]!.name)).holders.find((h) => h.ticket === hold.tickets[0]!.ticket)!.pid;
  return (await ctx.admin.query('SELECT query FROM pg_stat_activity WHERE pid = $1', [pid])).rows[0].query as string;
}

/** How often the direct find ran on the connection `hold` holds (prepared there, bound by name). */
async function findRuns(hold: Hold): Promise<number> {
  const { rows } = (await hold.tx.execute(sql`SELECT statement, (generic_plans + custom_plans)::int AS runs FROM pg_prepared_statements`)) as {
    rows: Array<{ statement: string; runs: number }>;
  };
  return rows.filter((r) => r.statement.startsWith(FIND)).reduce((n, r) => n + r.runs, 0);
}

describe('one ticket of one semaphore, without the SQL function', () => {
  it('sets the label, the idle timeout and the held-tickets setting, as acquire() does', async () => {
    await ctx.sem.make('d-settings', 2);
    const hold = await sem.hold('d-settings', { label: 'direct-job' });
    try {
      expect(await lastStatement(hold)).toMatch(new RegExp(`^${REREAD}`));
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
    // one connection, so the find's runs on it count every try of this instance
    const one = await warmed({ max: 1 });
    try {
      let probe = await one.hold('warm');
      const before = await findRuns(probe);
      await probe.release();
      await expect(one.hold('d-nowhere')).rejects.toMatchObject({ name: 'UnknownSemaphoreError', names: ['d-nowhere'] });
      const hold = await one.hold('d-made', { createWith: 2 });
      try {
        expect(hold.tickets).toEqual([{ name: 'd-made', ticket: 1 }]);
        expect((await ctx.sem.status('d-made')).tickets).toBe(2);
        expect(await lastStatement(hold)).toMatch(new RegExp(`^${REREAD}`));
      } finally {
        await hold.release();
      }
      probe = await one.hold('warm');
      // the missing one, the try that found d-made missing, the one after it was made, this one
      expect((await findRuns(probe)) - before).toBe(4);
      await probe.release();
    } finally {
      await one.close();
    }
  });

  it('busy: SemaphoreBusyError naming it, tryHold null with onBusy, and nothing left held; a paused semaphore too', async () => {
    await ctx.sem.make('d-busy', 1);
    await ctx.sem.make('d-paused', 0);
    const one = await warmed({ max: 1 });
    const holder = await ctx.sem.hold('d-busy');
    try {
      let probe = await one.hold('warm');
      const before = await findRuns(probe);
      await probe.release();
      await expect(one.hold('d-busy')).rejects.toMatchObject({ name: 'SemaphoreBusyError', names: ['d-busy'] });
      const short: string[][] = [];
      expect(await one.tryHold('d-busy', { onBusy: (names) => void short.push([...names]) })).toBeNull();
      // a paused semaphore (no tickets at all) is busy too, not missing
      expect(await one.tryHold('d-paused', { onBusy: (names) => void short.push([...names]) })).toBeNull();
      expect(short).toEqual([['d-busy'], ['d-paused']]);
      expect((await ctx.sem.status('d-busy')).holders).toHaveLength(1);
      probe = await one.hold('warm');
      expect((await findRuns(probe)) - before).toBe(4);
      await probe.release();
    } finally {
      await holder.release();
      await one.close();
    }
    const hold = await sem.hold('d-busy');
    expect(hold.tickets).toEqual([{ name: 'd-busy', ticket: 1 }]);
    await hold.release();
  });

  it('a session-level value of the held-tickets setting never stands in for a ticket (the re-read must find the one the find locked)', async () => {
    await ctx.sem.make('d-stale', 1);
    const { rows } = await ctx.admin.query(`SELECT t.id FROM "${ctx.schema}".tickets t JOIN "${ctx.schema}".semaphores m ON m.id = t.semaphore_id WHERE m.name = 'd-stale'`);
    const ns = (await ctx.admin.query(`SELECT to_hex("${ctx.schema}"._ns()) AS h`)).rows[0].h as string;
    // left on the connection by someone else (ALTER ROLE ... SET, a pooler's server connection)
    const stale = await warmed({ max: 1, options: `-c pg_semaphore.held_${ns}={${rows[0].id}}` });
    const holder = await ctx.sem.hold('d-stale');
    try {
      expect(await stale.tryHold('d-stale')).toBeNull();
      expect((await ctx.sem.status('d-stale')).held).toBe(1);
    } finally {
      await holder.release();
      await stale.close();
    }
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
    expect(await lastStatement(wrapped)).toMatch(new RegExp(`^${REREAD}`));
    expect(await sem.tryHold('d-wrap')).toBeNull();
    for (const h of [again, wrapped, others[1]!]) await h.release();
    expect((await ctx.sem.status('d-wrap')).held).toBe(0);
  });

  it('scans a large semaphore in ticket order from the start position and stops at the first free ticket, with and without table statistics', async () => {
    // A schema of its own whose tickets table has no statistics yet, as right after make()
    // (autovacuum analyzes it a minute or so later, and is kept off here): the generic plan of
    // the find must still read the tickets in order through the (semaphore_id, no) index and
    // stop at the first one it locks, never read and sort all of them (it did with OFFSET 0).
    const own = await setupSchema('dplan');
    await own.admin.query(`ALTER TABLE "${own.schema}".tickets SET (autovacuum_enabled = false)`);
    await own.sem.make('big', 1000);
    await own.sem.make('small', 5);
    const one = own.another({ connection: { connectionString: databaseUrl(), max: 1 } });
    try {
      const planOf = async (hold: Hold) => {
        const { rows } = (await hold.tx.execute(sql`SELECT name FROM pg_prepared_statements WHERE statement LIKE ${`${FIND}%`}`)) as {
          rows: Array<{ name: string }>;
        };
        expect(rows).toHaveLength(1);
        await hold.tx.execute(sql`SET LOCAL plan_cache_mode = force_generic_plan`);
        const plan = (await hold.tx.execute(
          sql.raw(`EXPLAIN (FORMAT JSON) EXECUTE ${rows[0]!.name}('big', 500, NULL, NULL, '2147483647')`),
        )) as { rows: Array<{ 'QUERY PLAN': unknown }> };
        return JSON.stringify(plan.rows[0]!['QUERY PLAN']);
      };
      for (let i = 0; i < 8; i++) await (await one.hold(i % 2 ? 'big' : 'small')).release();
      const stats = async () =>
        Number((await own.admin.query(`SELECT count(*)::int AS n FROM pg_stats WHERE schemaname = $1 AND tablename = 'tickets'`, [own.schema])).rows[0].n);
      expect(await stats()).toBe(0);
      for (const analyzed of [false, true]) {
        if (analyzed) {
          await own.admin.query(`ANALYZE "${own.schema}".tickets`);
          expect(await stats()).toBeGreaterThan(0);
        }
        const hold = await one.hold('big');
        try {
          expect(await findRuns(hold)).toBeGreaterThan(4);
          const plan = await planOf(hold);
          expect(plan, `analyzed: ${analyzed}`).toContain('"Index Name":"tickets_semaphore_no_key"');
          expect(plan, `analyzed: ${analyzed}`).not.toContain('"Node Type":"Sort"');
          expect(plan, `analyzed: ${analyzed}`).not.toContain('Bitmap');
        } finally {
          await hold.release();
        }
      }
    } finally {
      await one.close();
      await own.drop();
    }
  });

  it("a client that cannot pipeline (node-postgres's own pipeline mode) keeps the function: one statement after BEGIN, not two", async () => {
    await ctx.sem.make('d-nopipe', 1);
    const nopipe = ctx.another({ connection: { connectionString: databaseUrl(), max: 1, pipeline: true } as never });
    try {
      for (let i = 0; i < 2; i++) await (await nopipe.hold('d-nopipe')).release();
      const before = nopipe.roundTrips;
      const hold = await nopipe.hold('d-nopipe');
      // BEGIN, then acquire(), then the SELECT 1 that closes its portal: the two direct
      // statements would each cost a round trip of their own here
      expect(nopipe.roundTrips - before).toBe(3);
      expect(await findRuns(hold)).toBe(0);
      await hold.release();
    } finally {
      await nopipe.close();
    }
  });

  it('without prepared statements (a pooler that keeps none) it is the function again: planned anew each try, the find costs more than the call', async () => {
    await ctx.sem.make('d-unprepared', 1);
    const one = await warmed({ max: 1 });
    try {
      const dropping = await one.hold('d-unprepared');
      expect(await lastStatement(dropping)).toMatch(new RegExp(`^${REREAD}`));
      // what a transaction pooler's other server connection looks like: node-postgres still thinks they are there
      await dropping.tx.execute(sql`DEALLOCATE ALL`);
      await dropping.release();
      for (let i = 0; i < 3; i++) {
        const h = await one.hold('d-unprepared');
        expect(await lastStatement(h)).toMatch(/\.acquire\(/);
        await h.release();
      }
    } finally {
      await one.close();
    }
  });

  it('a role that may not read the tables (a SECURITY DEFINER acquire) falls back to the function for good', async () => {
    await ctx.sem.make('d-refused', 1);
    const role = `${ctx.schema}_nosel`;
    try {
      await ctx.admin.query(`CREATE ROLE "${role}"`);
      await ctx.admin.query(`GRANT USAGE ON SCHEMA "${ctx.schema}" TO "${role}"`);
      await ctx.admin.query(`GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA "${ctx.schema}" TO "${role}"`);
      await ctx.admin.query(`ALTER FUNCTION "${ctx.schema}".acquire(text[], integer[], text, integer, integer[]) SECURITY DEFINER`);
      await ctx.admin.query(`ALTER FUNCTION "${ctx.schema}".wake(integer[], integer, integer) SECURITY DEFINER`);
      const restricted = ctx.another({ connection: { connectionString: databaseUrl(), max: 1, options: `-c role=${role}` } });
      try {
        // its first tries go through the function (it may call it), then the direct way is refused once
        for (let i = 0; i < 4; i++) {
          const h = await restricted.hold('d-refused');
          expect(h.tickets).toEqual([{ name: 'd-refused', ticket: 1 }]);
          expect(await lastStatement(h)).toMatch(/\.acquire\(/);
          await h.release();
        }
      } finally {
        await restricted.close();
      }
    } finally {
      await ctx.admin.query(`ALTER FUNCTION "${ctx.schema}".acquire(text[], integer[], text, integer, integer[]) SECURITY INVOKER`);
      await ctx.admin.query(`ALTER FUNCTION "${ctx.schema}".wake(integer[], integer, integer) SECURITY INVOKER`);
      await ctx.admin.query(`DROP OWNED BY "${role}"`).catch(() => undefined);
      await ctx.admin.query(`DROP ROLE IF EXISTS "${role}"`);
    }
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
    const shimmed = await warmed({ max: 1, options: shim.searchPath }, { applicationName: 'direct-shimmed' });
    try {
      await gate.connect();
      // tickets 1 and 2 taken elsewhere: the next search meets ticket 3 first
      const others = [await ctx.sem.hold('d-vanish'), await ctx.sem.hold('d-vanish')];
      expect(others.map((h) => h.tickets[0]!.ticket).sort()).toEqual([1, 2]);
      await gate.query('SELECT pg_advisory_lock(4243, $1)', [ticket3]);
      const pending = shimmed.tryHold('d-vanish');
      await waitFor(
        async () => {
          const { rows } = await ctx.admin.query(
            `SELECT 1 FROM pg_stat_activity WHERE application_name = 'direct-shimmed' AND wait_event_type = 'Lock' AND query LIKE $1`,
            [`${FIND}%`],
          );
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
      await gate.end().catch(() => undefined); // frees the gate first: a try waiting at it lets close() finish
      await shimmed.close();
      await shim.drop();
    }
  });
});
