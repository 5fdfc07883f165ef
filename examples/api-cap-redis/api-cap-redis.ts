// Capping an external API across a fleet, with BullMQ on Redis.
//
//   DATABASE_URL=postgres://postgres@localhost:5432/postgres REDIS_URL=redis://localhost:6379 \
//     npx tsx examples/api-cap-redis/api-cap-redis.ts
//
// Three worker "hosts" pull jobs from one Redis queue, each with concurrency 20, yet the partner
// API never sees more than 4 calls at once: every job holds a ticket of the Postgres semaphore
// `partner-api` while it calls. Jobs that find no ticket wait briefly in their worker, get a
// ticket handed over by the job before them, or are put back with a delay (no attempt used).
//
// It works in its own Postgres schema and Redis key prefix, and removes both at the end.
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { Queue, Worker } from 'bullmq';
// In your project: import { PgSemaphore } from 'pg-semaphore';
import { PgSemaphore } from '../../src/index.js';
// In your project: import { limitProcessor } from 'pg-semaphore/bullmq';
import { limitProcessor } from '../../src/bullmq/index.js';

export interface Options {
  /** @default process.env.DATABASE_URL ?? 'postgres://postgres@localhost:5432/postgres' */
  databaseUrl?: string;
  /** @default process.env.REDIS_URL ?? 'redis://localhost:6379' */
  redisUrl?: string;
  /** pg-semaphore's schema. @default a fresh `pgsem_example_<random>` */
  schema?: string;
  /** BullMQ's Redis key prefix. @default a fresh `pgsem-example-<random>` */
  prefix?: string;
  /** @default 200 */
  jobs?: number;
  /** Calls to the partner API allowed at once, fleet-wide. @default 4 */
  cap?: number;
  /** Worker hosts (each with its own PgSemaphore, as separate machines would have). @default 3 */
  hosts?: number;
  /** BullMQ concurrency of each host. @default 20 */
  concurrency?: number;
  /** Keep the schema and the queue afterwards (to look at them). @default false */
  keep?: boolean;
  /** Where progress lines go. @default console.log */
  log?: (line: string) => void;
}

export interface Result {
  ok: boolean;
  cap: number;
  /** The most calls the partner API saw at once. */
  maxInFlight: number;
  jobs: number;
  completed: number;
  failed: number;
  /** Calls the partner API received (one per job). */
  apiCalls: number;
  /** Jobs completed by each host. */
  perHost: number[];
  /** Jobs put back with a delay because no ticket was free. */
  reschedules: number;
  /** Jobs that got their ticket straight from the job before them. */
  handoffs: number;
  /** Tickets still held after the workers closed (from `sem.list()`). */
  ticketsHeldAfter: number;
  seconds: number;
}

export async function main(options: Options = {}): Promise<Result> {
  const id = randomBytes(4).toString('hex');
  const databaseUrl = options.databaseUrl ?? process.env.DATABASE_URL ?? 'postgres://postgres@localhost:5432/postgres';
  const redisUrl = options.redisUrl ?? process.env.REDIS_URL ?? 'redis://localhost:6379';
  const schema = options.schema ?? `pgsem_example_${id}`;
  const prefix = options.prefix ?? `pgsem-example-${id}`;
  const jobs = options.jobs ?? 200;
  const cap = options.cap ?? 4;
  const hostCount = options.hosts ?? 3;
  const concurrency = options.concurrency ?? 20;
  const log = options.log ?? console.log;

  const api = await startFakeApi();
  // One-time setup, usually in a migration: install pg-semaphore and create the semaphore
  // (`SELECT semaphore.make('partner-api', 4);` in SQL).
  const admin = new PgSemaphore({ connection: databaseUrl, schema });
  await admin.migrate();
  await admin.make('partner-api', cap);

  const connection = { url: redisUrl };
  const queue = new Queue('partner-calls', { connection, prefix } as never);
  const hosts: Array<{ sem: PgSemaphore; worker: Worker; completed: number; processor: ReturnType<typeof limitProcessor> }> = [];
  let completed = 0;
  let failed = 0;
  let finished!: () => void;
  const allDone = new Promise<void>((resolve) => (finished = resolve));
  const started = Date.now();
  let closing: Promise<unknown> | undefined;
  const closeHosts = () => (closing ??= Promise.all(hosts.map((h) => h.worker.close())).then(() => Promise.all(hosts.map((h) => h.sem.close()))));
  let seconds = 0;
  let ticketsHeldAfter = -1;
  try {
    // Each host: its own PgSemaphore (its own connection pool) and its own BullMQ Worker. In
    // production these are separate processes on separate machines; nothing in this process
    // enforces the cap, Postgres does.
    for (let i = 0; i < hostCount; i++) {
      const sem = new PgSemaphore({ connection: { connectionString: databaseUrl, max: cap + 4 }, schema });
      const processor = limitProcessor(
        sem,
        async (job, _token, signal) => {
          // The work: one call to the partner API, made while holding a ticket.
          const res = await fetch(`${api.url}/call?job=${job.id}`, { signal });
          if (!res.ok) throw new Error(`partner API answered ${res.status}`);
          return res.text();
        },
        { semaphore: 'partner-api' },
      );
      const worker = new Worker('partner-calls', processor, { connection, prefix, concurrency } as never);
      const host = { sem, worker, completed: 0, processor };
      worker.on('completed', () => {
        host.completed++;
        if (++completed + failed === jobs) finished();
      });
      worker.on('failed', (job, err) => {
        log(`job ${job?.id} failed: ${err.message}`);
        if (completed + ++failed === jobs) finished();
      });
      worker.on('error', (err) => log(`worker error: ${err.message}`));
      hosts.push(host);
    }
    await Promise.all(hosts.map((h) => h.worker.waitUntilReady()));

    log(`${jobs} jobs, ${hostCount} hosts × concurrency ${concurrency}, cap ${cap} (BullMQ on Redis, prefix ${prefix}; pg-semaphore schema ${schema})`);
    await queue.addBulk(Array.from({ length: jobs }, (_, n) => ({ name: 'call', data: { n } })));
    const progress = setInterval(() => log(`  ${completed}/${jobs} done, API in flight ${api.inflight}, max ${api.max}`), 1_000);
    try {
      await withTimeout(allDone, 60_000, 'all jobs to finish');
    } finally {
      clearInterval(progress);
    }
    seconds = (Date.now() - started) / 1000;
    await closeHosts();
    ticketsHeldAfter = (await admin.list()).reduce((n, s) => n + s.held, 0);
  } finally {
    await closeHosts();
    if (!options.keep) {
      await queue.obliterate({ force: true });
      await admin.pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    }
    await queue.close();
    await admin.close();
    await api.close();
  }

  const result: Result = {
    ok: api.max <= cap && completed === jobs && failed === 0 && ticketsHeldAfter === 0,
    cap,
    maxInFlight: api.max,
    jobs,
    completed,
    failed,
    apiCalls: api.calls,
    perHost: hosts.map((h) => h.completed),
    reschedules: hosts.reduce((n, h) => n + h.processor.stats.reschedules, 0),
    handoffs: hosts.reduce((n, h) => n + h.processor.stats.handoffs, 0),
    ticketsHeldAfter,
    seconds,
  };
  log(
    `the partner API saw at most ${result.maxInFlight} calls at once (cap ${cap}); ${completed}/${jobs} jobs completed in ${seconds.toFixed(1)} s ` +
      `(per host ${result.perHost.join(' / ')}); ${result.handoffs} hand-offs, ${result.reschedules} put back; ${ticketsHeldAfter} tickets held after`,
  );
  return result;
}

/** A loopback HTTP server standing in for the partner API: holds each call 20 ms, counts calls in flight. */
async function startFakeApi(holdMs = 20) {
  let inflight = 0;
  let max = 0;
  let calls = 0;
  const server = http.createServer((_req, res) => {
    calls++;
    max = Math.max(max, ++inflight);
    let open = true;
    const done = () => {
      if (open) inflight--;
      open = false;
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
    get calls() {
      return calls;
    },
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
