import type { Job, Worker } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { limitProcessor } from '../../src/bullmq/index.js';
import type { Hold, PgSemaphore } from '../../src/index.js';
import { bullmqQueues } from '../helpers/bullmq.js';
import { listenerOf, waiterMarkerPids } from '../helpers/core.js';
import { setupSchema, waitFor } from '../helpers/db.js';

// A worker's LISTEN connection lost while its jobs wait for a ticket (a Postgres restart, a
// terminated backend): the gate watches once for as long as anyone waits there, so the
// connection must come back by itself, with the gate's marker, or the fleet's releases never
// name this process again and its jobs live on the fallback poll.

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let bq: Awaited<ReturnType<typeof bullmqQueues>>;
let blockerSem: PgSemaphore;
beforeAll(async () => {
  ctx = await setupSchema('listenloss');
  blockerSem = ctx.another();
  bq = await bullmqQueues('redis', ['listen-loss']);
});
afterAll(async () => {
  await bq?.cleanup();
  await blockerSem?.close();
  await ctx?.drop();
});

/** Backends holding a waiter marker of semaphore `name`. */
const markerHolders = (name: string) => waiterMarkerPids(ctx.admin, ctx.schema, name);

describe('a worker whose LISTEN connection is lost while its jobs wait', () => {
  it('gets it back with the gate\'s marker, and its waiting jobs run once the ticket is released', async () => {
    const name = 'listen-loss';
    await ctx.sem.make(name, 1);
    const q = bq.queues[0]!;
    let blocker: Hold | undefined = await blockerSem.hold(name);
    let w: Worker | undefined;
    try {
      const processor = limitProcessor(ctx.sem, async (job: Job) => job.id, { semaphore: name, localWait: 30_000 });
      w = bq.worker(q.name, processor, { concurrency: 2 });
      await q.addBulk([{ name: 'a', data: {} }, { name: 'b', data: {} }]);
      // both jobs wait in the gate, which watches through the listener
      await waitFor(async () => (await q.getActiveCount()) === 2 && (await markerHolders(name)).length === 1, { timeout: 10_000, what: 'the jobs to wait, watched' });
      const lost = listenerOf(ctx.sem).backendPid!;
      expect(await markerHolders(name)).toEqual([lost]);

      await ctx.admin.query('SELECT pg_terminate_backend($1)', [lost]);
      // no job left the gate, so nothing watched again: the listener reopened by itself
      await waitFor(
        async () => {
          const holders = await markerHolders(name);
          return holders.length === 1 && holders[0] !== lost && holders[0] === listenerOf(ctx.sem).backendPid;
        },
        { timeout: 5_000, what: "a new LISTEN connection holding the gate's marker" },
      );
      expect(await q.getActiveCount()).toBe(2);
      expect(processor.stats.ran).toBe(0);

      await blocker.release();
      blocker = undefined;
      await waitFor(async () => (await q.getCompletedCount()) === 2, { timeout: 10_000, what: 'both jobs to complete' });
      expect(processor.stats.ran).toBe(2);
      expect(await q.getFailedCount()).toBe(0);
    } finally {
      await blocker?.release();
      await w?.close();
    }
  });
});
