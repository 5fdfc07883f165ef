// pg-semaphore benchmark: fleet-wide caps for BullMQ workers, against BullMQ's global
// concurrency, redis-semaphore, the wrapper without wake-ups, and a plain uncapped worker.
//
//   npm run bench                      full run (< 24 min; ~15 min), writes bench/results/latest.*
//   npx tsx bench/bench.ts --workloads=large-cap      one workload (ids in bench/lib/plan.ts)
//   npx tsx bench/bench.ts --quick     < 1 min; exits non-zero if a cap broke or a job was lost
//
// Postgres: by default the benchmark starts its own Postgres 15 from the machine's binaries
// (bench/lib/postgres.ts: a temp folder, a free loopback port, fsync off, pg_stat_statements),
// so it can measure Postgres time and WAL per job; it is removed at the end and on
// SIGINT/SIGTERM. With DATABASE_URL set (or --pg=url) it uses that server instead and reads
// what it can there; --pg=own starts its own even so. REDIS_URL overrides the Redis default.
//
// Options: --quick, --raw (also write every run's job timestamps), --pool=<pg-semaphore pool max per process, 8; a workload may set its own>,
// --lib=dist|src (dist: the worker hosts load the library as built for publishing, made first into bench/.lib/<pid>/
// with the package's tsup config and removed at the end; src: the TypeScript sources through tsx, no build; the
// acquire microbenchmark and the setup always use src/), --only=<contender,...>, --workloads=<workload id,...>, --jobs=<n>, --deadline=<s per run>,
// --budget=<s in all>, --out=<dir>, --pg=own|url. The full run (no --only/--workloads) ends with the acquire microbenchmark (bench/acquire.ts).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { analyze, type RunFigures } from './lib/analyze.js';
import { waitForQuiet } from './lib/cpu.js';
import { collectEnvironment } from './lib/environment.js';
import { fullPlan, quickPlan } from './lib/plan.js';
import { acquireMarkdown, runAcquireBench, type AcquireResult } from './lib/acquire-bench.js';
import { buildLibrary, removeLibrary } from './lib/build.js';
import { PgMeter } from './lib/pgstats.js';
import { evaluateTargets, printTable, writeResults } from './lib/report.js';
import { resolveTarget } from './lib/target.js';
import { liveChildren, pendingCleanups, runOne } from './lib/run.js';
import type { ContenderId, WorkloadId } from './lib/types.js';

const args = process.argv.slice(2);
const flag = (name: string) => args.includes(`--${name}`);
const opt = (name: string) => args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
for (const a of args) {
  if (!/^--(quick|raw|pool=\d+|lib=(dist|src)|only=.+|workloads=.+|jobs=\d+|deadline=\d+|budget=\d+|quiet-wait=\d+|out=.+|pg=(own|url))$/.test(a)) {
    console.error(`bench: unknown argument ${a}; expected --quick, --raw, --pool=, --lib=dist|src, --only=, --workloads=, --jobs=, --deadline=, --budget=, --quiet-wait=, --out=, --pg=own|url`);
    process.exit(2);
  }
}
const quick = flag('quick');
const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const budgetMs = Number(opt('budget') ?? (quick ? 55 : 24 * 60)) * 1000;
const runDeadlineMs = Number(opt('deadline') ?? (quick ? 20 : 90)) * 1000;
// pg-semaphore's pool per worker process stays small (a shared DATABASE_URL server may have max_connections 100).
const semPoolMax = Number(opt('pool') ?? 8);
const lib = (opt('lib') ?? 'dist') as 'dist' | 'src';
const quietWaitMs = Number(opt('quiet-wait') ?? (quick ? 0 : 10)) * 1000;
/** At most this long waiting for quiet over the whole benchmark. */
const quietBudgetMs = 120_000;
let quietWaited = 0;
const outDir = opt('out') ?? fileURLToPath(new URL('./results/', import.meta.url));

let plan = quick ? quickPlan() : fullPlan();
const only = opt('only')?.split(',') as ContenderId[] | undefined;
const workloads = opt('workloads')?.split(',') as WorkloadId[] | undefined;
if (workloads) plan = plan.filter((w) => workloads.includes(w.id));
if (only) plan = plan.map((w) => ({ ...w, contenders: w.contenders.filter((c) => only.includes(c)) }));
if (opt('jobs')) plan = plan.map((w) => ({ ...w, jobs: Number(opt('jobs')) }));
plan = plan.filter((w) => w.contenders.length > 0);

const log = (s: string) => process.stderr.write(`${s}\n`);

// ---------------------------------------------------------------- never leave children or schemas behind
let exiting = false;
async function emergencyExit(code: number, why: string): Promise<never> {
  if (!exiting) {
    exiting = true;
    log(`bench: ${why}; cleaning up`);
    for (const c of liveChildren) c.kill('SIGKILL');
    await Promise.race([Promise.all([...pendingCleanups].map((f) => f().catch(() => undefined))), new Promise((r) => setTimeout(r, 10_000))]);
    await own?.stop().catch(() => undefined);
  }
  process.exit(code);
}
process.on('exit', () => {
  for (const c of liveChildren) c.kill('SIGKILL');
  removeLibrary(libDir);
});
process.on('SIGINT', () => void emergencyExit(130, 'interrupted'));
process.on('SIGTERM', () => void emergencyExit(143, 'terminated'));

// ---------------------------------------------------------------- the library under test
let libDir: string | undefined;
if (lib === 'dist') {
  try {
    libDir = buildLibrary(log);
  } catch (err) {
    log(`bench: ${(err as Error).message}`);
    process.exit(1);
  }
}

// ---------------------------------------------------------------- Postgres
const started = Date.now();
let own: Awaited<ReturnType<typeof resolveTarget>>['own'];
const resolved = await resolveTarget(opt('pg'), log).catch((err: Error) => {
  log(`bench: ${err.message}`);
  process.exit(1);
});
const { target } = resolved;
own = resolved.own;
const meter = new PgMeter(target);
const meterInit = await meter.init();
if (!meterInit.statements) log(`bench: no pg_stat_statements on this server (${meterInit.why}): Postgres time per job is not measured, WAL only for the whole server`);
const postgresText = `${target.description}. ${meterInit.statements ? (target.mode === 'own' ? `Statement statistics: one database per purpose ("${target.semDb}" for pg-semaphore, "${target.bqDb}" for BullMQ's Postgres backend), reset before each run` : "Statement statistics: read before and after each run; a statement is pg-semaphore's or BullMQ's if its text names the run's schema (BEGIN/COMMIT/ROLLBACK/SELECT 1 stay unattributed)") : 'No pg_stat_statements: whole-server WAL only'}.`;

// ---------------------------------------------------------------- run
const environment = await collectEnvironment(target.adminUrl, redisUrl, args, quick);
log(`bench: ${quick ? 'quick' : 'full'} run on ${environment.machine.cpus} cpus (${environment.machine.cpuModel}), node ${environment.versions.node}, ${environment.versions.postgres}, redis ${environment.versions.redis}, bullmq ${environment.versions.bullmq}`);

const figures: RunFigures[] = [];
const skipped: string[] = [];
const crashed: string[] = [];
for (const workload of plan) {
  log(`\n== ${workload.title} (${workload.jobs} jobs)`);
  for (const contender of workload.contenders) {
    const left = budgetMs - (Date.now() - started);
    const reserve = quick ? 8_000 : 20_000;
    if (left < reserve + 5_000) {
      skipped.push(`${workload.id} / ${contender}: out of time budget`);
      log(`  ${contender}: skipped (time budget)`);
      continue;
    }
    // The machine may be shared: let other load pass first (bounded per run and in all), and
    // record what was left.
    const quiet =
      quietWaitMs > 0 ? await waitForQuiet(Math.max(1_000, Math.min(quietWaitMs, quietBudgetMs - quietWaited, left - reserve - 5_000))) : { busy: null, waitedMs: 0 };
    quietWaited += quiet.waitedMs;
    const deadline = Math.min(runDeadlineMs, budgetMs - (Date.now() - started) - reserve);
    // quick: a run cut off by its deadline fails CI, so one without enough time left is skipped
    // instead (global-tenant's put-back jobs can sit out delays of seconds)
    if (deadline < (quick ? (workload.id === 'global-tenant' ? 15_000 : 8_000) : 20_000)) {
      skipped.push(`${workload.id} / ${contender}: out of time budget`);
      log(`  ${contender}: skipped (time budget)`);
      continue;
    }
    log(
      `  ${contender}: running (deadline ${Math.round(deadline / 1000)} s` +
        (quiet.busy !== null ? `; CPU ${(quiet.busy * 100).toFixed(0)} % busy before, after waiting ${(quiet.waitedMs / 1000).toFixed(0)} s` : '') +
        ')',
    );
    try {
      const raw = await runOne(contender, workload, { target, meter, redisUrl, semPoolMax, bqPoolMax: 3, libDir }, deadline, log);
      const f = analyze(raw);
      f.backgroundBusy = quiet.busy;
      if (flag('raw')) {
        // every job's timestamps, for digging into one run
        mkdirSync(outDir, { recursive: true });
        writeFileSync(join(outDir, `raw-${workload.id}-${contender}-${raw.runId}.json`), JSON.stringify(raw));
      }
      figures.push(f);
      log(
        `  ${contender}: ${f.completed}/${f.jobs} jobs, ${f.jobsPerSec.toFixed(0)} jobs/s` +
          (f.shareOfIdeal !== null ? ` (${(f.shareOfIdeal * 100).toFixed(1)} % of ideal)` : '') +
          `, max holders ${f.maxHolders} (api) ${f.maxHoldersByClock} (clock)${f.cap !== null ? ` of cap ${f.cap}` : ''}, cpu ${f.cpuBusy !== null ? (f.cpuBusy * 100).toFixed(0) : '?'} %` +
          `, jobs per host ${f.hostJobs.join('/')}` +
          (f.deafHosts ? `; ${f.deafHosts} host(s) not hearing NOTIFYs at the end` : '') +
          (f.errors.length ? `; ${f.errors.slice(0, 3).join('; ')}` : ''),
      );
    } catch (err) {
      crashed.push(`${workload.id} / ${contender}: ${(err as Error).message}`);
      log(`  ${contender}: FAILED: ${(err as Error).stack ?? err}`);
    }
  }
}
// The acquire microbenchmark (issue 11, target 5) ends the full run (~30 s).
let acquire: AcquireResult | null = null;
if (!quick && !only && !workloads) {
  if (budgetMs - (Date.now() - started) > 45_000) {
    log('\n== Acquire microbenchmark (single client)');
    if (quietWaitMs > 0) await waitForQuiet(Math.min(quietWaitMs, Math.max(1_000, quietBudgetMs - quietWaited)));
    // Not fatal: a shared server may lack the lock table for 9,900 advisory locks.
    acquire = await runAcquireBench({ url: target.semUrl, log }).catch((err: Error) => {
      skipped.push(`acquire microbenchmark failed: ${err.message}`);
      log(`bench: acquire microbenchmark failed: ${err.message}`);
      return null;
    });
  } else skipped.push('acquire microbenchmark: out of time budget');
}
const totalSeconds = (Date.now() - started) / 1000;
await meter.close();
await own?.stop().catch((err: Error) => log(`bench: stopping its own Postgres: ${err.message}`));
own = undefined;

// ---------------------------------------------------------------- report
const targets = evaluateTargets(figures, environment, acquire);
const settings = { lib, semPoolMax, bqPoolMax: 3, runDeadlineS: runDeadlineMs / 1000, budgetS: budgetMs / 1000, quietWaitS: quietWaitMs / 1000 };
printTable(figures, targets, { settings, skipped, crashed, totalSeconds, quick, postgres: postgresText, acquire });
mkdirSync(outDir, { recursive: true });
const written = writeResults(outDir, { environment, settings, plan, figures, targets, skipped, crashed, totalSeconds, quick, postgres: postgresText, acquire });
if (acquire) {
  writeFileSync(join(outDir, 'acquire-latest.json'), JSON.stringify({ postgres: target.description, ...acquire }, null, 2));
  writeFileSync(join(outDir, 'acquire-latest.md'), acquireMarkdown(acquire, [`Date: ${acquire.date}`, `Postgres: ${target.description}`, `Run as part of \`${environment.command}\``]));
  written.push(join(outDir, 'acquire-latest.json'), join(outDir, 'acquire-latest.md'));
}
log(`\nbench: wrote ${written.join(', ')}`);

// Caps and jobs are correctness: they fail the run. Speed targets only print PASS/MISS.
const broken = figures.filter((f) => f.capHeld === false);
const lost = figures.filter((f) => f.lost > 0 || f.failed > 0 || (quick && f.deadlineHit) || f.errors.some((e) => /sent no result|exited early/.test(e)));
const problems = [
  ...broken.map((f) => `CAP BROKEN: ${f.workload} / ${f.contender}: ${Math.max(f.maxHolders, f.maxHoldersByClock)} holders > cap ${f.cap} (api ${f.maxHolders}, clock ${f.maxHoldersByClock})`),
  ...lost.map((f) =>
    f.deadlineHit && f.failed === 0
      ? `UNFINISHED AT DEADLINE: ${f.workload} / ${f.contender}: ${f.lost} of ${f.jobs} jobs not done when the run's deadline came`
      : `JOBS LOST: ${f.workload} / ${f.contender}: ${f.lost} unfinished, ${f.failed} failed${f.deadlineHit ? ' (deadline hit)' : ''}`,
  ),
  ...crashed.map((c) => `RUN FAILED: ${c}`),
];
if (problems.length) {
  for (const p of problems) console.log(p);
  // A run that hit its deadline in the full benchmark is reported, not fatal; the quick mode must finish.
  const fatal = broken.length > 0 || crashed.length > 0 || lost.some((f) => quick || !f.deadlineHit);
  process.exit(fatal ? 1 : 0);
}
process.exit(0);
