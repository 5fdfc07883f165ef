import type { Worker } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { limitProcessor } from '../../src/bullmq/index.js';
import { bullmqQueues } from '../helpers/bullmq.js';
import { setupSchema, waitFor } from '../helpers/db.js';

// A cancel (worker.cancelJob) that lands while the job's acquire call is in flight: the
// acquire comes back with a hold, but the processor must not start with an aborted signal.
// The acquire is held in flight deterministically by a table lock on the tickets.

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let bq: Awaited<ReturnType<typeof bullmqQueues>>;
const workers: Worker[] = [];
beforeAll(async () => {
  ctx = await setupSchema('inflight');
  bq = await bullmqQueues('redis', ['inflight-cancel']);
});
afterAll(async () => {
  await Promise.all(workers.map((w) => w.close(true).catch(() => undefined)));
  await bq?.cleanup();
  await ctx?.drop();
});

/** Blocks every acquire of this schema on a table lock until the returned function is called. */
async function blockAcquires(): Promise<() => Promise<void>> {
  const c = await ctx.admin.connect();
  await c.query('BEGIN');
  await c.query(`LOCK TABLE "${ctx.schema}".tickets IN ACCESS EXCLUSIVE MODE`);
  return async () => {
    await c.query('COMMIT');
    c.release();
  };
}

/** Some backend of this database waits on a lock in an acquire of this schema. */
async function acquireWaiting(): Promise<boolean> {
  const { rows } = await ctx.admin.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1`, [`%"${ctx.schema}".acquire%`]);
  return rows[0].n > 0;
}

describe('a cancel while the acquire is in flight', () => {
  it('fails the job with WaitCancelledError, never starts the processor, frees the ticket', async () => {
    await ctx.sem.make('inflight', 1);
    const q = bq.queues[0]!;
    let ran = 0;
    const processor = limitProcessor(ctx.sem, async () => void ran++, { semaphore: 'inflight' });
    const w = bq.worker(q.name, processor, { concurrency: 2 });
    workers.push(w);
    const unblock = await blockAcquires();
    let unblocked = false;
    try {
      const job = await q.add('x', {}, { attempts: 3 });
      await waitFor(acquireWaiting, { what: 'the acquire to wait on the table lock' });
      expect(w.cancelJob(job.id!, 'user asked')).toBe(true);
      await unblock();
      unblocked = true;
      await waitFor(async () => (await q.getJobCounts('failed')).failed === 1, { what: 'the job to fail' });
      const failed = (await q.getFailed())[0]!;
      expect(failed.failedReason).toMatch(/cancelled while waiting for a ticket of "inflight": user asked/);
      expect(failed.attemptsMade).toBe(1);
      expect(ran).toBe(0);
      expect(processor.stats.ran).toBe(0);
      await waitFor(async () => (await ctx.sem.status('inflight')).held === 0, { what: 'the ticket to be free' });
    } finally {
      if (!unblocked) await unblock();
    }
  });
});
