// Crashed and hung holders: their tickets come free without their help.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl, setupSchema, waitFor } from '../helpers/db.js';
import { heldOf, killAll, within } from '../helpers/core.js';
import { startChild, type Child } from '../helpers/processes.js';

const LIVENESS = 1_500;
let ctx: Awaited<ReturnType<typeof setupSchema>>;
const children: Child[] = [];
let crashChild: Child;
let hangChild: Child;
beforeAll(async () => {
  ctx = await setupSchema('liveness');
  await ctx.sem.make('crash', 2);
  await ctx.sem.make('hang', 1);
  // Both children start at once (start-up is most of their cost); each test drives one.
  crashChild = startChild('core-holder', { DATABASE_URL: databaseUrl(), SCHEMA: ctx.schema, SEM: 'crash', TICKETS: 2 });
  hangChild = startChild('core-holder', { DATABASE_URL: databaseUrl(), SCHEMA: ctx.schema, SEM: 'hang', LIVENESS });
  children.push(crashChild, hangChild);
});
afterAll(async () => {
  await killAll(children);
  await ctx?.drop();
});

type Msg = { type: string; [k: string]: unknown };

describe('a crashed holder', () => {
  it('kill -9: its tickets are free again within 1 s and another instance can hold them', async () => {
    const child = crashChild;
    const held = await child.next<Msg>((m) => m.type === 'held' || m.type === 'rejected', 60_000);
    expect(held.type).toBe('held');
    expect(held.tickets).toHaveLength(2);

    const status = await ctx.sem.status('crash');
    expect(status.held).toBe(2);
    expect(status.holders.every((h) => h.pid === held.pid)).toBe(true);
    expect(await ctx.sem.tryHold('crash')).toBeNull();

    child.kill('SIGKILL');
    const killedAt = Date.now();
    await waitFor(async () => (await heldOf(ctx.sem, 'crash')) === 0, { timeout: 1_000, interval: 10, what: 'tickets of a killed holder to be free' });
    expect(Date.now() - killedAt).toBeLessThan(1_000);

    const other = ctx.another();
    try {
      const hold = await other.hold({ name: 'crash', tickets: 2 });
      expect([...hold.tickets].sort()).toEqual([...(held.tickets as number[])].sort());
      await hold.release();
    } finally {
      await other.close();
    }
    await child.exited;
  }, 90_000);
});

describe('a hung holder', () => {
  it('SIGSTOP: after the liveness window another instance gets the ticket; on SIGCONT its signal fires with TicketLostError', async () => {
    const child = hangChild;
    const held = await child.next<Msg>((m) => m.type === 'held' || m.type === 'rejected', 60_000);
    expect(held.type).toBe('held');
    expect(await heldOf(ctx.sem, 'hang')).toBe(1);

    child.kill('SIGSTOP');
    const stoppedAt = Date.now();
    const other = ctx.another();
    try {
      // The stopped child cannot release; only Postgres ending its session frees the ticket.
      const hold = (await waitFor(() => other.tryHold('hang'), { timeout: LIVENESS + 3_000, interval: 50, what: 'the hung holder to lose its ticket' }))!;
      const freedAfter = Date.now() - stoppedAt;
      expect(freedAfter).toBeGreaterThanOrEqual(LIVENESS / 2);
      expect(hold.tickets).toEqual(held.tickets);
      const status = await other.status('hang');
      expect(status.holders.map((h) => h.pid)).not.toContain(held.pid);

      child.kill('SIGCONT');
      const aborted = await child.next<Msg>((m) => m.type === 'aborted', 10_000);
      expect(aborted).toMatchObject({ aborted: true, reason: 'TicketLostError' });
      const rejected = await child.next<Msg>((m) => m.type === 'rejected' || m.type === 'released', 10_000);
      expect(rejected).toMatchObject({ type: 'rejected', name: 'TicketLostError' });
      expect(await within(child.exited, 10_000, 'the child to exit')).toBe(0);

      // The new holder was never disturbed.
      expect(hold.lost).toBe(false);
      expect(await heldOf(ctx.sem, 'hang')).toBe(1);
      await hold.release();
      expect(await heldOf(ctx.sem, 'hang')).toBe(0);
    } finally {
      await other.close();
    }
  }, 90_000);
});
