// The benchmark's outputs: the stdout table, PASS/MISS per target, JSON, Markdown and an SVG chart.
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { acquireLines, type AcquireResult } from './acquire-bench.js';
import type { RunFigures } from './analyze.js';
import type { Environment } from './environment.js';
import { renderChart } from './chart.js';
import { CONTENDERS, type ContenderId, type WorkloadSpec } from './types.js';

export interface TargetResult {
  /** The item of issue 11's "What must be true" list (numbers), or of issue 12's ('12: ...'). */
  item: number | string;
  target: string;
  contender: string;
  value: string;
  /** null: not measured in this run. */
  pass: boolean | null;
  why?: string;
}

const OURS: ContenderId[] = ['pgsem-redis', 'pgsem-pg', 'pgsem-redis-session', 'pgsem-pg-session'];
const isSession = (c: string) => CONTENDERS[c as ContenderId]?.holding === 'session';

const pct = (x: number | null | undefined, digits = 1) => (x === null || x === undefined || !Number.isFinite(x) ? '—' : `${(x * 100).toFixed(digits)}%`);
const num = (x: number | null | undefined, digits = 2) => (x === null || x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(digits));

function find(figures: RunFigures[], workload: string, contender: string) {
  return figures.find((f) => f.workload === workload && f.contender === contender);
}

/** Plain words on what held a figure back, from what was measured. */
function shareLimits(f: RunFigures, env: Environment): string {
  const parts: string[] = [];
  if (f.cpuBusy !== null && f.cpuBusy >= 0.85) parts.push(`CPU-bound: the ${env.machine.cpus} cores were ${pct(f.cpuBusy, 0)} busy (Postgres, Redis, 4 workers and the fake API share them)`);
  else if (f.cpuBusy !== null) parts.push(`machine CPU ${pct(f.cpuBusy, 0)} busy`);
  if (f.gap && Number.isFinite(f.gap.mean)) {
    const lossFromGaps = f.gap.mean / (f.gap.mean + f.hold.mean);
    parts.push(`each ticket sat idle ${num(f.gap.mean)} ms (mean; p50 ${num(f.gap.p50)}, p99 ${num(f.gap.p99)}) between ${num(f.hold.mean)} ms holds, i.e. ${pct(lossFromGaps)} of ticket time idle`);
  }
  if (f.serverCpuMsPerJob) {
    parts.push(`CPU per job: workers ${num(f.workerCpuMsPerJob)} ms, Postgres ${num(f.serverCpuMsPerJob.postgres)} ms, Redis ${num(f.serverCpuMsPerJob.redis)} ms`);
  }
  if (f.stats) parts.push(`${f.stats.handoffs} of ${f.stats.ran} jobs got their ticket by in-process hand-off; ${f.stats.reschedules} put-backs, ${f.stats.promotions} promotions`);
  parts.push(`hold measured ${num(f.hold.mean)} ms for ${f.holdMs} ms asked (HTTP round trip + timer lateness included)`);
  return parts.join('; ');
}

/** Where pg-semaphore's round trips went, per job, from its counters. */
function roundTripWhy(f: RunFigures): string {
  const s = f.stats;
  if (!s || !f.completed) return 'no counters';
  const per = (n: number) => num(n / f.completed);
  return (
    `per job: ${num(f.roundTripsPerJob)} PG round trips in all (sem.roundTrips), ${per(s.attempts)} acquire calls (${per(s.busy)} busy), ${per(s.handoffs)} hand-offs, ${per(s.reschedules)} put-backs` +
    (f.critRt ? `; a job alone in its process: ${num(f.critRt.pre)} round trips before its body, ${num(f.critRt.post)} after` : '') +
    `; before the body p50 ${num(f.pre.p50)} ms, p99 ${num(f.pre.p99)} ms; worker CPU ${num(f.workerCpuMsPerJob)} ms/job`
  );
}

const fmtMs = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? '—' : x < 1 ? x.toFixed(3) : x.toFixed(2));
const fmtBytes = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(0));
/** "About 0 bytes of WAL per job": at most this many. */
export const WAL_ABOUT_ZERO = 50;

/**
 * Issue 11's targets ("Cost per job at or below BullMQ's own limiter"), items 1-8, from
 * this run's figures; `acquire` (item 5) from the acquire microbenchmark when it ran.
 */
export function evaluateTargets(figures: RunFigures[], env: Environment, acquire?: AcquireResult | null): TargetResult[] {
  const out: TargetResult[] = [];
  const add = (item: number | string, target: string, contender: string, value: string, pass: boolean | null, why?: string) =>
    out.push({ item, target, contender, value, pass, why: pass === true ? undefined : why });
  const notRun = (w: string, c: string) => `${c}: not run on ${w} in this run`;

  for (const c of OURS) {
    // 1. Throughput
    const sat10 = find(figures, 'saturated-10ms', c);
    if (sat10) {
      const others = (['bullmq-global', 'redis-semaphore'] as const).map((o) => find(figures, 'saturated-10ms', o)).filter((f): f is RunFigures => !!f);
      const best = others.sort((a, b) => b.jobsPerSec - a.jobsPerSec)[0];
      add(
        1,
        'jobs/s >= the better of bullmq-global and redis-semaphore (saturated 10 ms)',
        c,
        best ? `${sat10.jobsPerSec.toFixed(0)} vs ${best.jobsPerSec.toFixed(0)} (${best.contender})` : sat10.jobsPerSec.toFixed(0),
        best ? sat10.jobsPerSec >= best.jobsPerSec : null,
        best ? shareLimits(sat10, env) : notRun('saturated-10ms', 'neither bullmq-global nor redis-semaphore'),
      );
    }
    // on BullMQ's Postgres backend, what that backend did alone and uncapped in the same workload:
    // a ceiling no limiter on it can pass (information, not the target)
    const ceiling = (w: WorkloadSpec['id']) => {
      const alone = CONTENDERS[c].backend === 'postgres' ? find(figures, w, 'plain-pg') : undefined;
      return alone ? `; BullMQ's Postgres backend alone, uncapped (plain-pg), did ${alone.jobsPerSec.toFixed(0)} jobs/s here` : '';
    };
    const sat0 = find(figures, 'saturated-0ms', c);
    if (sat0) {
      const rs = find(figures, 'saturated-0ms', 'redis-semaphore');
      add(1, 'jobs/s >= redis-semaphore (saturated 0 ms)', c, rs ? `${sat0.jobsPerSec.toFixed(0)} vs ${rs.jobsPerSec.toFixed(0)}` : sat0.jobsPerSec.toFixed(0), rs ? sat0.jobsPerSec >= rs.jobsPerSec : null, (rs ? cpuWhy(sat0) : notRun('saturated-0ms', 'redis-semaphore')) + ceiling('saturated-0ms'));
      const bg = find(figures, 'saturated-0ms', 'bullmq-global');
      add(
        1,
        'jobs/s >= 0.8 x bullmq-global (saturated 0 ms)',
        c,
        bg ? `${sat0.jobsPerSec.toFixed(0)} vs 0.8 x ${bg.jobsPerSec.toFixed(0)} = ${(0.8 * bg.jobsPerSec).toFixed(0)}` : sat0.jobsPerSec.toFixed(0),
        bg ? sat0.jobsPerSec >= 0.8 * bg.jobsPerSec : null,
        (bg ? cpuWhy(sat0) : notRun('saturated-0ms', 'bullmq-global')) + ceiling('saturated-0ms'),
      );
    }
    const pk = find(figures, 'per-key', c);
    if (pk) {
      const rs = find(figures, 'per-key', 'redis-semaphore');
      add(1, 'jobs/s >= redis-semaphore (per key)', c, rs ? `${pk.jobsPerSec.toFixed(0)} vs ${rs.jobsPerSec.toFixed(0)}` : pk.jobsPerSec.toFixed(0), rs ? pk.jobsPerSec >= rs.jobsPerSec : null, (rs ? shareLimits(pk, env) : notRun('per-key', 'redis-semaphore')) + ceiling('per-key'));
    }
    const unc = find(figures, 'uncontended', c);
    const plainUnc = find(figures, 'uncontended', 'plain');
    // on BullMQ's Postgres backend, also what that backend does alone (information, not the target)
    const plainPg = CONTENDERS[c].backend === 'postgres' ? find(figures, 'uncontended', 'plain-pg') : undefined;
    if (unc) {
      add(
        1,
        ">= 85% of the plain worker's jobs/s (uncontended)",
        c,
        plainUnc ? `${unc.jobsPerSec.toFixed(0)} vs ${plainUnc.jobsPerSec.toFixed(0)} (${pct(unc.jobsPerSec / plainUnc.jobsPerSec)})` : unc.jobsPerSec.toFixed(0),
        plainUnc ? unc.jobsPerSec >= 0.85 * plainUnc.jobsPerSec : null,
        (plainUnc ? roundTripWhy(unc) : notRun('uncontended', 'plain')) +
          (plainPg ? `; the plain worker on BullMQ's Postgres backend did ${plainPg.jobsPerSec.toFixed(0)} jobs/s: this is ${pct(unc.jobsPerSec / plainPg.jobsPerSec)} of it` : ''),
      );
    }
    // 2. Tickets kept busy
    if (sat10) add(2, '>= 95% of ideal (saturated 10 ms)', c, pct(sat10.shareOfIdeal), sat10.shareOfIdeal === null ? null : sat10.shareOfIdeal >= 0.95, shareLimits(sat10, env));
    if (pk) add(2, '>= 85% of ideal (per key)', c, pct(pk.shareOfIdeal), pk.shareOfIdeal === null ? null : pk.shareOfIdeal >= 0.85, shareLimits(pk, env));
    // 3. No churn
    for (const [w, max] of [
      ['saturated-10ms', 0.05],
      ['saturated-0ms', 0.05],
      ['per-key', 0.5],
    ] as const) {
      const f = find(figures, w, c);
      if (!f || f.putBacksPerJob === null) continue;
      add(3, `<= ${max} put-backs per completed job (${w})`, c, num(f.putBacksPerJob, 3), f.putBacksPerJob <= max, churnWhy(f));
    }
    // "at most 1.2 everywhere else": large-cap too (a workload added after the issue was filed)
    for (const w of ['saturated-10ms', 'saturated-0ms', 'per-key', 'uncontended', 'uncontended-serial', 'global-tenant', 'large-cap']) {
      const f = find(figures, w, c);
      if (!f || f.attemptsPerJob === null) continue;
      const max = w === 'global-tenant' ? 1.5 : 1.2;
      add(3, `<= ${max} acquire calls per completed job (${w})`, c, num(f.attemptsPerJob), f.attemptsPerJob <= max, churnWhy(f));
    }
    // 4. Postgres cost
    for (const w of ['saturated-10ms', 'saturated-0ms']) {
      const f = find(figures, w, c);
      if (!f) continue;
      const ms = f.pg?.semMsPerJob ?? null;
      const wal = f.pg?.semWalPerJob ?? null;
      const top = f.pg?.top.filter((r) => r.owner === 'sem' && r.toplevel).slice(0, 3).map((r) => `${r.label} ${r.calls} calls x ${fmtMs(r.meanMs)} ms, ${fmtBytes(r.walBytes)} B WAL`).join('; ');
      add(4, `<= 0.15 ms Postgres execution time per completed job (${w})`, c, fmtMs(ms), ms === null ? null : ms <= 0.15, ms === null ? 'not measured: no pg_stat_statements on this server' : `heaviest: ${top}`);
      add(4, `about 0 bytes of WAL per completed job, here <= ${WAL_ABOUT_ZERO} (${w})`, c, fmtBytes(wal), wal === null ? null : wal <= WAL_ABOUT_ZERO, wal === null ? 'not measured: no pg_stat_statements on this server' : `heaviest: ${top}`);
    }
    // 6. Round trips and CPU, uncontended (one job at a time where that workload ran: exact)
    const critOf = find(figures, 'uncontended-serial', c) ?? unc;
    if (critOf) {
      const cr = critOf.critRt;
      const crit = cr ? cr.pre + cr.post : null;
      // issue 12: session holding takes tickets in 1 round trip and releases without a wait
      const maxCrit = isSession(c) ? 1 : 2;
      add(
        isSession(c) ? '12' : 6,
        `<= ${maxCrit} Postgres round trip${maxCrit > 1 ? 's' : ''} on an uncontended job's critical path`,
        c,
        cr ? `${num(crit)} (${num(cr.pre)} before the body + ${num(cr.post)} after; ${critOf.workload}, ${cr.nPre}/${cr.nPost} phases measured alone)` : '—',
        crit === null ? null : crit <= maxCrit + 0.0001,
        crit === null ? `no job of ${critOf.workload} ran its acquire or release alone in its process` : roundTripWhy(critOf),
      );
    }
    if (unc) {
      add(
        6,
        "worker CPU per job <= the plain worker's + 0.4 ms (uncontended)",
        c,
        plainUnc ? `${num(unc.workerCpuMsPerJob)} vs ${num(plainUnc.workerCpuMsPerJob)} + 0.4 ms` : num(unc.workerCpuMsPerJob),
        plainUnc ? unc.workerCpuMsPerJob <= plainUnc.workerCpuMsPerJob + 0.4 : null,
        plainUnc ? `${num(unc.roundTripsPerJob)} PG round trips per job` : notRun('uncontended', 'plain'),
      );
    }
    // 7. Fair across hosts
    for (const w of ['saturated-10ms', 'saturated-0ms']) {
      const f = find(figures, w, c);
      if (!f) continue;
      add(7, `busiest host <= 1.5 x least busy host's jobs (${w})`, c, f.hostSpread === null ? '—' : `${num(f.hostSpread)} (${f.hostJobs.join('/')})`, f.hostSpread === null ? null : f.hostSpread <= 1.5, `jobs per host ${f.hostJobs.join(', ')}${f.deafHosts ? `; ${f.deafHosts} whose LISTEN connection was not hearing NOTIFYs at the end` : ''}`);
    }
  }
  // Issue 12: a large cap on few connections.
  for (const c of OURS) {
    const f = find(figures, 'large-cap', c);
    if (!f || f.conns.holdPeak === undefined) continue;
    const processes = f.hostJobs.length;
    if (isSession(c)) {
      add(
        '12',
        `at most one holding connection per worker process (large-cap: <= ${processes})`,
        c,
        `${f.conns.holdPeak} backends held tickets at once (peak of ${f.conns.lockSamples} pg_locks samples; ${f.conns.ticketsPeak} tickets held at peak)`,
        f.conns.holdPeak <= processes,
        `pg-semaphore connections open at peak ${f.conns.semPeak}`,
      );
    }
  }
  // 5. Acquire microbenchmark
  if (acquire) {
    const ms = (id: string) => acquire.cases.find((x) => x.id === id)?.msPerCycle;
    add(5, 'library acquire-release cycle <= 1.3 x a bare advisory-lock cycle (3 round trips)', 'core', `${num(acquire.ratios.libraryOverBare)}x (${fmtMs(ms('lib-empty5'))} vs ${fmtMs(ms('bare-3rt'))} ms)`, acquire.ratios.libraryOverBare <= 1.3, `raw SQL cycle ${num(acquire.ratios.rawOverBare)}x; bare in one message ${fmtMs(ms('bare-1msg'))} ms`);
    add(5, 'cycle with 9,900 of 10,000 tickets held <= 1.5 x the cycle on an empty 5-ticket semaphore', 'core', `${num(acquire.ratios.libraryFullOverEmpty)}x (${fmtMs(ms('lib-full'))} vs ${fmtMs(ms('lib-empty5'))} ms)`, acquire.ratios.libraryFullOverEmpty <= 1.5, `raw SQL ${num(acquire.ratios.rawFullOverEmpty)}x (${fmtMs(ms('raw-full'))} vs ${fmtMs(ms('raw-empty5'))} ms): the acquire scans the held tickets`);
  } else {
    add(5, 'acquire microbenchmark (library <= 1.3 x bare; 9,900 of 10,000 held <= 1.5 x empty)', 'core', '—', null, 'not run here: `npm run bench:acquire` (the full benchmark runs it when no --only/--workloads is given)');
  }
  add(7, 'fair across hosts in the demo (busiest <= 1.5 x least busy)', 'demo', '—', null, 'measured by `npm run demo`, not by the benchmark');
  // 8. What holds today still holds
  const bad = figures.filter((f) => f.capHeld === false || f.lost > 0 || f.failed > 0 || f.duplicates > 0 || f.attemptsMadeNonZero > 0);
  add(
    8,
    'caps never broke, every job ran once, attemptsMade stayed 0 (every run)',
    'all',
    bad.length ? bad.map((f) => `${f.workload}/${f.contender}: ${checkOf(f)}${f.attemptsMadeNonZero ? `, ${f.attemptsMadeNonZero} jobs with attemptsMade > 0` : ''}`).join('; ') : `${figures.length} runs ok`,
    figures.length ? bad.length === 0 : null,
    'see the check column',
  );
  return out;
}

function cpuWhy(f: RunFigures): string {
  return `worker CPU ${num(f.workerCpuMsPerJob)} ms/job, Postgres ${num(f.serverCpuMsPerJob?.postgres)} ms/job, machine ${pct(f.cpuBusy, 0)} busy; ${f.stats ? `${f.stats.reschedules} put-backs, ${f.stats.attempts} acquire calls for ${f.completed} jobs` : ''}`;
}

function churnWhy(f: RunFigures): string {
  const s = f.stats;
  if (!s) return 'no counters';
  return `${s.attempts} acquire calls (${s.busy} found no ticket), ${s.reschedules} put-backs (after p50 ${num(f.putBackAfter?.p50)} ms in the processor), ${s.handoffs} hand-offs, ${s.promotions} promotions for ${f.completed} jobs`;
}

export interface Settings {
  /** Which pg-semaphore the worker hosts loaded: dist/ (the build) or src/ (through tsx); older results lack it. */
  lib?: 'dist' | 'src';
  semPoolMax: number;
  bqPoolMax: number;
  runDeadlineS: number;
  budgetS: number;
  quietWaitS: number;
}

interface Extra {
  settings: Settings;
  /** Which Postgres, and how its statements were attributed. */
  postgres: string;
  /** The acquire microbenchmark, when it ran. */
  acquire: AcquireResult | null;
  skipped: string[];
  crashed: string[];
  totalSeconds: number;
  quick: boolean;
}

const COLUMNS = [
  'workload',
  'contender',
  'jobs/s',
  '% ideal',
  '% nominal',
  'att/job',
  'put-backs/job',
  'pre p50/p99 ms',
  'PG RT/job',
  'crit RT pre+post',
  'PG ms/job sem/bq',
  'WAL B/job sem/bq/all',
  'host spread',
  'idle gap p50/p99 ms',
  'holders api, clock / cap',
  'PG conns peak',
  'RSS MB',
  'CPU ms/job wrk/pg/rds',
  'CPU',
  'check',
];

function row(f: RunFigures): string[] {
  const ours = f.contender.startsWith('pgsem');
  const pgBackend = f.pg?.bqMsPerJob !== null && f.pg?.bqMsPerJob !== undefined;
  return [
    f.workload,
    f.contender,
    f.jobsPerSec.toFixed(0),
    f.shareOfIdeal !== null ? pct(f.shareOfIdeal) : f.shareNote === 'no cap' ? 'no cap' : 'n/m',
    f.shareOfNominal !== null ? pct(f.shareOfNominal) : '—',
    num(f.attemptsPerJob),
    num(f.putBacksPerJob, 3),
    `${num(f.pre.p50)} / ${num(f.pre.p99)}`,
    num(f.roundTripsPerJob),
    f.critRt ? `${num(f.critRt.pre, 1)}+${num(f.critRt.post, 1)}` : '—',
    f.pg && (ours || pgBackend) ? `${ours ? fmtMs(f.pg.semMsPerJob) : '—'}/${pgBackend ? fmtMs(f.pg.bqMsPerJob) : '—'}` : '—',
    f.pg && (ours || pgBackend) ? `${ours ? fmtBytes(f.pg.semWalPerJob) : '—'}/${pgBackend ? fmtBytes(f.pg.bqWalPerJob) : '—'}/${fmtBytes(f.pg.serverWalPerJob)}` : '—',
    f.hostSpread === null ? '—' : num(f.hostSpread),
    f.gap ? `${num(f.gap.p50)} / ${num(f.gap.p99)}${f.gapNote?.startsWith('virtual') ? '*' : ''}` : '—',
    `${f.maxHolders}, ${f.maxHoldersByClock} / ${f.cap ?? '∞'}` + (f.tenantHolders ? `; tenant ${f.tenantHolders.api}, ${f.tenantHolders.clock} / ${f.tenantHolders.cap}` : ''),
    ours
      ? `${f.conns.semPeak} (${f.conns.semTxPeak} tx${f.conns.holdPeak !== undefined ? `, ${f.conns.holdPeak} hold` : ''})${CONTENDERS[f.contender as ContenderId]?.backend === 'postgres' ? ` +${f.conns.bqPeak} bq` : ''}`
      : '—',
    f.rssPeakMB.toFixed(0),
    `${num(f.workerCpuMsPerJob, 1)}/${num(f.serverCpuMsPerJob?.postgres, 1)}/${num(f.serverCpuMsPerJob?.redis, 1)}`,
    pct(f.cpuBusy, 0),
    checkOf(f),
  ];
}

function checkOf(f: RunFigures): string {
  const bad: string[] = [];
  if (f.capHeld === false) bad.push('CAP BROKEN');
  if (f.deadlineHit) bad.push('DEADLINE');
  if (f.lost > 0) bad.push(`${f.lost} unfinished`);
  if (f.failed > 0) bad.push(`${f.failed} failed`);
  if (f.duplicates > 0) bad.push(`${f.duplicates} ran twice`);
  if (f.stalled > 0) bad.push(`${f.stalled} stalled`);
  return bad.length ? bad.join(', ') : 'ok';
}

function textTable(rows: string[][], columns: string[] = COLUMNS): string {
  const widths = columns.map((c, i) => Math.max(c.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(columns), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

const NOTES = [
  '% ideal: jobs/s over K / mean measured hold (saturated), over the busiest tenant or the fleet slots (per key), over the weighted holds through the global cap, the busiest tenant or the slots (global-tenant), over fleet slots / hold (uncontended); n/m = not meaningful (0 ms holds). With measured holds this is how busy the tickets were kept.',
  "% nominal: the same ideal from the hold asked (10 ms). On a CPU-bound machine holds stretch (CPU starvation of the fake API and the workers), by how much depends on each contender's own CPU use, so compare absolute jobs/s too.",
  'att/job: pg-semaphore stats.attempts (acquire calls) per completed job; redis-semaphore: Lua acquire scripts sent (one per 10 ms poll); BullMQ global concurrency acquires inside BullMQ (not countable). put-backs/job: the wrapper\'s stats.reschedules (moveToDelayed) summed over processes / completed jobs.',
  'pre: processor call to body start (the cost before the work: acquire, or waiting for it when contended). PG RT/job: sem.roundTrips + sem.backgroundRoundTrips (session holding\'s pipelined releases, which nobody waits for) summed over processes / jobs. crit RT: round trips of a job alone, counted on sem.roundTrips (the ones waited for) over its phases that no other job of its process overlapped: processor call to body start (acquire) + body end to processor return (release); mean over such jobs (the uncontended workload has plenty; under contention they are rare and include waits).',
  "PG ms/job: Postgres execution time (pg_stat_statements total_exec_time of top-level statements, BEGIN/COMMIT/ROLLBACK/SELECT 1 included) per completed job, pg-semaphore's / BullMQ Postgres backend's. WAL B/job: their wal_bytes, and the whole server's WAL (pg_current_wal_lsn() before/after) per job. How statements were attributed is under Postgres.",
  'host spread: jobs completed by the busiest worker process / by the least busy one (all processes have the same concurrency).',
  'idle gap: body end of one holder to body start of the next on the same ticket id; * = no ticket ids, intervals laid on K virtual slots (each start takes the most recently freed slot: a lower bound).',
  "holders: most calls in flight at once (per tenant in per-key; weighted by tickets on the global cap, and per tenant, in global-tenant) as the fake API counted them, and as the processes' body timestamps show (the API answers 0 ms calls within one tick, so only the clock sees their overlap); both must be <= cap. PG conns: peak of pg-semaphore connections open (pooled, idle ones included) sampled from pg_stat_activity every 200 ms, in brackets the peak of those inside a transaction (holding or acquiring) and the peak of backends holding ticket locks (pg_locks: distinct pids with an advisory lock on the run's ticket keys), + BullMQ Postgres backend connections.",
  "RSS: peak of any worker process. CPU ms/job: CPU time per completed job of the worker processes / the Postgres server's processes (only the benchmark's own server when it runs one) / Redis (shared). CPU: whole machine busy during the run (everything shares the cores).",
];

const LARGE_CAP_COLUMNS = [
  'contender',
  'jobs/s',
  '% ideal',
  'holding backends peak (mean)',
  'tickets held peak',
  'lib conns peak',
  'PG ms/job',
  'WAL B/job',
  'PG RT/job',
  'crit RT (serial)',
  'CPU ms/job wrk/pg/rds',
  'check',
];

/**
 * Issue 12's table: the large-cap workload side by side. Holding backends: distinct backends
 * with a lock on one of the run's tickets (pg_locks, every 200 ms); lib conns: pg-semaphore's
 * connections open (pg_stat_activity); crit RT from the uncontended-serial run of the same contender.
 */
export function largeCapRows(figures: RunFigures[]): string[][] {
  return figures
    .filter((f) => f.workload === 'large-cap')
    .map((f) => {
      const ours = f.contender.startsWith('pgsem');
      const serial = find(figures, 'uncontended-serial', f.contender)?.critRt;
      return [
        f.contender,
        f.jobsPerSec.toFixed(0),
        pct(f.shareOfIdeal),
        ours && f.conns.holdPeak !== undefined ? `${f.conns.holdPeak} (${num(f.conns.holdMean, 1)})` : '— (no Postgres)',
        ours && f.conns.ticketsPeak !== undefined ? `${f.conns.ticketsPeak} / ${f.cap}` : '—',
        ours ? `${f.conns.semPeak}${CONTENDERS[f.contender as ContenderId]?.backend === 'postgres' ? ` +${f.conns.bqPeak} bq` : ''}` : '—',
        ours && f.pg ? fmtMs(f.pg.semMsPerJob) : '—',
        ours && f.pg ? fmtBytes(f.pg.semWalPerJob) : '—',
        num(f.roundTripsPerJob),
        serial ? `${num(serial.pre, 1)}+${num(serial.post, 1)}` : '—',
        `${num(f.workerCpuMsPerJob, 1)}/${num(f.serverCpuMsPerJob?.postgres, 1)}/${num(f.serverCpuMsPerJob?.redis, 1)}`,
        checkOf(f),
      ];
    });
}

/** The uncontended path against the plain worker: what the cap adds to every job. */
export function overheadLines(figures: RunFigures[]): string[] {
  const plain = find(figures, 'uncontended', 'plain');
  if (!plain) return [];
  const lines: string[] = [];
  const plainPg = find(figures, 'uncontended', 'plain-pg');
  for (const f of figures.filter((x) => x.workload === 'uncontended' && x.contender !== 'plain' && x.contender !== 'plain-pg')) {
    const same = CONTENDERS[f.contender as ContenderId]?.backend === 'postgres' ? plainPg : undefined;
    // the latencies against the plain worker on the same backend where it ran
    const base = same ?? plain;
    lines.push(
      `${f.contender}: +${num(f.pre.p50 - base.pre.p50)} ms p50, +${num(f.pre.p99 - base.pre.p99)} ms p99 before the body; ` +
        `+${num(f.post.p50 - base.post.p50)} ms p50 after it (release)${same ? ' (against plain-pg)' : ''}; ${num(f.roundTripsPerJob)} PG round trips/job; ` +
        `${pct(f.jobsPerSec / plain.jobsPerSec, 0)} of the plain worker's jobs/s` +
        (same ? ` (${pct(f.jobsPerSec / same.jobsPerSec, 0)} of the plain worker's on BullMQ's Postgres backend, ${same.jobsPerSec.toFixed(0)})` : '') +
        `; worker CPU ${num(f.workerCpuMsPerJob)} vs ${num(base.workerCpuMsPerJob)} ms/job`,
    );
  }
  return lines;
}

export function printTable(figures: RunFigures[], targets: TargetResult[], extra: Extra): void {
  console.log('');
  console.log(textTable(figures.map(row)));
  console.log('');
  for (const n of NOTES) console.log(`  ${n}`);
  console.log('');
  const large = largeCapRows(figures);
  if (large.length) {
    console.log('Large cap (issue 12): K=200, 4 processes x 60, both holding modes:');
    console.log(textTable(large, LARGE_CAP_COLUMNS));
    console.log('');
  }
  const overhead = overheadLines(figures);
  if (overhead.length) {
    console.log('Uncontended overhead against the plain worker:');
    for (const l of overhead) console.log(`  ${l}`);
    console.log('');
  }
  if (extra.acquire) {
    console.log('Acquire microbenchmark (single client, cycles back to back):');
    for (const c of extra.acquire.cases) console.log(`  ${c.cyclesPerSec.toFixed(0).padStart(6)} cycles/s  ${fmtMs(c.msPerCycle)} ms/cycle  ${c.title}`);
    for (const l of acquireLines(extra.acquire)) console.log(`  ${l}`);
    console.log('');
  }
  console.log(`Postgres: ${extra.postgres}`);
  console.log('');
  console.log("Targets of issue 11 (item: result contender target: value):");
  for (const t of targets) {
    console.log(`  ${t.item}: ${t.pass === null ? 'N/A ' : t.pass ? 'PASS' : 'MISS'}  ${t.contender.padEnd(12)} ${t.target}: ${t.value}`);
    if (t.why) console.log(`        ${t.pass ? 'but' : 'limited by'}: ${t.why}`);
  }
  for (const s of extra.skipped) console.log(`  skipped: ${s}`);
  for (const c of extra.crashed) console.log(`  run failed: ${c}`);
  console.log(`\n${extra.quick ? 'Quick' : 'Full'} benchmark took ${extra.totalSeconds.toFixed(0)} s.`);
}

function markdown(env: Environment, plan: WorkloadSpec[], figures: RunFigures[], targets: TargetResult[], extra: Extra): string {
  const md: string[] = [];
  md.push(`# pg-semaphore benchmark${extra.quick ? ' (quick mode)' : ''}`, '');
  md.push(`- Date: ${env.date}`);
  md.push(`- Command: \`${env.command}\``);
  md.push(`- Machine: ${env.machine.cpus} CPUs (${env.machine.cpuModel}), ${env.machine.memoryGiB} GiB RAM, ${env.machine.os}; load average at start ${env.machine.loadAvgAtStart.join(' / ')}`);
  md.push(
    `- Versions: Node ${env.versions.node}, ${env.versions.postgres}, Redis ${env.versions.redis}, BullMQ ${env.versions.bullmq}, redis-semaphore ${env.versions.redisSemaphore}, ioredis ${env.versions.ioredis}, pg ${env.versions.pg}`,
  );
  md.push(`- Postgres: ${extra.postgres}`);
  md.push(`- Postgres max_connections ${env.postgres.maxConnections} (${env.postgres.connectionsAtStart} client connections open at start)`);
  md.push(`- Code: git HEAD ${env.git.head ?? 'unknown'}, src/ sha256 ${env.git.srcSha256} (as on disk)`);
  const st = extra.settings;
  md.push(
    `- Settings: ${st.lib === 'dist' ? 'worker hosts ran pg-semaphore as built for publishing (tsup, its own folder per run; the acquire microbenchmark runs src/ through tsx)' : 'worker hosts ran pg-semaphore from src/ through tsx'}; pool max ${st.semPoolMax} per worker process, BullMQ Postgres backend pool max ${st.bqPoolMax}; each run's deadline ${st.runDeadlineS} s, whole budget ${st.budgetS} s; before each run up to ${st.quietWaitS} s waiting for the machine to go quiet (it is shared)`,
  );
  md.push(`- Took ${extra.totalSeconds.toFixed(0)} s. Postgres, Redis, the worker processes and the fake API all share the same cores, loopback only.`, '');
  md.push('## Workloads', '');
  for (const w of plan) md.push(`- **${w.id}**: ${w.title}; ${w.jobs} jobs; contenders: ${w.contenders.join(', ')}`);
  md.push('', '## Results', '');
  md.push(`| ${COLUMNS.join(' | ')} |`, `| ${COLUMNS.map((_, i) => (i < 2 ? '---' : '---:')).join(' | ')} |`);
  for (const f of figures) md.push(`| ${row(f).join(' | ')} |`);
  md.push('');
  for (const n of NOTES) md.push(`- ${n}`);
  const large = largeCapRows(figures);
  if (large.length) {
    md.push('', '## Large cap (issue 12): K=200, 4 processes x 60, both holding modes', '');
    md.push(`| ${LARGE_CAP_COLUMNS.join(' | ')} |`, `| ${LARGE_CAP_COLUMNS.map((_, i) => (i < 1 ? '---' : '---:')).join(' | ')} |`);
    for (const r of large) md.push(`| ${r.join(' | ')} |`);
    md.push(
      '',
      "- holding backends: distinct Postgres backends holding one of the run's ticket locks at once (pg_locks sampled every 200 ms; mean over the samples in brackets); tickets held peak: ticket locks held at once in the same samples. Transaction holding pins one backend per held ticket set, session holding one per worker process.",
      "- lib conns peak: pg-semaphore's connections open (pool, LISTEN and holding connections, idle ones included) from pg_stat_activity; + BullMQ's Postgres backend's own.",
      '- crit RT (serial): round trips before + after the body of a job alone, from the uncontended-serial run of the same contender (blank when it did not run).',
    );
  }
  const overhead = overheadLines(figures);
  if (overhead.length) {
    md.push('', '## Uncontended overhead against the plain worker', '');
    for (const l of overhead) md.push(`- ${l}`);
  }
  if (extra.acquire) {
    md.push('', '## Acquire microbenchmark', '');
    md.push('| case | cycles/s | ms/cycle (median round) | round trips/cycle |', '| --- | ---: | ---: | ---: |');
    for (const c of extra.acquire.cases) md.push(`| ${c.title} | ${c.cyclesPerSec.toFixed(0)} | ${fmtMs(c.msPerCycle)} | ${Number.isFinite(c.roundTripsPerCycle) ? num(c.roundTripsPerCycle) : '—'} |`);
    md.push('');
    for (const l of acquireLines(extra.acquire)) md.push(`- ${l}`);
  }
  md.push('', "## Targets (issue 11's list)", '');
  md.push('| item | result | contender | target | value | limited by / note |', '| ---: | --- | --- | --- | --- | --- |');
  for (const t of targets) md.push(`| ${t.item} | ${t.pass === null ? 'N/A' : t.pass ? 'PASS' : 'MISS'} | ${t.contender} | ${t.target} | ${t.value} | ${t.why ?? ''} |`);
  if (extra.skipped.length || extra.crashed.length) {
    md.push('', '## Not run', '');
    for (const s of extra.skipped) md.push(`- skipped: ${s}`);
    for (const c of extra.crashed) md.push(`- failed: ${c}`);
  }
  md.push('', '## Details per run', '');
  md.push('| workload | contender | jobs | s | hold mean ms | post p50/p99 ms | invocations/job | pg-semaphore stats | redis calls/job | holders by clock | PG conns mean | setup s |');
  md.push('| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |');
  for (const f of figures) {
    const s = f.stats;
    md.push(
      `| ${f.workload} | ${f.contender} | ${f.completed}/${f.jobs} | ${num(f.seconds)} | ${num(f.hold.mean)} | ${num(f.post.p50)} / ${num(f.post.p99)} | ${num(f.invocationsPerJob)} | ${
        s ? `attempts ${s.attempts}, busy ${s.busy}, hand-offs ${s.handoffs}, put-backs ${s.reschedules}, promotions ${s.promotions}` : '—'
      } | ${f.redis ? num(f.redis.redisCallsPerJob) : '—'} | ${f.maxHoldersByClock} | ${f.contender.startsWith('pgsem') ? num(f.conns.semMean + f.conns.bqMean, 1) : '—'} | ${num(f.setupMs / 1000, 1)} |`,
    );
  }
  md.push('', '## Postgres statements per run', '');
  md.push(`Attribution: ${figures.find((f) => f.pg)?.pg?.method ?? 'not measured'}. Top-level statements are summed; ↳ rows ran inside pg-semaphore's functions (pg_stat_statements.track = all) and are part of the top-level figures.`);
  for (const f of figures.filter((x) => x.pg && x.pg.top.length)) {
    const p = f.pg!;
    md.push('', `### ${f.workload} / ${f.contender} (${f.completed} jobs)`, '');
    md.push(
      `pg-semaphore ${fmtMs(p.raw.sem?.execMs)} ms, ${fmtBytes(p.raw.sem?.walBytes)} B WAL in ${p.raw.sem?.calls ?? 0} statements` +
        (p.raw.bq ? `; BullMQ Postgres backend ${fmtMs(p.raw.bq.execMs)} ms, ${fmtBytes(p.raw.bq.walBytes)} B WAL in ${p.raw.bq.calls} statements` : '') +
        (p.raw.shared ? `; unattributed BEGIN/COMMIT/… ${fmtMs(p.raw.shared.execMs)} ms in ${p.raw.shared.calls}` : '') +
        `; whole server ${fmtBytes(p.raw.serverWalBytes)} B WAL`,
      '',
    );
    md.push('| whose | statement | calls | mean ms | total ms | WAL bytes |', '| --- | --- | ---: | ---: | ---: | ---: |');
    for (const r of p.top) {
      const who = r.owner === 'sem' ? 'pg-semaphore' : r.owner === 'bq' ? 'BullMQ PG' : r.owner;
      md.push(`| ${who} | ${r.toplevel ? '' : '↳ '}\`${r.label.replace(/\|/g, '\\|').replace(/`/g, "'")}\` | ${r.calls} | ${fmtMs(r.meanMs)} | ${num(r.totalMs, 1)} | ${fmtBytes(r.walBytes)} |`);
    }
  }
  const errs = figures.filter((f) => f.errors.length);
  if (errs.length) {
    md.push('', '## Errors seen', '');
    for (const f of errs) for (const e of f.errors.slice(0, 5)) md.push(`- ${f.workload} / ${f.contender}: ${e}`);
  }
  if (!extra.quick) md.push('', '![share of ideal](latest.svg)');
  md.push('');
  return md.join('\n');
}

export function writeResults(
  dir: string,
  data: { environment: Environment; plan: WorkloadSpec[]; figures: RunFigures[]; targets: TargetResult[] } & Extra,
): string[] {
  const json = JSON.stringify(data, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2);
  const md = markdown(data.environment, data.plan, data.figures, data.targets, data);
  const stamp = data.environment.date.replace(/[:]/g, '-').replace(/\..*$/, '');
  const written: string[] = [];
  const put = (name: string, text: string) => {
    writeFileSync(join(dir, name), text);
    written.push(join(dir, name));
  };
  if (data.quick) {
    // CI's quick run must not overwrite the full results.
    put('quick.json', json);
    put('quick.md', md);
    return written;
  }
  put('latest.json', json);
  put('latest.md', md);
  put('latest.svg', renderChart(data.figures, data.environment));
  for (const ext of ['json', 'md', 'svg']) {
    copyFileSync(join(dir, `latest.${ext}`), join(dir, `${stamp}.${ext}`));
    written.push(join(dir, `${stamp}.${ext}`));
  }
  return written;
}
