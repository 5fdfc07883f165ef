import { Worker, type Job } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HoldingModeError, InvalidArgumentError, TicketLostError } from '../../src/index.js';
import { limitProcessor, RescheduleBudgetError } from '../../src/bullmq/index.js';
import { bullmqQueues } from '../helpers/bullmq.js';
import { setupSchema, waitFor } from '../helpers/db.js';

// The wrapper in one process against real Redis and Postgres: pass-through, cancellation,
// reschedule budget, labels, per-key and combined caps, argument errors.

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let bq: Awaited<ReturnType<typeof bullmqQueues>>;
const workers: Worker[] = [];

beforeAll(async () => {
  ctx = await setupSchema('wrapper');
  bq = await bullmqQueues('redis', ['w-pass', 'w-cancel', 'w-budget', 'w-time', 'w-tenant', 'w-both', 'w-label', 'w-relabel-0', 'w-relabel-late', 'w-relabel-long', 'w-weight', 'w-weight-bad', 'w-session-tx', 'w-linger', 'w-linger-0', 'w-linger-close', 'w-release-tx', 'w-lost-own', 'w-lost-swapped', 'w-swapped-cancel']);
});
afterAll(async () => {
  await Promise.all(workers.map((w) => w.close(true)));
  await bq?.cleanup();
  await ctx?.drop();
});

function worker(queue: string, processor: object, concurrency = 8) {
  const w = new Worker(queue, processor as never, { connection: bq.connection, prefix: bq.prefix, concurrency } as never);
  w.on('error', () => undefined);
  workers.push(w);
  return w;
}
const queue = (name: string) => bq.queues.find((q) => q.name === name)!;

function finished(w: Worker, count: number) {
  const done: Job[] = [];
  const failed: Job[] = [];
  const promise = new Promise<void>((resolve) => {
    const check = () => done.length + failed.length >= count && resolve();
    w.on('completed', (job) => (done.push(job), check()));
    w.on('failed', (job) => (job && failed.push(job), check()));
  });
  return { done, failed, promise };
}

/** A limited processor that runs until its signal aborts, then fails with `fail(reason)`; `started` gives that signal. */
function untilAborted(semaphore: string, fail: (reason: unknown) => unknown) {
  let running!: (signal: AbortSignal) => void;
  const started = new Promise<AbortSignal>((r) => (running = r));
  const processor = limitProcessor(
    ctx.sem,
    (_job, _token, signal) =>
      new Promise((_resolve, reject) => {
        running(signal);
        signal.addEventListener('abort', () => reject(fail(signal.reason)), { once: true });
      }),
    { semaphore },
  );
  return { processor, started };
}

describe('limitProcessor', () => {
  it('passes results and errors through unchanged and keeps attemptsMade across reschedules', async () => {
    await ctx.sem.make('pass', 1);
    const seen: number[] = [];
    const processor = limitProcessor<{ n: number }>(
      ctx.sem,
      async (job) => {
        seen.push(job.attemptsMade);
        await new Promise((r) => setTimeout(r, 20));
        if (job.data.n === 3) throw new Error('boom 3');
        return { doubled: job.data.n * 2 };
      },
      { semaphore: 'pass', localWait: 0, backoff: { delay: 10, maxDelay: 50 } },
    );
    const w = worker('w-pass', processor);
    const f = finished(w, 6);
    await queue('w-pass').addBulk([1, 2, 3, 4, 5, 6].map((n) => ({ name: 'x', data: { n } })));
    await f.promise;
    expect(f.done.map((j) => j.returnvalue.doubled).sort((a, b) => a - b)).toEqual([2, 4, 8, 10, 12]);
    expect(f.failed.map((j) => j.failedReason)).toEqual(['boom 3']);
    // with one ticket, no local wait and 8 slots, jobs were put back, yet no attempt was used
    expect(processor.stats.reschedules).toBeGreaterThan(0);
    expect(seen.every((a) => a === 0)).toBe(true);
    // the last job's hold may linger a few ms for a next job of the set (`linger`), then it is released
    await waitFor(async () => (await ctx.sem.status('pass')).held === 0, { timeout: 5_000, what: 'the last hold to be released' });
  });

  it('worker.cancelJob aborts the processor and releases its ticket', async () => {
    await ctx.sem.make('cancel', 1);
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    const processor = limitProcessor(
      ctx.sem,
      (_job, _token, signal) =>
        new Promise((_resolve, reject) => {
          started();
          signal.addEventListener('abort', () => reject(new Error(`aborted: ${String(signal.reason)}`)), { once: true });
        }),
      { semaphore: 'cancel' },
    );
    const w = worker('w-cancel', processor);
    const f = finished(w, 1);
    const job = await queue('w-cancel').add('x', {});
    await running;
    expect((await ctx.sem.status('cancel')).held).toBe(1);
    expect(w.cancelJob(job.id!, 'stop it')).toBe(true);
    await f.promise;
    expect(f.failed[0]?.failedReason).toMatch(/aborted/);
    await waitFor(async () => (await ctx.sem.status('cancel')).held === 0, { timeout: 2_000, what: 'the ticket to be released' });
  });

  // A lost ticket aborts the processor's signal with TicketLostError. Run by a BullMQ worker,
  // that signal is the one BullMQ made for the job (the loss aborts it through the worker's
  // controller, and no signal is made per job); given another signal, the processor gets one
  // of its own that aborts on either.
  it.each([
    { queueName: 'w-lost-own', swap: false },
    { queueName: 'w-lost-swapped', swap: true },
  ])('a lost ticket aborts the processor\'s signal with TicketLostError ($queueName)', async ({ queueName, swap }) => {
    const name = queueName.slice(2);
    await ctx.sem.make(name, 1);
    const { processor, started } = untilAborted(name, (reason) => reason);
    const lost: unknown[] = [];
    processor.events.on('ticketLost', ({ error }) => lost.push(error));
    const swapped = new AbortController();
    const w = worker(queueName, swap ? (job: Job, token: string | undefined, _signal: AbortSignal | undefined) => processor(job, token, swapped.signal) : processor);
    const f = finished(w, 1);
    const job = await queue(queueName).add('x', {});
    const signal = await started;
    // BullMQ's own signal for the job (read from its lock manager, as the wrapper does)
    const bullmqSignal = (w as unknown as { lockManager: { trackedJobs: Map<string, { abortController?: AbortController }> } }).lockManager.trackedJobs.get(job.id!)?.abortController?.signal;
    expect(bullmqSignal).toBeInstanceOf(AbortSignal);
    if (swap) {
      expect(signal).not.toBe(swapped.signal);
      expect(signal).not.toBe(bullmqSignal);
    } else {
      expect(signal).toBe(bullmqSignal);
    }
    const { holders } = await ctx.sem.status(name);
    expect(holders).toHaveLength(1);
    await ctx.admin.query('SELECT pg_terminate_backend($1)', [holders[0]!.pid]);
    await f.promise;
    expect(signal.aborted).toBe(true);
    expect(signal.reason).toBeInstanceOf(TicketLostError);
    expect(lost).toEqual([signal.reason]);
    expect(f.failed[0]?.failedReason).toBe((signal.reason as Error).message);
    expect(swapped.signal.aborted).toBe(false);
  });

  it('a processor given a signal of the caller\'s still hears that signal abort', async () => {
    await ctx.sem.make('swapped-cancel', 1);
    const { processor, started } = untilAborted('swapped-cancel', (reason) => new Error(`aborted: ${String(reason)}`));
    const swapped = new AbortController();
    const w = worker('w-swapped-cancel', (job: Job, token: string | undefined, _signal: AbortSignal | undefined) => processor(job, token, swapped.signal));
    const f = finished(w, 1);
    await queue('w-swapped-cancel').add('x', {});
    const signal = await started;
    swapped.abort('caller stops');
    await f.promise;
    expect(signal.reason).toBe('caller stops');
    expect(f.failed[0]?.failedReason).toBe('aborted: caller stops');
    await waitFor(async () => (await ctx.sem.status('swapped-cancel')).held === 0, { timeout: 2_000, what: 'the ticket to be released' });
  });

  it('fails a job with RescheduleBudgetError once maxReschedules is used up', async () => {
    await ctx.sem.make('budget', 1);
    const blocker = await ctx.sem.hold('budget');
    try {
      const processor = limitProcessor(ctx.sem, async () => 'never', {
        semaphore: 'budget',
        localWait: 0,
        maxReschedules: 2,
        backoff: { delay: 10, maxDelay: 20 },
      });
      const w = worker('w-budget', processor);
      const f = finished(w, 1);
      await queue('w-budget').add('x', {}, { attempts: 5 });
      await f.promise;
      const failed = f.failed[0]!;
      expect(failed.failedReason).toMatch(/within 2 reschedules, got none after 2/);
      // unrecoverable: the job's own attempts were not spent retrying into the same wait
      expect(failed.attemptsMade).toBe(1);
      expect(processor.stats.reschedules).toBe(2);
    } finally {
      await blocker.release();
    }
  });

  it('fails a job with RescheduleBudgetError once maxWaitTime has passed', async () => {
    await ctx.sem.make('time', 1);
    const blocker = await ctx.sem.hold('time');
    try {
      let error: unknown;
      const processor = limitProcessor(ctx.sem, async () => 'never', {
        semaphore: 'time',
        localWait: 50,
        maxWaitTime: 300,
        backoff: { delay: 20, maxDelay: 100 },
      });
      const w = worker('w-time', processor);
      w.on('failed', (_job, err) => (error = err));
      const f = finished(w, 1);
      await queue('w-time').add('x', {});
      await f.promise;
      expect(error).toBeInstanceOf(RescheduleBudgetError);
      expect((error as RescheduleBudgetError).name).toBe('RescheduleBudgetError');
      expect(f.failed[0]!.failedReason).toMatch(/within 300 ms/);
    } finally {
      await blocker.release();
    }
  });

  it('caps per key while other keys proceed', async () => {
    const inflight = new Map<string, number>();
    const max = new Map<string, number>();
    const finishedAt = new Map<string, number>();
    const processor = limitProcessor<{ tenant: string; ms: number }>(
      ctx.sem,
      async (job) => {
        const t = job.data.tenant;
        inflight.set(t, (inflight.get(t) ?? 0) + 1);
        max.set(t, Math.max(max.get(t) ?? 0, inflight.get(t)!));
        await new Promise((r) => setTimeout(r, job.data.ms));
        inflight.set(t, inflight.get(t)! - 1);
        finishedAt.set(t, Date.now());
      },
      { semaphore: (job) => `tenant:${job.data.tenant}`, createWith: 2 },
    );
    const w = worker('w-tenant', processor, 12);
    const f = finished(w, 33);
    // a heavy tenant with 30 slow jobs, then two light tenants with one quick job each
    await queue('w-tenant').addBulk(Array.from({ length: 30 }, () => ({ name: 'x', data: { tenant: 'heavy', ms: 60 } })));
    await queue('w-tenant').addBulk(['light-a', 'light-b', 'light-a'].map((tenant) => ({ name: 'x', data: { tenant, ms: 5 } })));
    await f.promise;
    expect(f.failed).toEqual([]);
    expect(max.get('heavy')).toBe(2);
    expect(max.get('light-a')).toBeLessThanOrEqual(2);
    // the light tenants did not wait for the heavy one's backlog (≈ 15 rounds of 60 ms)
    expect(finishedAt.get('light-b')!).toBeLessThan(finishedAt.get('heavy')! - 300);
    expect((await ctx.sem.status('tenant:heavy')).tickets).toBe(2);
  });

  it('takes the global cap and the tenant cap together, atomically', async () => {
    await ctx.sem.make('api-both', 3);
    let inflight = 0;
    let max = 0;
    const perTenant = new Map<string, number>();
    const perTenantMax = new Map<string, number>();
    const processor = limitProcessor<{ tenant: string }>(
      ctx.sem,
      async (job) => {
        inflight++;
        max = Math.max(max, inflight);
        const t = job.data.tenant;
        perTenant.set(t, (perTenant.get(t) ?? 0) + 1);
        perTenantMax.set(t, Math.max(perTenantMax.get(t) ?? 0, perTenant.get(t)!));
        await new Promise((r) => setTimeout(r, 15));
        perTenant.set(t, perTenant.get(t)! - 1);
        inflight--;
      },
      { semaphore: (job) => ['api-both', `both:${job.data.tenant}`], createWith: 2 },
    );
    const w = worker('w-both', processor, 12);
    const f = finished(w, 40);
    await queue('w-both').addBulk(Array.from({ length: 40 }, (_, i) => ({ name: 'x', data: { tenant: `t${i % 4}` } })));
    await f.promise;
    expect(f.failed).toEqual([]);
    expect(max).toBe(3);
    expect(Math.max(...perTenantMax.values())).toBeLessThanOrEqual(2);
    // the last job is done before its release's round trip ends (a job that did not use tx does not wait for it)
    await waitFor(async () => (await ctx.sem.status('api-both')).held === 0, { timeout: 2_000, what: 'the last hold to be released' });
  });

  it('weighs a job on the global cap and takes one ticket of its tenant ({ name, tickets } inside the request)', async () => {
    await ctx.sem.make('weight-api', 4);
    // a fake API that counts calls by weight, overall and per tenant
    const api = { weight: 0, maxWeight: 0, tenants: new Map<string, number>(), maxTenant: 0 };
    const processor = limitProcessor<{ tenant: string; weight: number }>(
      ctx.sem,
      async (job) => {
        const { tenant, weight } = job.data;
        api.weight += weight;
        api.maxWeight = Math.max(api.maxWeight, api.weight);
        api.tenants.set(tenant, (api.tenants.get(tenant) ?? 0) + 1);
        api.maxTenant = Math.max(api.maxTenant, api.tenants.get(tenant)!);
        await new Promise((r) => setTimeout(r, 15));
        api.tenants.set(tenant, api.tenants.get(tenant)! - 1);
        api.weight -= weight;
        return weight;
      },
      {
        semaphore: (job) => [{ name: 'weight-api', tickets: job.data.weight }, `weight:${job.data.tenant}`],
        createWith: 1,
      },
    );
    const w = worker('w-weight', processor, 12);
    const f = finished(w, 48);
    await queue('w-weight').addBulk(Array.from({ length: 48 }, (_, i) => ({ name: 'x', data: { tenant: `t${i % 6}`, weight: i % 3 === 0 ? 2 : 1 } })));
    await f.promise;
    expect(f.failed.map((j) => j.failedReason)).toEqual([]);
    expect(f.done.reduce((sum, j) => sum + (j.returnvalue as number), 0)).toBe(64);
    expect(api.maxWeight).toBeLessThanOrEqual(4);
    expect(api.maxWeight).toBeGreaterThanOrEqual(3); // the cap was reached, so it was tested
    expect(api.maxTenant).toBe(1);
    // the last job is done before its release's round trip ends (a job that did not use tx does not wait for it)
    await waitFor(async () => (await ctx.sem.status('weight-api')).held === 0, { timeout: 2_000, what: 'the last hold to be released' });
    expect((await ctx.sem.status('weight:t0')).tickets).toBe(1);
  });

  it('`tickets` with several semaphores is a typed error pointing inside the request, not a weight on every cap', async () => {
    const fn = async () => undefined;
    expect(() => limitProcessor(ctx.sem, fn, { semaphore: ['api', 'tenant:a'], tickets: 2 })).toThrow(
      /^tickets: expected a request naming one semaphore \(with several, give each its weight inside the request/,
    );
    // per job: the job fails with the same error, before anything reaches Postgres
    let error: unknown;
    const processor = limitProcessor<{ tenant: string }>(ctx.sem, fn, { semaphore: (job) => ['weight-bad', `wb:${job.data.tenant}`], tickets: 2, createWith: 1 });
    const w = worker('w-weight-bad', processor);
    w.on('failed', (_job, err) => (error = err));
    const f = finished(w, 1);
    await queue('w-weight-bad').add('x', { tenant: 'a' });
    await f.promise;
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect((error as InvalidArgumentError).argument).toBe('tickets');
    expect(processor.stats.attempts).toBe(0);
    expect((await ctx.sem.list()).some((s) => s.name === 'wb:a')).toBe(false);
  });

  it("linger: a slot's next job takes the hold its last job left (a hand-off, no acquire call); the last one is released when the time is up", async () => {
    const run = async (name: string, linger: number) => {
      const sem = ctx.another({ livenessTimeout: 600_000, listen: false });
      try {
        await sem.make(name, 3);
        // a long linger (the longest allowed): the next job surely comes in time, also on a loaded machine
        const processor = limitProcessor(sem, async () => undefined, { semaphore: name, linger });
        const w = worker(`w-${name}`, processor, 1);
        const f = finished(w, 10);
        await queue(`w-${name}`).addBulk(Array.from({ length: 10 }, (_, i) => ({ name: 'x', data: { i } })));
        await f.promise;
        expect(f.done).toHaveLength(10);
        await waitFor(async () => (await ctx.sem.status(name)).held === 0, { what: 'the kept hold to be released' });
        await w.close();
        return { ...processor.stats };
      } finally {
        await sem.close();
      }
    };
    const kept = await run('linger', 1_000);
    expect(kept.ran).toBe(10);
    expect(kept.handoffs).toBeGreaterThan(0);
    expect(kept.attempts + kept.handoffs).toBe(10);
    // off: every job acquires
    expect(await run('linger-0', 0)).toMatchObject({ ran: 10, attempts: 10, handoffs: 0 });
  });

  it('linger: worker.close() gives back a hold kept for a next job at once, not when the linger time is up', async () => {
    const sem = ctx.another({ livenessTimeout: 600_000, listen: false });
    try {
      await sem.make('linger-close', 3);
      const processor = limitProcessor(sem, async () => undefined, { semaphore: 'linger-close', linger: 1_000 });
      const w = worker('w-linger-close', processor, 1);
      const f = finished(w, 1);
      await queue('w-linger-close').add('x', {});
      await f.promise;
      // the job is done and its hold is kept for a next one (up to 1,000 ms)
      expect((await ctx.sem.status('linger-close')).held).toBe(1);
      const closing = performance.now();
      await w.close();
      // given back by close(), not by the linger timer: well before 1,000 ms (a COMMIT's time)
      await waitFor(async () => (await ctx.sem.status('linger-close')).held === 0, { timeout: 900, interval: 10, what: 'the kept hold to be given back on close' });
      expect(performance.now() - closing).toBeLessThan(900);
      expect(processor.stats).toMatchObject({ ran: 1, attempts: 1, handoffs: 0 });
    } finally {
      await sem.close();
    }
  });

  it('a job that did not use tx is done without waiting for its release; one that used tx is done only after its COMMIT', async () => {
    await ctx.sem.make('release-tx', 1);
    const processor = limitProcessor<{ useTx: boolean }>(
      ctx.sem,
      async (job, _token, _signal, c) => {
        if (job.data.useTx) await (c.tx as unknown as { execute(q: string): Promise<unknown> }).execute('SELECT 1');
        return 'done';
      },
      { semaphore: 'release-tx', linger: 0 },
    );
    const w = worker('w-release-tx', processor, 1);
    const completed: string[] = [];
    w.on('completed', (job) => completed.push(job.name));
    // The release asks whether put-back jobs wait (it reads waiting_jobs): a lock on that table
    // holds every release back until this transaction ends, so what completes meanwhile did
    // not wait for its release.
    const blocker = await ctx.admin.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query(`LOCK TABLE "${ctx.schema}".waiting_jobs IN ACCESS EXCLUSIVE MODE`);
      await queue('w-release-tx').add('plain', { useTx: false });
      await waitFor(() => completed.includes('plain'), { timeout: 10_000, what: 'the job that did not use tx to complete' });
      // its release is still held back: the ticket too
      expect((await ctx.sem.status('release-tx')).held).toBe(1);
      await blocker.query('ROLLBACK');
      await waitFor(async () => (await ctx.sem.status('release-tx')).held === 0, { timeout: 5_000, what: 'the release to go through' });

      await blocker.query('BEGIN');
      await blocker.query(`LOCK TABLE "${ctx.schema}".waiting_jobs IN ACCESS EXCLUSIVE MODE`);
      const txJob = await queue('w-release-tx').add('tx', { useTx: true });
      // the job ran and wrote in the holding transaction: its release (COMMIT first) waits here
      await waitFor(async () => {
        const { rows } = await ctx.admin.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_locks WHERE NOT granted AND relation = $1::regclass`,
          [`"${ctx.schema}".waiting_jobs`],
        );
        return rows[0]!.n > 0;
      }, { timeout: 10_000, what: "the tx job's release to wait for the lock" });
      // and the job stays active while it waits (were it done at once, BullMQ would complete it
      // within a Redis round trip or two)
      const until = Date.now() + 500;
      while (Date.now() < until) {
        expect(await txJob.getState()).toBe('active');
        await new Promise((r) => setTimeout(r, 25));
      }
      expect(completed).not.toContain('tx');
      await blocker.query('ROLLBACK');
      await waitFor(() => completed.includes('tx'), { timeout: 10_000, what: 'the tx job to complete' });
      await waitFor(async () => (await ctx.sem.status('release-tx')).held === 0, { timeout: 5_000, what: 'the ticket to be back' });
    } finally {
      await blocker.query('ROLLBACK').catch(() => undefined);
      blocker.release();
    }
  });

  it("labels holders with the queue and job id, so status() shows who holds what", async () => {
    await ctx.sem.make('label', 2);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const processor = limitProcessor(ctx.sem, () => gate, { semaphore: 'label' });
    const w = worker('w-label', processor);
    const f = finished(w, 1);
    const job = await queue('w-label').add('x', {});
    const status = await waitFor(async () => {
      const s = await ctx.sem.status('label');
      return s.held === 1 ? s : undefined;
    });
    expect(status!.holders[0]!.label).toBe(`w-label:${job.id}`);
    release();
    await f.promise;
  });

  describe('a job handed a hold relabels the holder only once it has run relabelAfter', () => {
    /**
     * Cap 1, two jobs: the first holds until told, the second waits in the same worker and is
     * handed the hold when the first ends. Returns the round trips counted from the hand-off
     * to the second job's release, and the second job's id.
     */
    async function handOff(name: string, relabelAfter: number, second: (job: Job) => Promise<void>) {
      // a liveness window far beyond the test: no heartbeat round trip lands in the count;
      // no LISTEN, so the waiter's try after it starts watching follows its first at once
      const sem = ctx.another({ livenessTimeout: 600_000, listen: false });
      try {
        await sem.make(name, 1);
        const gates = new Map<string, () => void>();
        const processor = limitProcessor(
          sem,
          async (job: Job) => {
            if (job.data.first) await new Promise<void>((r) => gates.set(job.id!, r));
            else await second(job);
          },
          { semaphore: name, relabelAfter },
        );
        const released: boolean[] = [];
        processor.events.on('released', ({ handedOff }) => released.push(handedOff));
        const w = worker(`w-${name}`, processor, 2);
        const first = await queue(`w-${name}`).add('first', { first: true });
        await waitFor(async () => gates.has(first.id!) || undefined);
        await queue(`w-${name}`).add('second', { first: false });
        // Its try on arrival and the one when it started watching came back busy: it waits in
        // the worker, idle (its next try is a poll at least 250 ms away, and nothing runs
        // between this check and the release below), so the first job's hold goes to it.
        await waitFor(async () => processor.stats.busy >= 2 || undefined);
        const before = sem.roundTrips;
        gates.get(first.id!)!();
        await waitFor(async () => released.length === 2 || undefined);
        expect(processor.stats).toMatchObject({ handoffs: 1 });
        expect(released).toEqual([true, false]);
        await w.close();
        return sem.roundTrips - before;
      } finally {
        await sem.close();
      }
    }

    it('at once with relabelAfter: 0 (one round trip more per hand-off)', async () => {
      // the relabel and the release
      expect(await handOff('relabel-0', 0, async () => undefined)).toBe(2);
    });

    it('not at all for a job shorter than relabelAfter: only the release is a round trip', async () => {
      expect(await handOff('relabel-late', 600_000, async () => undefined)).toBe(1);
    });

    it('status() shows the handed-off job under its own label once it has run relabelAfter', async () => {
      const seen: string[] = [];
      await handOff('relabel-long', 50, async (job) => {
        const s = await waitFor(async () => {
          const status = await ctx.sem.status('relabel-long');
          return status.holders[0]?.label === `w-relabel-long:${job.id}` ? status : undefined;
        });
        seen.push(s!.holders[0]!.label!);
      });
      expect(seen).toHaveLength(1);
    });
  });

  it('session holding: ctx.tx throws HoldingModeError, and a processor that caught it still hands its ticket on', async () => {
    await ctx.sem.make('session-tx', 1);
    const sem = ctx.another({ holding: 'session' });
    try {
      const errors: unknown[] = [];
      const processor = limitProcessor(
        sem,
        async (_job, _token, _signal, c) => {
          try {
            void c.tx;
          } catch (err) {
            errors.push(err);
          }
          await new Promise((r) => setTimeout(r, 5));
        },
        { semaphore: 'session-tx', localWait: 10_000 },
      );
      const w = worker('w-session-tx', processor, 6);
      const f = finished(w, 12);
      await queue('w-session-tx').addBulk(Array.from({ length: 12 }, (_, n) => ({ name: 'x', data: { n } })));
      await f.promise;
      expect(f.failed).toHaveLength(0);
      expect(errors).toHaveLength(12);
      expect(errors.every((e) => e instanceof HoldingModeError && e.name === 'HoldingModeError' && e.holding === 'session')).toBe(true);
      // one ticket and six slots: jobs waited in the worker and got the ticket by hand-off (a
      // tx read that threw must not count as a used transaction, which would forbid it)
      expect(processor.stats.handoffs).toBeGreaterThan(0);
      await waitFor(async () => (await sem.status('session-tx')).held === 0, { timeout: 5_000, what: 'the ticket back' });
    } finally {
      await Promise.all(workers.map((w) => w.close()));
      await sem.close();
    }
  });

  it('rejects bad options with a typed error', () => {
    const fn = async () => undefined;
    expect(() => limitProcessor(ctx.sem, fn, { semaphore: '' })).toThrow(InvalidArgumentError);
    expect(() => limitProcessor(ctx.sem, fn, { semaphore: 'x', tickets: 0 })).toThrow(/tickets: expected a whole number from 1/);
    expect(() => limitProcessor(ctx.sem, fn, { semaphore: 'x', maxReschedules: -1 })).toThrow(InvalidArgumentError);
    expect(() => limitProcessor(ctx.sem, fn, { semaphore: 'x', relabelAfter: -1 })).toThrow(/relabelAfter: expected a whole number from 0/);
    expect(() => limitProcessor(ctx.sem, fn, { semaphore: 'x', relabelAfter: '50' as never })).toThrow(InvalidArgumentError);
    expect(() => limitProcessor(ctx.sem, fn, { semaphore: 'x', linger: -1 })).toThrow(/linger: expected a whole number from 0 to 1000/);
    expect(() => limitProcessor(ctx.sem, fn, { semaphore: 'x', linger: 1.5 })).toThrow(InvalidArgumentError);
    expect(() => limitProcessor(ctx.sem, 'nope' as never, { semaphore: 'x' })).toThrow(/processor: expected a function/);
    // BullMQ passes its AbortSignal only to processors declared with three parameters
    expect(limitProcessor(ctx.sem, fn, { semaphore: 'x' }).length).toBe(3);
  });
});
