// One worker "host" of the demo fleet: a separate OS process with a BullMQ Worker per queue,
// every job calling the partner API while holding a ticket of one fleet-wide semaphore.
// Started by demo.ts (`node --import tsx examples/demo/worker.ts`), configured over IPC.
import http from 'node:http';
import { Worker, createPostgresBackend, type Job } from 'bullmq';
// In your project: import { PgSemaphore } from 'pg-semaphore';
import { PgSemaphore } from '../../src/index.js';
// In your project: import { limitProcessor } from 'pg-semaphore/bullmq';
import { limitProcessor } from '../../src/bullmq/index.js';
import type { FromHost, HostConfig, HostStatus, ToHost } from './messages.js';

const send = (message: FromHost) =>
  new Promise<void>((resolve) => {
    if (!process.connected) return resolve();
    process.send!(message, undefined, undefined, () => resolve());
  });

// The parent owns the fleet's lifetime: Ctrl-C reaches the whole process group, but only the
// parent decides when a host stops. A host whose parent is gone exits at once.
process.on('SIGINT', () => undefined);
process.on('disconnect', () => process.exit(0));

const config = await new Promise<HostConfig>((resolve) => {
  const onMessage = (m: ToHost) => {
    if (m.type === 'start') {
      process.off('message', onMessage);
      resolve(m.config);
    }
  };
  process.on('message', onMessage);
});

const status: HostStatus = {
  host: config.host,
  pid: process.pid,
  active: 0,
  holding: 0,
  completed: 0,
  failed: 0,
  reschedules: 0,
  promotions: 0,
  handoffs: 0,
  attempts: 0,
  heldMs: 0,
  holds: 0,
  lastCompletedAt: 0,
  failures: [],
  workerErrors: 0,
  errorMessages: [],
};

try {
  const sem = new PgSemaphore({
    // Each held ticket pins one connection; the cap bounds how many this host can hold.
    connection: { connectionString: config.databaseUrl, max: 8 },
    schema: config.schema,
    applicationName: `demo-host-${config.host}`,
  });

  // The job itself: one call to the partner API, made while holding a ticket. (`fetch` works
  // just as well; node:http with a keep-alive agent costs less CPU, which shows when a whole
  // fleet shares one small machine.)
  const agent = new http.Agent({ keepAlive: true });
  const callApi = limitProcessor(
    sem,
    async (job: Job<{ n: number }>, _token, signal) => {
      const url = `${config.apiUrl}/call?host=${config.host}&job=${job.queueName}:${job.id}`;
      const status = await new Promise<number>((resolve, reject) => {
        http
          .get(url, { agent, signal }, (res) => {
            res.resume();
            res.once('end', () => resolve(res.statusCode ?? 0));
            res.once('error', reject);
          })
          .once('error', reject);
      });
      if (status !== 200) throw new Error(`partner API answered ${status}`);
      return { host: config.host };
    },
    { semaphore: config.semaphore },
  );
  callApi.events.on('acquired', () => status.holding++);
  callApi.events.on('released', ({ heldMs }) => {
    status.holding--;
    status.heldMs += heldMs;
    status.holds++;
  });

  // Counts jobs inside the processor. Declared with three parameters, so BullMQ passes the signal.
  const processor = async (job: Job<{ n: number }>, token: string | undefined, signal: AbortSignal | undefined) => {
    status.active++;
    try {
      return await callApi(job, token, signal);
    } finally {
      status.active--;
    }
  };

  const options = { concurrency: config.concurrency };
  const workers = config.queues.map((name) =>
    config.backend === 'postgres'
      ? new Worker(name, processor, { ...options, connection: { connectionString: config.databaseUrl, schema: config.bqSchema, max: 4 } }, createPostgresBackend)
      : new Worker(name, processor, { ...options, connection: { url: config.redisUrl }, prefix: config.prefix } as never),
  );
  for (const worker of workers) {
    worker.on('completed', () => {
      status.completed++;
      status.lastCompletedAt = Date.now();
    });
    worker.on('failed', (_job, err) => {
      status.failed++;
      if (status.failures.length < 5) status.failures.push(err.message);
    });
    worker.on('error', (err) => {
      status.workerErrors++;
      if (status.errorMessages.length < 5) status.errorMessages.push(err.message);
    });
  }
  await Promise.all(workers.map((w) => w.waitUntilReady()));

  const snapshot = (): HostStatus => ({
    ...status,
    reschedules: callApi.stats.reschedules,
    promotions: callApi.stats.promotions,
    handoffs: callApi.stats.handoffs,
    attempts: callApi.stats.attempts,
  });
  const ticker = setInterval(() => void send({ type: 'status', status: snapshot() }), 100);
  await send({ type: 'ready', host: config.host });

  await new Promise<void>((resolve) => process.on('message', (m: ToHost) => m.type === 'close' && resolve()));
  clearInterval(ticker);
  await Promise.all(workers.map((w) => w.close()));
  await sem.close();
  await send({ type: 'closed', status: snapshot() });
  process.exit(0);
} catch (err) {
  await send({ type: 'error', host: config.host, message: (err as Error)?.stack ?? String(err) });
  process.exit(1);
}
