// Resizing and destroying: shrink and destroy wait for holders, growing is immediate,
// concurrent make calls are serialised.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupSchema, waitFor } from '../helpers/db.js';
import { heldOf, rejection, track, waitingTicketLocks, within } from '../helpers/core.js';
import { SemaphoreTimeoutError, type PgSemaphore } from '../../src/index.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let other: PgSemaphore;
beforeAll(async () => {
  ctx = await setupSchema('resize');
  other = ctx.another();
});
afterAll(async () => {
  await other?.close();
  await ctx?.drop();
});

/** The semaphore's row and ticket rows, read from the tables directly. */
async function rowsOf(name: string) {
  const { rows: sem } = await ctx.admin.query<{ id: number; tickets: number }>(`SELECT id, tickets FROM "${ctx.schema}".semaphores WHERE name = $1`, [name]);
  if (!sem[0]) return undefined;
  const { rows } = await ctx.admin.query<{ no: number }>(`SELECT no FROM "${ctx.schema}".tickets WHERE semaphore_id = $1 ORDER BY no`, [sem[0].id]);
  return { tickets: sem[0].tickets, nos: rows.map((r) => r.no) };
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

/** Waits until some backend waits on a ticket lock of this schema (a blocked shrink or destroy). */
function blockedOnTicket() {
  return waitFor(async () => (await waitingTicketLocks(ctx.admin, ctx.schema)) > 0, { timeout: 5_000, interval: 10, what: 'a shrink/destroy to wait on a held ticket' });
}

describe('shrinking', () => {
  it('make(name, smaller) waits until the holder returns the removed tickets', async () => {
    await ctx.sem.make('shrink', 3);
    const hold = await other.hold({ name: 'shrink', tickets: 3 });
    const shrink = track(ctx.sem.make('shrink', 1));
    await blockedOnTicket();
    expect(shrink.settled).toBe(false);
    expect(await rowsOf('shrink')).toEqual({ tickets: 3, nos: [1, 2, 3] });
    expect(await heldOf(ctx.sem, 'shrink')).toBe(3);

    const releasedAt = Date.now();
    await hold.release();
    await within(shrink.promise, 5_000, 'the shrink to finish after release');
    expect(shrink.at!).toBeGreaterThanOrEqual(releasedAt);
    expect(await rowsOf('shrink')).toEqual({ tickets: 1, nos: [1] });
    expect(await waitingTicketLocks(ctx.admin, ctx.schema)).toBe(0);
  });

  it('shrinking away only free tickets does not wait', async () => {
    await ctx.sem.make('shrink-free', 3);
    const hold = await other.hold('shrink-free'); // ticket no 1, which stays
    await ctx.sem.make('shrink-free', 1, { timeout: 0 });
    expect(await rowsOf('shrink-free')).toEqual({ tickets: 1, nos: [1] });
    expect(hold.lost).toBe(false);
    expect(await heldOf(ctx.sem, 'shrink-free')).toBe(1);
    await hold.release();
  });

  it('make(name, smaller, { timeout }) rejects with SemaphoreTimeoutError and leaves holder and semaphore alone', async () => {
    await ctx.sem.make('shrink-timeout', 2);
    const hold = await other.hold({ name: 'shrink-timeout', tickets: 2 });
    const started = Date.now();
    const err = await rejection(ctx.sem.make('shrink-timeout', 0, { timeout: 200 }));
    expect(err).toBeInstanceOf(SemaphoreTimeoutError);
    expect(err).toMatchObject({ name: 'SemaphoreTimeoutError', operation: 'make', names: ['shrink-timeout'] });
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    expect(hold.lost).toBe(false);
    expect(await heldOf(ctx.sem, 'shrink-timeout')).toBe(2);
    expect(await rowsOf('shrink-timeout')).toEqual({ tickets: 2, nos: [1, 2] });
    await hold.release();
    await ctx.sem.make('shrink-timeout', 0, { timeout: 200 });
    expect(await rowsOf('shrink-timeout')).toEqual({ tickets: 0, nos: [] });
  });
});

describe('destroying', () => {
  it('destroy waits until every ticket is returned', async () => {
    await ctx.sem.make('doomed', 2);
    const hold = await other.hold('doomed');
    const destroy = track(ctx.sem.destroy('doomed'));
    await blockedOnTicket();
    expect(destroy.settled).toBe(false);
    expect(await rowsOf('doomed')).toEqual({ tickets: 2, nos: [1, 2] });

    const releasedAt = Date.now();
    await hold.release();
    expect(await within(destroy.promise, 5_000, 'destroy to finish after release')).toBe(true);
    expect(destroy.at!).toBeGreaterThanOrEqual(releasedAt);
    expect(await rowsOf('doomed')).toBeUndefined();
    expect((await ctx.sem.list()).map((s) => s.name)).not.toContain('doomed');
  });

  it('destroy with { timeout } rejects with SemaphoreTimeoutError and leaves holder and semaphore alone', async () => {
    await ctx.sem.make('doomed-timeout', 2);
    const hold = await other.hold('doomed-timeout');
    const err = await rejection(ctx.sem.destroy('doomed-timeout', { timeout: 200 }));
    expect(err).toBeInstanceOf(SemaphoreTimeoutError);
    expect(err).toMatchObject({ operation: 'destroy', names: ['doomed-timeout'] });
    expect(hold.lost).toBe(false);
    expect(await heldOf(ctx.sem, 'doomed-timeout')).toBe(1);
    expect(await rowsOf('doomed-timeout')).toEqual({ tickets: 2, nos: [1, 2] });
    await hold.release();
    expect(await ctx.sem.destroy('doomed-timeout', { timeout: 200 })).toBe(true);
    expect(await ctx.sem.destroy('doomed-timeout')).toBe(false);
  });
});

describe('growing', () => {
  it('is immediate while every ticket is held', async () => {
    await ctx.sem.make('grow', 2);
    const hold = await other.hold({ name: 'grow', tickets: 2 });
    await within(ctx.sem.make('grow', 5, { timeout: 0 }), 2_000, 'growing');
    expect(await rowsOf('grow')).toEqual({ tickets: 5, nos: range(5) });
    const more = await ctx.sem.hold({ name: 'grow', tickets: 3 });
    expect(await heldOf(ctx.sem, 'grow')).toBe(5);
    await more.release();
    await hold.release();
  });
});

describe('concurrent make calls', () => {
  it('are serialised: the final ticket count is one of the sizes asked for and the ticket rows match it', async () => {
    const sizes = [3, 7, 1, 9, 2, 10, 4, 0, 8, 5];
    for (let round = 0; round < 3; round++) {
      // half on each instance, so they run on different connections at once
      await Promise.all(sizes.map((n, i) => (i % 2 ? other : ctx.sem).make('race', n, { timeout: 5_000 })));
      const rows = await rowsOf('race');
      expect(sizes).toContain(rows!.tickets);
      expect(rows!.nos).toEqual(range(rows!.tickets));
      expect((await ctx.sem.status('race')).tickets).toBe(rows!.tickets);
      sizes.reverse();
    }
  });
});
