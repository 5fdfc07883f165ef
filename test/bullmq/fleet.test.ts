import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupSchema, waitFor } from '../helpers/db.js';
import { bullmqQueues, type Backend } from '../helpers/bullmq.js';
import { startFakeApi } from '../helpers/fake-api.js';
import { startChild, type Child } from '../helpers/processes.js';
import { startOracle } from '../helpers/oracle.js';
import { oneFleetAtATime } from '../helpers/heavy.js';

// A fleet: 4 worker OS processes, each with concurrency far above the cap, 2 queues sharing
// one semaphore. A loopback HTTP server stands in for the capped external API; each job also
// tells the exact overlap oracle (test/helpers/oracle.ts) "enter" before its call and "exit" after.

let ctx: Awaited<ReturnType<typeof setupSchema>>;
oneFleetAtATime();

beforeAll(async () => {
  ctx = await setupSchema('fleet');
});
afterAll(async () => {
  await ctx?.drop();
});

const CAP = 4;
const PROCESSES = 4;

describe.each<[Backend, number]>([
  ['redis', 1200],
  ['postgres', 1000],
])('fleet on BullMQ %s backend', (backend, jobs) => {
  it(`never exceeds the cap; all ${jobs} jobs complete once without using an attempt; no ticket left`, async () => {
    await ctx.sem.make('api', CAP);
    const api = await startFakeApi(5);
    const oracle = await startOracle(() => CAP);
    const bq = await bullmqQueues(backend, ['fleet-a', 'fleet-b']);
    const children: Child[] = [];
    try {
      for (let i = 0; i < PROCESSES; i++) {
        children.push(
          startChild('bullmq-worker', {
            ...bq.env,
            SEM_SCHEMA: ctx.schema,
            QUEUES: 'fleet-a,fleet-b',
            API_URL: api.url,
            CONCURRENCY: 16,
            ORACLE_PORT: oracle.port,
          }),
        );
      }
      await Promise.all(children.map((c) => c.next((m: { type: string }) => m.type === 'ready', 60_000)));
      const [qa, qb] = bq.queues;
      await qa!.addBulk(Array.from({ length: jobs / 2 }, (_, i) => ({ name: 'call', data: { i } })));
      await qb!.addBulk(Array.from({ length: jobs / 2 }, (_, i) => ({ name: 'call', data: { i } })));

      const counts = async () => {
        const [a, b] = await Promise.all([qa!.getJobCounts('completed', 'failed'), qb!.getJobCounts('completed', 'failed')]);
        return { completed: (a.completed ?? 0) + (b.completed ?? 0), failed: (a.failed ?? 0) + (b.failed ?? 0) };
      };
      let peakHeld = 0;
      await waitFor(
        async () => {
          peakHeld = Math.max(peakHeld, (await ctx.sem.status('api')).held);
          const c = await counts();
          return c.completed + c.failed >= jobs;
        },
        { timeout: 120_000, interval: 50, what: 'all jobs to finish' },
      );
      const failed = (await Promise.all(bq.queues.map((q) => q.getFailed(0, 5)))).flat();
      expect(failed.map((j) => j.failedReason)).toEqual([]);
      expect(await counts()).toEqual({ completed: jobs, failed: 0 });
      // The API never saw more calls at once than the cap, and the cap was actually reached.
      expect(api.max).toBeLessThanOrEqual(CAP);
      expect(api.max).toBe(CAP);
      expect(peakHeld).toBeLessThanOrEqual(CAP);
      // The oracle (whose intervals contain every call and lie inside the ticket holds) agrees.
      expect(oracle.violations, JSON.stringify(oracle.violations.slice(0, 3))).toEqual([]);
      expect(oracle.errors).toEqual([]);
      expect(oracle.max.get('api')).toBe(CAP);
      expect(oracle.enters.get('api')).toBe(jobs);
      // Every job called the API exactly once, and none used an attempt while waiting.
      expect(api.calls.size).toBe(jobs);
      expect([...api.calls.values()].every((n) => n === 1)).toBe(true);
      for (const q of bq.queues) {
        const completed = await q.getCompleted(0, -1);
        expect(completed).toHaveLength(jobs / 2);
        for (const job of completed) expect(job.returnvalue.attemptsMade).toBe(0);
      }
      // Every process ran jobs: the cap was shared across hosts.
      const pids = new Set<number>();
      for (const q of bq.queues) for (const job of await q.getCompleted(0, -1)) pids.add(job.returnvalue.pid);
      expect(pids.size).toBe(PROCESSES);

      for (const c of children) c.send({ type: 'close' });
      const stats = await Promise.all(children.map((c) => c.next<{ type: string; stats: Record<string, number> }>((m) => m.type === 'stats', 60_000)));
      const total = stats.reduce(
        (acc, { stats: s }) => ({ attempts: acc.attempts + s.attempts!, handoffs: acc.handoffs + s.handoffs!, reschedules: acc.reschedules + s.reschedules! }),
        { attempts: 0, handoffs: 0, reschedules: 0 },
      );
      console.log(`[${backend}] ${jobs} jobs, cap ${CAP}: api max ${api.max}, oracle max ${oracle.max.get('api')}, acquire calls ${total.attempts} (${(total.attempts / jobs).toFixed(2)}/job), hand-offs ${total.handoffs}, reschedules ${total.reschedules}`);
      // No ticket is held at the end.
      await waitFor(async () => (await ctx.sem.status('api')).held === 0, { timeout: 5_000, what: 'tickets to be returned' });
    } finally {
      for (const c of children) c.kill();
      await Promise.all(children.map((c) => c.exited));
      await bq.cleanup();
      await api.close();
      await oracle.close();
    }
  }, 240_000);
});
