// The off switch: option `disabled` and environment PG_SEMAPHORE_DISABLED.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl, setupSchema } from '../helpers/db.js';
import { heldOf, killAll, within } from '../helpers/core.js';
import { startChild, type Child } from '../helpers/processes.js';
import { DISABLE_ENV, PgSemaphore } from '../../src/index.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
const children: Child[] = [];
beforeAll(async () => {
  ctx = await setupSchema('disabled');
  await ctx.sem.make('capped', 1);
});
afterAll(async () => {
  await killAll(children);
  await ctx?.drop();
});

describe('limiting switched off', () => {
  it('option disabled: withTickets runs without a ticket, and one warning is logged', async () => {
    const warnings: string[] = [];
    const off = new PgSemaphore({
      connection: databaseUrl(),
      schema: ctx.schema,
      disabled: true,
      logger: { warn: (m) => void warnings.push(m) },
    });
    try {
      expect(off.disabled).toBe(true);
      const blocker = await ctx.sem.hold('capped'); // the only ticket is taken...
      try {
        for (let i = 0; i < 3; i++) {
          // ...yet the disabled instance runs, several at once, without any ticket
          const results = await Promise.all(
            [1, 2].map((n) =>
              off.withTickets({ name: 'capped', tickets: 1 }, async ({ tickets, signal }) => {
                expect(tickets).toEqual([]);
                expect(signal.aborted).toBe(false);
                expect(await heldOf(ctx.sem, 'capped')).toBe(1);
                return n;
              }),
            ),
          );
          expect(results).toEqual([1, 2]);
        }
        const hold = await off.hold('capped');
        expect(hold.tickets).toEqual([]);
        await hold.release();
        // even a semaphore that does not exist
        expect(await off.withTickets('no-such-semaphore', () => 'ran')).toBe('ran');
      } finally {
        await blocker.release();
      }
      expect(await heldOf(ctx.sem, 'capped')).toBe(0);
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatch(/disabled/i);
    } finally {
      await off.close();
    }
  });

  it(`environment ${DISABLE_ENV}=1 (in a child process): withTickets runs without a ticket, one warning`, async () => {
    const child = startChild('core-disabled', { DATABASE_URL: databaseUrl(), SCHEMA: ctx.schema, SEM: 'capped', [DISABLE_ENV]: '1' });
    children.push(child);
    const inside = await child.next<{ type: string }>((m) => m.type === 'inside' || m.type === 'error', 60_000);
    expect(inside).toMatchObject({ type: 'inside' });
    // while the child runs its function "holding" 2 tickets of a 1-ticket semaphore, nothing is held
    expect(await heldOf(ctx.sem, 'capped')).toBe(0);
    const mine = await ctx.sem.hold('capped');
    child.send({ type: 'continue' });
    const done = await child.next<Record<string, unknown>>((m) => m.type === 'done' || m.type === 'error', 30_000);
    await mine.release();
    expect(done).toMatchObject({ type: 'done', disabled: true, ticketsSeen: [[], []], openHolds: 0 });
    expect(done.warnings).toHaveLength(1);
    expect(await within(child.exited, 10_000, 'the child to exit')).toBe(0);
  }, 90_000);

  it(`environment ${DISABLE_ENV} set in this process before construction (restored after)`, async () => {
    const saved = process.env[DISABLE_ENV];
    let on: PgSemaphore | undefined;
    let off: PgSemaphore | undefined;
    try {
      for (const value of ['1', 'true', 'YES']) {
        process.env[DISABLE_ENV] = value;
        const s = new PgSemaphore({ connection: databaseUrl(), schema: ctx.schema, logger: { warn: () => undefined } });
        expect(s.disabled, value).toBe(true);
        await s.close();
      }
      process.env[DISABLE_ENV] = '0';
      on = new PgSemaphore({ connection: databaseUrl(), schema: ctx.schema });
      expect(on.disabled).toBe(false);
      process.env[DISABLE_ENV] = '1';
      off = new PgSemaphore({ connection: databaseUrl(), schema: ctx.schema, logger: { warn: () => undefined } });
    } finally {
      if (saved === undefined) delete process.env[DISABLE_ENV];
      else process.env[DISABLE_ENV] = saved;
    }
    try {
      expect(off.disabled).toBe(true);
      // read at construction: the instance built while it was unset keeps limiting
      await on.withTickets('capped', async () => {
        expect(await heldOf(ctx.sem, 'capped')).toBe(1);
        expect(await off!.withTickets('capped', ({ tickets }) => tickets)).toEqual([]);
      });
    } finally {
      await on.close();
      await off.close();
    }
  });
});
