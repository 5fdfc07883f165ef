import { Job } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { limitProcessor } from '../../src/bullmq/index.js';
import { WorkerStop } from '../../src/bullmq/worker-stop.js';
import { bullmqQueues } from '../helpers/bullmq.js';
import { setupSchema, waitFor } from '../helpers/db.js';

// A job built from a Queue (queue.add()'s result, Job.fromId(queue, id)) carries the Queue as
// its handle. A Queue has on() and an async isPaused() too: it must not count as a stopping
// Worker (a pending Promise is truthy), or such a job would be put back forever.

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let bq: Awaited<ReturnType<typeof bullmqQueues>>;
beforeAll(async () => {
  ctx = await setupSchema('wstopq');
  bq = await bullmqQueues('redis', ['wstopq', 'wstopq-served', 'wstopq-budget']);
});
afterAll(async () => {
  await bq?.cleanup();
  await ctx?.drop();
});

describe('WorkerStop with a real BullMQ Queue', () => {
  it('is no Worker: a job made from a Queue is not stopping and runs when a ticket is free', async () => {
    const q = bq.queues[0]!;
    expect(WorkerStop.of(q)).toBeUndefined();
    await ctx.sem.make('wstopq', 1);
    const processor = limitProcessor(ctx.sem, async () => 'ran', { semaphore: 'wstopq' });
    const added = await q.add('x', {});
    expect(await processor(added, undefined, undefined)).toBe('ran');
    const fetched = (await Job.fromId(q, added.id!))!;
    expect(await processor(fetched, undefined, undefined)).toBe('ran');
    expect(processor.stats).toMatchObject({ ran: 2, reschedules: 0 });
  });

  it('is a Worker for a real Worker, with `stopping` a boolean', async () => {
    const w = bq.worker('wstopq-w', async () => undefined, { autorun: false });
    try {
      const stop = WorkerStop.of(w)!;
      expect(stop).toBeDefined();
      expect(stop.stopping).toBe(false);
    } finally {
      await w.close();
    }
    expect(WorkerStop.of(w)!.stopping).toBe(true);
  });
});

describe('a job served on arrival', () => {
  it('starts no pause check and makes no combined signal (only a job that waits does)', async () => {
    await ctx.sem.make('wstopq-served', 5);
    const q = bq.queues[1]!;
    const use = vi.spyOn(WorkerStop.prototype, 'use');
    const processor = limitProcessor(ctx.sem, async () => 'ran', { semaphore: 'wstopq-served' });
    const w = bq.worker(q.name, processor, { concurrency: 2 });
    try {
      await q.addBulk(Array.from({ length: 6 }, () => ({ name: 'x', data: {} })));
      await waitFor(async () => (await q.getJobCounts('completed')).completed === 6, { what: '6 jobs to complete' });
      expect(processor.stats.ran).toBe(6);
      expect(use).not.toHaveBeenCalled();
    } finally {
      use.mockRestore();
      await w.close();
    }
  });
});

describe('a job that fails its reschedule budget', () => {
  it('is forgotten in the waiting list it was recorded in', async () => {
    await ctx.sem.make('wstopq-budget', 1);
    const q = bq.queues[2]!;
    const blocker = await ctx.sem.hold('wstopq-budget');
    const processor = limitProcessor(ctx.sem, async () => 'ran', { semaphore: 'wstopq-budget', localWait: 0, maxReschedules: 1, backoff: { delay: 20, maxDelay: 50 } });
    const w = bq.worker(q.name, processor, { concurrency: 1 });
    const waitingRows = async () => Number((await ctx.admin.query(`SELECT count(*) AS n FROM "${ctx.schema}".waiting_jobs`)).rows[0].n);
    try {
      await q.add('x', {});
      await waitFor(async () => (await q.getJobCounts('failed')).failed === 1, { what: 'the job to fail its budget' });
      expect((await q.getFailed())[0]!.failedReason).toMatch(/put back|reschedul/i);
      expect(processor.stats.reschedules).toBe(1);
      await waitFor(async () => (await waitingRows()) === 0, { timeout: 5_000, what: 'the waiting list to be empty' });
    } finally {
      await w.close();
      await blocker.release();
    }
  });
});
