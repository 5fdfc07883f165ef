import { fileURLToPath } from 'node:url';
import { FlowProducer, createPostgresBackend, type Job, type Worker } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { limitProcessor, WaitCancelledError } from '../../src/bullmq/index.js';
import { bullmqQueues, type Backend } from '../helpers/bullmq.js';
import { setupSchema, waitFor } from '../helpers/db.js';
import { startFakeApi } from '../helpers/fake-api.js';
import { oneFleetAtATime } from '../helpers/heavy.js';

// BullMQ's own features under the wrapper (issue 13, part 3): cancel, pause, sandboxed
// processors, priorities, flows, job schedulers, job removal and lock renewal. Each test
// checks the cap with the fake API (calls in flight) and accounts for every job (completed
// or failed, and how many API calls it made).

type Bq = Awaited<ReturnType<typeof bullmqQueues>>;
type Queue = Bq['queues'][number];

let ctx: Awaited<ReturnType<typeof setupSchema>>;
oneFleetAtATime();

beforeAll(async () => {
  ctx = await setupSchema('lifefeat');
});
afterAll(async () => {
  await ctx?.drop();
});

/** A fake API of the test's own, and the processor body calling it once per run. */
async function fakeApi(holdMs = 5) {
  const api = await startFakeApi(holdMs);
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const call = async (job: Job<any>, _token: string | undefined, signal: AbortSignal) => {
    const res = await fetch(`${api.url}/call?job=${encodeURIComponent(`${job.queueName}:${job.id}`)}&hold=${job.data?.hold ?? ''}`, { signal });
    await res.text();
    return { attemptsMade: job.attemptsMade };
  };
  return Object.assign(api, { call });
}

/** Jobs by state; `queued`: every state but active, completed and failed (wait, delayed, prioritized, paused, ...). */
async function counts(q: Queue) {
  const { active = 0, completed = 0, failed = 0, ...rest } = await q.getJobCounts();
  // BullMQ's Postgres backend keeps a paused queue's jobs apart and leaves them out of getJobCounts() (6.7)
  const paused = q.opts.connection && 'connectionString' in (q.opts.connection as object) ? ((await q.getJobCounts('paused' as never)).paused ?? 0) : 0;
  return { active, queued: Object.values(rest).reduce((a, b) => a + b, 0) + paused, completed, failed };
}

const waitingJobs = async () => Number((await ctx.admin.query(`SELECT count(*) AS n FROM "${ctx.schema}".waiting_jobs`)).rows[0].n);

describe.each<Backend>(['redis', 'postgres'])('on BullMQ %s', (backend) => {
  let bq: Bq;
  const workers: Worker[] = [];
  const names = ['cancel', 'wpause', 'qpause', 'prio', 'lock', 'remove'];
  beforeAll(async () => {
    bq = await bullmqQueues(backend, names.map((n) => `${backend}-${n}`));
  });
  afterAll(async () => {
    await Promise.all(workers.map((w) => w.close(true).catch(() => undefined)));
    await bq?.cleanup();
  });
  const queue = (name: string) => bq.queues.find((q) => q.name === `${backend}-${name}`)!;
  const worker = (name: string, processor: object, opts = {}) => {
    const w = bq.worker(`${backend}-${name}`, processor, opts);
    workers.push(w);
    return w;
  };
  const sem = (name: string) => `${backend}-${name}`;

  it('worker.cancelJob while a job waits fails it with WaitCancelledError carrying the reason, at once and without a retry', async () => {
    await ctx.sem.make(sem('cancel'), 1);
    const api = await fakeApi();
    const blocker = await ctx.sem.hold(sem('cancel'));
    try {
      const processor = limitProcessor(ctx.sem, api.call, { semaphore: sem('cancel'), localWait: 30_000 });
      const w = worker('cancel', processor, { concurrency: 4 });
      const errors: unknown[] = [];
      w.on('failed', (_job, err) => errors.push(err));
      const q = queue('cancel');
      const [a, b] = await q.addBulk([
        { name: 'x', data: {}, opts: { attempts: 3 } },
        { name: 'x', data: {}, opts: { attempts: 3 } },
      ]);
      await waitFor(async () => (await counts(q)).active === 2 && processor.stats.busy > 0, { what: 'two jobs to wait' });
      // BullMQ tracks a job (and so can cancel it) from just before it calls the processor
      await waitFor(() => w.cancelJob(a!.id!, 'user asked'), { what: 'the first job to be cancelled' });
      await waitFor(() => w.cancelJob(b!.id!), { what: 'the second job to be cancelled' });
      await waitFor(async () => (await counts(q)).failed === 2, { what: 'both jobs to fail' });
      const failed = await q.getFailed(0, -1);
      const reasons = Object.fromEntries(failed.map((j) => [j.id, j.failedReason]));
      expect(reasons[a!.id!]).toBe(`cancelled while waiting for a ticket of "${sem('cancel')}": user asked`);
      expect(reasons[b!.id!]).toMatch(/cancelled while waiting for a ticket of .*: /);
      expect(reasons[b!.id!]).not.toMatch(/null|undefined$/);
      expect(errors.every((e) => e instanceof WaitCancelledError && (e as Error).name === 'WaitCancelledError')).toBe(true);
      expect((errors[0] as WaitCancelledError).reason === 'user asked' || (errors[1] as WaitCancelledError).reason === 'user asked').toBe(true);
      // unrecoverable: not retried into the same wait; it never ran
      expect(failed.map((j) => j.attemptsMade)).toEqual([1, 1]);
      expect(await counts(q)).toEqual({ active: 0, queued: 0, completed: 0, failed: 2 });
      expect(api.calls.size).toBe(0);
      expect(processor.stats.ran).toBe(0);
    } finally {
      await blocker.release();
      await api.close();
    }
  });

  it('worker.pause() with jobs holding and waiting: returns once the running job ends, without running the waiting ones; resume completes all once', async () => {
    const N = 10;
    await ctx.sem.make(sem('wpause'), 1);
    const api = await fakeApi();
    try {
      let releaseFirst!: () => void;
      const firstMayEnd = new Promise<void>((r) => (releaseFirst = r));
      const processor = limitProcessor<{ first?: boolean }>(
        ctx.sem,
        async (job, token, signal) => {
          if (job.data.first) await firstMayEnd;
          return api.call(job, token, signal);
        },
        { semaphore: sem('wpause'), localWait: 30_000, backoff: { delay: 50, maxDelay: 200 } },
      );
      const w = worker('wpause', processor, { concurrency: 16 });
      const q = queue('wpause');
      await q.add('x', { first: true });
      await waitFor(async () => (await ctx.sem.status(sem('wpause'))).held === 1, { what: 'the first job to hold' });
      await q.addBulk(Array.from({ length: N - 1 }, (_, i) => ({ name: 'x', data: { i } })));
      await waitFor(async () => (await counts(q)).active === N, { what: 'jobs to wait behind it' });

      const pausing = w.pause();
      await waitFor(async () => (await counts(q)).queued === N - 1, { timeout: 5_000, what: 'the waiting jobs to be put back' });
      const started = performance.now();
      releaseFirst();
      await pausing;
      const pauseMs = performance.now() - started;
      console.log(`[${backend}] worker.pause() with ${N - 1} jobs waiting: ${pauseMs.toFixed(0)} ms after the running job was let go (localWait 30000 ms)`);
      expect(pauseMs).toBeLessThan(3_000);
      expect(api.calls.size).toBe(1);
      expect(processor.stats.ran).toBe(1);

      w.resume();
      await waitFor(async () => (await counts(q)).completed === N, { timeout: 20_000, what: 'all jobs to complete after resume' });
      expect(await counts(q)).toEqual({ active: 0, queued: 0, completed: N, failed: 0 });
      expect([...api.calls.values()]).toEqual(Array(N).fill(1));
      expect(api.max).toBe(1);
    } finally {
      await api.close();
    }
  });

  it('queue.pause() with jobs holding and waiting: jobs already in a worker finish, nothing new starts, resume completes all once', async () => {
    const N = 12;
    const CAP = 2;
    await ctx.sem.make(sem('qpause'), CAP);
    const api = await fakeApi(100);
    try {
      const processor = limitProcessor(ctx.sem, api.call, { semaphore: sem('qpause'), backoff: { delay: 50, maxDelay: 200 } });
      const w = worker('qpause', processor, { concurrency: 4 });
      const q = queue('qpause');
      await q.addBulk(Array.from({ length: N }, (_, i) => ({ name: 'x', data: { i } })));
      await waitFor(async () => (await counts(q)).active === 4 && api.inflight === CAP, { what: 'jobs holding and waiting' });
      await q.pause();
      const activeAtPause = (await q.getActive(0, -1)).map((j) => j.id);
      // the jobs already in the worker run (holding or waiting); none other starts while paused
      await waitFor(async () => (await counts(q)).active === 0, { timeout: 10_000, what: 'the active jobs to finish' });
      const ranWhilePaused = [...api.calls.keys()];
      expect(ranWhilePaused.every((k) => activeAtPause.includes(k.split(':').pop()))).toBe(true);
      const c = await counts(q);
      expect(c.completed + c.queued).toBe(N);
      expect(c.failed).toBe(0);
      await q.resume();
      await waitFor(async () => (await counts(q)).completed === N, { timeout: 20_000, what: 'all jobs after resume' });
      expect([...api.calls.values()]).toEqual(Array(N).fill(1));
      expect(api.max).toBe(CAP);
      void w;
    } finally {
      await api.close();
    }
  });

  it('a put-back job keeps its priority, and higher-priority jobs are not starved by a backlog of put-back ones', async () => {
    const LOW = 30;
    await ctx.sem.make(sem('prio'), 1);
    const api = await fakeApi(10);
    const order: string[] = [];
    const blocker = await ctx.sem.hold(sem('prio'));
    try {
      const processor = limitProcessor(ctx.sem, api.call, { semaphore: sem('prio'), localWait: 300, backoff: { delay: 50, maxDelay: 400 } });
      const w = worker('prio', processor, { concurrency: 4 });
      w.on('completed', (job) => order.push(job.data.kind));
      const q = queue('prio');
      const low = await q.addBulk(Array.from({ length: LOW }, (_, i) => ({ name: 'x', data: { kind: 'low', i }, opts: { priority: 10 } })));
      await waitFor(async () => processor.stats.reschedules >= LOW, { timeout: 20_000, what: 'the backlog to be put back' });
      const putBack = (await q.getJob(low[LOW - 1]!.id!))!;
      expect(putBack.opts.priority).toBe(10);
      expect(putBack.attemptsMade).toBe(0);
      await q.addBulk(Array.from({ length: 3 }, (_, i) => ({ name: 'x', data: { kind: 'high', i }, opts: { priority: 1 } })));
      await blocker.release();
      await waitFor(async () => (await counts(q)).completed === LOW + 3, { timeout: 30_000, what: 'all jobs to complete' });
      // the high jobs wait at most behind the jobs already waiting in the worker's slots
      const lastHigh = order.lastIndexOf('high');
      console.log(`[${backend}] priorities: the 3 priority-1 jobs finished at places ${order.map((k, i) => (k === 'high' ? i + 1 : 0)).filter(Boolean).join(', ')} of ${LOW + 3}`);
      expect(lastHigh).toBeLessThan(10);
      expect([...api.calls.values()]).toEqual(Array(LOW + 3).fill(1));
      expect(api.max).toBe(1);
      expect((await counts(q)).failed).toBe(0);
    } finally {
      await blocker.release().catch(() => undefined);
      await api.close();
    }
  });

  it('a job that waits in its worker longer than lockDuration is neither stalled nor run twice', async () => {
    await ctx.sem.make(sem('lock'), 1);
    const api = await fakeApi();
    const blocker = await ctx.sem.hold(sem('lock'));
    try {
      const processor = limitProcessor(ctx.sem, api.call, { semaphore: sem('lock'), localWait: 20_000 });
      const w = worker('lock', processor, { concurrency: 2, lockDuration: 1_000, stalledInterval: 300 });
      const stalled: string[] = [];
      w.on('stalled', (id) => stalled.push(id));
      const q = queue('lock');
      const job = await q.add('x', {});
      await waitFor(async () => (await counts(q)).active === 1, { what: 'the job to wait in the worker' });
      const since = Date.now();
      // several lock durations and stall checks pass while it waits
      await waitFor(() => Date.now() - since > 3_000, { timeout: 5_000, interval: 100, what: 'three lock durations' });
      expect(await counts(q)).toEqual({ active: 1, queued: 0, completed: 0, failed: 0 });
      await blocker.release();
      await waitFor(async () => (await counts(q)).completed === 1, { what: 'the job to complete' });
      const done = (await q.getJob(job.id!))!;
      expect(stalled).toEqual([]);
      expect(done.stalledCounter ?? 0).toBe(0);
      expect(done.returnvalue.attemptsMade).toBe(0);
      expect(api.calls.get(`${q.name}:${job.id}`)).toBe(1);
      expect(processor.stats.reschedules).toBe(0);
    } finally {
      await blocker.release().catch(() => undefined);
      await api.close();
    }
  });

  it('removeOnComplete / removeOnFail, and a job removed while put back: all accounted for, no waiting record left', async () => {
    const N = 20;
    await ctx.sem.make(sem('remove'), 1);
    const api = await fakeApi(5);
    const blocker = await ctx.sem.hold(sem('remove'));
    try {
      const processor = limitProcessor<{ i: number; fail?: boolean }>(
        ctx.sem,
        async (job, token, signal) => {
          const r = await api.call(job, token, signal);
          if (job.data.fail) throw new Error('planned failure');
          return r;
        },
        { semaphore: sem('remove'), localWait: 0, backoff: { delay: 2_000, maxDelay: 2_000 } },
      );
      const w = worker('remove', processor, { concurrency: 4 });
      const completed: string[] = [];
      const failed: string[] = [];
      w.on('completed', (job) => completed.push(job.id!));
      w.on('failed', (job) => job && failed.push(job.id!));
      const q = queue('remove');
      const jobs = await q.addBulk(
        Array.from({ length: N }, (_, i) => ({ name: 'x', data: { i, fail: i % 5 === 0 }, opts: { removeOnComplete: true, removeOnFail: true } })),
      );
      await waitFor(async () => (await counts(q)).queued === N && processor.stats.reschedules >= N, { timeout: 10_000, what: 'every job to be put back' });
      // one job is removed while it is put back (delayed)
      const removed = jobs[N - 1]!;
      await q.remove(removed.id!);
      await blocker.release();
      await waitFor(() => completed.length + failed.length === N - 1, { timeout: 30_000, what: 'the other jobs to finish' });
      expect(failed.length).toBe(4); // i = 0, 5, 10, 15
      expect(completed).not.toContain(removed.id);
      expect(api.calls.has(`${q.name}:${removed.id}`)).toBe(false);
      expect([...api.calls.values()]).toEqual(Array(N - 1).fill(1));
      expect(api.max).toBe(1);
      // removed on completion and on failure: nothing left in the queue
      expect(await counts(q)).toEqual({ active: 0, queued: 0, completed: 0, failed: 0 });
      // the removed job's waiting record goes with the next release that looks for waiting jobs
      if (backend === 'redis') await waitFor(async () => (await waitingJobs()) === 0, { timeout: 5_000, what: 'the waiting list to be empty' });
      expect(await waitingJobs()).toBe(0);
    } finally {
      await blocker.release().catch(() => undefined);
      await api.close();
    }
  });
});

describe('sandboxed processors', () => {
  const CAP = 2;
  const JOBS = 24;
  const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));

  const inChildren = { workerForkOptions: { execArgv: ['--import', 'tsx'] } };
  it.each<[string, Backend, string, object]>([
    ['child processes', 'redis', fixture('sandboxed-processor.ts'), inChildren],
    ['worker threads', 'redis', fixture('sandboxed-processor-thread.mjs'), { useWorkerThreads: true }],
    ['child processes', 'postgres', fixture('sandboxed-processor.ts'), inChildren],
  ])('the wrapper inside a processor file run in %s (BullMQ %s) caps the jobs', async (kind, backend, file, sandbox) => {
    const name = `sandbox-${kind.split(' ')[0]}-${backend}`;
    await ctx.sem.make(name, CAP);
    const api = await fakeApi(30);
    const bq = await bullmqQueues(backend, [name]);
    Object.assign(process.env, { SEM_SCHEMA: ctx.schema, SEM_NAME: name, API_URL: api.url, DATABASE_URL: process.env.DATABASE_URL ?? bq.env.DATABASE_URL });
    const w = bq.worker(name, file, { concurrency: 4, ...sandbox });
    try {
      const q = bq.queues[0]!;
      await q.addBulk(Array.from({ length: JOBS }, (_, i) => ({ name: 'x', data: { i } })));
      await waitFor(async () => (await counts(q)).completed + (await counts(q)).failed >= JOBS, { timeout: 45_000, interval: 100, what: 'all sandboxed jobs' });
      expect((await q.getFailed(0, 5)).map((j) => j.failedReason)).toEqual([]);
      const completed = await q.getCompleted(0, -1);
      expect(completed).toHaveLength(JOBS);
      expect(completed.every((j) => j.returnvalue.attemptsMade === 0 && j.returnvalue.pid)).toBe(true);
      expect([...api.calls.values()]).toEqual(Array(JOBS).fill(1));
      expect(api.max).toBeLessThanOrEqual(CAP);
      expect(api.max).toBe(CAP);
    } finally {
      await w.close();
      await bq.cleanup();
      await api.close();
    }
    await waitFor(async () => (await ctx.sem.status(name)).held === 0, { what: 'no ticket left' });
  }, 60_000);
});

describe.each<Backend>(['redis', 'postgres'])('flows and job schedulers on BullMQ %s', (backend) => {
  let bq: Bq;
  beforeAll(async () => {
    bq = await bullmqQueues(backend, ['flow-parent', 'flow-child', 'sched']);
  });
  afterAll(async () => {
    await bq?.cleanup();
  });

  it('a flow: capped children put back and completed once, every parent completes with its children’s results', async () => {
    const PARENTS = 3;
    const CHILDREN = 6;
    await ctx.sem.make(`flow-${backend}`, 2);
    const api = await fakeApi(20);
    const flows =
      backend === 'postgres'
        ? (new FlowProducer({ connection: bq.connection } as never, createPostgresBackend) as unknown as FlowProducer)
        : new FlowProducer({ connection: bq.connection, prefix: bq.prefix } as never);
    const children = limitProcessor(ctx.sem, api.call, { semaphore: `flow-${backend}`, localWait: 50, backoff: { delay: 30, maxDelay: 200 } });
    const cw = bq.worker('flow-child', children, { concurrency: 6 });
    const pw = bq.worker('flow-parent', async (job: Job) => Object.keys(await job.getChildrenValues()).length, { concurrency: 2 });
    // Both tickets are held here until a child has been put back, so the put-back path is
    // exercised in every run (with free tickets the children may all get theirs in-process).
    const blockers = [await ctx.sem.hold(`flow-${backend}`), await ctx.sem.hold(`flow-${backend}`)];
    try {
      for (let p = 0; p < PARENTS; p++) {
        await flows.add({
          name: 'parent',
          queueName: 'flow-parent',
          data: { p },
          children: Array.from({ length: CHILDREN }, (_, c) => ({ name: 'child', queueName: 'flow-child', data: { p, c } })),
        });
      }
      await waitFor(() => children.stats.reschedules > 0, { timeout: 30_000, what: 'a child to be put back' });
      await Promise.all(blockers.splice(0).map((h) => h.release()));
      const [parents, kids] = bq.queues;
      await waitFor(async () => (await counts(parents!)).completed === PARENTS, { timeout: 30_000, what: 'every parent to complete' });
      expect((await parents!.getCompleted(0, -1)).map((j) => j.returnvalue)).toEqual(Array(PARENTS).fill(CHILDREN));
      expect(await counts(kids!)).toEqual({ active: 0, queued: 0, completed: PARENTS * CHILDREN, failed: 0 });
      expect([...api.calls.values()]).toEqual(Array(PARENTS * CHILDREN).fill(1));
      expect(api.max).toBe(2);
      expect(children.stats.reschedules).toBeGreaterThan(0); // children were put back, and still counted for their parents
    } finally {
      await Promise.all(blockers.map((h) => h.release()));
      await Promise.all([cw.close(), pw.close(), flows.close()]);
      await api.close();
    }
  });

  it('a job scheduler: repeated jobs longer than the interval are capped, each iteration runs once', async () => {
    const LIMIT = 8;
    await ctx.sem.make(`sched-${backend}`, 1);
    const api = await fakeApi(80);
    const processor = limitProcessor(ctx.sem, api.call, { semaphore: `sched-${backend}`, localWait: 50, backoff: { delay: 30, maxDelay: 200 } });
    const q = bq.queues[2]!;
    const w = bq.worker('sched', processor, { concurrency: 4 });
    try {
      await q.upsertJobScheduler('every-20ms', { every: 20, limit: LIMIT }, { name: 'tick', data: {} });
      await waitFor(async () => (await counts(q)).completed >= LIMIT, { timeout: 30_000, what: `${LIMIT} iterations` });
      await q.removeJobScheduler('every-20ms');
      await waitFor(async () => (await counts(q)).active === 0, { what: 'the last iteration to end' });
      const c = await counts(q);
      expect(c.failed).toBe(0);
      expect(c.completed).toBe(LIMIT);
      expect([...api.calls.values()].every((n) => n === 1)).toBe(true);
      expect(api.calls.size).toBe(LIMIT);
      expect(api.max).toBe(1);
      expect(processor.stats.reschedules).toBeGreaterThan(0);
    } finally {
      await w.close();
      await api.close();
    }
  });
});
