// Turns the raw records of one run into the figures the benchmark reports.
import type { PgRunStats, StatementRow } from './pgstats.js';
import type { RawRun } from './run.js';
import { CONTENDERS, HEAVY_TENANTS, type JobRecord } from './types.js';

export interface Dist {
  p50: number;
  p99: number;
  mean: number;
  n: number;
}

export interface RunFigures {
  runId: string;
  workload: string;
  contender: string;
  label: string;
  jobs: number;
  /** Hold asked of the fake API, ms. */
  holdMs: number;
  /** Jobs that ran to completion exactly once or more (unique job indexes seen completed). */
  completed: number;
  failed: number;
  lost: number;
  duplicates: number;
  /** Jobs moved back by BullMQ's stall checker. */
  stalled: number;
  /** Seconds from the first processor call to the last completed one. */
  seconds: number;
  jobsPerSec: number;
  /** Ideal jobs/s for this workload from the measured holds; null where it is not meaningful. */
  idealJobsPerSec: number | null;
  /** jobsPerSec / idealJobsPerSec. */
  shareOfIdeal: number | null;
  /** The same ideal from the hold asked (e.g. 10 ms) instead of the measured one. */
  idealNominalJobsPerSec: number | null;
  shareOfNominal: number | null;
  /** Why there is no share, when there is none. */
  shareNote?: string;
  hold: Dist;
  /** Processor call to body start (the wrapper's or contender's cost before the work), ms. */
  pre: Dist;
  /** Body end to processor return (release), ms. */
  post: Dist;
  /** Acquire attempts per completed job, and how they were counted. */
  attemptsPerJob: number | null;
  attemptsNote?: string;
  /** Processor invocations per completed job (put-backs make it > 1). */
  invocationsPerJob: number;
  /** pg-semaphore's counters, summed over processes. */
  stats?: { attempts: number; busy: number; handoffs: number; reschedules: number; promotions: number; ran: number };
  /** Time in the processor before a put-back (0: no room to wait; ~localWait: waited in vain). */
  putBackAfter?: Dist;
  /** Postgres round trips of pg-semaphore per completed job. */
  roundTripsPerJob: number | null;
  /** Put-backs (stats.reschedules) per completed job. */
  putBacksPerJob: number | null;
  /**
   * Round trips of one job alone (sem.roundTrips over phases no other job of its process
   * overlapped): before the body (acquire) and after it (release), means over `n` samples each.
   */
  critRt: { pre: number; post: number; nPre: number; nPost: number } | null;
  /** Jobs completed per worker process, and busiest / least busy. */
  hostJobs: number[];
  hostSpread: number | null;
  /** pg-semaphore: hosts whose LISTEN connection was open but not hearing NOTIFYs at the end of the run (null: none opened, not pg-semaphore, or older results). */
  deafHosts?: number | null;
  /** Postgres execution time and WAL per completed job, pg-semaphore's and BullMQ backend's apart. */
  pg: {
    method: string;
    semMsPerJob: number | null;
    semWalPerJob: number | null;
    bqMsPerJob: number | null;
    bqWalPerJob: number | null;
    /** External server only: BEGIN/COMMIT/... that could be either's. */
    sharedMsPerJob: number | null;
    serverWalPerJob: number | null;
    top: StatementRow[];
    raw: PgRunStats;
  } | null;
  /** Jobs whose body saw attemptsMade > 0. */
  attemptsMadeNonZero: number;
  /** global-tenant: most calls of one tenant in flight (fake API, clock) and the tenant cap. */
  tenantHolders?: { api: number; clock: number; cap: number };
  /** Idle time between a ticket's release (body end) and the next body start on it, ms. */
  gap: Dist | null;
  gapNote?: string;
  /** Most calls in flight the fake API saw (overall, or per tenant in per-key mode). */
  maxHolders: number;
  /** The same from the processes' timestamps (sweep over body intervals). */
  maxHoldersByClock: number;
  cap: number | null;
  capHeld: boolean | null;
  conns: RawRun['conns'];
  rssPeakMB: number;
  /** CPU time of the worker processes per completed job, ms. */
  workerCpuMsPerJob: number;
  cpuBusy: number | null;
  /** Postgres and Redis server CPU per completed job, ms (a shared server: others' load included). */
  serverCpuMsPerJob: { postgres: number; redis: number } | null;
  /** Machine CPU busy in the second before the run started (others' load on a shared machine). */
  backgroundBusy: number | null;
  deadlineHit: boolean;
  wallMs: number;
  setupMs: number;
  errors: string[];
  redis?: { acquireCalls: number; tries: number; redisCalls: number; redisCallsPerJob: number };
  queueCounts: Record<string, number>;
  ok: boolean;
}

export function dist(values: number[]): Dist {
  if (values.length === 0) return { p50: NaN, p99: NaN, mean: NaN, n: 0 };
  const s = Float64Array.from(values).sort();
  const q = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
  let sum = 0;
  for (const v of s) sum += v;
  return { p50: q(0.5), p99: q(0.99), mean: sum / s.length, n: s.length };
}

/** Most intervals open at once (each counting its weight), per group. */
function maxOverlap(records: JobRecord[], groupOf: (r: JobRecord) => number, weightOf: (r: JobRecord) => number = () => 1): number {
  const groups = new Map<number, Array<[number, number]>>();
  for (const r of records) {
    const g = groupOf(r);
    let ev = groups.get(g);
    if (!ev) groups.set(g, (ev = []));
    const w = weightOf(r);
    ev.push([r[2], w], [r[3], -w]);
  }
  let best = 0;
  for (const ev of groups.values()) {
    ev.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let cur = 0;
    for (const [, d] of ev) {
      cur += d;
      if (cur > best) best = cur;
    }
  }
  return best;
}

/** Gaps between consecutive holds of each real ticket id. */
function ticketGaps(records: JobRecord[]): number[] {
  const byTicket = new Map<number, JobRecord[]>();
  for (const r of records) {
    if (r[5] < 0) continue;
    let list = byTicket.get(r[5]);
    if (!list) byTicket.set(r[5], (list = []));
    list.push(r);
  }
  const gaps: number[] = [];
  for (const list of byTicket.values()) {
    list.sort((a, b) => a[2] - b[2]);
    for (let i = 1; i < list.length; i++) gaps.push(list[i]![2] - list[i - 1]![3]);
  }
  return gaps;
}

/**
 * For contenders without ticket ids: the body intervals are laid onto `cap` virtual slots per
 * group, each start taking the slot freed most recently, so the gaps are a lower bound.
 */
function virtualGaps(records: JobRecord[], cap: number, groupOf: (r: JobRecord) => number): number[] {
  const groups = new Map<number, JobRecord[]>();
  for (const r of records) {
    const g = groupOf(r);
    let list = groups.get(g);
    if (!list) groups.set(g, (list = []));
    list.push(r);
  }
  const gaps: number[] = [];
  for (const list of groups.values()) {
    list.sort((a, b) => a[2] - b[2]);
    const slots: number[] = []; // last end per used slot
    for (const r of list) {
      let best = -1;
      for (let s = 0; s < slots.length; s++) if (slots[s]! <= r[2] && (best < 0 || slots[s]! > slots[best]!)) best = s;
      if (best < 0 && slots.length < cap) {
        slots.push(r[3]);
        continue;
      }
      if (best < 0) {
        // over the cap by the clocks: take the slot that ends first (negative gap)
        best = slots.indexOf(Math.min(...slots));
      }
      gaps.push(r[2] - slots[best]!);
      slots[best] = r[3];
    }
  }
  return gaps;
}

export function analyze(run: RawRun): RunFigures {
  const { workload } = run;
  const info = CONTENDERS[run.contender];
  const records = run.hosts.flatMap((h) => h.records);
  const seen = new Uint32Array(workload.jobs);
  for (const r of records) if (r[0] >= 0 && r[0] < workload.jobs) seen[r[0]]!++;
  let completed = 0;
  let duplicates = 0;
  for (const n of seen) {
    if (n > 0) completed++;
    if (n > 1) duplicates += n - 1;
  }
  const failed = run.hosts.reduce((a, h) => a + h.failed, 0);
  const lost = workload.jobs - completed;
  // A host that ran no job reports no first entry (JSON over IPC turns Infinity into null).
  const firstEntry = Math.min(...run.hosts.map((h) => h.firstEntry).filter((t): t is number => typeof t === 'number' && t > 0), ...records.map((r) => r[1]));
  const lastExit = Math.max(...records.map((r) => r[4] || r[3]));
  const seconds = records.length > 0 ? (lastExit - firstEntry) / 1000 : NaN;
  const jobsPerSec = records.length > 0 ? completed / seconds : 0;

  const holds = records.map((r) => r[3] - r[2]);
  const hold = dist(holds);
  const slots = workload.processes * workload.concurrency;
  let ideal: number | null = null;
  let nominal: number | null = null;
  let shareNote: string | undefined;
  if (workload.holdMs === 0) {
    shareNote = '0 ms holds: no meaningful ideal';
  } else if (workload.id.startsWith('uncontended')) {
    ideal = slots / (hold.mean / 1000);
    nominal = slots / (workload.holdMs / 1000);
  } else if (!info.capped) {
    shareNote = 'no cap';
  } else if (workload.mode === 'global-tenant') {
    // the weighted holds through the global cap, the busiest tenant's through its cap, or all through the slots
    const tenantCap = workload.tenantCap ?? 1;
    const perTenant = new Map<number, number>();
    let weighted = 0;
    let sum = 0;
    for (const r of records) {
      const h = r[3] - r[2];
      perTenant.set(r[6], (perTenant.get(r[6]) ?? 0) + h);
      weighted += h * (r[7] ?? 1);
      sum += h;
    }
    ideal = completed / (Math.max(weighted / workload.cap, Math.max(0, ...perTenant.values()) / tenantCap, sum / slots) / 1000);
    const hOf = run.holdOf ?? [];
    const wOf = run.weightOf ?? [];
    const nomTenant = new Map<number, number>();
    let nomWeighted = 0;
    let nomSum = 0;
    for (let i = 0; i < workload.jobs; i++) {
      nomTenant.set(run.tenantOf[i]!, (nomTenant.get(run.tenantOf[i]!) ?? 0) + (hOf[i] ?? 0));
      nomWeighted += (hOf[i] ?? 0) * (wOf[i] ?? 1);
      nomSum += hOf[i] ?? 0;
    }
    nominal = workload.jobs / (Math.max(nomWeighted / workload.cap, Math.max(0, ...nomTenant.values()) / tenantCap, nomSum / slots) / 1000);
  } else if (workload.mode === 'single') {
    ideal = workload.cap / (hold.mean / 1000);
    nominal = workload.cap / (workload.holdMs / 1000);
  } else {
    // per key: the busiest tenant's holds through its cap, or all holds through the fleet's slots
    const perTenant = new Map<number, number>();
    let sum = 0;
    for (const r of records) {
      perTenant.set(r[6], (perTenant.get(r[6]) ?? 0) + (r[3] - r[2]));
      sum += r[3] - r[2];
    }
    const makespan = Math.max(Math.max(...perTenant.values()) / workload.cap, sum / slots) / 1000;
    ideal = completed / makespan;
    const jobsOf = new Map<number, number>();
    for (const t of run.tenantOf) jobsOf.set(t, (jobsOf.get(t) ?? 0) + 1);
    const nominalMakespan = (Math.max(Math.max(...jobsOf.values()) / workload.cap, workload.jobs / slots) * workload.holdMs) / 1000;
    nominal = workload.jobs / nominalMakespan;
  }

  const stats = run.hosts.some((h) => h.stats)
    ? run.hosts.reduce(
        (a, h) => {
          for (const k of Object.keys(a) as Array<keyof typeof a>) a[k] += h.stats?.[k] ?? 0;
          return a;
        },
        { attempts: 0, busy: 0, handoffs: 0, reschedules: 0, promotions: 0, ran: 0 },
      )
    : undefined;
  const rs = run.hosts.some((h) => h.rsem)
    ? run.hosts.reduce((a, h) => ({ acquireCalls: a.acquireCalls + (h.rsem?.acquireCalls ?? 0), tries: a.tries + (h.rsem?.tries ?? 0), redisCalls: a.redisCalls + (h.rsem?.redisCalls ?? 0) }), {
        acquireCalls: 0,
        tries: 0,
        redisCalls: 0,
      })
    : undefined;
  let attemptsPerJob: number | null = null;
  let attemptsNote: string | undefined;
  if (stats) {
    attemptsPerJob = completed ? stats.attempts / completed : null;
    attemptsNote = 'limitProcessor stats.attempts (hand-offs are not attempts)';
  } else if (rs) {
    attemptsPerJob = completed ? rs.tries / completed : null;
    attemptsNote = 'Lua acquire scripts sent (each 10 ms poll is one try)';
  } else if (run.contender === 'bullmq-global') {
    attemptsNote = 'inside BullMQ (moveToActive), not countable from outside';
  }
  const roundTrips = run.hosts.some((h) => h.roundTrips !== undefined) ? run.hosts.reduce((a, h) => a + (h.roundTrips ?? 0), 0) : undefined;

  const groupOf = workload.mode === 'tenant' ? (r: JobRecord) => r[6] : () => 0;
  const weightOf = (r: JobRecord) => r[7] ?? 1;
  let gap: Dist | null = null;
  let gapNote: string | undefined;
  // Gaps mean something only where jobs are queued for the tickets: per key, that is the
  // heavy tenants (light tenants' tickets idle for want of jobs).
  const gapRecords = workload.mode === 'tenant' ? records.filter((r) => r[6] >= 0 && r[6] < HEAVY_TENANTS) : records;
  if (!info.capped) {
    gapNote = 'no tickets';
  } else if (workload.id.startsWith('uncontended')) {
    gapNote = 'not contended';
  } else if (workload.mode === 'global-tenant') {
    gapNote = 'not measured (two semaphores, weighted holds)';
  } else if (records.some((r) => r[5] >= 0)) {
    gap = dist(ticketGaps(gapRecords));
    gapNote = workload.mode === 'tenant' ? 'per ticket id, heavy tenants' : 'per ticket id';
  } else {
    gap = dist(virtualGaps(gapRecords, workload.cap, groupOf));
    gapNote = workload.mode === 'tenant' ? 'virtual slots (lower bound), heavy tenants' : 'virtual slots (lower bound)';
  }
  // Two witnesses: the fake API's own in-flight count (misses overlaps of 0 ms calls, which it
  // answers within one tick) and a sweep over the body intervals the processes stamped on the
  // shared clock (same-host clocks: microseconds apart).
  // global-tenant: the global cap counts weights; each tenant's cap counts calls.
  const maxHolders = workload.mode === 'tenant' ? run.api.tenantMax : run.api.max;
  const maxHoldersByClock = maxOverlap(records, groupOf, workload.mode === 'global-tenant' ? weightOf : undefined);
  const tenantHolders =
    workload.mode === 'global-tenant' && info.capped ? { api: run.api.tenantMax, clock: maxOverlap(records, (r) => r[6]), cap: workload.tenantCap ?? 1 } : undefined;
  const capHeld = info.capped
    ? maxHolders <= workload.cap && maxHoldersByClock <= workload.cap && (!tenantHolders || (tenantHolders.api <= tenantHolders.cap && tenantHolders.clock <= tenantHolders.cap))
    : null;
  const hostJobs = run.hosts.map((h) => h.records.length);
  const hostSpread = hostJobs.length === workload.processes && hostJobs.length > 0 ? Math.max(...hostJobs) / Math.min(...hostJobs) : null;
  const soloPre = run.hosts.flatMap((h) => h.soloRoundTrips?.pre ?? []);
  const soloPost = run.hosts.flatMap((h) => h.soloRoundTrips?.post ?? []);
  const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
  // Only uncontended: under contention a phase alone in its process still includes waits and retries.
  const critRt = workload.id.startsWith('uncontended') && soloPre.length && soloPost.length ? { pre: mean(soloPre), post: mean(soloPost), nPre: soloPre.length, nPost: soloPost.length } : null;
  const perJob = (x: number | null | undefined) => (x === null || x === undefined || !completed ? null : x / completed);
  // run.pg.sem is null when the server has no pg_stat_statements: then only the server's WAL is known
  const measured = !!run.pg?.sem;
  const pgFig = run.pg
    ? {
        method: run.pg.method,
        semMsPerJob: measured && run.contender.startsWith('pgsem') ? perJob(run.pg.sem?.execMs) : null,
        semWalPerJob: measured && run.contender.startsWith('pgsem') ? perJob(run.pg.sem?.walBytes) : null,
        bqMsPerJob: measured && info.backend === 'postgres' ? perJob(run.pg.bq?.execMs ?? 0) : null,
        bqWalPerJob: measured && info.backend === 'postgres' ? perJob(run.pg.bq?.walBytes ?? 0) : null,
        sharedMsPerJob: perJob(run.pg.shared?.execMs),
        serverWalPerJob: perJob(run.pg.serverWalBytes),
        top: run.pg.top,
        raw: run.pg,
      }
    : null;
  const invocations = run.hosts.reduce((a, h) => a + h.invocations, 0);
  const errors = [...run.errors];
  for (const h of run.hosts) for (const f of h.failures) errors.push(`host ${h.hostIndex}: ${f}`);
  const ok = lost === 0 && failed === 0 && capHeld !== false && run.hosts.length === workload.processes && !run.deadlineHit;

  return {
    runId: run.runId,
    workload: workload.id,
    contender: run.contender,
    label: info.label,
    jobs: workload.jobs,
    holdMs: workload.holdMs,
    completed,
    failed,
    lost,
    duplicates,
    stalled: run.hosts.reduce((a, h) => a + (h.stalled ?? 0), 0),
    seconds,
    jobsPerSec,
    idealJobsPerSec: ideal,
    shareOfIdeal: ideal ? jobsPerSec / ideal : null,
    idealNominalJobsPerSec: nominal,
    shareOfNominal: nominal ? jobsPerSec / nominal : null,
    shareNote,
    hold,
    pre: dist(records.map((r) => r[2] - r[1])),
    post: dist(records.filter((r) => r[4] > 0).map((r) => r[4] - r[3])),
    attemptsPerJob,
    attemptsNote,
    invocationsPerJob: completed ? invocations / completed : NaN,
    stats,
    putBackAfter: stats ? dist(run.hosts.flatMap((h) => h.putBackAfterMs ?? [])) : undefined,
    roundTripsPerJob: roundTrips !== undefined && completed ? roundTrips / completed : null,
    putBacksPerJob: stats && completed ? stats.reschedules / completed : null,
    critRt,
    hostJobs,
    hostSpread,
    deafHosts: run.hosts.some((h) => h.hearsWakeUps !== undefined) ? run.hosts.filter((h) => h.hearsWakeUps === false).length : null,
    pg: pgFig,
    attemptsMadeNonZero: run.hosts.reduce((a, h) => a + (h.attemptsMadeNonZero ?? 0), 0),
    tenantHolders,
    gap,
    gapNote,
    maxHolders,
    maxHoldersByClock,
    cap: info.capped ? workload.cap : null,
    capHeld,
    conns: run.conns,
    rssPeakMB: Math.max(0, ...run.hosts.map((h) => h.rssPeak)) / 2 ** 20,
    workerCpuMsPerJob: completed ? run.hosts.reduce((a, h) => a + h.cpuMs, 0) / completed : NaN,
    cpuBusy: run.cpuBusy,
    serverCpuMsPerJob: run.serverCpuMs && completed ? { postgres: run.serverCpuMs.postgres / completed, redis: run.serverCpuMs.redis / completed } : null,
    backgroundBusy: null,
    deadlineHit: run.deadlineHit,
    wallMs: run.wallMs,
    setupMs: run.setupMs,
    errors,
    redis: rs ? { ...rs, redisCallsPerJob: completed ? rs.redisCalls / completed : NaN } : undefined,
    queueCounts: run.queueCounts,
    ok,
  };
}
