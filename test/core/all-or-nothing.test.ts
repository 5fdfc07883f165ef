// Acquiring several tickets, or tickets of several semaphores, takes all of them or none;
// tryAcquire inside the caller's own transaction (Drizzle and plain pg).
import { sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/node-postgres';
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { databaseUrl, setupSchema } from '../helpers/db.js';
import { heldOf, rejection } from '../helpers/core.js';
import { InvalidArgumentError, SemaphoreBusyError, type Hold, type PgSemaphore, type TicketRequest } from '../../src/index.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let pool: pg.Pool;
let elsewhere: Hold;
let other: PgSemaphore;
beforeAll(async () => {
  ctx = await setupSchema('allornothing');
  pool = new pg.Pool({ connectionString: databaseUrl(), max: 3 });
  pool.on('error', () => undefined);
  await ctx.sem.make('a', 2);
  await ctx.sem.make('b', 2);
  await ctx.sem.make('c', 3);
  other = ctx.another();
  elsewhere = await other.hold('a');
});
afterAll(async () => {
  await elsewhere?.release();
  await other?.close();
  await pool?.end();
  await ctx?.drop();
});

async function heldCounts() {
  return { a: await heldOf(ctx.sem, 'a'), b: await heldOf(ctx.sem, 'b'), c: await heldOf(ctx.sem, 'c') };
}

const unsatisfiable: TicketRequest[] = [
  { name: 'a', tickets: 2 },
  [{ name: 'a', tickets: 2 }, 'b'],
  ['b', { name: 'a', tickets: 2 }],
  [{ name: 'b', tickets: 2 }, { name: 'a', tickets: 2 }],
  ['a', 'a', 'b'],
  ['b', 'b', 'a', 'a'],
  { name: 'a', tickets: 'all' },
  ['c', 'b', { name: 'a', tickets: 'all' }],
];

describe('all or nothing', () => {
  beforeEach(async () => {
    expect(await heldCounts()).toEqual({ a: 1, b: 0, c: 0 });
  });

  it('hold() of a request that cannot be fully satisfied takes nothing', async () => {
    for (const request of unsatisfiable) {
      expect(await rejection(ctx.sem.hold(request)), JSON.stringify(request)).toBeInstanceOf(SemaphoreBusyError);
      expect(await ctx.sem.tryHold(request), JSON.stringify(request)).toBeNull();
      expect(await heldCounts(), JSON.stringify(request)).toEqual({ a: 1, b: 0, c: 0 });
    }
    expect(ctx.sem.openHolds).toBe(0);
  });

  it('asking for more tickets than a semaphore has is an InvalidArgumentError that takes nothing', async () => {
    for (const request of [{ name: 'b', tickets: 3 }, ['c', { name: 'b', tickets: 3 }], ['b', 'b', 'b']] as TicketRequest[]) {
      const err = await rejection(ctx.sem.hold(request));
      expect(err, JSON.stringify(request)).toBeInstanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).argument).toBe('tickets');
      expect(await heldCounts()).toEqual({ a: 1, b: 0, c: 0 });
    }
  });

  it('a multi-semaphore request that can be satisfied takes every ticket asked for', async () => {
    const hold = await ctx.sem.hold(['a', { name: 'b', tickets: 2 }, 'c']);
    expect(hold.tickets).toHaveLength(4);
    expect(new Set(hold.tickets).size).toBe(4);
    expect(await heldCounts()).toEqual({ a: 2, b: 2, c: 1 });
    const status = await ctx.sem.status('b');
    expect(new Set(status.holders.map((h) => h.pid)).size).toBe(1);
    expect((await ctx.sem.status('c')).holders[0]!.pid).toBe(status.holders[0]!.pid);
    await hold.release();
    expect(await heldCounts()).toEqual({ a: 1, b: 0, c: 0 });
  });

  it('tryAcquire in a Drizzle transaction: all or nothing, more of the same semaphore without double counting, returned on commit', async () => {
    const db = drizzle(pool);
    const seen = await db.transaction(async (tx) => {
      for (const request of unsatisfiable) {
        expect(await ctx.sem.tryAcquire(tx, request), JSON.stringify(request)).toBeNull();
        expect(await heldCounts()).toEqual({ a: 1, b: 0, c: 0 });
      }
      const first = await ctx.sem.tryAcquire(tx, ['a', 'b'], { label: 'drizzle-tx' });
      expect(first).toMatchObject({ names: ['a', 'b'] });
      expect(first!.tickets).toHaveLength(2);
      expect(await heldCounts()).toEqual({ a: 2, b: 1, c: 0 });
      // one more of b: a different ticket, not the one already held
      const second = await ctx.sem.tryAcquire(tx, 'b');
      expect(second!.tickets).toHaveLength(1);
      expect(first!.tickets).not.toContainEqual(second!.tickets[0]);
      expect(await heldCounts()).toEqual({ a: 2, b: 2, c: 0 });
      // b is now exhausted by this very transaction: no double counting lets a third through
      expect(await ctx.sem.tryAcquire(tx, 'b')).toBeNull();
      expect(await ctx.sem.tryAcquire(tx, ['c', 'b'])).toBeNull();
      expect(await heldCounts()).toEqual({ a: 2, b: 2, c: 0 });
      // 'all' of a semaphore it partly holds takes the rest
      const all = await ctx.sem.tryAcquire(tx, { name: 'c', tickets: 1 });
      expect(all!.tickets).toHaveLength(1);
      const rest = await ctx.sem.tryAcquire(tx, { name: 'c', tickets: 'all' });
      expect(rest!.tickets).toHaveLength(2);
      expect(await heldCounts()).toEqual({ a: 2, b: 2, c: 3 });
      const { rows } = await tx.execute<{ xid: string | null }>(sql`SELECT txid_current_if_assigned()::text AS xid`);
      expect(rows[0]!.xid).toBeNull();
      return (await ctx.sem.status('b')).holders;
    });
    expect(seen.map((h) => h.label)).toEqual(['drizzle-tx', 'drizzle-tx']);
  });

  it('tryAcquire in a Drizzle transaction: tickets return on rollback', async () => {
    const db = drizzle(pool);
    const boom = new Error('roll back');
    const err = await rejection(
      db.transaction(async (tx) => {
        expect(await ctx.sem.tryAcquire(tx, [{ name: 'b', tickets: 2 }, 'a'])).not.toBeNull();
        expect(await heldCounts()).toEqual({ a: 2, b: 2, c: 0 });
        throw boom;
      }),
    );
    expect(err).toBe(boom);
  });

  it('tryAcquire with a pg client in BEGIN: commit and rollback both return the tickets', async () => {
    const client = await pool.connect();
    try {
      for (const end of ['COMMIT', 'ROLLBACK']) {
        await client.query('BEGIN');
        expect(await ctx.sem.tryAcquire(client, { name: 'a', tickets: 2 })).toBeNull();
        const got = await ctx.sem.tryAcquire(client, ['a', { name: 'c', tickets: 2 }]);
        expect(got!.tickets).toHaveLength(3);
        const more = await ctx.sem.tryAcquire(client, 'c');
        expect(more!.tickets).toHaveLength(1);
        expect(got!.tickets).not.toContainEqual(more!.tickets[0]);
        expect(await ctx.sem.tryAcquire(client, 'c')).toBeNull();
        expect(await ctx.sem.tryAcquire(client, 'a')).toBeNull();
        expect(await heldCounts()).toEqual({ a: 2, b: 0, c: 3 });
        await client.query(end);
        expect(await heldCounts(), end).toEqual({ a: 1, b: 0, c: 0 });
      }
    } finally {
      client.release();
    }
  });

  it('a failed tryAcquire keeps what the transaction already held', async () => {
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      expect(await ctx.sem.tryAcquire(client, 'b')).not.toBeNull();
      expect(await ctx.sem.tryAcquire(client, [{ name: 'b', tickets: 1 }, { name: 'a', tickets: 2 }])).toBeNull();
      expect(await heldCounts()).toEqual({ a: 1, b: 1, c: 0 });
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
  });
});
