// A worker "host" of the benchmark: one OS process with one BullMQ Worker whose jobs call the
// loopback fake API while holding a ticket of the contender under test. Started by
// bench/lib/run.ts with `node --import tsx`; configured by BENCH_CONFIG (JSON); talks over IPC.
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import http from 'node:http';
import { Worker, createPostgresBackend, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { MultiSemaphore as RedisMultiSemaphore, Semaphore as RedisSemaphore } from 'redis-semaphore';
import type { PgSemaphore as PgSemaphoreType } from '../src/index.js';
import type { LimitedProcessor } from '../src/bullmq/index.js';
import type { HostConfig, HostMessage, HostResult, JobRecord, ParentMessage } from './lib/types.js';

const cfg = JSON.parse(process.env.BENCH_CONFIG ?? '') as HostConfig;

/** A clock shared by every process on this machine, with sub-millisecond resolution. */
// CLOCK_MONOTONIC: one clock for every process on the machine (performance.timeOrigin is
// sampled per process at start-up and can be off by milliseconds under load).
const now = () => Number(process.hrtime.bigint()) / 1e6;

function send(message: HostMessage): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send || !process.connected) return resolve();
    process.send(message, undefined, undefined, () => resolve());
  });
}

// The host must never outlive the benchmark.
process.on('disconnect', () => process.exit(0));
process.on('unhandledRejection', (err) => {
  void send({ type: 'error', message: String((err as Error)?.message ?? err), stack: (err as Error)?.stack }).then(() => process.exit(1));
});

interface JobData {
  i: number;
  tenant: number;
  /** global-tenant: tickets of the global semaphore this job takes (1 or 2). */
  w?: number;
  /** global-tenant: this job's hold, ms (else cfg.holdMs). */
  hold?: number;
}

// ---------------------------------------------------------------- the "work": a call to the fake API

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
const api = new URL(cfg.apiUrl);

function callApi(job: Job<JobData>, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: api.hostname,
        port: api.port,
        path: `/call?job=${job.data.i}&tenant=${job.data.tenant}&hold=${job.data.hold ?? cfg.holdMs}&w=${job.data.w ?? 1}`,
        agent,
        signal,
      },
      (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`fake API said ${res.statusCode}`))));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

const records: JobRecord[] = [];
/** Per processor invocation: when BullMQ called us (the same Job object reaches the body). */
const entries = new WeakMap<Job, number>();
/** The record of the invocation that ran the body. */
const done = new WeakMap<Job, JobRecord>();
let invocations = 0;
const putBackAfter: number[] = [];
let firstEntry = Infinity;
let lastExit = 0;
let attemptsMadeNonZero = 0;

// ---------------------------------------------------------------- round trips of one job alone
// sem.roundTrips counts the whole process. A job's pre-body phase (processor call to body
// start: the acquire) and post-body phase (body end to processor return: the release) are
// counted only when no other job of this process was in either phase meanwhile, so what the
// counter moved by is that job's alone.
interface Phase {
  rt0: number;
  solo: boolean;
  /** A phase of the process's first job. */
  warmUp: boolean;
}
const activePhases = new Set<Phase>();
const solo = { pre: [] as number[], post: [] as number[] };
const prePhase = new WeakMap<Job, Phase>();
const postPhase = new WeakMap<Job, Phase>();
function phaseStart(): Phase | undefined {
  if (!sem) return undefined;
  const p: Phase = { rt0: sem.roundTrips, solo: activePhases.size === 0, warmUp: invocations <= 1 };
  for (const q of activePhases) q.solo = false;
  activePhases.add(p);
  return p;
}
function phaseEnd(p: Phase | undefined, into: number[]): void {
  if (!p || !sem) return;
  activePhases.delete(p);
  // the process's first job is warm-up: it opens connections (session holding's holding
  // connection costs 3 round trips once), which no later job pays
  if (p.solo && !p.warmUp && into.length < 100_000) into.push(sem.roundTrips - p.rt0);
}

/** A number for the job's first ticket, unique across semaphores (ticket numbers count per semaphore); -1 without one. */
function ticketKey(job: Job<JobData>, held: { ticket: number } | undefined): number {
  if (!held) return -1;
  return cfg.mode === 'tenant' ? job.data.tenant * 100_000 + held.ticket : held.ticket;
}

async function body(job: Job<JobData>, signal: AbortSignal | undefined, ticket: number): Promise<void> {
  phaseEnd(prePhase.get(job), solo.pre);
  const b0 = now();
  if (job.attemptsMade > 0) attemptsMadeNonZero++;
  try {
    await callApi(job, signal);
  } finally {
    const post = phaseStart();
    if (post) postPhase.set(job, post);
  }
  const b1 = now();
  const rec: JobRecord = [job.data.i, entries.get(job) ?? b0, b0, b1, 0, ticket, cfg.mode === 'single' ? -1 : job.data.tenant, job.data.w ?? 1];
  records.push(rec);
  done.set(job, rec);
}

/** Wraps the contender's processor to note when BullMQ handed the job over and when it came back. */
function timed(inner: (job: Job<JobData>, token: string | undefined, signal: AbortSignal | undefined) => Promise<void>) {
  // BullMQ passes the AbortSignal only to processors declared with three parameters.
  return async (job: Job<JobData>, token: string | undefined, signal: AbortSignal | undefined): Promise<void> => {
    const t0 = now();
    invocations++;
    if (t0 < firstEntry) firstEntry = t0;
    entries.set(job, t0);
    const pre = phaseStart();
    if (pre) prePhase.set(job, pre);
    try {
      await inner(job, token, signal);
    } finally {
      // a put-back never reached the body: its phase is dropped uncounted
      if (pre && activePhases.has(pre)) activePhases.delete(pre);
      phaseEnd(postPhase.get(job), solo.post);
      postPhase.delete(job);
      const t1 = now();
      const rec = done.get(job);
      if (rec && rec[4] === 0) {
        rec[4] = t1;
        if (t1 > lastExit) lastExit = t1;
      }
    }
  };
}

// ---------------------------------------------------------------- the contenders

const semKey = (job: Job<JobData>) => (cfg.mode === 'tenant' ? `tenant:${job.data.tenant}` : 'api');
/** global-tenant: the API's cap (weighted) and the tenant's, taken together. */
const globalTenantRequest = (job: Job<JobData>) => [{ name: 'api', tickets: job.data.w ?? 1 }, `tenant:${job.data.tenant}`];

// The library as users run it: built for publishing into a folder of the run's own, which the
// benchmark makes first. --lib=src loads the TypeScript sources through tsx instead, whose
// keepNames wraps every closure made.
const fromSrc = cfg.libDir === undefined;
const built = (file: string) => import(pathToFileURL(join(cfg.libDir!, file)).href);
const { PgSemaphore } = (fromSrc ? await import('../src/index.js') : await built('index.js')) as typeof import('../src/index.js');
const { limitProcessor } = (fromSrc ? await import('../src/bullmq/index.js') : await built('bullmq.js')) as typeof import('../src/bullmq/index.js');

let sem: PgSemaphoreType | undefined;
let limited: LimitedProcessor<JobData, void> | undefined;
const rsem = { acquireCalls: 0, tries: 0, redisCalls: 0 };
let redis: Redis | undefined;

let processor: (job: Job<JobData>, token: string | undefined, signal: AbortSignal | undefined) => Promise<void>;

switch (cfg.contender) {
  case 'pgsem-redis':
  case 'pgsem-pg':
  case 'pgsem-redis-session':
  case 'pgsem-pg-session':
  case 'pgsem-nowake': {
    sem = new PgSemaphore({
      connection: { connectionString: cfg.databaseUrl, max: cfg.semPoolMax },
      schema: cfg.semSchema,
      applicationName: cfg.semAppName,
      holding: cfg.holding ?? 'transaction',
    });
    limited = // (ticket numbers count per semaphore: per key, the tenant makes them unique)
    limited = limitProcessor<JobData, void>(sem, async (job, _token, signal, ctx) => body(job, signal, ticketKey(job, ctx.tickets[0])), {
      semaphore: cfg.mode === 'tenant' ? semKey : cfg.mode === 'global-tenant' ? globalTenantRequest : 'api',
      // per key: tenants' semaphores are made on first use ('api' was made by the benchmark)
      createWith: cfg.mode === 'tenant' ? cfg.cap : cfg.mode === 'global-tenant' ? cfg.tenantCap : undefined,
      wakeOnRelease: cfg.contender !== 'pgsem-nowake',
    });
    const lp = limited;
    // How long a job was in the processor before it was put back (local wait or none).
    lp.events.on('rescheduled', ({ job }) => putBackAfter.push(now() - (entries.get(job) ?? now())));
    processor = timed((job, token, signal) => lp(job, token, signal));
    break;
  }
  case 'redis-semaphore': {
    redis = new Redis(cfg.redisUrl, { maxRetriesPerRequest: null });
    const r = redis;
    processor = timed(async (job, _token, signal) => {
      // One client view per acquire so its tries can be counted exactly: redis-semaphore
      // sends one Lua acquire script (EVALSHA, EVAL after NOSCRIPT) per try, every
      // retryInterval (10 ms by default) until acquireTimeout (10 s).
      let acquiring = true;
      const counting = {
        evalsha: (...args: unknown[]) => {
          rsem.redisCalls++;
          if (acquiring) rsem.tries++;
          return (r.evalsha as (...a: unknown[]) => Promise<unknown>)(...args);
        },
        eval: (...args: unknown[]) => {
          rsem.redisCalls++;
          return (r.eval as (...a: unknown[]) => Promise<unknown>)(...args);
        },
        get: (...args: unknown[]) => (rsem.redisCalls++, (r.get as (...a: unknown[]) => Promise<unknown>)(...args)),
        set: (...args: unknown[]) => (rsem.redisCalls++, (r.set as (...a: unknown[]) => Promise<unknown>)(...args)),
        zrem: (...args: unknown[]) => (rsem.redisCalls++, (r.zrem as (...a: unknown[]) => Promise<unknown>)(...args)),
        options: r.options,
      };
      if (cfg.mode === 'global-tenant') {
        // Two semaphores, always taken in the same order (tenant, then the global one), so no
        // two jobs can each hold what the other waits for; the scarcer global tickets are not
        // held while waiting for a tenant. A weight of 2 is MultiSemaphore's permits.
        // A job may wait long for the global tickets while holding its tenant's; a long lock
        // timeout keeps a starved event loop (late refresh) from expiring the tenant's lock.
        const opts = { acquireTimeout: 120_000, lockTimeout: 60_000 };
        const t = new RedisSemaphore(counting as never, `${cfg.prefix}:tenant:${job.data.tenant}`, cfg.tenantCap, opts);
        const w = job.data.w ?? 1;
        const g =
          w === 1
            ? new RedisSemaphore(counting as never, `${cfg.prefix}:api`, cfg.cap, opts)
            : new RedisMultiSemaphore(counting as never, `${cfg.prefix}:api`, cfg.cap, w, opts);
        rsem.acquireCalls++;
        await t.acquire(signal);
        try {
          await g.acquire(signal);
          acquiring = false;
          try {
            await body(job, signal, -1);
          } finally {
            await g.release();
          }
        } finally {
          await t.release();
        }
        return;
      }
      const s = new RedisSemaphore(counting as never, `${cfg.prefix}:${semKey(job)}`, cfg.cap);
      rsem.acquireCalls++;
      await s.acquire(signal);
      acquiring = false;
      try {
        await body(job, signal, -1);
      } finally {
        await s.release();
      }
    });
    break;
  }
  case 'bullmq-global':
  case 'plain':
  case 'plain-pg':
    // The cap, if any, is BullMQ's own queue-wide global concurrency, set by the parent.
    processor = timed(async (job, _token, signal) => body(job, signal, -1));
    break;
  default:
    throw new Error(`unknown contender ${String(cfg.contender)}`);
}

// ---------------------------------------------------------------- the worker

const workerOpts = { concurrency: cfg.concurrency, autorun: false };
const worker =
  cfg.backend === 'postgres'
    ? new Worker(
        cfg.queue,
        processor,
        {
          connection: { connectionString: cfg.bqDatabaseUrl, schema: cfg.bqSchema, max: cfg.bqPoolMax, application_name: cfg.bqAppName },
          ...workerOpts,
        },
        createPostgresBackend,
      )
    : new Worker(cfg.queue, processor, { connection: redisOptions(cfg.redisUrl), prefix: cfg.prefix, ...workerOpts });

let completed = 0;
let failed = 0;
const failures: string[] = [];
worker.on('completed', () => void completed++);
worker.on('failed', (job, err) => {
  failed++;
  if (failures.length < 10) failures.push(`job ${job?.data.i}: ${err?.name}: ${err?.message}`);
});
let stalled = 0;
worker.on('stalled', () => void stalled++);
worker.on('error', (err) => {
  if (failures.length < 10) failures.push(`worker error: ${err?.message}`);
});

let rssPeak = process.memoryUsage().rss;
const rssTimer = setInterval(() => (rssPeak = Math.max(rssPeak, process.memoryUsage().rss)), 100);
let progressTimer: NodeJS.Timeout | undefined;
let cpuAtGo: NodeJS.CpuUsage | undefined;

process.on('message', (m: ParentMessage) => {
  if (m?.type === 'go') {
    cpuAtGo = process.cpuUsage();
    void worker.run().catch((err) => failures.push(`worker.run: ${(err as Error).message}`));
    progressTimer = setInterval(() => void send({ type: 'progress', hostIndex: cfg.hostIndex, completed, failed }), 100);
  } else if (m?.type === 'close') {
    void close();
  }
});

async function close(): Promise<void> {
  if (progressTimer) clearInterval(progressTimer);
  const cpu = process.cpuUsage(cpuAtGo);
  // only a listener that was opened (something waited) can say; @internal field, read for the report
  const listened = (sem as unknown as { listener?: unknown } | undefined)?.listener !== undefined;
  const hearsWakeUps = listened ? sem?.hearsWakeUps : undefined;
  await worker.close();
  rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
  clearInterval(rssTimer);
  const result: HostResult = {
    type: 'result',
    hostIndex: cfg.hostIndex,
    pid: process.pid,
    records,
    invocations,
    firstEntry: Number.isFinite(firstEntry) ? firstEntry : 0,
    lastExit,
    completed,
    failed,
    failures,
    stalled,
    rssPeak,
    cpuMs: (cpu.user + cpu.system) / 1000,
    attemptsMadeNonZero,
    ...(hearsWakeUps !== undefined ? { hearsWakeUps } : {}),
    ...(limited ? { stats: { ...limited.stats }, roundTrips: (sem?.roundTrips ?? 0) + (sem?.backgroundRoundTrips ?? 0), putBackAfterMs: putBackAfter, soloRoundTrips: solo } : {}),
    ...(cfg.contender === 'redis-semaphore' ? { rsem } : {}),
  };
  await send(result);
  await sem?.close().catch(() => undefined);
  redis?.disconnect();
  agent.destroy();
  process.exit(0);
}

function redisOptions(url: string) {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port || 6379), maxRetriesPerRequest: null };
}

await worker.waitUntilReady();
if (sem) await sem.list(); // open one pooled connection before the clock starts
await send({ type: 'ready', pid: process.pid });
