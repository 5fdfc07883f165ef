import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupSchema, waitFor } from '../helpers/db.js';
import { bullmqQueues } from '../helpers/bullmq.js';
import { startFakeApi } from '../helpers/fake-api.js';
import { startChild, type Child } from '../helpers/processes.js';

// kill -9 of a worker host in the middle of its jobs: its tickets are free at once (its
// connections die), and BullMQ's stall recovery runs its jobs again on another host. In both
// holding modes: a connection per held ticket, or one holding connection for the process.

let ctx: Awaited<ReturnType<typeof setupSchema>>;
beforeAll(async () => {
  ctx = await setupSchema('crash');
});
afterAll(async () => {
  await ctx?.drop();
});

describe.each(['transaction', 'session'] as const)('a worker host killed with kill -9 (%s holding)', (holding) => {
  // a semaphore per mode: nothing of one run can be in the other's way
  const name = `api-${holding}`;
  it('frees its tickets within 1 s, and its jobs run again elsewhere', async () => {
    await ctx.sem.make(name, 2);
    const api = await startFakeApi(50);
    const bq = await bullmqQueues('redis', ['crash']);
    const children: Child[] = [];
    const env = { ...bq.env, SEM_SCHEMA: ctx.schema, SEM_NAME: name, HOLDING: holding, QUEUES: 'crash', API_URL: api.url, CONCURRENCY: 4, LOCK_DURATION: 1_500, STALLED_INTERVAL: 500 };
    try {
      const victim = startChild('bullmq-worker', env);
      children.push(victim);
      await victim.next((m: { type: string }) => m.type === 'ready', 60_000);
      // two long jobs take both tickets on the victim, then six short ones queue behind them
      const [queue] = bq.queues;
      await queue!.addBulk([0, 1].map((i) => ({ name: 'long', data: { i, hold: 30_000 } })));
      await victim.next((m: { type: string; inflight?: number }) => m.type === 'acquired' && m.inflight === 2, 30_000);
      await waitFor(() => api.inflight === 2, { what: 'both long calls to reach the API' });
      const before = await ctx.sem.status(name);
      expect(before.held).toBe(2);
      // the mode is in effect: a connection per ticket, or both on the process's holding connection
      expect(new Set(before.holders.map((h) => h.pid)).size).toBe(holding === 'session' ? 1 : 2);
      await queue!.addBulk(Array.from({ length: 6 }, (_, i) => ({ name: 'short', data: { i } })));

      victim.kill('SIGKILL');
      const killedAt = Date.now();
      await victim.exited;
      await waitFor(async () => (await ctx.sem.status(name)).held === 0, { timeout: 1_000, interval: 10, what: 'the tickets of the killed host to be free' });
      const freedMs = Date.now() - killedAt;
      console.log(`[${holding}] tickets free ${freedMs} ms after kill -9`);

      // another host picks up everything, including the two stalled long jobs (made quick now)
      api.setMaxHold(50);
      const rescuer = startChild('bullmq-worker', { ...env, API_URL: `${api.url}` });
      children.push(rescuer);
      await rescuer.next((m: { type: string }) => m.type === 'ready', 60_000);
      await waitFor(
        async () => {
          const c = await queue!.getJobCounts('completed', 'failed');
          return (c.completed ?? 0) + (c.failed ?? 0) >= 8;
        },
        { timeout: 90_000, interval: 100, what: 'all 8 jobs to finish' },
      );
      const c = await queue!.getJobCounts('completed', 'failed');
      expect(c).toMatchObject({ completed: 8, failed: 0 });
      const longs = [...api.calls.entries()].filter(([job]) => ['crash:1', 'crash:2'].includes(job));
      // each long job reached the API once on the victim and once more after recovery
      expect(longs.map(([, n]) => n)).toEqual([2, 2]);
      expect(api.max).toBeLessThanOrEqual(2);
      rescuer.send({ type: 'close' });
      await rescuer.next((m: { type: string }) => m.type === 'stats', 60_000);
      expect((await ctx.sem.status(name)).held).toBe(0);
    } finally {
      for (const c of children) c.kill();
      await Promise.all(children.map((c) => c.exited));
      await bq.cleanup();
      await api.close();
    }
  }, 180_000);
});
