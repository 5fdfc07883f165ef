import type { Job, Worker } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { limitProcessor } from '../../src/bullmq/index.js';
import { bullmqQueues, type Backend } from '../helpers/bullmq.js';
import { databaseUrl, setupSchema, waitFor } from '../helpers/db.js';
import { startFakeApi } from '../helpers/fake-api.js';
import { startChild, type Child } from '../helpers/processes.js';
import { oneFleetAtATime } from '../helpers/heavy.js';
import { startSlowLink } from '../helpers/slow-link.js';

// Shutting workers down while jobs wait in them for a ticket (issue 13, part 3): close()
// returns promptly without starting the waiting jobs, which go back to the queue without
// using an attempt and are completed exactly once by the next worker; close(true) too; and a
// fleet of OS processes restarted one by one loses and fails nothing. The fake API checks the
// cap and counts every call per job.

/** A queue of either backend. */
type Queue = Awaited<ReturnType<typeof bullmqQueues>>['queues'][number];

const N = 15; // jobs waiting in the closing worker
const LOCAL_WAIT = 10_000; // "promptly" is measured against this

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let api: Awaited<ReturnType<typeof startFakeApi>>;
oneFleetAtATime();

beforeAll(async () => {
  ctx = await setupSchema('lifeclose');
  api = await startFakeApi(5);
});
afterAll(async () => {
  await api?.close();
  await ctx?.drop();
});

/** The processor body: one call of the fake API, named by the job. */
const callApi = async (job: Job<{ first?: boolean }>, _token: string | undefined, signal: AbortSignal) => {
  const res = await fetch(`${api.url}/call?job=${encodeURIComponent(`${job.queueName}:${job.id}`)}`, { signal });
  await res.text();
  return { attemptsMade: job.attemptsMade };
};

async function counts(q: Queue) {
  const c = await q.getJobCounts('active', 'wait', 'delayed', 'prioritized', 'completed', 'failed');
  return { active: c.active ?? 0, queued: (c.wait ?? 0) + (c.delayed ?? 0) + (c.prioritized ?? 0), completed: c.completed ?? 0, failed: c.failed ?? 0 };
}

/** A second worker completes every job of the queue; each called the API exactly once and none used an attempt. */
async function completeWithNewWorker(bq: Awaited<ReturnType<typeof bullmqQueues>>, q: Queue, semName: string, jobs: number, workerOpts = {}) {
  const processor = limitProcessor(ctx.sem, callApi, { semaphore: semName });
  const w = bq.worker(q.name, processor, { concurrency: 4, ...workerOpts });
  try {
    await waitFor(async () => { const c = await counts(q); if (process.env.DEBUG_LIFE) console.log(JSON.stringify(c), JSON.stringify(processor.stats), (await q.getActive(0, 0))[0]?.id); return c.completed >= jobs; }, { timeout: 30_000, interval: 1000, what: `${jobs} jobs to complete` });
  } finally {
    await w.close();
  }
  expect(await counts(q)).toEqual({ active: 0, queued: 0, completed: jobs, failed: 0 });
  const completed = await q.getCompleted(0, -1);
  expect(completed.map((j) => j.returnvalue.attemptsMade)).toEqual(Array(jobs).fill(0));
  const calls = completed.map((j) => api.calls.get(`${q.name}:${j.id}`));
  expect(calls).toEqual(Array(jobs).fill(1));
}

describe.each<Backend>(['redis', 'postgres'])('worker.close() on BullMQ %s while jobs wait for a ticket', (backend) => {
  let bq: Awaited<ReturnType<typeof bullmqQueues>>;
  const workers: Worker[] = [];
  beforeAll(async () => {
    bq = await bullmqQueues(backend, ['close-elsewhere', 'close-here', 'close-force', 'close-cancel', 'close-slow-transaction', 'close-slow-session'].map((n) => `${backend}-${n}`));
  });
  afterAll(async () => {
    await Promise.all(workers.map((w) => w.close(true).catch(() => undefined)));
    await bq?.cleanup();
  });
  const queue = (name: string) => bq.queues.find((q) => q.name === `${backend}-${name}`)!;

  it(`returns promptly with ${N} jobs waiting for a ticket held elsewhere; none starts; a new worker completes each once`, async () => {
    const sem = `close-elsewhere-${backend}`;
    await ctx.sem.make(sem, 1);
    const q = queue('close-elsewhere');
    const blocker = await ctx.sem.hold(sem);
    const processor = limitProcessor(ctx.sem, callApi, { semaphore: sem, localWait: LOCAL_WAIT });
    const w = bq.worker(q.name, processor, { concurrency: 16 });
    workers.push(w);
    await q.addBulk(Array.from({ length: N }, (_, i) => ({ name: 'x', data: { i } })));
    await waitFor(async () => (await counts(q)).active === N, { timeout: 15_000, what: `${N} jobs to wait in the worker` });

    const started = performance.now();
    await w.close();
    const closeMs = performance.now() - started;
    console.log(`[${backend}] close() with ${N} jobs waiting, ticket held elsewhere: ${closeMs.toFixed(0)} ms (localWait ${LOCAL_WAIT} ms)`);
    expect(closeMs).toBeLessThan(LOCAL_WAIT / 5);
    expect(processor.stats.ran).toBe(0);
    expect(processor.stats.reschedules).toBe(N);
    // back in the queue, nothing failed, nothing left active
    expect(await counts(q)).toEqual({ active: 0, queued: N, completed: 0, failed: 0 });

    await blocker.release();
    await completeWithNewWorker(bq, q, sem, N);
    expect(api.max).toBeLessThanOrEqual(1);
  });

  it(`does not run the local waiters first when the closing worker holds the ticket`, async () => {
    const sem = `close-here-${backend}`;
    await ctx.sem.make(sem, 1);
    const q = queue('close-here');
    let releaseFirst!: () => void;
    const firstMayEnd = new Promise<void>((r) => (releaseFirst = r));
    let firstStarted!: () => void;
    const firstRuns = new Promise<void>((r) => (firstStarted = r));
    const processor = limitProcessor<{ first?: boolean }>(
      ctx.sem,
      async (job, token, signal) => {
        if (job.data.first) {
          firstStarted();
          await firstMayEnd;
        }
        return callApi(job, token, signal);
      },
      { semaphore: sem, localWait: LOCAL_WAIT },
    );
    const w = bq.worker(q.name, processor, { concurrency: 16 });
    workers.push(w);
    await q.add('x', { first: true });
    await firstRuns;
    expect((await ctx.sem.status(sem)).held).toBe(1);
    await q.addBulk(Array.from({ length: N - 1 }, (_, i) => ({ name: 'x', data: { i } })));
    await waitFor(async () => (await counts(q)).active === N, { timeout: 15_000, what: `${N - 1} jobs to wait behind the first` });

    const closing = w.close();
    // close() waits for the running job (BullMQ's contract) but puts the waiting ones back at once
    await waitFor(async () => (await counts(q)).queued === N - 1, { timeout: 5_000, what: 'the waiting jobs to be put back' });
    const started = performance.now();
    releaseFirst();
    await closing;
    const closeMs = performance.now() - started;
    console.log(`[${backend}] close() with ${N - 1} jobs waiting behind the closing worker's own hold: ${closeMs.toFixed(0)} ms after the running job was let go`);
    expect(closeMs).toBeLessThan(LOCAL_WAIT / 5);
    expect(processor.stats.ran).toBe(1);
    expect(processor.stats.handoffs).toBe(0);
    expect(await counts(q)).toEqual({ active: 0, queued: N - 1, completed: 1, failed: 0 });
    expect((await ctx.sem.status(sem)).held).toBe(0);

    await completeWithNewWorker(bq, q, sem, N);
  });

  it.each(['transaction', 'session'] as const)('close() resolves only once the running job\'s ticket is back, even when the release\'s round trip is slow (%s holding)', async (holding) => {
    const sem = `close-slow-${holding}-${backend}`;
    await ctx.sem.make(sem, 1);
    const q = queue(`close-slow-${holding}`);
    // the worker's semaphore reaches Postgres through a link that is slowed once the job runs:
    // its release takes longer than BullMQ's completion of the job
    const pgUrl = new URL(databaseUrl());
    const link = await startSlowLink({ host: pgUrl.hostname.replace(/^\[|\]$/g, ''), port: Number(pgUrl.port || 5432) });
    const slowSem = ctx.another({ connection: link.via(databaseUrl()), holding });
    let releaseJob!: () => void;
    const jobMayEnd = new Promise<void>((r) => (releaseJob = r));
    let bodyStarted!: () => void;
    const running = new Promise<void>((r) => (bodyStarted = r));
    let w: Worker | undefined;
    try {
      const processor = limitProcessor<{ first?: boolean }>(
        slowSem,
        async (job, token, signal) => {
          bodyStarted();
          await jobMayEnd;
          return callApi(job, token, signal);
        },
        { semaphore: sem },
      );
      w = bq.worker(q.name, processor, { concurrency: 1 });
      workers.push(w);
      await q.add('x', {});
      // the body runs (a ticket seen held in Postgres is not yet a running job: a close() then
      // puts the job back before it starts)
      await running;
      expect((await ctx.sem.status(sem)).held).toBe(1);

      const closing = w.close();
      link.delayMs = 300;
      const released = performance.now();
      releaseJob();
      await closing;
      // the link did slow the release, and close() waited for it
      expect(performance.now() - released).toBeGreaterThanOrEqual(250);
      expect(processor.stats.ran).toBe(1);
      expect(await counts(q)).toEqual({ active: 0, queued: 0, completed: 1, failed: 0 });
      // read on a connection of its own, not through the slow link
      expect((await ctx.sem.status(sem)).held).toBe(0);
    } finally {
      releaseJob();
      link.delayMs = 0;
      await w?.close();
      await slowSem.close();
      await link.close();
    }
  });

  it('cancelAllJobs() then close() (the shutdown of BullMQ\'s cancellation guide) puts the waiting jobs back; none fails', async () => {
    const sem = `close-cancel-${backend}`;
    await ctx.sem.make(sem, 1);
    const q = queue('close-cancel');
    const blocker = await ctx.sem.hold(sem);
    const processor = limitProcessor(ctx.sem, callApi, { semaphore: sem, localWait: LOCAL_WAIT });
    const w = bq.worker(q.name, processor, { concurrency: 16 });
    workers.push(w);
    await q.addBulk(Array.from({ length: N }, (_, i) => ({ name: 'x', data: { i }, opts: { attempts: 3 } })));
    await waitFor(async () => (await counts(q)).active === N, { timeout: 15_000, what: `${N} jobs to wait in the worker` });

    w.cancelAllJobs('shutdown');
    await w.close();
    expect(processor.stats.ran).toBe(0);
    expect(await counts(q)).toEqual({ active: 0, queued: N, completed: 0, failed: 0 });

    await blocker.release();
    await completeWithNewWorker(bq, q, sem, N);
  });

  it('close(true) returns at once; the waiting jobs come back without using an attempt and complete once', async () => {
    const sem = `close-force-${backend}`;
    await ctx.sem.make(sem, 1);
    const q = queue('close-force');
    const blocker = await ctx.sem.hold(sem);
    const processor = limitProcessor(ctx.sem, callApi, { semaphore: sem, localWait: LOCAL_WAIT });
    // a short lock and stall check, so a job whose put-back the forced close cut off is found
    // stalled quickly (the stall check's own interval also bounds the next worker's first check)
    const w = bq.worker(q.name, processor, { concurrency: 16, lockDuration: 2_000, stalledInterval: 500 });
    workers.push(w);
    await q.addBulk(Array.from({ length: N }, (_, i) => ({ name: 'x', data: { i } })));
    await waitFor(async () => (await counts(q)).active === N, { timeout: 15_000, what: `${N} jobs to wait in the worker` });

    const started = performance.now();
    await w.close(true);
    const closeMs = performance.now() - started;
    expect(closeMs).toBeLessThan(LOCAL_WAIT / 5);
    expect(processor.stats.ran).toBe(0);
    await blocker.release();
    // let the put-backs that were sent land before counting them
    await waitFor(async () => processor.stats.reschedules + (await counts(q)).active >= N, { timeout: 5_000, what: 'the put-backs to settle' });
    const left = await counts(q);
    console.log(`[${backend}] close(true) with ${N} jobs waiting: ${closeMs.toFixed(0)} ms; put back ${left.queued}, left active (stall check brings them back) ${left.active}`);
    expect(left.queued + left.active).toBe(N);
    await completeWithNewWorker(bq, q, sem, N, { stalledInterval: 500 });
    // a job that came back through the stall check was counted as stalled once, never failed
    const completed = await q.getCompleted(0, -1);
    expect(completed.every((j) => (j.stalledCounter ?? 0) <= 1)).toBe(true);
  });
});

describe('a rolling restart of a fleet while jobs wait', () => {
  const CAP = 2;
  const PROCESSES = 3;
  const JOBS = 300;

  it(`restarts ${PROCESSES} worker processes one by one: all ${JOBS} jobs complete once, none fails, the cap holds`, async () => {
    await ctx.sem.make('api', CAP);
    const bq = await bullmqQueues('redis', ['rolling']);
    const q = bq.queues[0]!;
    const env = { ...bq.env, SEM_SCHEMA: ctx.schema, QUEUES: 'rolling', API_URL: api.url, CONCURRENCY: 8, LOCAL_WAIT: LOCAL_WAIT };
    const all: Child[] = [];
    const start = async () => {
      const c = startChild('bullmq-worker', env);
      all.push(c);
      await c.next((m: { type: string }) => m.type === 'ready', 60_000);
      return c;
    };
    const callsBefore = api.calls.size;
    try {
      const live = await Promise.all(Array.from({ length: PROCESSES }, start));
      await q.addBulk(Array.from({ length: JOBS }, (_, i) => ({ name: 'call', data: { i, hold: 60 } })));
      const closeMs: number[] = [];
      for (let i = 0; i < PROCESSES; i++) {
        // restart while jobs wait in the workers: more active than the cap lets hold
        await waitFor(async () => (await counts(q)).active > CAP + 4, { timeout: 10_000, what: 'jobs waiting in the workers' });
        const c = live[i]!;
        c.send({ type: 'close' });
        const stats = await c.next<{ type: string; closeMs: number }>((m) => m.type === 'stats', 30_000);
        closeMs.push(stats.closeMs);
        await c.exited;
        live[i] = await start();
      }
      await waitFor(async () => (await counts(q)).completed + (await counts(q)).failed >= JOBS, { timeout: 90_000, interval: 100, what: 'all jobs to finish' });
      console.log(`[rolling] ${PROCESSES} restarts, close() took ${closeMs.join(', ')} ms (each waits for its running jobs, 60 ms calls)`);
      expect(await counts(q)).toEqual({ active: 0, queued: 0, completed: JOBS, failed: 0 });
      const completed = await q.getCompleted(0, -1);
      expect(completed.every((j) => j.returnvalue.attemptsMade === 0)).toBe(true);
      expect(completed.map((j) => api.calls.get(`rolling:${j.id}`))).toEqual(Array(JOBS).fill(1));
      expect(api.calls.size - callsBefore).toBe(JOBS);
      expect(api.max).toBeLessThanOrEqual(CAP);
      for (const c of live) c.send({ type: 'close' });
      await Promise.all(live.map((c) => c.exited));
      expect((await ctx.sem.status('api')).held).toBe(0);
    } finally {
      for (const c of all) c.kill();
      await Promise.all(all.map((c) => c.exited));
      await bq.cleanup();
    }
  }, 150_000);
});
