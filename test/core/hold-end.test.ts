// How a hold ends: `released` says so, its tx refuses statements afterwards, and a commit of
// statements run on tx is never reported as done when the connection was lost.
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupSchema, waitFor } from '../helpers/db.js';
import { PgSemaphoreError, TicketLostError } from '../../src/index.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
beforeAll(async () => {
  ctx = await setupSchema('holdend');
  await ctx.sem.make('end', 2);
});
afterAll(async () => {
  await ctx?.drop();
});

/** Ends the holder's session from outside and waits until the hold knows. */
async function cutOff(hold: { lost: boolean }, pid: number) {
  await ctx.admin.query('SELECT pg_terminate_backend($1)', [pid]);
  await waitFor(() => hold.lost, { timeout: 5_000, what: 'the hold to notice its lost connection' });
}

describe('the end of a hold', () => {
  it('released is false while held and true after release(), rollback and close(); tx then refuses statements', async () => {
    const hold = await ctx.sem.hold('end');
    expect(hold.released).toBe(false);
    await hold.tx.execute(sql`SELECT 1`);
    await hold.release();
    expect(hold.released).toBe(true);
    const err = await hold.tx.execute(sql`SELECT 1`).then(
      () => undefined,
      (e: unknown) => e,
    );
    // Drizzle wraps what the client threw ("Failed query: ..."), keeping it as the cause
    const cause = (err as { cause?: unknown }).cause;
    expect(cause).toBeInstanceOf(PgSemaphoreError);
    expect(String(cause)).toContain('already released');

    const rolledBack = await ctx.sem.hold('end');
    await rolledBack.release({ commit: false });
    expect(rolledBack.released).toBe(true);

    const other = ctx.another();
    const closed = await other.hold('end');
    await other.close();
    expect([closed.released, closed.lost]).toEqual([true, false]);
    expect((await ctx.sem.status('end')).held).toBe(0);
  });

  it('a lost connection: release() resolves for a hold that only held tickets, rejects when statements ran on tx', async () => {
    const quiet = await ctx.sem.hold('end');
    await cutOff(quiet, (await ctx.sem.status('end')).holders[0]!.pid);
    await expect(quiet.release()).resolves.toEqual({ jobsWaiting: false, notified: false });

    const used = await ctx.sem.hold('end');
    await used.tx.execute(sql`SELECT 1`);
    await cutOff(used, (await ctx.sem.status('end')).holders[0]!.pid);
    await expect(used.release()).rejects.toBeInstanceOf(TicketLostError);
    expect(used.released).toBe(true);
    // a rollback was asked for: nothing to report
    const rolled = await ctx.sem.hold('end');
    await rolled.tx.execute(sql`SELECT 1`);
    await cutOff(rolled, (await ctx.sem.status('end')).holders[0]!.pid);
    await expect(rolled.release({ commit: false })).resolves.toEqual({ jobsWaiting: false, notified: false });
    expect((await ctx.sem.status('end')).held).toBe(0);
  });
});
