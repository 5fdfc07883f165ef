// Per-tenant caps: at most 2 jobs of any one tenant at once, and at most 6 calls to the partner
// API overall, across every worker.
//
//   DATABASE_URL=postgres://postgres@localhost:5432/postgres npx tsx examples/per-tenant/per-tenant.ts
//
// (BullMQ runs on its Postgres backend; set REDIS_URL as well to run it on Redis instead.)
//
// Each job needs two tickets, taken together or not at all: one of `partner-api` (6 tickets)
// and one of `tenant:<id>`, a semaphore created with 2 tickets the first time a tenant shows
// up (`createWith: 2`), so new tenants need no set-up. The big tenant enqueues its whole
// backlog first, yet the small tenants are not stuck behind it: the big one can only ever
// hold 2 of the 6 API tickets.
//
// It works in its own Postgres schemas (or Redis key prefix) and removes them at the end.
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { Queue, Worker, createPostgresBackend, type Job } from 'bullmq';
// In your project: import { PgSemaphore } from 'pg-semaphore';
import { PgSemaphore } from '../../src/index.js';
// In your project: import { limitProcessor } from 'pg-semaphore/bullmq';
import { limitProcessor } from '../../src/bullmq/index.js';

export interface Options {
  /** @default process.env.DATABASE_URL ?? 'postgres://postgres@localhost:5432/postgres' */
  databaseUrl?: string;
  /** BullMQ's backend. @default 'redis' when REDIS_URL is set, else 'postgres' */
  backend?: 'postgres' | 'redis';
  /** @default process.env.REDIS_URL ?? 'redis://localhost:6379' */
  redisUrl?: string;
  /** pg-semaphore's schema. @default a fresh `pgsem_tenants_<random>` */
  schema?: string;
  /** BullMQ's schema on its Postgres backend. @default a fresh `bq_tenants_<random>` */
  bqSchema?: string;
  /** BullMQ's Redis key prefix. @default a fresh `pgsem-tenants-<random>` */
  prefix?: string;
  /** Jobs in all: half of them from tenant `acme`, the rest spread over four small tenants. @default 120 */
  jobs?: number;
  /** Jobs of one tenant at once. @default 2 */
  tenantCap?: number;
  /** Calls to the partner API at once, all tenants together; 0 for per-tenant caps only. @default 6 */
  cap?: number;
  /** Worker hosts (each with its own PgSemaphore). @default 2 */
  hosts?: number;
  /** BullMQ concurrency of each host. @default 20 */
  concurrency?: number;
  /** Keep the schemas and the queue afterwards. @default false */
  keep?: boolean;
  /** Where progress lines go. @default console.log */
  log?: (line: string) => void;
}

export interface TenantResult {
  jobs: number;
  completed: number;
  /** The most calls of this tenant the partner API saw at once. */
  maxInFlight: number;
  /** Seconds from the start until this tenant's last job completed. */
  finishedAfter: number;
}

export interface Result {
  ok: boolean;
  tenantCap: number;
  cap: number;
  /** The most calls the partner API saw at once, all tenants together. */
  maxInFlight: number;
  tenants: Record<string, TenantResult>;
  jobs: number;
  completed: number;
  failed: number;
  /** Semaphores that exist after the run, with their capacity (the tenant ones were created on first use). */
  semaphores: Record<string, number>;
  ticketsHeldAfter: number;
  seconds: number;
}

interface CallData {
  tenant: string;
  n: number;
}

const SMALL_TENANTS = ['globex', 'initech', 'umbrella', 'hooli'];

export async function main(options: Options = {}): Promise<Result> {
  const id = randomBytes(4).toString('hex');
  const databaseUrl = options.databaseUrl ?? process.env.DATABASE_URL ?? 'postgres://postgres@localhost:5432/postgres';
  const backend = options.backend ?? (process.env.REDIS_URL ? 'redis' : 'postgres');
  const redisUrl = options.redisUrl ?? process.env.REDIS_URL ?? 'redis://localhost:6379';
  const schema = options.schema ?? `pgsem_tenants_${id}`;
  const bqSchema = options.bqSchema ?? `bq_tenants_${id}`;
  const prefix = options.prefix ?? `pgsem-tenants-${id}`;
  const jobCount = options.jobs ?? 120;
  const tenantCap = options.tenantCap ?? 2;
  const cap = options.cap ?? 6;
  const hostCount = options.hosts ?? 2;
  const concurrency = options.concurrency ?? 20;
  const log = options.log ?? console.log;

  // The jobs: acme's big backlog first, then the small tenants' jobs.
  const data: CallData[] = [];
  const big = Math.ceil(jobCount / 2);
  for (let n = 0; n < big; n++) data.push({ tenant: 'acme', n });
  for (let n = 0; n < jobCount - big; n++) data.push({ tenant: SMALL_TENANTS[n % SMALL_TENANTS.length]!, n });
  const tenants: Record<string, TenantResult> = {};
  for (const { tenant } of data) {
    tenants[tenant] ??= { jobs: 0, completed: 0, maxInFlight: 0, finishedAfter: 0 };
    tenants[tenant].jobs++;
  }

  const api = await startFakeApi();
  const admin = new PgSemaphore({ connection: databaseUrl, schema });
  await admin.migrate();
  // The global cap exists up front (in a migration: `SELECT semaphore.make('partner-api', 6);`).
  // The tenant semaphores are created by the first job of each tenant.
  if (cap > 0) await admin.make('partner-api', cap);

  const pgConnection = { connectionString: databaseUrl, schema: bqSchema };
  type AnyQueue = Pick<Queue, 'addBulk' | 'obliterate' | 'close' | 'waitUntilReady'>;
  const queue: AnyQueue =
    backend === 'postgres'
      ? new Queue('tenant-calls', { connection: { ...pgConnection, migrate: true } }, createPostgresBackend)
      : new Queue('tenant-calls', { connection: { url: redisUrl }, prefix } as never);
  await queue.waitUntilReady();

  const hosts: Array<{ sem: PgSemaphore; worker: Worker<CallData> }> = [];
  let completed = 0;
  let failed = 0;
  let finished!: () => void;
  const allDone = new Promise<void>((resolve) => (finished = resolve));
  const started = Date.now();
  let closing: Promise<unknown> | undefined;
  const closeHosts = () => (closing ??= Promise.all(hosts.map((h) => h.worker.close())).then(() => Promise.all(hosts.map((h) => h.sem.close()))));
  let seconds = 0;
  let ticketsHeldAfter = -1;
  let semaphores: Record<string, number> = {};
  try {
    for (let i = 0; i < hostCount; i++) {
      const sem = new PgSemaphore({ connection: { connectionString: databaseUrl, max: cap + 6 }, schema });
      const processor = limitProcessor<CallData>(
        sem,
        async (job, _token, signal) => {
          const res = await fetch(`${api.url}/call?tenant=${job.data.tenant}&job=${job.id}`, { signal });
          if (!res.ok) throw new Error(`partner API answered ${res.status}`);
          return res.text();
        },
        {
          // Both tickets at once, all or nothing; or only the tenant's when there is no global cap.
          semaphore: cap > 0 ? (job) => ['partner-api', `tenant:${job.data.tenant}`] : (job) => `tenant:${job.data.tenant}`,
          // A tenant seen for the first time gets a semaphore of its own with this many tickets.
          createWith: tenantCap,
        },
      );
      // (one static type for both backends, to keep the example short)
      const worker = (
        backend === 'postgres'
          ? new Worker('tenant-calls', processor, { connection: { ...pgConnection, max: 4 }, concurrency }, createPostgresBackend)
          : new Worker('tenant-calls', processor, { connection: { url: redisUrl }, prefix, concurrency } as never)
      ) as unknown as Worker<CallData>;
      worker.on('completed', (job: Job<CallData>) => {
        const t = tenants[job.data.tenant]!;
        t.completed++;
        t.finishedAfter = (Date.now() - started) / 1000;
        if (++completed + failed === jobCount) finished();
      });
      worker.on('failed', (job: Job<CallData> | undefined, err: Error) => {
        log(`job ${job?.id} (${job?.data.tenant}) failed: ${err.message}`);
        if (completed + ++failed === jobCount) finished();
      });
      worker.on('error', (err: Error) => log(`worker error: ${err.message}`));
      hosts.push({ sem, worker });
    }
    await Promise.all(hosts.map((h) => h.worker.waitUntilReady()));

    log(
      `${jobCount} jobs (acme ${tenants.acme!.jobs}, ${SMALL_TENANTS.map((t) => `${t} ${tenants[t]?.jobs ?? 0}`).join(', ')}); ` +
        `${tenantCap} per tenant${cap > 0 ? `, ${cap} in all` : ''}; ${hostCount} hosts × concurrency ${concurrency}; BullMQ on ${backend}`,
    );
    await queue.addBulk(data.map((d) => ({ name: 'call', data: d })));
    const progress = setInterval(() => log(`  ${completed}/${jobCount} done, API in flight ${api.inflight} (${api.perTenantNow()})`), 1_000);
    try {
      await withTimeout(allDone, 60_000, 'all jobs to finish');
    } finally {
      clearInterval(progress);
    }
    seconds = (Date.now() - started) / 1000;
    await closeHosts();
    const list = await admin.list();
    ticketsHeldAfter = list.reduce((n, s) => n + s.held, 0);
    semaphores = Object.fromEntries(list.map((s) => [s.name, s.tickets]));
  } finally {
    await closeHosts();
    if (!options.keep) {
      await queue.obliterate({ force: true });
      for (const s of backend === 'postgres' ? [schema, bqSchema] : [schema]) await admin.pool.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
    }
    await queue.close();
    await admin.close();
    await api.close();
  }

  for (const [name, t] of Object.entries(tenants)) t.maxInFlight = api.tenantMax.get(name) ?? 0;
  const result: Result = {
    ok:
      Object.values(tenants).every((t) => t.maxInFlight <= tenantCap && t.completed === t.jobs) &&
      (cap === 0 || api.max <= cap) &&
      completed === jobCount &&
      failed === 0 &&
      ticketsHeldAfter === 0,
    tenantCap,
    cap,
    maxInFlight: api.max,
    tenants,
    jobs: jobCount,
    completed,
    failed,
    semaphores,
    ticketsHeldAfter,
    seconds,
  };
  log(`done in ${seconds.toFixed(1)} s; the partner API saw at most ${api.max} calls at once${cap > 0 ? ` (cap ${cap})` : ''}`);
  for (const [name, t] of Object.entries(tenants)) {
    log(`  ${name.padEnd(9)} ${String(t.completed).padStart(3)}/${t.jobs} jobs, at most ${t.maxInFlight} at once (cap ${tenantCap}), last one done after ${t.finishedAfter.toFixed(1)} s`);
  }
  log(`  semaphores: ${Object.entries(semaphores).map(([n, k]) => `${n} (${k})`).join(', ')}; ${ticketsHeldAfter} tickets held after`);
  return result;
}

/** A loopback HTTP server standing in for the partner API: holds each call 25 ms, counts calls in flight, per tenant too. */
async function startFakeApi(holdMs = 25) {
  let inflight = 0;
  let max = 0;
  const tenantNow = new Map<string, number>();
  const tenantMax = new Map<string, number>();
  const server = http.createServer((req, res) => {
    const tenant = new URL(req.url ?? '/', 'http://x').searchParams.get('tenant') ?? '';
    max = Math.max(max, ++inflight);
    const now = (tenantNow.get(tenant) ?? 0) + 1;
    tenantNow.set(tenant, now);
    tenantMax.set(tenant, Math.max(tenantMax.get(tenant) ?? 0, now));
    let open = true;
    const done = () => {
      if (!open) return;
      open = false;
      inflight--;
      tenantNow.set(tenant, tenantNow.get(tenant)! - 1);
    };
    res.on('close', done);
    setTimeout(() => {
      done();
      res.end('ok');
    }, holdMs);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    get inflight() {
      return inflight;
    },
    get max() {
      return max;
    },
    tenantMax,
    perTenantNow: () => [...tenantNow].filter(([, n]) => n > 0).map(([t, n]) => `${t} ${n}`).join(', ') || 'none',
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().then(
    (result) => process.exit(result.ok ? 0 : 1),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
}
