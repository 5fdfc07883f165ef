// Per-key caps: semaphores created on first use with createWith.
import { sql } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupSchema } from '../helpers/db.js';
import { backendOf, listSnapshot, rejection } from '../helpers/core.js';
import { SemaphoreBusyError, UnknownSemaphoreError } from '../../src/index.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
beforeAll(async () => {
  ctx = await setupSchema('perkey');
});
afterAll(async () => {
  await ctx?.drop();
});

describe('per-key semaphores', () => {
  it('createWith creates tenant:42 on first use with that capacity; the holding transaction has no xid', async () => {
    expect(await ctx.sem.list()).toEqual([]);
    await ctx.sem.withTickets(
      'tenant:42',
      async ({ tx, tickets }) => {
        expect(tickets).toHaveLength(1);
        const { rows } = await tx.execute<{ pid: number; xid: string | null }>(sql`SELECT pg_backend_pid() AS pid, txid_current_if_assigned()::text AS xid`);
        expect(rows[0]!.xid).toBeNull();
        expect((await backendOf(ctx.admin, rows[0]!.pid))?.backend_xid).toBeNull();
        const status = await ctx.sem.status('tenant:42');
        expect(status).toMatchObject({ name: 'tenant:42', tickets: 2, held: 1 });
        expect(status.holders[0]!.pid).toBe(rows[0]!.pid);

        // second ticket of the same key, from another instance; a third is busy
        const other = ctx.another();
        try {
          const second = await other.hold('tenant:42', { createWith: 2 });
          expect(await rejection(other.hold('tenant:42', { createWith: 2 }))).toBeInstanceOf(SemaphoreBusyError);
          await second.release();
        } finally {
          await other.close();
        }
      },
      { createWith: 2 },
    );
    expect((await ctx.sem.list()).map(({ name, tickets, held }) => ({ name, tickets, held }))).toEqual([{ name: 'tenant:42', tickets: 2, held: 0 }]);

    // createWith never resizes an existing semaphore
    const hold = await ctx.sem.hold('tenant:42', { createWith: 7 });
    expect((await ctx.sem.status('tenant:42')).tickets).toBe(2);
    await hold.release();
  });

  it('createWith creates every missing semaphore of a multi-semaphore request', async () => {
    const hold = await ctx.sem.hold(['tenant:1', { name: 'tenant:2', tickets: 3 }], { createWith: 3 });
    expect(hold.tickets).toHaveLength(4);
    expect((await ctx.sem.status('tenant:1')).tickets).toBe(3);
    expect((await ctx.sem.status('tenant:2')).held).toBe(3);
    await hold.release();
  });

  it('without createWith an unknown semaphore is an UnknownSemaphoreError and nothing is created', async () => {
    const before = await listSnapshot(ctx.sem);
    const err = await rejection(ctx.sem.withTickets('tenant:43', () => 'never'));
    expect(err).toBeInstanceOf(UnknownSemaphoreError);
    expect((err as UnknownSemaphoreError).names).toEqual(['tenant:43']);
    const err2 = await rejection(ctx.sem.hold(['tenant:42', 'tenant:44'], { wait: 1_000 }));
    expect(err2).toBeInstanceOf(UnknownSemaphoreError);
    expect((err2 as UnknownSemaphoreError).names).toEqual(['tenant:44']);
    expect(await rejection(ctx.sem.tryHold('tenant:45'))).toBeInstanceOf(UnknownSemaphoreError);
    expect(await listSnapshot(ctx.sem)).toBe(before);
    expect((await ctx.sem.status('tenant:42')).held).toBe(0);
  });
});
