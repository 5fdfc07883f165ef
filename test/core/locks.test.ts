// Mutex, shared/exclusive locks, and paused (capacity 0) semaphores.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupSchema } from '../helpers/db.js';
import { heldOf, rejection, within } from '../helpers/core.js';
import { InvalidArgumentError, SemaphoreBusyError, type PgSemaphore } from '../../src/index.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let other: PgSemaphore;
beforeAll(async () => {
  ctx = await setupSchema('locks');
  other = ctx.another();
});
afterAll(async () => {
  await other?.close();
  await ctx?.drop();
});

/** A latch the test opens by hand. */
function latch() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { open, opened };
}

describe('withMutex', () => {
  it('creates a one-ticket semaphore and excludes a second holder', async () => {
    const result = await ctx.sem.withMutex('export', async () => {
      expect(await ctx.sem.status('export')).toMatchObject({ tickets: 1, held: 1 });
      expect(await rejection(other.withMutex('export', () => 'second'))).toBeInstanceOf(SemaphoreBusyError);
      expect(await other.tryHold('export')).toBeNull();
      return 'first';
    });
    expect(result).toBe('first');
    expect(await heldOf(ctx.sem, 'export')).toBe(0);
    expect(await other.withMutex('export', () => 'now free')).toBe('now free');
  });

  it('a waiting second holder runs only after the first has finished', async () => {
    const inside = latch();
    const finish = latch();
    const events: string[] = [];
    const first = ctx.sem.withMutex('export', async () => {
      events.push('first in');
      inside.open();
      await finish.opened;
      events.push('first out');
    });
    await within(inside.opened, 5_000, 'the first holder to start');
    const second = other.withMutex('export', () => void events.push('second in'), { wait: 5_000 });
    // the second is waiting; nothing of it has run
    expect(await other.tryHold('export')).toBeNull();
    expect(events).toEqual(['first in']);
    finish.open();
    await within(Promise.all([first, second]), 5_000, 'both holders');
    expect(events).toEqual(['first in', 'first out', 'second in']);
  });

  it('on an existing semaphore of more than one ticket fails with an InvalidArgumentError naming the capacity, and holds nothing', async () => {
    await ctx.sem.make('wide', 3);
    let ran = false;
    const run = () => void (ran = true);
    const err = await rejection(ctx.sem.withMutex('wide', run));
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(err).toMatchObject({ name: 'InvalidArgumentError', argument: 'semaphore', received: 'wide' });
    expect((err as Error).message).toContain('"wide" has 3 tickets');
    expect((err as Error).message).toContain('withExclusive');
    expect(ran).toBe(false);
    expect(await heldOf(ctx.sem, 'wide')).toBe(0);
    expect(ctx.sem.openHolds).toBe(0);

    // also when its tickets are busy: it fails at once instead of waiting for them
    const busy = await other.hold('wide');
    const started = Date.now();
    const waited = await within(rejection(ctx.sem.withMutex('wide', run, { wait: 60_000 })), 10_000, 'withMutex to fail');
    expect(waited).toMatchObject({ name: 'InvalidArgumentError', argument: 'semaphore' });
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(await heldOf(ctx.sem, 'wide')).toBe(1);
    await busy.release();
    expect(ran).toBe(false);

    // a mutex is created with one ticket: createWith other than 1 is refused before anything is sent
    expect(await rejection(ctx.sem.withMutex('new-mutex', run, { createWith: 2 }))).toMatchObject({ argument: 'createWith', received: 2 });
    expect((await ctx.sem.list()).some((s) => s.name === 'new-mutex')).toBe(false);

    // shrunk to one ticket, it is a mutex again
    await ctx.sem.make('wide', 1);
    expect(await ctx.sem.withMutex('wide', () => 'alone')).toBe('alone');
  });
});

describe('withShared / withExclusive', () => {
  it('admits several shared holders at once', async () => {
    const n = 4;
    const allIn = latch();
    let inside = 0;
    const holders = Array.from({ length: n }, (_, i) =>
      (i % 2 ? other : ctx.sem).withShared('catalog', async () => {
        if (++inside === n) allIn.open();
        await allIn.opened; // every shared holder is inside at the same time
        return i;
      }),
    );
    expect(await within(Promise.all(holders), 10_000, `${n} shared holders to be inside together`)).toEqual([0, 1, 2, 3]);
    expect(await ctx.sem.status('catalog')).toMatchObject({ tickets: 100, held: 0 });
  });

  it('an exclusive holder excludes shared holders', async () => {
    await ctx.sem.withExclusive('catalog', async ({ tickets }) => {
      expect(tickets).toHaveLength(100);
      expect(await heldOf(ctx.sem, 'catalog')).toBe(100);
      expect(await rejection(other.withShared('catalog', () => 'shared'))).toBeInstanceOf(SemaphoreBusyError);
      expect(await rejection(other.withExclusive('catalog', () => 'exclusive'))).toBeInstanceOf(SemaphoreBusyError);
    });
    expect(await heldOf(ctx.sem, 'catalog')).toBe(0);
  });

  it('a shared holder excludes an exclusive holder, which then waits for it', async () => {
    const finish = latch();
    const inside = latch();
    const events: string[] = [];
    const shared = ctx.sem.withShared('catalog', async () => {
      events.push('shared in');
      inside.open();
      await finish.opened;
      events.push('shared out');
    });
    await within(inside.opened, 5_000, 'the shared holder to start');
    expect(await rejection(other.withExclusive('catalog', () => 'exclusive'))).toBeInstanceOf(SemaphoreBusyError);
    expect(await heldOf(ctx.sem, 'catalog')).toBe(1);
    const exclusive = other.withExclusive('catalog', () => void events.push('exclusive in'), { wait: 5_000 });
    finish.open();
    await within(Promise.all([shared, exclusive]), 10_000, 'shared then exclusive');
    expect(events).toEqual(['shared in', 'shared out', 'exclusive in']);
  });

  it('withShared respects an existing semaphore capacity', async () => {
    await ctx.sem.make('small-catalog', 2);
    await ctx.sem.withShared('small-catalog', async () => {
      await other.withShared('small-catalog', async () => {
        expect(await rejection(ctx.sem.withShared('small-catalog', () => 'third'))).toBeInstanceOf(SemaphoreBusyError);
      });
    });
  });
});

describe('a paused semaphore (capacity 0)', () => {
  it('makes every acquire busy until it grows', async () => {
    await ctx.sem.make('paused', 0);
    expect(await ctx.sem.status('paused')).toMatchObject({ tickets: 0, held: 0 });
    expect(await rejection(ctx.sem.hold('paused'))).toBeInstanceOf(SemaphoreBusyError);
    expect(await ctx.sem.tryHold('paused')).toBeNull();
    expect(await rejection(ctx.sem.withExclusive('paused', () => 'x'))).toBeInstanceOf(SemaphoreBusyError);
    expect(await rejection(ctx.sem.withMutex('paused', () => 'x'))).toBeInstanceOf(SemaphoreBusyError);
    expect(await rejection(ctx.sem.hold(['paused', 'export']))).toBeInstanceOf(SemaphoreBusyError);
    expect(await heldOf(ctx.sem, 'export')).toBe(0);
    const client = await ctx.admin.connect();
    try {
      await client.query('BEGIN');
      expect(await ctx.sem.tryAcquire(client, 'paused')).toBeNull();
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }

    await ctx.sem.make('paused', 1);
    expect(await ctx.sem.withTickets('paused', () => 'resumed')).toBe('resumed');
  });
});
