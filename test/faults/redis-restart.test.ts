// Redis (BullMQ's store) restarts in the middle of a run: a redis-server of this test's own,
// on a free port, killed with SIGKILL and started again on its append-only file (fsynced on
// every write). Tickets live in Postgres and never depend on Redis: none leaks, the cap holds,
// and every job completes (jobs whose completion could not be written are rerun by BullMQ's
// stall recovery).
import { randomBytes } from 'node:crypto';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { now } from '../helpers/child.js';
import { databaseUrl, setupSchema, waitFor } from '../helpers/db.js';
import { startFakeApi } from '../helpers/fake-api.js';
import { Fleet, finishedCounts } from '../helpers/fleet.js';
import { startRedis, type RedisServer } from '../helpers/servers.js';

const K = 3;
const JOBS = 150;

let redis: RedisServer;
let ctx: Awaited<ReturnType<typeof setupSchema>>;
beforeAll(async () => {
  [redis, ctx] = await Promise.all([startRedis(), setupSchema('redisrestart')]);
  await ctx.sem.make('api', K);
}, 60_000);
afterAll(async () => {
  await ctx?.drop();
  await redis?.stop();
});

describe('Redis restarts in the middle of a run', () => {
  it('no ticket leaks, the cap holds, every job completes', async () => {
    const api = await startFakeApi(100);
    const prefix = `pgsem_faults_${randomBytes(3).toString('hex')}`;
    const queue = new Queue('redisrestart', { connection: { url: redis.url }, prefix } as never);
    queue.on('error', () => undefined);
    await queue.waitUntilReady();
    const fleet = new Fleet({
      DATABASE_URL: databaseUrl(),
      SEM_SCHEMA: ctx.schema,
      REDIS_URL: redis.url,
      BQ_PREFIX: prefix,
      QUEUES: 'redisrestart',
      API_URL: api.url,
      CONCURRENCY: 6,
      LOCK_DURATION: 3_000,
      STALLED_INTERVAL: 1_000,
      MAX_STALLED: 10,
    });
    try {
      const workers = await fleet.start(2);
      await queue.addBulk(Array.from({ length: JOBS }, (_, i) => ({ name: 'call', data: { i }, opts: { attempts: 3 } })));
      await waitFor(async () => ((await finishedCounts(queue))?.completed ?? 0) >= JOBS / 3, {
        timeout: 60_000,
        interval: 20,
        what: 'a third of the jobs to complete',
      });
      await waitFor(() => api.inflight > 0, { timeout: 10_000, interval: 2, what: 'calls in flight' });
      const completedAtStop = (await finishedCounts(queue))!.completed;
      const stopAt = now();
      await redis.restart({ mode: 'kill', downMs: 1_000 });
      const up = now();
      // Jobs flow again: the first completion recorded in the restarted Redis.
      await waitFor(async () => ((await finishedCounts(queue))?.completed ?? 0) > completedAtStop, {
        timeout: 60_000,
        interval: 10,
        what: 'the first completion after the restart',
      });
      const flowAt = now();
      // Tickets never depended on Redis: while it was down, none could stay held by a job
      // that was no longer running.
      await waitFor(
        async () => {
          const c = await finishedCounts(queue);
          return c && c.completed + c.failed >= JOBS;
        },
        { timeout: 90_000, interval: 100, what: 'all jobs to finish after the restart' },
      );
      const doneAt = now();
      const failed = await queue.getFailed(0, 5);
      expect(failed.map((j) => j.failedReason)).toEqual([]);
      expect(await finishedCounts(queue)).toEqual({ completed: JOBS, failed: 0 });
      expect(api.calls.size).toBe(JOBS);
      expect(api.max).toBeLessThanOrEqual(K);
      // No ticket leaked: nothing is held while the workers are still up, nor after they close.
      await waitFor(async () => (await ctx.sem.status('api')).held === 0, { timeout: 10_000, what: 'no ticket held' });
      expect(fleet.alive.map((c) => c.pid).sort()).toEqual(workers.map((c) => c.pid).sort());
      expect(fleet.events('unhandled')).toEqual([]);
      expect(fleet.events('lost')).toEqual([]);
      await fleet.close();
      expect((await ctx.sem.status('api')).held).toBe(0);

      const reruns = [...api.calls.values()].filter((n) => n > 1).length;
      console.log(
        `[redis restart] SIGKILL, 1,000 ms down, start on the AOF: ${Math.round(up - stopAt)} ms; jobs flow again ` +
          `(first completion written) ${Math.round(flowAt - stopAt)} ms after the kill (${Math.round(flowAt - up)} ms after Redis was up); ` +
          `all ${JOBS} done ${Math.round(doneAt - up)} ms after it; ${reruns} jobs called the API twice (completion lost with Redis, ` +
          `rerun by stall recovery); tickets held at the end 0; api max ${api.max}/${K}`,
      );
    } finally {
      await fleet.close();
      await queue.obliterate({ force: true }).catch(() => undefined);
      await queue.close().catch(() => undefined);
      await api.close();
    }
  }, 150_000);
});
