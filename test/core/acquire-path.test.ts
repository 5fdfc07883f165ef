// The acquire's own path (issue 11): BEGIN, the acquire and the label in one round trip, the
// release in one more; the one-ticket fast path in SQL (no subtransaction) with its
// re-entrancy and all-or-nothing; start positions (the ticket returned last is tried first,
// wrapping around); a semaphore destroyed and made again between two holds of one instance.
import pg from 'pg';
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl, setupSchema, waitFor } from '../helpers/db.js';
import { backendOf } from '../helpers/core.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let client: pg.Client;
let s: string;
beforeAll(async () => {
  ctx = await setupSchema('acqpath');
  s = `"${ctx.schema}"`;
  client = new pg.Client({ connectionString: databaseUrl() });
  await client.connect();
});
afterAll(async () => {
  await client?.end();
  await ctx?.drop();
});

/** Runs `fn` in a transaction on the plain-SQL client, rolled back after. */
async function inTransaction<T>(fn: () => Promise<T>): Promise<T> {
  await client.query('BEGIN');
  try {
    return await fn();
  } finally {
    await client.query('ROLLBACK');
  }
}

/** acquire() from plain SQL, with start positions when given (test-made literals only). */
const acquireSql = (names: string, counts: string, starts?: string) =>
  `SELECT * FROM ${s}.acquire('${names}', '${counts}', NULL, NULL, ${starts === undefined ? 'NULL' : `'${starts}'`})`;

describe('round trips', () => {
  it('hold() is one round trip before the caller has its tickets (label included), release() one more; the label shows at once', async () => {
    await ctx.sem.make('rt', 3);
    // the first hold on this instance's pool may open the connection: count from the second
    await (await ctx.sem.hold('rt')).release();
    const before = ctx.sem.roundTrips;
    const hold = await ctx.sem.hold('rt', { label: 'job-rt' });
    expect(ctx.sem.roundTrips - before).toBe(1);
    const status = await ctx.sem.status('rt');
    expect(status.holders.map((h) => h.label)).toEqual(['job-rt']);
    await hold.release();
    expect(ctx.sem.roundTrips - before).toBe(2);
    // two semaphores at once: the same
    await ctx.sem.make('rt-b', 1);
    const both = await ctx.sem.hold(['rt', { name: 'rt-b', tickets: 1 }], { label: 'job-rt2' });
    expect(ctx.sem.roundTrips - before).toBe(3);
    await both.release();
    expect(ctx.sem.roundTrips - before).toBe(4);
    expect((await ctx.sem.status('rt')).held).toBe(0);
  });

  it('a held ticket leaves no transaction id and no snapshot, right after hold() returns (no statement in between)', async () => {
    await ctx.sem.make('rt-idle', 1);
    const hold = await ctx.sem.hold('rt-idle', { label: 'idle-check' });
    try {
      const pid = (await ctx.sem.status('rt-idle')).holders[0]!.pid;
      // sampled before the first heartbeat (10 s away with the default liveness window)
      for (let i = 0; i < 5; i++) {
        expect(await backendOf(ctx.admin, pid)).toEqual({ state: 'idle in transaction', backend_xid: null, backend_xmin: null });
      }
    } finally {
      await hold.release();
    }
  });

  it('release() asks about recorded waiting jobs only when told to', async () => {
    await ctx.sem.make('rt-jobs', 1);
    const { rows } = await ctx.admin.query<{ id: number }>(`SELECT id FROM ${s}.semaphores WHERE name = 'rt-jobs'`);
    await ctx.admin.query(`INSERT INTO ${s}.waiting_jobs (semaphore_id, queue, job_id) VALUES ($1, 'q', '1')`, [rows[0]!.id]);
    expect(await (await ctx.sem.hold('rt-jobs')).release()).toEqual({ jobsWaiting: false, notified: false });
    expect(await (await ctx.sem.hold('rt-jobs')).release({ checkJobsWaiting: true })).toEqual({ jobsWaiting: true, notified: false });
    await ctx.admin.query(`DELETE FROM ${s}.waiting_jobs WHERE semaphore_id = $1`, [rows[0]!.id]);
    expect(await (await ctx.sem.hold('rt-jobs')).release({ checkJobsWaiting: true })).toEqual({ jobsWaiting: false, notified: false });
  });
});

describe('one ticket of one semaphore: the fast path in SQL', () => {
  it('takes the lowest free ticket, never one the transaction holds, and says busy without taking anything', async () => {
    await ctx.sem.make('fast', 2);
    await inTransaction(async () => {
      expect((await client.query(acquireSql('{fast}', '{1}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [1], ticket_semaphores: ['fast'] });
      expect((await client.query(acquireSql('{fast}', '{1}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [2] });
      expect((await client.query(acquireSql('{fast}', '{1}'))).rows[0]).toMatchObject({ status: 'busy', tickets: null, semaphore_ids: null });
      expect((await ctx.sem.status('fast')).holders.map((h) => h.ticket)).toEqual([1, 2]);
      // still re-entrant for the general path: '{0}' (all) counts what the fast path took
      expect((await client.query(acquireSql('{fast}', '{0}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [] });
    });
    expect((await ctx.sem.status('fast')).held).toBe(0);
  });

  it('takes exactly one lock per call, also with many free tickets, a start position and a wrap-around', async () => {
    await ctx.sem.make('fast-many', 8);
    // the ticket locks this backend holds (first key: the schema's namespace)
    const myLocks = async () => {
      const { rows } = await client.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_locks l
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.pid = pg_backend_pid()
            AND l.classid::bigint = (${s}._ns()::bigint + 4294967296) % 4294967296`,
      );
      return rows[0]!.n;
    };
    const other = await ctx.sem.hold({ name: 'fast-many', tickets: 1 }); // ticket 1
    const more = await ctx.sem.hold({ name: 'fast-many', tickets: 1 }); // ticket 2
    try {
      await inTransaction(async () => {
        expect((await client.query(acquireSql('{fast-many}', '{1}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [3] });
        expect(await myLocks()).toBe(1);
        expect((await client.query(acquireSql('{fast-many}', '{1}', '{6}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [6] });
        expect(await myLocks()).toBe(2);
        // from 8: 8 is free; then from 8 again: wraps past the held 1 and 2 (and its own 3) to 4
        expect((await client.query(acquireSql('{fast-many}', '{1}', '{8}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [8] });
        expect((await client.query(acquireSql('{fast-many}', '{1}', '{8}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [4] });
        expect(await myLocks()).toBe(4);
      });
    } finally {
      await other.release();
      await more.release();
    }
  });

  it('busy when another transaction holds the only ticket; missing and paused semaphores', async () => {
    await ctx.sem.make('fast-one', 1);
    const other = await ctx.sem.hold('fast-one');
    try {
      await inTransaction(async () => {
        expect((await client.query(acquireSql('{fast-one}', '{1}'))).rows[0]).toMatchObject({ status: 'busy' });
        expect((await client.query(acquireSql('{fast-nope}', '{1}'))).rows[0]).toMatchObject({ status: 'missing', names: ['fast-nope'] });
        const { rows } = await client.query<{ xid: string | null }>('SELECT txid_current_if_assigned()::text AS xid');
        expect(rows[0]!.xid).toBeNull();
      });
    } finally {
      await other.release();
    }
    await ctx.sem.make('fast-paused', 0);
    await inTransaction(async () => {
      expect((await client.query(acquireSql('{fast-paused}', '{1}'))).rows[0]).toMatchObject({ status: 'busy' });
    });
  });

  it('after the fast path, a multi-ticket acquire in the same transaction is still all or nothing', async () => {
    await ctx.sem.make('fast-a', 2);
    await ctx.sem.make('fast-b', 1);
    const holdsB = await ctx.sem.hold('fast-b');
    try {
      await inTransaction(async () => {
        expect((await client.query(acquireSql('{fast-a}', '{1}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [1] });
        // fast-a's last ticket is free but fast-b's is not: nothing more is taken
        expect((await client.query(acquireSql('{fast-a,fast-b}', '{1,1}'))).rows[0]).toMatchObject({ status: 'busy' });
        expect((await ctx.sem.status('fast-a')).holders.map((h) => h.ticket)).toEqual([1]);
      });
    } finally {
      await holdsB.release();
    }
  });
});

describe('start positions', () => {
  it('the search starts at p_starts and wraps around, on both paths', async () => {
    await ctx.sem.make('start', 4);
    await inTransaction(async () => {
      expect((await client.query(acquireSql('{start}', '{1}', '{3}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [3] });
      // 3 is ours now: from 3 on, 4 is next
      expect((await client.query(acquireSql('{start}', '{1}', '{3}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [4] });
      // from 3: 3 and 4 are held, wrap to 1
      expect((await client.query(acquireSql('{start}', '{1}', '{3}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [1] });
      expect((await client.query(acquireSql('{start}', '{1}', '{99}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [2] });
    });
    await inTransaction(async () => {
      // the general path (two tickets): a start at the last ticket wraps; a NULL start means 1
      expect((await client.query(acquireSql('{start,start}', '{1,1}', '{4,NULL}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [1, 4] });
      expect((await client.query(acquireSql('{start}', '{2}', '{2}'))).rows[0]).toMatchObject({ status: 'ok', tickets: [2, 3] });
    });
  });

  it('a PgSemaphore starts where its last returned ticket was', async () => {
    await ctx.sem.make('start-node', 5);
    const a = await ctx.sem.hold('start-node');
    const b = await ctx.sem.hold('start-node');
    const c = await ctx.sem.hold('start-node');
    expect([a, b, c].map((h) => h.tickets[0]!.ticket)).toEqual([1, 2, 3]);
    await a.release();
    await c.release(); // returned last: 3
    const again = await ctx.sem.hold('start-node');
    expect(again.tickets).toEqual([{ name: 'start-node', ticket: 3 }]);
    // 3 is held now and the search goes on upwards from there
    const next = await ctx.sem.hold('start-node');
    expect(next.tickets).toEqual([{ name: 'start-node', ticket: 4 }]);
    await Promise.all([b, again, next].map((h) => h.release()));
  });
});

describe('a semaphore destroyed and made again between two holds of one instance', () => {
  it('the second hold takes a ticket of the new semaphore (new id, fewer tickets), and its release wakes by the new id', async () => {
    await ctx.sem.make('reborn', 3);
    const holds = [await ctx.sem.hold('reborn'), await ctx.sem.hold('reborn'), await ctx.sem.hold('reborn')];
    const oldIds = holds[0]!.semaphoreIds;
    for (const h of holds) await h.release(); // the last one returned was ticket 3
    expect(await ctx.sem.destroy('reborn')).toBe(true);
    await ctx.sem.make('reborn', 1);
    const hold = await ctx.sem.hold('reborn', { label: 'reborn' });
    try {
      expect(hold.tickets).toEqual([{ name: 'reborn', ticket: 1 }]);
      expect(hold.semaphoreIds).not.toEqual(oldIds);
      expect((await ctx.sem.status('reborn')).holders.map((h) => [h.ticket, h.label])).toEqual([[1, 'reborn']]);
      expect(await ctx.sem.tryHold('reborn')).toBeNull();
    } finally {
      await hold.release();
    }
    // the release wakes waiters by the new id
    const { rows } = await ctx.admin.query<{ id: number }>(`SELECT id FROM ${s}.semaphores WHERE name = 'reborn'`);
    expect(hold.semaphoreIds).toEqual([rows[0]!.id]);
    await ctx.sem.destroy('reborn');
    // destroyed for good: the instance says so, as before
    await expect(ctx.sem.hold('reborn')).rejects.toMatchObject({ name: 'UnknownSemaphoreError' });
  });
});

describe('what a busy try and a release tell the caller', () => {
  it('tryHold onBusy hears which semaphore was short (fast path and general path); acquire says it in names', async () => {
    await ctx.sem.make('short-a', 1);
    await ctx.sem.make('short-b', 2);
    const other = ctx.another();
    try {
      const blocker = await other.hold('short-a');
      const heard: Array<readonly string[]> = [];
      expect(await ctx.sem.tryHold('short-a', { onBusy: (short) => heard.push(short) })).toBeNull();
      expect(await ctx.sem.tryHold(['short-b', { name: 'short-a', tickets: 1 }], { onBusy: (short) => heard.push(short) })).toBeNull();
      expect(heard).toEqual([['short-a'], ['short-a']]);
      await inTransaction(async () => {
        expect((await client.query(acquireSql('{short-b,short-a}', '{1,1}'))).rows[0]).toMatchObject({ status: 'busy', names: ['short-a'], tickets: null });
      });
      // not called when tickets were taken
      const got = await ctx.sem.tryHold('short-b', { onBusy: () => heard.push(['unexpected']) });
      expect(got).not.toBeNull();
      await got!.release();
      expect(heard).toHaveLength(2);
      await blocker.release();
      await expect(ctx.sem.tryHold('short-a', { onBusy: 'no' as unknown as () => void })).rejects.toMatchObject({ name: 'InvalidArgumentError' });
    } finally {
      await other.close();
    }
  });

  it('release() says whether its wake-up found a waiter and sent a NOTIFY', async () => {
    await ctx.sem.make('notify', 1);
    const first = await ctx.sem.hold('notify');
    expect(await first.release()).toEqual({ jobsWaiting: false, notified: false });
    const other = ctx.another();
    try {
      const holding = await ctx.sem.hold('notify');
      const waiting = other.hold('notify', { wait: 10_000 });
      // the waiter's marker: a shared advisory lock at session level on (ns # 2, id)
      await waitFor(
        async () => {
          const { rows } = await ctx.admin.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM pg_locks l
              WHERE l.locktype = 'advisory' AND l.mode = 'ShareLock' AND l.granted AND l.objsubid = 2
                AND l.classid::bigint = ((${s}._ns() # 2)::bigint + 4294967296) % 4294967296
                AND l.objid::bigint = $1`,
            [holding.semaphoreIds[0]],
          );
          return rows[0]!.n > 0;
        },
        { timeout: 5_000, what: 'the waiter to register' },
      );
      expect(await holding.release()).toEqual({ jobsWaiting: false, notified: true });
      await (await waiting).release();
    } finally {
      await other.close();
    }
  });
});

describe('prepared statements', () => {
  /** The named statements prepared on the connection `hold` is on (read through the hold's own transaction). */
  async function preparedOn(hold: import('../../src/index.js').Hold): Promise<Array<{ name: string; statement: string; runs: number }>> {
    const { rows } = (await hold.tx.execute(
      sql`SELECT name, statement, (generic_plans + custom_plans)::int AS runs FROM pg_prepared_statements ORDER BY statement`,
    )) as unknown as { rows: Array<{ name: string; statement: string; runs: number }> };
    return rows;
  }

  it('the acquire and the release wake-up are prepared once per connection and bound by name afterwards', async () => {
    const sem = ctx.another({ connection: { connectionString: databaseUrl(), max: 1 } });
    try {
      await sem.make('prep', 2);
      for (let i = 0; i < 5; i++) await (await sem.hold('prep')).release();
      const hold = await sem.hold('prep');
      const prepared = await preparedOn(hold);
      await hold.release();
      const one = (re: RegExp) => {
        const found = prepared.filter((p) => re.test(p.statement));
        expect(found, `one prepared statement like ${re}`).toHaveLength(1);
        return found[0]!;
      };
      // the first hold goes through the SQL function (no start position yet), the second too,
      // with one (which only 0003_functions and later take): that vouches for the install, and
      // the later ones take their one ticket with the two plain statements
      const first = one(/^SELECT a\.\* FROM ".+"\.acquire\(\$1::text\[\], \$2::integer\[\], \$3, \$4\) a$/);
      const second = one(/^SELECT a\.\* FROM ".+"\.acquire\(\$1::text\[\], \$2::integer\[\], \$3, \$4, \$5::integer\[\]\) a$/);
      const find = one(/^SELECT m\.id, c\.id AS ticket, .+ WHERE m\.name = \$1::text$/);
      const reread = one(/^SELECT t\.id, t\.no FROM ".+"\.tickets t WHERE t\.id = /);
      const wake = one(/^SELECT CASE WHEN w IS NULL THEN 0 ELSE ".+"\.wake\(w\) END \+ coalesce\(.+\) AS notified FROM \(SELECT array_agg\(i\) FILTER .+ FROM unnest\(\$1::integer\[\]\) i OFFSET 0\) t\) s$/);
      const begin = one(/^BEGIN ISOLATION LEVEL READ COMMITTED$/);
      const commit = one(/^COMMIT$/);
      expect(prepared).toHaveLength(7);
      for (const p of prepared) expect(p.name).toMatch(/^pgsem_[0-9a-f]{24}$/);
      expect([begin.runs, commit.runs]).toEqual([6, 5]);
      expect([first.runs, second.runs, find.runs, reread.runs, wake.runs]).toEqual([1, 1, 4, 4, 5]);
    } finally {
      await sem.close();
    }
  });

  it('a connection that lost them (a transaction pooler, DEALLOCATE): the acquire retries unprepared, takes its ticket, and stays unprepared', async () => {
    const warnings: string[] = [];
    const sem = ctx.another({ connection: { connectionString: databaseUrl(), max: 1 }, logger: { warn: (m) => void warnings.push(m) } });
    try {
      await sem.make('prep-lost', 1);
      for (let i = 0; i < 3; i++) await (await sem.hold('prep-lost')).release();
      // what a pooler's other server connection looks like: node-postgres still thinks they are there
      const dropping = await sem.hold('prep-lost');
      await dropping.tx.execute(sql`DEALLOCATE ALL`);
      await dropping.release();
      const hold = await sem.hold('prep-lost', { label: 'after-deallocate' });
      expect((await ctx.sem.status('prep-lost')).holders.map((h) => h.label)).toEqual(['after-deallocate']);
      expect(await preparedOn(hold)).toEqual([]);
      await hold.release();
      expect((await ctx.sem.status('prep-lost')).held).toBe(0);
      for (let i = 0; i < 3; i++) await (await sem.hold('prep-lost')).release();
      const last = await sem.hold('prep-lost');
      expect(await preparedOn(last)).toEqual([]);
      await last.release();
      expect(warnings).toEqual([]);
    } finally {
      await sem.close();
    }
  });

  it("a migration that changes the acquire's result columns while holders run: the refused cached plan is retried unprepared", async () => {
    const own = await setupSchema('prepupg');
    const q = `"${own.schema}"`;
    const sem = own.another({ connection: { connectionString: databaseUrl(), max: 1 } });
    try {
      // two tickets at once: a request that always goes through the SQL function (one ticket
      // of one semaphore skips it once the function has answered)
      await sem.make('upg', 2);
      const both = { name: 'upg', tickets: 2 };
      for (let i = 0; i < 3; i++) await (await sem.hold(both)).release();
      // a new acquire with one more result column, the old one kept under another name
      await own.admin.query(`ALTER FUNCTION ${q}.acquire(text[], integer[], text, integer, integer[]) RENAME TO _acquire_v1`);
      await own.admin.query(`CREATE FUNCTION ${q}.acquire(p_names text[], p_counts integer[], p_label text DEFAULT NULL, p_idle_timeout_ms integer DEFAULT NULL,
          p_starts integer[] DEFAULT NULL, OUT status text, OUT tickets integer[], OUT ticket_semaphores text[], OUT semaphore_ids integer[], OUT names text[], OUT extra integer)
        LANGUAGE sql AS $$ SELECT a.*, 1 FROM ${q}._acquire_v1(p_names, p_counts, p_label, p_idle_timeout_ms, p_starts) a $$`);
      const hold = await sem.hold(both, { label: 'after-upgrade' });
      expect((await own.sem.status('upg')).holders.map((h) => h.label)).toEqual(['after-upgrade', 'after-upgrade']);
      await hold.release();
      expect((await own.sem.status('upg')).held).toBe(0);
    } finally {
      await sem.close();
      await own.drop();
    }
  });

  it('two tries in flight that both find them gone both retry unprepared (the second after the first turned them off)', async () => {
    const sem = ctx.another({ connection: { connectionString: databaseUrl(), max: 2 } });
    try {
      await sem.make('prep-two', 2);
      const both = () => Promise.all([sem.hold('prep-two'), sem.hold('prep-two')]);
      // both pooled connections prepare the acquire (with a start position from the second round on)
      for (let i = 0; i < 3; i++) for (const h of await both()) await h.release();
      const dropping = await both();
      for (const h of dropping) await h.tx.execute(sql`DEALLOCATE ALL`);
      for (const h of dropping) await h.release();
      // both tries are built (prepared) before either hears back
      const holds = await both();
      expect(holds.map((h) => h.tickets.length)).toEqual([1, 1]);
      expect((await ctx.sem.status('prep-two')).held).toBe(2);
      for (const h of holds) await h.release();
      expect((await ctx.sem.status('prep-two')).held).toBe(0);
    } finally {
      await sem.close();
    }
  });

  it('a release whose prepared wake-up is gone still frees the tickets (the transaction rolls back), warns nobody, and later releases go unprepared', async () => {
    const warnings: string[] = [];
    const sem = ctx.another({ connection: { connectionString: databaseUrl(), max: 1 }, logger: { warn: (m) => void warnings.push(m) } });
    try {
      await sem.make('prep-wake', 1);
      for (let i = 0; i < 3; i++) await (await sem.hold('prep-wake')).release();
      const hold = await sem.hold('prep-wake');
      // behind the hold's back (hold.tx would make the release commit first): the holding connection drops them
      await (hold as unknown as { client: pg.PoolClient }).client.query('DEALLOCATE ALL');
      expect(await hold.release()).toEqual({ jobsWaiting: false, notified: false });
      expect((await ctx.sem.status('prep-wake')).held).toBe(0);
      expect(warnings).toEqual([]);
      // from now on nothing is prepared: neither the acquire nor the wake-up
      for (let i = 0; i < 3; i++) await (await sem.hold('prep-wake')).release();
      const last = await sem.hold('prep-wake');
      expect(await preparedOn(last)).toEqual([]);
      await last.release();
    } finally {
      await sem.close();
    }
  });
});
