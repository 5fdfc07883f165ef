// A Postgres-only fleet: BullMQ on its Postgres backend and pg-semaphore in the same database.
// One DATABASE_URL, no Redis anywhere.
//
//   DATABASE_URL=postgres://postgres@localhost:5432/postgres npx tsx examples/postgres-only/postgres-only.ts
//
// Two worker hosts, concurrency 10 each, render reports through a service that takes at most
// 3 requests at once. Midway it asks Postgres who holds the tickets (`sem.status()`: pid,
// application name, label, since when), read from Postgres's own lock table, not from rows
// that could go stale.
//
// It works in schemas of its own (one for pg-semaphore, one for BullMQ) and drops them at the end.
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { Queue, Worker, createPostgresBackend } from 'bullmq';
// In your project: import { PgSemaphore, type HolderInfo } from 'pg-semaphore';
import { PgSemaphore, type HolderInfo } from '../../src/index.js';
// In your project: import { limitProcessor } from 'pg-semaphore/bullmq';
import { limitProcessor } from '../../src/bullmq/index.js';

export interface Options {
  /** @default process.env.DATABASE_URL ?? 'postgres://postgres@localhost:5432/postgres' */
  databaseUrl?: string;
  /** pg-semaphore's schema. @default a fresh `pgsem_pgonly_<random>` */
  schema?: string;
  /** BullMQ's schema. @default a fresh `bq_pgonly_<random>` */
  bqSchema?: string;
  /** @default 100 */
  jobs?: number;
  /** Requests the renderer takes at once. @default 3 */
  cap?: number;
  /** @default 2 */
  hosts?: number;
  /** BullMQ concurrency of each host. @default 10 */
  concurrency?: number;
  /** Keep the schemas afterwards. @default false */
  keep?: boolean;
  /** Where progress lines go. @default console.log */
  log?: (line: string) => void;
}

export interface Result {
  ok: boolean;
  cap: number;
  /** The most requests the renderer saw at once. */
  maxInFlight: number;
  jobs: number;
  completed: number;
  failed: number;
  /** The most holders `sem.status()` listed at once while the jobs ran. */
  maxHolders: number;
  /** One `sem.status()` listing taken while jobs ran. */
  holdersSample: HolderInfo[];
  ticketsHeldAfter: number;
  seconds: number;
}

export async function main(options: Options = {}): Promise<Result> {
  const id = randomBytes(4).toString('hex');
  const databaseUrl = options.databaseUrl ?? process.env.DATABASE_URL ?? 'postgres://postgres@localhost:5432/postgres';
  const schema = options.schema ?? `pgsem_pgonly_${id}`;
  const bqSchema = options.bqSchema ?? `bq_pgonly_${id}`;
  const jobs = options.jobs ?? 100;
  const cap = options.cap ?? 3;
  const hostCount = options.hosts ?? 2;
  const concurrency = options.concurrency ?? 10;
  const log = options.log ?? console.log;

  const renderer = await startFakeRenderer();
  const admin = new PgSemaphore({ connection: databaseUrl, schema });
  await admin.migrate();
  await admin.make('renderer', cap);

  // BullMQ on Postgres: a connection config with a schema of its own. `migrate: true` lets the
  // Queue create BullMQ's tables (or run its migrations yourself, see BullMQ's runMigrations).
  const connection = { connectionString: databaseUrl, schema: bqSchema };
  const queue = new Queue('reports', { connection: { ...connection, migrate: true } }, createPostgresBackend);
  await queue.waitUntilReady();

  const hosts: Array<{ sem: PgSemaphore; worker: { close(): Promise<void>; waitUntilReady(): Promise<unknown> } }> = [];
  let completed = 0;
  let failed = 0;
  let finished!: () => void;
  const allDone = new Promise<void>((resolve) => (finished = resolve));
  const started = Date.now();
  let closing: Promise<unknown> | undefined;
  const closeHosts = () => (closing ??= Promise.all(hosts.map((h) => h.worker.close())).then(() => Promise.all(hosts.map((h) => h.sem.close()))));
  let maxHolders = 0;
  let holdersSample: HolderInfo[] = [];
  let seconds = 0;
  let ticketsHeldAfter = -1;
  try {
    for (let i = 1; i <= hostCount; i++) {
      // `applicationName` names this host's connections in pg_stat_activity.
      const sem = new PgSemaphore({ connection: { connectionString: databaseUrl, max: cap + 4 }, schema, applicationName: `reports-host-${i}` });
      const processor = limitProcessor<{ report: number }, string>(
        sem,
        async (job, _token, signal) => {
          const res = await fetch(`${renderer.url}/render?report=${job.data.report}`, { signal });
          if (!res.ok) throw new Error(`renderer answered ${res.status}`);
          return res.text();
        },
        // The label status() shows for a holder (by default `queue:jobId`); while a ticket is
        // held it replaces the connection's application_name, so name the host in it too.
        { semaphore: 'renderer', label: (job) => `host-${i}/${job.queueName}:${job.id}` },
      );
      const worker = new Worker('reports', processor, { connection: { ...connection, max: 4 }, concurrency }, createPostgresBackend);
      worker.on('completed', () => {
        if (++completed + failed === jobs) finished();
      });
      worker.on('failed', (job, err) => {
        log(`job ${job?.id} failed: ${err.message}`);
        if (completed + ++failed === jobs) finished();
      });
      worker.on('error', (err) => log(`worker error: ${err.message}`));
      hosts.push({ sem, worker });
    }
    await Promise.all(hosts.map((h) => h.worker.waitUntilReady()));

    log(`${jobs} reports, ${hostCount} hosts × concurrency ${concurrency}, renderer cap ${cap}; BullMQ schema ${bqSchema}, pg-semaphore schema ${schema}; no Redis`);
    await queue.addBulk(Array.from({ length: jobs }, (_, report) => ({ name: 'render', data: { report } })));

    // While the jobs run, ask Postgres who holds the renderer's tickets.
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const { holders } = await admin.status('renderer');
        maxHolders = Math.max(maxHolders, holders.length);
        if (holders.length > holdersSample.length) holdersSample = holders;
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const progress = setInterval(() => log(`  ${completed}/${jobs} done, renderer busy with ${renderer.inflight}, max ${renderer.max}`), 1_000);
    try {
      await withTimeout(allDone, 60_000, 'all jobs to finish');
    } finally {
      clearInterval(progress);
      watching = false;
      await watcher;
    }
    seconds = (Date.now() - started) / 1000;
    await closeHosts();
    ticketsHeldAfter = (await admin.list()).reduce((n, s) => n + s.held, 0);
  } finally {
    await closeHosts();
    if (!options.keep) await queue.obliterate({ force: true });
    await queue.close();
    if (!options.keep) for (const s of [schema, bqSchema]) await admin.pool.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
    await admin.close();
    await renderer.close();
  }

  const result: Result = {
    ok: renderer.max <= cap && maxHolders <= cap && completed === jobs && failed === 0 && ticketsHeldAfter === 0,
    cap,
    maxInFlight: renderer.max,
    jobs,
    completed,
    failed,
    maxHolders,
    holdersSample,
    ticketsHeldAfter,
    seconds,
  };
  log(`done in ${seconds.toFixed(1)} s: ${completed}/${jobs} completed, ${failed} failed; the renderer saw at most ${renderer.max} requests at once (cap ${cap})`);
  log(`holders of "renderer" seen in Postgres at one moment (sem.status):`);
  for (const h of holdersSample) {
    log(`  ticket ${h.ticket}  backend pid ${h.pid}  label ${h.label ?? '(being set)'}  holding since ${h.since?.toISOString()}`);
  }
  log(`${ticketsHeldAfter} tickets held after the run`);
  return result;
}

/** A loopback HTTP server standing in for the report renderer: 30 ms a request, counts requests in flight. */
async function startFakeRenderer(holdMs = 30) {
  let inflight = 0;
  let max = 0;
  const server = http.createServer((_req, res) => {
    max = Math.max(max, ++inflight);
    let open = true;
    const done = () => {
      if (open) inflight--;
      open = false;
    };
    res.on('close', done);
    setTimeout(() => {
      done();
      res.end('%PDF-1.7 …');
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
