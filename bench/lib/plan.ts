// What the benchmark runs: the workloads, their sizes and their contenders, full and quick.
import type { ContenderId, WorkloadSpec } from './types.js';

const ALL: ContenderId[] = ['pgsem-redis', 'pgsem-pg', 'pgsem-redis-session', 'pgsem-nowake', 'bullmq-global', 'redis-semaphore', 'plain'];

/** The large-cap workload (issue 12): a cap larger than a connection budget, both holding modes. */
const LARGE_CAP: WorkloadSpec = {
  id: 'large-cap',
  title: 'Large cap: K=200, 4 processes x concurrency 60 (240 slots), 500 ms holds; pool max 64 per process in transaction holding (8 in session holding)',
  // ideal 200 / 0.5 s = 400 jobs/s: ~15-40 s per contender on 2 shared cores
  jobs: 6_000,
  holdMs: 500,
  processes: 4,
  concurrency: 60,
  cap: 200,
  mode: 'single',
  tenants: 0,
  // transaction holding pins one connection per held ticket: 60 jobs of a process need 60
  // (+ the LISTEN connection); session holding opens one holding connection per process and
  // keeps the default pool (8: LISTEN, wake-up relays)
  semPoolMax: 64,
  contenders: ['pgsem-redis', 'pgsem-redis-session', 'pgsem-pg', 'pgsem-pg-session', 'bullmq-global', 'redis-semaphore'],
};

/** The full run; the cheap uncontended runs come early so the targets are measured even if time runs short. */
export function fullPlan(): WorkloadSpec[] {
  return [
    {
      id: 'saturated-10ms',
      title: 'Saturated, one semaphore: K=5, 4 processes x concurrency 20, 10 ms holds',
      jobs: 5_000,
      holdMs: 10,
      processes: 4,
      concurrency: 20,
      cap: 5,
      mode: 'single',
      tenants: 0,
      contenders: ['pgsem-redis', 'pgsem-pg', 'pgsem-redis-session', 'pgsem-nowake', 'bullmq-global', 'redis-semaphore', 'plain'],
    },
    {
      id: 'uncontended',
      title: 'Uncontended: K=100 > fleet concurrency 4 x 5, 10 ms holds (bare overhead)',
      jobs: 2_000,
      holdMs: 10,
      processes: 4,
      concurrency: 5,
      cap: 100,
      mode: 'single',
      tenants: 0,
      // plain-pg: what BullMQ's Postgres backend does alone, for pgsem-pg's overhead
      contenders: ['pgsem-redis', 'pgsem-pg', 'pgsem-redis-session', 'redis-semaphore', 'plain', 'plain-pg'],
    },
    {
      // One job at a time in one process: every acquire and release is alone, so the round
      // trips on a job's critical path are counted exactly (issue 11, target 6).
      id: 'uncontended-serial',
      title: 'Uncontended, one job at a time: K=100, 1 process x concurrency 1, 10 ms holds (critical-path round trips)',
      jobs: 200,
      holdMs: 10,
      processes: 1,
      concurrency: 1,
      cap: 100,
      mode: 'single',
      tenants: 0,
      contenders: ['pgsem-redis', 'pgsem-pg', 'pgsem-redis-session', 'pgsem-pg-session'],
    },
    // issue 12's comparison, early so a short budget does not skip it
    LARGE_CAP,
    {
      id: 'saturated-0ms',
      title: 'Saturated, one semaphore: K=5, 4 processes x concurrency 20, 0 ms holds',
      jobs: 5_000,
      holdMs: 0,
      processes: 4,
      concurrency: 20,
      cap: 5,
      mode: 'single',
      tenants: 0,
      // plain-pg: BullMQ's Postgres backend alone, uncapped: the ceiling of pgsem-pg here
      contenders: [...ALL, 'plain-pg'],
    },
    {
      id: 'per-key',
      title: 'Per key: 100 tenants x cap 2, 5 heavy tenants get 40 % of the jobs, 4 x 20, 10 ms holds',
      jobs: 3_000,
      holdMs: 10,
      processes: 4,
      concurrency: 20,
      cap: 2,
      mode: 'tenant',
      tenants: 100,
      // BullMQ's global concurrency is one cap per queue: nothing per key.
      contenders: ['pgsem-redis', 'pgsem-pg', 'pgsem-redis-session', 'pgsem-nowake', 'redis-semaphore', 'plain', 'plain-pg'],
    },
    {
      // Issue 11: a global cap and per-tenant caps taken together, as users combine them.
      // Ideal ~ 3 tickets / (22.5 ms mean hold x 1.25 mean weight) ~ 107 jobs/s: 2,500 jobs ~ 25-30 s.
      id: 'global-tenant',
      title: "Global + per tenant: ['api', `tenant:${t}`], global cap 3 (25 % of jobs weigh 2), 12 tenants x cap 1, 5 x 12, 5-40 ms holds",
      jobs: 2_500,
      holdMs: 22.5,
      holdRange: [5, 40],
      heavyShare: 0.25,
      processes: 5,
      concurrency: 12,
      cap: 3,
      tenantCap: 1,
      mode: 'global-tenant',
      tenants: 12,
      contenders: ['pgsem-redis', 'pgsem-pg', 'pgsem-redis-session', 'redis-semaphore', 'plain'],
    },
  ];
}

/** Under a minute: fewer jobs and contenders; checks that the benchmark works and caps hold. */
export function quickPlan(): WorkloadSpec[] {
  const full = fullPlan();
  const byId = (id: WorkloadSpec['id']) => full.find((w) => w.id === id)!;
  const [sat10, unc, sat0, perKey, globalTenant] = (['saturated-10ms', 'uncontended', 'saturated-0ms', 'per-key', 'global-tenant'] as const).map(byId);
  // Six runs of this library (both BullMQ backends); starting 4 worker processes costs ~3-5 s
  // each time. The cap checks that matter most come first, in case a slow machine runs out of
  // the time budget (later runs are then skipped and listed as such).
  return [
    { ...sat10!, jobs: 300, contenders: ['pgsem-redis'] },
    { ...perKey!, jobs: 400, contenders: ['pgsem-redis'] },
    { ...sat10!, jobs: 300, contenders: ['pgsem-pg'] },
    { ...sat0!, jobs: 300, contenders: ['pgsem-redis'] },
    { ...unc!, jobs: 200, contenders: ['pgsem-redis'] },
    // two semaphores taken together, weighted: its own cap check (a few s of jobs; last, so a
    // short budget skips it rather than cutting it off)
    { ...globalTenant!, jobs: 120, contenders: ['pgsem-redis'] },
    // session holding: the large cap's cap check (240 slots on 200 tickets, ~2 s of jobs)
    { ...LARGE_CAP, jobs: 800, contenders: ['pgsem-redis-session'] },
  ];
}
