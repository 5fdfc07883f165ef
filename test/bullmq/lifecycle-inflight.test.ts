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
  bq = await bullmqQueues('redis', ['inflight-cancel', 'inflight-close']);
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

/**
 * Some backend of this database waits on a lock in an acquire of this schema: the SQL
 * function, or (once it has answered an instance) the plain statement that finds a ticket.
 */
async function acquireWaiting(): Promise<boolean> {
  const { rows } = await ctx.admin.query(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND (query LIKE $1 OR query LIKE $2)`,
    [`%"${ctx.schema}".acquire%`, `%FROM "${ctx.schema}".semaphores m LEFT JOIN LATERAL%`],
  );
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

describe('a close while the acquire is in flight and the ticket is busy', () => {
  it('puts the job back as stopping (no budget check, no attempt), not as an ordinary put-back', async () => {
    // paused (0 tickets): the acquire answers busy (a held ticket would keep the table lock waiting)
    await ctx.sem.make('inflight-close', 0);
    const q = bq.queues[1]!;
    // maxReschedules 0: an ordinary put-back would fail the job at once
    const processor = limitProcessor(ctx.sem, async () => undefined, { semaphore: 'inflight-close', localWait: 0, maxReschedules: 0 });
    const w = bq.worker(q.name, processor, { concurrency: 2 });
    workers.push(w);
    const unblock = await blockAcquires();
    let unblocked = false;
    try {
      await q.add('x', {}, { attempts: 3 });
      await waitFor(acquireWaiting, { what: 'the acquire to wait on the table lock' });
      const closing = w.close();
      await unblock();
      unblocked = true;
      await closing;
      const c = await q.getJobCounts('failed', 'delayed', 'wait', 'active');
      expect(c).toMatchObject({ failed: 0, active: 0 });
      expect((c.delayed ?? 0) + (c.wait ?? 0)).toBe(1);
      expect(processor.stats).toMatchObject({ ran: 0, reschedules: 1 });
      expect(await waitingRows()).toBe(0);
    } finally {
      if (!unblocked) await unblock();
    }
  });
});

async function waitingRows(): Promise<number> {
  return Number((await ctx.admin.query(`SELECT count(*) AS n FROM "${ctx.schema}".waiting_jobs`)).rows[0].n);
}
