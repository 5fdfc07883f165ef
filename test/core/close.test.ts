// close(): open holds are returned, and nothing acquired around it outlives it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupSchema, waitFor } from '../helpers/db.js';
import { heldOf, track, within } from '../helpers/core.js';
import type { Hold } from '../../src/index.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
const leaked: Hold[] = [];
beforeAll(async () => {
  ctx = await setupSchema('close');
  await ctx.sem.make('c', 1);
});
afterAll(async () => {
  for (const h of leaked) await h.release().catch(() => undefined);
  await ctx?.drop();
});

describe('close()', () => {
  it('rolls back open holds and their tickets are free', async () => {
    const sem = ctx.another();
    const hold = await sem.hold('c');
    expect(await heldOf(ctx.sem, 'c')).toBe(1);
    await within(sem.close(), 5_000, 'close()');
    expect(sem.openHolds).toBe(0);
    expect(await heldOf(ctx.sem, 'c')).toBe(0);
    await hold.release(); // harmless after close
  });

  it('a hold() waiting for a ticket settles soon after close() and holds nothing', async () => {
    const blocker = await ctx.sem.hold('c');
    const sem = ctx.another({ maxPollInterval: 200 });
    const p = track(sem.hold('c', { wait: 10_000 }));
    p.promise.then((h) => leaked.push(h)).catch(() => undefined);
    // two failed tries (2 round trips each: the acquire and its rollback) before it first sleeps
    await waitFor(() => sem.roundTrips >= 4, { timeout: 5_000, what: 'the hold to wait' });
    await within(sem.close(), 5_000, 'close()');
    await blocker.release();
    await within(p.promise.catch(() => undefined), 3_000, 'the waiting hold() to settle');
    expect(p.error).toBeInstanceOf(Error);
    expect(await heldOf(ctx.sem, 'c')).toBe(0);
  });

  it('a hold() in flight when close() is called settles, close() resolves, and no ticket stays held', async () => {
    const sem = ctx.another();
    await sem.pool.query('SELECT 1'); // an idle pooled connection, so the hold starts at once
    const p = track(sem.hold('c'));
    p.promise.then((h) => leaked.push(h)).catch(() => undefined);
    await new Promise((resolve) => setImmediate(resolve)); // its first statement is on the wire
    const closing = track(sem.close());
    await within(Promise.allSettled([closing.promise, p.promise]), 2_000, 'close() and the in-flight hold() to settle').catch(() => undefined);
    expect(closing.settled, 'close() never resolved').toBe(true);
    expect(p.settled, 'the in-flight hold() never settled').toBe(true);
    expect(await heldOf(ctx.sem, 'c'), 'a ticket taken during close() stayed held').toBe(0);
  });
});
