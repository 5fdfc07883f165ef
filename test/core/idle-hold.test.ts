// A held ticket costs Postgres an idle connection and nothing else: no transaction id
// (no write, VACUUM's horizon untouched) and no snapshot while idle between statements.
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupSchema, waitFor } from '../helpers/db.js';
import { backendOf } from '../helpers/core.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
beforeAll(async () => {
  ctx = await setupSchema('idle');
  await ctx.sem.make('idle-a', 2);
  await ctx.sem.make('idle-b', 1);
});
afterAll(async () => {
  await ctx?.drop();
});

/** Samples the holder's backend until it has been seen idle in its transaction `times` times. */
async function expectIdleWithoutXidOrSnapshot(pid: number, times = 5) {
  const seen: Array<Awaited<ReturnType<typeof backendOf>>> = [];
  await waitFor(
    async () => {
      const row = await backendOf(ctx.admin, pid);
      expect(row, `backend ${pid} is gone`).toBeDefined();
      expect(row!.backend_xid).toBeNull();
      if (row!.state === 'idle in transaction') seen.push(row);
      return seen.length >= times;
    },
    { timeout: 5_000, interval: 5, what: `backend ${pid} idle in transaction` },
  );
  for (const row of seen) expect(row).toEqual({ state: 'idle in transaction', backend_xid: null, backend_xmin: null });
}

describe('the holding transaction stays write-free and snapshot-free', () => {
  it('hold(): no backend_xid, no backend_xmin while idle, also after a statement run on hold.tx', async () => {
    const hold = await ctx.sem.hold([{ name: 'idle-a', tickets: 2 }, 'idle-b'], { label: 'job-1' });
    try {
      const status = await ctx.sem.status('idle-a');
      expect(status.held).toBe(2);
      const pid = status.holders[0]!.pid;
      expect((await ctx.sem.status('idle-b')).holders[0]!.pid).toBe(pid);
      await expectIdleWithoutXidOrSnapshot(pid);

      const inside = await hold.tx.execute<{ pid: number; xid: string | null; iso: string }>(
        sql`SELECT pg_backend_pid() AS pid, txid_current_if_assigned()::text AS xid, current_setting('transaction_isolation') AS iso`,
      );
      expect(inside.rows[0]).toEqual({ pid, xid: null, iso: 'read committed' });
      await expectIdleWithoutXidOrSnapshot(pid);
    } finally {
      await hold.release();
    }
    expect((await ctx.sem.status('idle-a')).held).toBe(0);
  });

  it('withTickets(): no backend_xid, no backend_xmin while the function runs', async () => {
    await ctx.sem.withTickets('idle-a', async ({ tx, tickets }) => {
      expect(tickets).toHaveLength(1);
      // Look from outside first: the holder has run nothing but the acquire yet.
      const status = await ctx.sem.status('idle-a');
      expect(status.held).toBe(1);
      const pid = status.holders[0]!.pid;
      await expectIdleWithoutXidOrSnapshot(pid);
      const { rows } = await tx.execute<{ pid: number; xid: string | null }>(sql`SELECT pg_backend_pid() AS pid, txid_current_if_assigned()::text AS xid`);
      expect(rows[0]).toEqual({ pid, xid: null });
      await expectIdleWithoutXidOrSnapshot(pid);
    });
    expect((await ctx.sem.status('idle-a')).held).toBe(0);
  });
});
