// Postgres restarts in the middle of a fleet run. The fleet's pg-semaphore uses a Postgres of
// this test's own (started from the binaries on a free port); BullMQ uses the shared Redis
// with a prefix of its own. Every job holding a ticket at the restart is told (its
// AbortSignal fires with a TicketLostError), the workers keep going without being
// restarted, the cap holds, and every job completes (a job failed by its lost ticket
// retries: attempts 3). In both holding modes (session: the process's holding connection
// dies, and every hold on it is told; the next acquire opens a new one).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PgSemaphore } from '../../src/index.js';
import { bullmqQueues } from '../helpers/bullmq.js';
import { now } from '../helpers/child.js';
import { testSchemaName, waitFor } from '../helpers/db.js';
import { startFakeApi } from '../helpers/fake-api.js';
import { Fleet, finishedCounts, type FleetEvent } from '../helpers/fleet.js';
import { startPostgres, type PostgresServer } from '../helpers/servers.js';

const K = 3;
const JOBS = 90;
const LONG_MS = 2_000;
const HOLD_MS = 250;
const HOLDINGS = ['transaction', 'session'] as const;

let server: PostgresServer;
let sem: PgSemaphore;
const schema = testSchemaName('pgrestart');
beforeAll(async () => {
  server = await startPostgres();
  sem = new PgSemaphore({ connection: server.url(), schema });
  await sem.migrate();
  for (const holding of HOLDINGS) await sem.make(`api-${holding}`, K);
}, 60_000);
/** What every attempt of the test saw, checked once more after all attempts (see the retry below). */
const attempts: Array<{ completed: number; failed: number; apiMax: number; calls: number }> = [];
afterAll(async () => {
  await sem?.close().catch(() => undefined);
  await server?.stop();
  // The cap and the job accounting of EVERY attempt, the first one included: a retry can
  // never hide a broken cap or a lost job.
  for (const a of attempts) expect(a).toEqual({ completed: JOBS, failed: 0, apiMax: expect.any(Number) as number, calls: JOBS });
  for (const a of attempts) expect(a.apiMax).toBeLessThanOrEqual(K);
});

describe.each(HOLDINGS)('Postgres restarts in the middle of a fleet run (%s holding)', (holding) => {
  // a semaphore per mode: nothing of one run can be in the other's way
  const name = `api-${holding}`;
  // One retry: which worker gets the jobs left after the restart is up to scheduling, and on a
  // loaded machine one worker can run them all, failing "both workers ran jobs after the
  // restart" (seen once in about eight full runs). The cap and every job's completion are
  // recorded for each attempt and checked in afterAll, so the retry cannot hide them.
  it('every job holding a ticket is told, workers keep going, the cap holds, every job completes', { retry: 1, timeout: 150_000 }, async () => {
    const api = await startFakeApi(HOLD_MS);
    const bq = await bullmqQueues('redis', ['pgrestart']);
    const fleet = new Fleet({
      ...bq.env,
      DATABASE_URL: server.url(),
      SEM_SCHEMA: schema,
      SEM_NAME: name,
      HOLDING: holding,
      QUEUES: 'pgrestart',
      API_URL: api.url,
      CONCURRENCY: 6,
      LIVENESS: 5_000,
      LOCK_DURATION: 5_000,
      STALLED_INTERVAL: 2_000,
      MAX_STALLED: 5,
    });
    try {
      const workers = await fleet.start(2);
      const [queue] = bq.queues;
      await queue!.addBulk(Array.from({ length: JOBS - K }, (_, i) => ({ name: 'call', data: { i }, opts: { attempts: 3 } })));

      // Let the run get going, then put three long jobs at the head of the queue and restart
      // while they hold every ticket (they have seconds of work left: no race with the stop).
      await waitFor(() => api.calls.size >= JOBS / 3, { timeout: 60_000, what: 'a third of the jobs to reach the API' });
      const longs = await Promise.all(
        Array.from({ length: K }, (_, i) => queue!.add('long', { i: 1_000 + i, hold: LONG_MS }, { attempts: 3, lifo: true })),
      );
      const longKeys = longs.map((j) => `pgrestart:${j.id}`);
      await waitFor(
        () => {
          const acquiredNow = new Set(fleet.events('acquired').map((e) => e.job));
          return longKeys.every((k) => acquiredNow.has(k)) && api.inflight === K;
        },
        { timeout: 30_000, interval: 2, what: 'the long jobs to hold every ticket' },
      );
      // the mode is in effect: a connection per ticket, or one holding connection per worker
      const pidsAtStop = new Set((await sem.status(name)).holders.map((h) => h.pid)).size;
      if (holding === 'transaction') expect(pidsAtStop).toBe(K);
      else expect(pidsAtStop).toBeLessThanOrEqual(workers.length);
      const stopAt = now();
      await server.restart({ mode: 'fast', downMs: 1_000 });
      const up = now();

      await waitFor(
        async () => {
          const c = await finishedCounts(queue!);
          return c && c.completed + c.failed >= JOBS;
        },
        { timeout: 90_000, interval: 100, what: 'all jobs to finish after the restart' },
      );
      const counts = await finishedCounts(queue!);
      attempts.push({ completed: counts?.completed ?? -1, failed: counts?.failed ?? -1, apiMax: api.max, calls: api.calls.size });
      const failed = await queue!.getFailed(0, 5);
      expect(failed.map((j) => j.failedReason)).toEqual([]);
      expect(counts).toEqual({ completed: JOBS, failed: 0 });
      // Every job reached the API; the cap never broke.
      expect(api.calls.size).toBe(JOBS);
      expect(api.max).toBeLessThanOrEqual(K);

      // Which jobs held a ticket when the stop order went out: acquired before it, and
      // neither finished their call nor released before it.
      const acquired = fleet.events('acquired');
      const done = fleet.events('done');
      const released = fleet.events('released');
      const lost = fleet.events('lost');
      const before = (list: FleetEvent[], job: string, from: number, to: number) => list.some((e) => e.job === job && e.at! >= from && e.at! < to);
      const lastAcquire = new Map<string, number>();
      for (const e of acquired) if (e.at! < stopAt) lastAcquire.set(e.job!, Math.max(lastAcquire.get(e.job!) ?? 0, e.at!));
      const heldAtStop = [...lastAcquire].filter(([job, at]) => !before(done, job, at, stopAt) && !before(released, job, at, stopAt)).map(([job]) => job);
      const wasTold = (job: string) => lost.some((e) => e.job === job && e.at! >= stopAt && e.reason === 'TicketLostError');
      const told = heldAtStop.filter(wasTold);
      // The long jobs held every ticket at the stop order, with seconds of work left: each
      // must be told. (Under heavy machine load a short job may show up as holding too, by
      // its timestamps; it must be told as well unless its call ended right at the stop.)
      expect(longKeys.filter((job) => !wasTold(job))).toEqual([]);
      const untold = heldAtStop.filter((job) => !told.includes(job) && !before(done, job, stopAt, stopAt + 500));
      for (const job of heldAtStop.filter((j) => !longKeys.includes(j))) {
        const evs = fleet.all.flatMap((c) => (c.messages as FleetEvent[]).filter((m) => m.job === job).map((m) => ({ ...m, pid: c.pid, rel: Math.round(m.at! - stopAt) })));
        console.log(`[postgres restart, ${holding}] also holding at the stop order by its timestamps: ${job}: ${JSON.stringify(evs)}`);
      }
      expect(untold, `jobs that held a ticket at the restart but were not told: ${untold.join(', ')}`).toEqual([]);
      // Every abort the processors saw was a TicketLostError, and only around the restart.
      expect(lost.map((e) => e.reason)).toEqual(lost.map(() => 'TicketLostError'));
      expect(lost.every((e) => e.at! >= stopAt)).toBe(true);
      // The jobs failed by their lost tickets retried and completed (every job completed above).
      const failedAttempts = fleet.events('failed');
      for (const e of failedAttempts) expect(e.reason).toBe('TicketLostError');

      // The workers were never restarted and both ran jobs after the restart.
      expect(fleet.alive.map((c) => c.pid).sort()).toEqual(workers.map((c) => c.pid).sort());
      for (const w of workers) expect(acquired.some((e) => e.pid === w.pid && e.at! > up)).toBe(true);
      expect(fleet.events('unhandled')).toEqual([]);

      // Nothing is held at the end.
      await waitFor(async () => (await sem.status(name)).held === 0, { timeout: 10_000, what: 'no ticket held' });

      // Jobs flow again: the first ticket taken from Postgres (not handed on) after the stop order.
      const firstAfter = Math.min(...acquired.filter((e) => e.at! > stopAt && !e.handoff).map((e) => e.at!));
      const firstDone = Math.min(...done.filter((e) => e.at! > firstAfter).map((e) => e.at!));
      const firstLost = Math.min(...lost.map((e) => e.at!));
      const lastDone = Math.max(...done.map((e) => e.at!));
      const leftAtStop = JOBS - done.filter((e) => e.at! < stopAt).length;
      console.log(
        `[postgres restart, ${holding}] fast shutdown, 1,000 ms down, start: ${Math.round(up - stopAt)} ms from the stop order until pg_isready; ` +
          `${heldAtStop.length} jobs held tickets at the stop order: ${told.length} told with TicketLostError ` +
          `(first ${Math.round(firstLost - stopAt)} ms after it); ${lost.length} processors told in all; ` +
          `jobs flow again (first fresh acquire) ${Math.round(firstAfter - stopAt)} ms after the stop order (${Math.round(firstAfter - up)} ms after pg_isready), ` +
          `first call done after the restart ${Math.round(firstDone - stopAt)} ms after it; ${failedAttempts.length} attempts failed and were retried; ` +
          `the ${leftAtStop} jobs left at the stop order were done ${Math.round(lastDone - up)} ms after pg_isready (${Math.round(((leftAtStop - K) * HOLD_MS) / K + LONG_MS)} ms at full cap); api max ${api.max}/${K}`,
      );
    } finally {
      await fleet.close();
      await bq.cleanup();
      await api.close();
    }
  });
});
