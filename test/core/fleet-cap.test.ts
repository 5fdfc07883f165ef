// The cap holds across OS processes: several children hammer one semaphore of capacity K.
// Checked three ways: the children's clock stamps, Postgres's own view (status()), and the
// exact overlap oracle (test/helpers/oracle.ts), which no clock can fool.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl, setupSchema } from '../helpers/db.js';
import { killAll, within } from '../helpers/core.js';
import { startChild, type Child } from '../helpers/processes.js';
import { clockOverlap, startOracle, type Oracle } from '../helpers/oracle.js';
import { oneFleetAtATime } from '../helpers/heavy.js';

const K = 3;
const CHILDREN = 4;
const ITERATIONS = 25;
const HOLD_MS = 12;

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let oracle: Oracle;
const children: Child[] = [];
oneFleetAtATime();

beforeAll(async () => {
  ctx = await setupSchema('fleet');
  // the semaphore's key may have K holders, each ticket (`ticket:<n>`) one
  oracle = await startOracle((key) => (key.startsWith('ticket:') ? 1 : K));
});
afterAll(async () => {
  await killAll(children);
  await oracle?.close();
  await ctx?.drop();
});

interface Interval {
  start: number;
  end: number;
  tickets: number[];
}

/** Largest number of tickets held at one instant, from [start, end] intervals. */
const maxOverlap = (intervals: Interval[]) => clockOverlap(intervals.map((i) => ({ start: i.start, end: i.end, weight: i.tickets.length })));

describe('the cap holds across processes', () => {
  it(`${CHILDREN} processes never hold more than K=${K} tickets at once`, async () => {
    const name = 'fleet-api';
    await ctx.sem.make(name, K);
    for (let i = 0; i < CHILDREN; i++) {
      children.push(
        startChild('core-hammer', { DATABASE_URL: databaseUrl(), SCHEMA: ctx.schema, SEM: name, ITERATIONS, HOLD_MS, ORACLE_PORT: oracle.port }),
      );
    }
    await within(Promise.all(children.map((c) => c.next((m: { type: string }) => m.type === 'ready', 60_000))), 60_000, 'children ready');

    // Sample Postgres's view while the children run.
    const samples: Array<{ held: number; distinct: number }> = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const status = await ctx.sem.status(name);
        samples.push({ held: status.held, distinct: new Set(status.holders.map((h) => h.ticket)).size });
      }
    })();

    for (const c of children) c.send({ type: 'go' });
    const reports = await within(
      Promise.all(children.map((c) => c.next((m: { type: string }) => m.type === 'done' || m.type === 'error'))),
      45_000,
      'children to finish',
    ).finally(() => (sampling = false));
    await sampler;

    for (const r of reports) expect(r, JSON.stringify(r)).toMatchObject({ type: 'done' });
    const intervals = reports.flatMap((r) => (r as unknown as { intervals: Interval[] }).intervals);
    expect(intervals).toHaveLength(CHILDREN * ITERATIONS);
    for (const i of intervals) {
      expect(i.tickets).toHaveLength(1);
      expect(i.end).toBeGreaterThanOrEqual(i.start);
    }

    // The oracle: never more than K holders at once, never one ticket twice, and K reached.
    expect(oracle.violations, JSON.stringify(oracle.violations.slice(0, 3))).toEqual([]);
    expect(oracle.errors).toEqual([]);
    expect(oracle.enters.get(name)).toBe(CHILDREN * ITERATIONS);
    expect(oracle.max.get(name)).toBe(K);
    expect(oracle.maxOf('ticket:')).toBe(1);
    expect(oracle.inflight).toBe(0);

    // No ticket id is held by two holders at overlapping times.
    const byTicket = new Map<number, Interval[]>();
    for (const i of intervals) {
      const list = byTicket.get(i.tickets[0]!) ?? [];
      list.push(i);
      byTicket.set(i.tickets[0]!, list);
    }
    expect(byTicket.size).toBeLessThanOrEqual(K);
    for (const [ticket, list] of byTicket) {
      list.sort((a, b) => a.start - b.start);
      for (let j = 1; j < list.length; j++) {
        expect(list[j]!.start, `ticket ${ticket} held twice at once`).toBeGreaterThanOrEqual(list[j - 1]!.end);
      }
    }

    // The cap held, and the test really had contention: concurrency reached K.
    expect(maxOverlap(intervals)).toBe(K);
    expect(samples.length).toBeGreaterThan(5);
    expect(Math.max(...samples.map((s) => s.held))).toBeLessThanOrEqual(K);
    for (const s of samples) expect(s.distinct).toBe(s.held);
    expect(Math.max(...samples.map((s) => s.held))).toBeGreaterThan(0);
    expect((await ctx.sem.status(name)).held).toBe(0);
  }, 120_000);
});
