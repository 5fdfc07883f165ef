// One benchmark run: one contender on one workload, with its own Postgres schemas, Redis
// prefix, fake API and worker OS processes; everything is removed again, also on failure.
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Queue, createPostgresBackend } from 'bullmq';
import { Redis } from 'ioredis';
import pg from 'pg';
import { PgSemaphore } from '../../src/index.js';
import { busyBetween, cpuTimes, serverCpuMs } from './cpu.js';
import { startFakeApi } from './fake-api.js';
import type { PgMeter, PgRunStats, PgTarget } from './pgstats.js';
import { CONTENDERS, HEAVY_TENANTS, type ContenderId, type HostConfig, type HostMessage, type HostResult, type WorkloadSpec } from './types.js';

export interface RunEnv {
  /** Where pg-semaphore, BullMQ's Postgres backend and the benchmark's own queries go. */
  target: PgTarget;
  /** Reads statement statistics and WAL around the run (null: not measured). */
  meter: PgMeter | null;
  redisUrl: string;
  semPoolMax: number;
  bqPoolMax: number;
  /** Where the hosts load pg-semaphore from (HostConfig.libDir). */
  libDir: string | undefined;
}

export interface RawRun {
  runId: string;
  contender: ContenderId;
  workload: WorkloadSpec;
  /** Tenant of each job (index = job index). */
  tenantOf: number[];
  /** global-tenant: each job's hold (ms) and weight on the global cap. */
  holdOf?: number[];
  weightOf?: number[];
  hosts: HostResult[];
  api: { max: number; tenantMax: number; calls: number };
  /** Job counts BullMQ reports after the run. */
  queueCounts: Record<string, number>;
  /**
   * pg-semaphore's connections (peak, of them in a transaction at once, mean) and BullMQ
   * Postgres backend's; holdPeak/holdMean: distinct backends holding this run's ticket locks
   * (pg_locks), ticketsPeak: ticket locks held at once, lockSamples: pg_locks samples taken.
   */
  conns: {
    semPeak: number;
    semTxPeak: number;
    semMean: number;
    bqPeak: number;
    bqMean: number;
    samples: number;
    names: string[];
    holdPeak?: number;
    holdMean?: number;
    ticketsPeak?: number;
    lockSamples?: number;
  };
  cpuBusy: number | null;
  /** CPU the Postgres and Redis servers used during the run (others' load included). */
  serverCpuMs: { postgres: number; redis: number } | null;
  /** Postgres execution time and WAL during the run, pg-semaphore's and BullMQ's apart. */
  pg: PgRunStats | null;
  /** ms from "go" until every job was done (or the deadline). */
  wallMs: number;
  deadlineHit: boolean;
  setupMs: number;
  errors: string[];
}

const HOST_SCRIPT = fileURLToPath(new URL('../worker-host.ts', import.meta.url));

/** Children alive right now, so the benchmark can kill them whatever happens. */
export const liveChildren = new Set<ChildProcess>();
/** Cleanups of runs in progress, for a signal arriving mid-run. */
export const pendingCleanups = new Set<() => Promise<void>>();

/** Deterministic PRNG (mulberry32), so every contender gets the same job order. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Tenants of the jobs, in queue order. Per key: 5 heavy tenants get 40 % of the jobs
 * (8 % each), the other tenants share the rest evenly; the order is shuffled (seeded).
 */
export function tenantsFor(workload: WorkloadSpec): number[] {
  const n = workload.jobs;
  if (workload.mode === 'global-tenant') {
    const rnd = prng(7);
    return Array.from({ length: n }, () => Math.floor(rnd() * workload.tenants));
  }
  if (workload.mode !== 'tenant') return new Array<number>(n).fill(-1);
  const heavy = Math.min(HEAVY_TENANTS, workload.tenants);
  const out: number[] = [];
  const heavyEach = Math.floor((n * 0.4) / heavy);
  for (let t = 0; t < heavy; t++) for (let k = 0; k < heavyEach; k++) out.push(t);
  const light = workload.tenants - heavy;
  for (let k = 0; out.length < n; k++) out.push(light > 0 ? heavy + (k % light) : k % heavy);
  const rnd = prng(42);
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** global-tenant: each job's hold (uniform in holdRange, whole ms) and weight (2 for heavyShare of the jobs), seeded. */
export function holdsAndWeightsFor(workload: WorkloadSpec): { holdOf: number[]; weightOf: number[] } | undefined {
  if (workload.mode !== 'global-tenant') return undefined;
  const [lo, hi] = workload.holdRange ?? [workload.holdMs, workload.holdMs];
  const rnd = prng(11);
  const holdOf: number[] = [];
  const weightOf: number[] = [];
  for (let i = 0; i < workload.jobs; i++) {
    holdOf.push(lo + Math.floor(rnd() * (hi - lo + 1)));
    weightOf.push(rnd() < (workload.heavyShare ?? 0) ? 2 : 1);
  }
  return { holdOf, weightOf };
}

function redisConnection(url: string) {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port || 6379), maxRetriesPerRequest: null };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runOne(contender: ContenderId, workload: WorkloadSpec, env: RunEnv, deadlineMs: number, log: (s: string) => void): Promise<RawRun> {
  const info = CONTENDERS[contender];
  const runId = randomBytes(3).toString('hex');
  const semSchema = `pgsem_bench_${runId}`;
  const bqSchema = `bq_bench_${runId}`;
  const prefix = `pgsem_bench_${runId}`;
  const queueName = `bench_${runId}`;
  const semAppName = `pgsem-bench-${runId}`;
  const bqAppName = `bq-bench-${runId}`;
  const usesSem = contender.startsWith('pgsem');
  const errors: string[] = [];
  const tenantOf = tenantsFor(workload);
  const hw = holdsAndWeightsFor(workload);
  const setupStarted = Date.now();
  const { target } = env;

  // The benchmark's own queries (sampling pg_stat_activity) go to the admin database, so they
  // are nobody's in the statement statistics; schemas are dropped through their own databases.
  const admin = new pg.Pool({ connectionString: target.adminUrl, max: 2, application_name: `bench-admin-${runId}` });
  admin.on('error', () => undefined);
  const semAdmin = new pg.Pool({ connectionString: target.semUrl, max: 1, application_name: `bench-admin-${runId}` });
  semAdmin.on('error', () => undefined);
  const bqAdmin = new pg.Pool({ connectionString: target.bqUrl, max: 1, application_name: `bench-admin-${runId}` });
  bqAdmin.on('error', () => undefined);
  const api = await startFakeApi(workload.tenants);
  let queue: Queue | undefined;
  let adminSem: PgSemaphore | undefined;
  const children: ChildProcess[] = [];

  let cleaned = false;
  let cleaning: Promise<void> | undefined;
  // Called by the run's own finally and by a signal handler: both wait for the one cleanup.
  const cleanup = () => (cleaning ??= doCleanup());
  const doCleanup = async () => {
    cleaned = true;
    // a host that sent its result is closing its connections and exiting: give it a moment
    // (a profiled host, BENCH_HOST_NODE_ARGS=--cpu-prof, writes its profile on exit)
    const alive = () => children.filter((c) => c.exitCode === null && c.signalCode === null);
    const until = Date.now() + 5_000;
    while (alive().some((c) => c.connected) && Date.now() < until) await sleep(25);
    for (const c of alive()) c.kill('SIGKILL');
    if (queue) {
      await queue.obliterate({ force: true }).catch((err) => errors.push(`obliterate: ${(err as Error).message}`));
      await queue.close().catch(() => undefined);
    }
    await adminSem?.close().catch(() => undefined);
    await semAdmin.query(`DROP SCHEMA IF EXISTS "${semSchema}" CASCADE`).catch((err) => errors.push(`drop ${semSchema}: ${(err as Error).message}`));
    await bqAdmin.query(`DROP SCHEMA IF EXISTS "${bqSchema}" CASCADE`).catch((err) => errors.push(`drop ${bqSchema}: ${(err as Error).message}`));
    await Promise.all([admin.end(), semAdmin.end(), bqAdmin.end()]).catch(() => undefined);
    // redis-semaphore's keys ("semaphore:<prefix>:...") and anything left under the prefix
    const redis = new Redis(env.redisUrl, { maxRetriesPerRequest: 1 });
    try {
      for (const pattern of [`semaphore:${prefix}:*`, `${prefix}:*`]) {
        let cursor = '0';
        do {
          const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
          cursor = next;
          if (keys.length) await redis.del(...keys);
        } while (cursor !== '0');
      }
    } catch (err) {
      errors.push(`redis cleanup: ${(err as Error).message}`);
    } finally {
      redis.disconnect();
    }
    await api.close().catch(() => undefined);
  };
  pendingCleanups.add(cleanup);

  try {
    // ------------------------------------------------------------ setup
    if (usesSem) {
      adminSem = new PgSemaphore({ connection: { connectionString: target.semUrl, max: 2 }, schema: semSchema, applicationName: `bench-admin-${runId}` });
      await adminSem.migrate();
      if (workload.mode === 'single' || workload.mode === 'global-tenant') await adminSem.make('api', workload.cap);
      // per key: the semaphores are made on first use (createWith), as an application would
    }
    // Both backends' queues have the same surface; the types differ in their backend parameter.
    const q: Queue =
      info.backend === 'postgres'
        ? (new Queue(
            queueName,
            { connection: { connectionString: target.bqUrl, schema: bqSchema, migrate: true, max: 2, application_name: `bench-admin-${runId}` } },
            createPostgresBackend,
          ) as unknown as Queue)
        : new Queue(queueName, { connection: redisConnection(env.redisUrl), prefix });
    queue = q;
    await q.waitUntilReady();
    if (contender === 'bullmq-global') await q.setGlobalConcurrency(workload.cap);

    const results = new Map<number, HostResult>();
    const progress = new Map<number, number>();
    const readyWaiters: Array<Promise<void>> = [];
    for (let h = 0; h < workload.processes; h++) {
      const cfg: HostConfig = {
        runId,
        hostIndex: h,
        contender,
        backend: info.backend,
        holding: info.holding,
        queue: queueName,
        concurrency: workload.concurrency,
        cap: workload.cap,
        mode: workload.mode,
        tenantCap: workload.tenantCap ?? workload.cap,
        holdMs: workload.holdMs,
        databaseUrl: target.semUrl,
        bqDatabaseUrl: target.bqUrl,
        redisUrl: env.redisUrl,
        semSchema,
        bqSchema,
        prefix,
        apiUrl: api.url,
        // a workload's own pool size is for transaction holding (a connection per held ticket set)
        semPoolMax: info.holding === 'transaction' ? (workload.semPoolMax ?? env.semPoolMax) : env.semPoolMax,
        bqPoolMax: env.bqPoolMax,
        libDir: env.libDir,
        semAppName,
        bqAppName,
      };
      const child = fork(HOST_SCRIPT, [], {
        // BENCH_HOST_NODE_ARGS: extra node flags for the worker hosts, e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`
        execArgv: ['--import', 'tsx', ...(process.env.BENCH_HOST_NODE_ARGS ?? '').split(' ').filter(Boolean)],
        env: { ...process.env, BENCH_CONFIG: JSON.stringify(cfg) },
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      children.push(child);
      liveChildren.add(child);
      // a message to a child that is going away fails with EPIPE: not our concern then
      child.on('error', (err) => {
        if (!cleaned) errors.push(`host ${h}: ${err.message}`);
      });
      child.once('exit', (code, signal) => {
        liveChildren.delete(child);
        if (!results.has(h) && !cleaned) errors.push(`host ${h} exited early (code ${code}, signal ${signal})`);
      });
      readyWaiters.push(
        new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`host ${h} not ready within 60 s`)), 60_000);
          child.on('message', (m: HostMessage) => {
            if (m.type === 'ready') {
              clearTimeout(timer);
              resolve();
            } else if (m.type === 'progress') {
              progress.set(h, m.completed + m.failed);
            } else if (m.type === 'result') {
              results.set(h, m);
            } else if (m.type === 'error') {
              errors.push(`host ${h}: ${m.message}`);
              clearTimeout(timer);
              reject(new Error(`host ${h}: ${m.message}`));
            }
          });
          child.once('exit', () => reject(new Error(`host ${h} exited before it was ready`)));
        }),
      );
    }
    await Promise.all(readyWaiters);
    const readyMs = Date.now() - setupStarted;

    // Jobs go in before the workers start, so adding them does not pace the run.
    for (let i = 0; i < workload.jobs; i += 500) {
      const batch = [];
      for (let j = i; j < Math.min(workload.jobs, i + 500); j++) {
        batch.push({ name: 'call', data: hw ? { i: j, tenant: tenantOf[j]!, hold: hw.holdOf[j]!, w: hw.weightOf[j]! } : { i: j, tenant: tenantOf[j]! } });
      }
      await q.addBulk(batch);
    }
    const setupMs = Date.now() - setupStarted;
    log(`    hosts ready after ${(readyMs / 1000).toFixed(1)} s, ${workload.jobs} jobs added after ${(setupMs / 1000).toFixed(1)} s`);

    // ------------------------------------------------------------ run
    const connNames = new Set<string>();
    const conns = { semPeak: 0, semTxPeak: 0, semSum: 0, bqPeak: 0, bqSum: 0, samples: 0, holdPeak: 0, holdSum: 0, ticketsPeak: 0, lockSamples: 0 };
    // The backends holding this run's tickets: advisory locks (ns, ticket id) of its schema
    // (classid is the namespace key as an unsigned 32-bit number, objsubid 2: a two-key lock),
    // in pg-semaphore's database. The session holding connection renames itself, so
    // pg_stat_activity's application_name cannot tell holders apart; the lock table can.
    const ns = usesSem ? (await semAdmin.query<{ ns: string }>(`SELECT (("${semSchema}"._ns()::bigint + 4294967296) % 4294967296)::text AS ns`)).rows[0]!.ns : null;
    const semDbName = usesSem ? (await semAdmin.query<{ d: string }>('SELECT current_database() AS d')).rows[0]!.d : null;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        if (ns !== null) {
          try {
            const { rows } = await admin.query<{ backends: number; tickets: number }>(
              `SELECT count(DISTINCT pid)::int AS backends, count(*)::int AS tickets FROM pg_locks
                WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid::bigint = $1::bigint
                  AND database = (SELECT oid FROM pg_database WHERE datname = $2)`,
              [ns, semDbName],
            );
            const r = rows[0]!;
            conns.holdPeak = Math.max(conns.holdPeak, r.backends);
            conns.ticketsPeak = Math.max(conns.ticketsPeak, r.tickets);
            conns.holdSum += r.backends;
            conns.lockSamples++;
          } catch {
            // sampling is best effort
          }
        }
        try {
          const { rows } = await admin.query<{ application_name: string; n: number; tx: number }>(
            // a session holding connection names itself 'pg-semaphore:session <host>:<process pid>'
            `SELECT application_name, count(*)::int AS n, count(xact_start)::int AS tx FROM pg_stat_activity
              WHERE application_name LIKE $1
                 OR (application_name LIKE 'pg-semaphore:session %' AND substring(application_name FROM ':([0-9]+)$')::int = ANY ($2::int[]))
              GROUP BY 1`,
            [`%${runId}%`, children.map((c) => c.pid ?? -1)],
          );
          let s = 0;
          let b = 0;
          let tx = 0;
          for (const r of rows) {
            if (r.application_name.startsWith('bench-admin-')) continue;
            connNames.add(r.application_name.replace(/:\d+$/, ':<job>'));
            if (r.application_name.startsWith(semAppName) || r.application_name.startsWith('pg-semaphore:')) {
              s += r.n;
              tx += r.tx;
            } else b += r.n;
          }
          conns.semPeak = Math.max(conns.semPeak, s);
          conns.semTxPeak = Math.max(conns.semTxPeak, tx);
          conns.bqPeak = Math.max(conns.bqPeak, b);
          conns.semSum += s;
          conns.bqSum += b;
          conns.samples++;
        } catch {
          // sampling is best effort
        }
        await sleep(200);
      }
    })();

    let pgStats: PgRunStats | null = null;
    await env.meter?.begin().catch((err) => errors.push(`pg statistics (before): ${(err as Error).message}`));
    const cpu0 = cpuTimes();
    const srv0 = serverCpuMs(target.postmasterPid);
    const go = Date.now();
    for (const c of children) if (c.connected) c.send({ type: 'go' });
    const total = () => [...progress.values()].reduce((a, b) => a + b, 0);
    let deadlineHit = false;
    let lastLog = go;
    for (;;) {
      if (total() >= workload.jobs) break;
      if (Date.now() - go > deadlineMs) {
        deadlineHit = true;
        errors.push(`deadline of ${Math.round(deadlineMs / 1000)} s hit with ${workload.jobs - total()} jobs unfinished`);
        break;
      }
      if (children.some((c) => c.exitCode !== null || c.signalCode !== null)) break;
      if (Date.now() - lastLog > 5_000) {
        lastLog = Date.now();
        log(`    ${total()}/${workload.jobs} jobs after ${Math.round((lastLog - go) / 1000)} s`);
      }
      await sleep(25);
    }
    const wallMs = Date.now() - go;
    const cpu1 = cpuTimes();
    const srv1 = serverCpuMs(target.postmasterPid);
    if (env.meter) {
      pgStats = await env.meter.end({ sem: semSchema, bq: bqSchema }).catch((err) => {
        errors.push(`pg statistics (after): ${(err as Error).message}`);
        return null;
      });
    }
    sampling = false;
    await sampler;

    // ------------------------------------------------------------ collect
    for (const c of children) if (c.connected) c.send({ type: 'close' });
    const collectUntil = Date.now() + (deadlineHit ? 15_000 : 30_000);
    while (results.size < children.length && Date.now() < collectUntil && children.some((c, h) => !results.has(h) && c.exitCode === null)) await sleep(25);
    for (const [h, c] of children.entries()) {
      if (!results.has(h)) {
        errors.push(`host ${h} sent no result`);
        c.kill('SIGKILL');
      }
    }
    const queueCounts = await q.getJobCounts('completed', 'failed', 'delayed', 'waiting', 'active', 'prioritized').catch((err) => {
      errors.push(`getJobCounts: ${(err as Error).message}`);
      return {};
    });
    return {
      runId,
      contender,
      workload,
      tenantOf,
      ...hw,
      hosts: [...results.values()].sort((a, b) => a.hostIndex - b.hostIndex),
      api: { max: api.max, tenantMax: api.tenantMax, calls: api.calls },
      queueCounts,
      conns: {
        semPeak: conns.semPeak,
        semTxPeak: conns.semTxPeak,
        semMean: conns.samples ? conns.semSum / conns.samples : 0,
        bqPeak: conns.bqPeak,
        bqMean: conns.samples ? conns.bqSum / conns.samples : 0,
        samples: conns.samples,
        names: [...connNames].sort(),
        ...(ns !== null
          ? { holdPeak: conns.holdPeak, holdMean: conns.lockSamples ? conns.holdSum / conns.lockSamples : 0, ticketsPeak: conns.ticketsPeak, lockSamples: conns.lockSamples }
          : {}),
      },
      cpuBusy: busyBetween(cpu0, cpu1),
      serverCpuMs: srv0 && srv1 ? { postgres: srv1.postgres - srv0.postgres, redis: srv1.redis - srv0.redis } : null,
      pg: pgStats,
      wallMs,
      deadlineHit,
      setupMs,
      errors,
    };
  } finally {
    const t = Date.now();
    await cleanup();
    pendingCleanups.delete(cleanup);
    log(`    cleaned up in ${((Date.now() - t) / 1000).toFixed(1)} s`);
  }
}
