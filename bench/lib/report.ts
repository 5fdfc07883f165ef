// The benchmark's outputs: the stdout table, PASS/MISS per target, JSON, Markdown and an SVG chart.
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RunFigures } from './analyze.js';
import type { Environment } from './environment.js';
import { renderChart } from './chart.js';
import type { ContenderId, WorkloadSpec } from './types.js';

export interface TargetResult {
  target: string;
  contender: string;
  value: string;
  /** null: not measured in this run. */
  pass: boolean | null;
  why?: string;
}

const OURS: ContenderId[] = ['pgsem-redis', 'pgsem-pg'];

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
  const acquired = s.attempts - s.busy;
  return (
    `a job that acquires pays 3: BEGIN, SELECT acquire() (PgSemaphore.acquireHold sends BEGIN as a round trip of its own; sent together it would be 2) and COMMIT; SELECT wake() on release. ` +
    `Per job here: ${per(s.attempts)} acquire calls x 2 + ${per(s.busy)} ROLLBACKs of busy ones + ${per(acquired)} releases; ` +
    `${per(s.handoffs)} hand-offs (1 each: the relabel set_config on the holding connection); ${per(s.reschedules)} put-backs (enqueue_job, later forget_job)${s.busy === 0 && s.reschedules > 0 ? ', although no attempt found the semaphore busy' : ''}; ` +
    `measured ${num(f.roundTripsPerJob)} in all. Pre-body overhead p50 ${num(f.pre.p50)} ms, p99 ${num(f.pre.p99)} ms`
  );
}

export function evaluateTargets(figures: RunFigures[], env: Environment): TargetResult[] {
  const out: TargetResult[] = [];
  for (const c of OURS) {
    const sat = find(figures, 'saturated-10ms', c);
    if (sat) {
      const pass = sat.shareOfIdeal !== null && sat.shareOfIdeal >= 0.97;
      out.push({ target: '>= 97% of ideal at saturation, 10 ms jobs', contender: c, value: pct(sat.shareOfIdeal), pass, why: pass ? undefined : shareLimits(sat, env) });
    }
    for (const w of ['saturated-10ms', 'saturated-0ms', 'per-key']) {
      const f = find(figures, w, c);
      if (!f || f.attemptsPerJob === null) continue;
      const pass = f.attemptsPerJob <= 1.2;
      out.push({
        target: `<= 1.2 acquire attempts per completed job (${w})`,
        contender: c,
        value: num(f.attemptsPerJob),
        pass,
        why: pass
          ? undefined
          : `${f.stats?.busy ?? '?'} of ${f.stats?.attempts ?? '?'} attempts found no ticket; ${f.stats?.reschedules ?? '?'} put-backs, ${f.stats?.handoffs ?? '?'} hand-offs for ${f.completed} jobs`,
      });
    }
    const unc = find(figures, 'uncontended', c);
    if (unc) {
      const pass = unc.roundTripsPerJob !== null && unc.roundTripsPerJob <= 2;
      out.push({
        target: '<= 2 Postgres round trips of overhead per job, uncontended',
        contender: c,
        value: num(unc.roundTripsPerJob),
        pass,
        why: pass ? undefined : roundTripWhy(unc),
      });
    }
    if (sat) {
      for (const other of ['bullmq-global', 'redis-semaphore'] as const) {
        const o = find(figures, 'saturated-10ms', other);
        if (!o) continue;
        const pass = sat.shareOfIdeal !== null && o.shareOfIdeal !== null ? sat.shareOfIdeal > o.shareOfIdeal : null;
        const absolute = `absolute: ${sat.jobsPerSec.toFixed(0)} vs ${o.jobsPerSec.toFixed(0)} jobs/s, ${pct(sat.shareOfNominal)} vs ${pct(o.shareOfNominal)} of the nominal 10 ms ideal; holds measured ${num(sat.hold.mean, 1)} vs ${num(o.hold.mean, 1)} ms`;
        out.push({
          target: `ahead of ${other} on share of ideal (saturated, 10 ms)`,
          contender: c,
          value: `${pct(sat.shareOfIdeal)} vs ${pct(o.shareOfIdeal)}`,
          pass,
          why:
            pass === false
              ? `${shareLimits(sat, env)}; ${absolute}`
              : sat.jobsPerSec < o.jobsPerSec
                ? `passes on ticket utilisation only; behind on ${absolute}: its own CPU use (workers ${num(sat.workerCpuMsPerJob, 1)} vs ${num(o.workerCpuMsPerJob, 1)} ms/job, Postgres ${num(sat.serverCpuMsPerJob?.postgres, 1)} ms/job) stretches every hold on these ${env.machine.cpus} cores`
                : undefined,
        });
      }
    }
  }
  return out;
}

export interface Settings {
  semPoolMax: number;
  bqPoolMax: number;
  runDeadlineS: number;
  budgetS: number;
  quietWaitS: number;
}

interface Extra {
  settings: Settings;
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
  'pre p50/p99 ms',
  'PG RT/job',
  'idle gap p50/p99 ms',
  'holders api, clock / cap',
  'PG conns peak',
  'RSS MB',
  'CPU ms/job wrk/pg/rds',
  'CPU',
  'check',
];

function row(f: RunFigures): string[] {
  return [
    f.workload,
    f.contender,
    f.jobsPerSec.toFixed(0),
    f.shareOfIdeal !== null ? pct(f.shareOfIdeal) : f.shareNote === 'no cap' ? 'no cap' : 'n/m',
    f.shareOfNominal !== null ? pct(f.shareOfNominal) : '—',
    num(f.attemptsPerJob),
    `${num(f.pre.p50)} / ${num(f.pre.p99)}`,
    num(f.roundTripsPerJob),
    f.gap ? `${num(f.gap.p50)} / ${num(f.gap.p99)}${f.gapNote?.startsWith('virtual') ? '*' : ''}` : '—',
    `${f.maxHolders}, ${f.maxHoldersByClock} / ${f.cap ?? '∞'}`,
    f.contender.startsWith('pgsem') ? `${f.conns.semPeak} (${f.conns.semTxPeak} tx)${f.contender === 'pgsem-pg' ? ` +${f.conns.bqPeak} bq` : ''}` : '—',
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

function textTable(rows: string[][]): string {
  const widths = COLUMNS.map((c, i) => Math.max(c.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(COLUMNS), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

const NOTES = [
  '% ideal: jobs/s over K / mean measured hold (saturated), over the busiest tenant or the fleet slots (per key), over fleet slots / hold (uncontended); n/m = not meaningful (0 ms holds). With measured holds this is how busy the tickets were kept.',
  '% nominal: the same ideal from the hold asked (10 ms). On a CPU-bound machine holds stretch (CPU starvation of the fake API and the workers), by how much depends on each contender\'s own CPU use, so compare absolute jobs/s too.',
  'att/job: pg-semaphore stats.attempts per completed job; redis-semaphore: Lua acquire scripts sent (one per 10 ms poll); BullMQ global concurrency acquires inside BullMQ (not countable).',
  'pre: processor call to body start (the cost before the work: acquire, or waiting for it when contended). PG RT/job: sem.roundTrips summed over processes / jobs.',
  'idle gap: body end of one holder to body start of the next on the same ticket id; * = no ticket ids, intervals laid on K virtual slots (each start takes the most recently freed slot: a lower bound).',
  'holders: most calls in flight at once (per tenant in per-key) as the fake API counted them, and as the processes\' body timestamps show (the API answers 0 ms calls within one tick, so only the clock sees their overlap); both must be <= cap. PG conns: peak of pg-semaphore connections open (pooled, idle ones included) sampled from pg_stat_activity every 200 ms, in brackets the peak of those inside a transaction (holding or acquiring), + BullMQ Postgres backend connections.',
  'RSS: peak of any worker process. CPU ms/job: CPU time per completed job of the worker processes / all Postgres processes / Redis (the servers are shared, so others\' load counts too). CPU: whole machine busy during the run (everything shares the cores).',
];

/** The uncontended path against the plain worker: what the cap adds to every job. */
export function overheadLines(figures: RunFigures[]): string[] {
  const plain = find(figures, 'uncontended', 'plain');
  if (!plain) return [];
  const lines: string[] = [];
  for (const f of figures.filter((x) => x.workload === 'uncontended' && x.contender !== 'plain')) {
    lines.push(
      `${f.contender}: +${num(f.pre.p50 - plain.pre.p50)} ms p50, +${num(f.pre.p99 - plain.pre.p99)} ms p99 before the body; ` +
        `+${num(f.post.p50 - plain.post.p50)} ms p50 after it (release); ${num(f.roundTripsPerJob)} PG round trips/job; ` +
        `${pct(f.jobsPerSec / plain.jobsPerSec, 0)} of the plain worker's jobs/s; worker CPU ${num(f.workerCpuMsPerJob)} vs ${num(plain.workerCpuMsPerJob)} ms/job`,
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
  const overhead = overheadLines(figures);
  if (overhead.length) {
    console.log('Uncontended overhead against the plain worker:');
    for (const l of overhead) console.log(`  ${l}`);
    console.log('');
  }
  console.log('Targets for pg-semaphore:');
  for (const t of targets) {
    console.log(`  ${t.pass === null ? 'N/A ' : t.pass ? 'PASS' : 'MISS'}  ${t.contender.padEnd(12)} ${t.target}: ${t.value}`);
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
  md.push(`- Postgres max_connections ${env.postgres.maxConnections} (${env.postgres.connectionsAtStart} client connections open at start, shared with others)`);
  md.push(`- Code: git HEAD ${env.git.head ?? 'unknown'}, src/ sha256 ${env.git.srcSha256} (as on disk)`);
  const st = extra.settings;
  md.push(
    `- Settings: pg-semaphore pool max ${st.semPoolMax} per worker process, BullMQ Postgres backend pool max ${st.bqPoolMax}; each run's deadline ${st.runDeadlineS} s, whole budget ${st.budgetS} s; before each run up to ${st.quietWaitS} s waiting for the machine to go quiet (it is shared)`,
  );
  md.push(`- Took ${extra.totalSeconds.toFixed(0)} s. Postgres, Redis, the worker processes and the fake API all share the same cores, loopback only.`, '');
  md.push('## Workloads', '');
  for (const w of plan) md.push(`- **${w.id}**: ${w.title}; ${w.jobs} jobs; contenders: ${w.contenders.join(', ')}`);
  md.push('', '## Results', '');
  md.push(`| ${COLUMNS.join(' | ')} |`, `| ${COLUMNS.map((_, i) => (i < 2 ? '---' : '---:')).join(' | ')} |`);
  for (const f of figures) md.push(`| ${row(f).join(' | ')} |`);
  md.push('');
  for (const n of NOTES) md.push(`- ${n}`);
  const overhead = overheadLines(figures);
  if (overhead.length) {
    md.push('', '## Uncontended overhead against the plain worker', '');
    for (const l of overhead) md.push(`- ${l}`);
  }
  md.push('', '## Targets', '');
  md.push('| result | contender | target | value | limited by / note |', '| --- | --- | --- | --- | --- |');
  for (const t of targets) md.push(`| ${t.pass === null ? 'N/A' : t.pass ? 'PASS' : 'MISS'} | ${t.contender} | ${t.target} | ${t.value} | ${t.why ?? ''} |`);
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
