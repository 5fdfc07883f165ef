// Shared shapes of the benchmark: what a run is, what a worker host is told and what it reports.

/** Per key: this many tenants (0..n-1) get 40 % of the jobs between them. */
export const HEAVY_TENANTS = 5;

/** Who enforces the cap. */
export type ContenderId =
  | 'pgsem-redis'
  | 'pgsem-pg'
  | 'pgsem-redis-session'
  | 'pgsem-pg-session'
  | 'pgsem-nowake'
  | 'bullmq-global'
  | 'redis-semaphore'
  | 'plain'
  | 'plain-pg';

/** Which load. */
export type WorkloadId = 'saturated-10ms' | 'saturated-0ms' | 'per-key' | 'uncontended' | 'uncontended-serial' | 'global-tenant' | 'large-cap';

export interface ContenderInfo {
  id: ContenderId;
  label: string;
  /** BullMQ backend the workers use. */
  backend: 'redis' | 'postgres';
  /** Whether the contender caps concurrency at all (the plain worker does not). */
  capped: boolean;
  /** pg-semaphore's holding mode (PgSemaphoreOptions.holding); absent for the others. */
  holding?: 'transaction' | 'session';
}

export const CONTENDERS: Record<ContenderId, ContenderInfo> = {
  'pgsem-redis': { id: 'pgsem-redis', label: 'pg-semaphore (BullMQ Redis)', backend: 'redis', capped: true, holding: 'transaction' },
  'pgsem-pg': { id: 'pgsem-pg', label: 'pg-semaphore (BullMQ Postgres)', backend: 'postgres', capped: true, holding: 'transaction' },
  'pgsem-redis-session': { id: 'pgsem-redis-session', label: "pg-semaphore holding:'session' (BullMQ Redis)", backend: 'redis', capped: true, holding: 'session' },
  'pgsem-pg-session': { id: 'pgsem-pg-session', label: "pg-semaphore holding:'session' (BullMQ Postgres)", backend: 'postgres', capped: true, holding: 'session' },
  'pgsem-nowake': { id: 'pgsem-nowake', label: 'pg-semaphore wakeOnRelease:false', backend: 'redis', capped: true, holding: 'transaction' },
  'bullmq-global': { id: 'bullmq-global', label: 'BullMQ setGlobalConcurrency', backend: 'redis', capped: true },
  'redis-semaphore': { id: 'redis-semaphore', label: 'redis-semaphore (10 ms poll)', backend: 'redis', capped: true },
  plain: { id: 'plain', label: 'plain BullMQ, no cap (ceiling)', backend: 'redis', capped: false },
  'plain-pg': { id: 'plain-pg', label: "plain BullMQ on its Postgres backend, no cap (that backend's ceiling)", backend: 'postgres', capped: false },
};

export interface WorkloadSpec {
  id: WorkloadId;
  title: string;
  jobs: number;
  /** Hold time asked of the fake API, ms. */
  holdMs: number;
  /** Worker OS processes. */
  processes: number;
  /** BullMQ concurrency per process. */
  concurrency: number;
  /** Tickets of the one semaphore (single mode), or per tenant (per-key mode), or of the global semaphore (global-tenant). */
  cap: number;
  /**
   * One semaphore, one per tenant, or a global semaphore plus one per tenant taken together
   * (`['api', `tenant:${t}`]`, some jobs weighing 2 on the global one).
   */
  mode: 'single' | 'tenant' | 'global-tenant';
  tenants: number;
  /** global-tenant: tickets of each tenant's semaphore. */
  tenantCap?: number;
  /** global-tenant: each job's hold is drawn (seeded) from this range, ms; holdMs is then the mean. */
  holdRange?: [number, number];
  /** global-tenant: share of jobs weighing 2 on the global semaphore. */
  heavyShare?: number;
  /**
   * pg-semaphore's pool max per worker process for this workload in transaction holding (else
   * --pool, 8): a large cap there needs one connection per held ticket set. Session holding
   * keeps --pool.
   */
  semPoolMax?: number;
  contenders: ContenderId[];
}

/** Everything a worker host needs, passed as JSON in BENCH_CONFIG. */
export interface HostConfig {
  runId: string;
  hostIndex: number;
  contender: ContenderId;
  backend: 'redis' | 'postgres';
  /** pg-semaphore's holding mode (pg-semaphore contenders only). */
  holding?: 'transaction' | 'session';
  queue: string;
  concurrency: number;
  cap: number;
  mode: 'single' | 'tenant' | 'global-tenant';
  /** global-tenant: tickets per tenant. */
  tenantCap: number;
  holdMs: number;
  /** pg-semaphore's Postgres. */
  databaseUrl: string;
  /** BullMQ Postgres backend's Postgres (its own database on the benchmark's server). */
  bqDatabaseUrl: string;
  redisUrl: string;
  /** pg-semaphore schema. */
  semSchema: string;
  /** BullMQ Postgres backend schema. */
  bqSchema: string;
  /** BullMQ Redis prefix; also the redis-semaphore key prefix. */
  prefix: string;
  apiUrl: string;
  /** Max connections of pg-semaphore's pool in this process. */
  semPoolMax: number;
  /** Max connections of BullMQ's Postgres backend pool in this process. */
  bqPoolMax: number;
  /** application_name of pg-semaphore's pool. */
  semAppName: string;
  /** application_name of the BullMQ Postgres backend pool. */
  bqAppName: string;
  /** The folder of the built pg-semaphore the host loads (what users run); undefined: src/ through tsx. */
  libDir?: string;
}

/**
 * One completed job, as flat numbers (ms of the machine's monotonic clock, shared by every
 * process, with sub-ms precision: process.hrtime.bigint() / 1e6):
 * [job index, processor entry, body start, body end, processor exit, ticket id or -1, tenant index or -1, weight on the global cap]
 */
export type JobRecord = [i: number, t0: number, b0: number, b1: number, t1: number, ticket: number, tenant: number, weight: number];

export interface HostResult {
  type: 'result';
  hostIndex: number;
  pid: number;
  records: JobRecord[];
  /** Processor invocations (including ones that were put back). */
  invocations: number;
  firstEntry: number;
  lastExit: number;
  completed: number;
  failed: number;
  failures: string[];
  /** Jobs this worker's stall checker moved back (their lock ran out). */
  stalled: number;
  rssPeak: number;
  /** CPU time (user + system) this process used from "go" until the run was over, ms. */
  cpuMs: number;
  /** pg-semaphore's limitProcessor stats (summed over the process). */
  stats?: { attempts: number; busy: number; handoffs: number; reschedules: number; promotions: number; ran: number };
  roundTrips?: number;
  /**
   * sem.roundTrips counted over a job's pre-body phase (processor call to body start) and
   * post-body phase (body end to processor return), only for phases no other job of the
   * process overlapped (so the count is that job's alone).
   */
  soloRoundTrips?: { pre: number[]; post: number[] };
  /** pg-semaphore: its LISTEN connection was known to hear NOTIFYs when the run ended (false: no probe arrived while it was idle); absent when it was never opened (nothing waited). */
  hearsWakeUps?: boolean;
  /** Jobs whose body saw job.attemptsMade > 0 (a wait must not use an attempt). */
  attemptsMadeNonZero?: number;
  /** Per put-back: ms from the processor call until the job was put back. */
  putBackAfterMs?: number[];
  /** redis-semaphore: acquire() calls, acquire tries (Lua acquire scripts sent) and Redis calls in all. */
  rsem?: { acquireCalls: number; tries: number; redisCalls: number };
}

export type HostMessage =
  | { type: 'ready'; pid: number }
  | { type: 'progress'; hostIndex: number; completed: number; failed: number }
  | { type: 'error'; message: string; stack?: string }
  | HostResult;

export type ParentMessage = { type: 'go' } | { type: 'close' };
