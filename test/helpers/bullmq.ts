import { randomBytes } from 'node:crypto';
import { Queue, Worker, createPostgresBackend, type WorkerOptions } from 'bullmq';
import pg from 'pg';
import { inject } from 'vitest';

export type Backend = 'redis' | 'postgres';

/**
 * BullMQ queues of one test file on one backend: a Redis prefix of their own, or a
 * Postgres schema of their own for BullMQ's Postgres backend. `cleanup()` removes them.
 */
export async function bullmqQueues(backend: Backend, names: string[]) {
  const id = randomBytes(3).toString('hex');
  const prefix = `pgsem_test_${id}`;
  const bqSchema = `bq_test_${id}`;
  const databaseUrl = inject('databaseUrl');
  const redisUrl = inject('redisUrl');
  const queues =
    backend === 'postgres'
      ? names.map((n) => new Queue(n, { connection: { connectionString: databaseUrl, schema: bqSchema, migrate: true } }, createPostgresBackend))
      : names.map((n) => new Queue(n, { connection: { url: redisUrl }, prefix } as never));
  await Promise.all(queues.map((q) => q.waitUntilReady()));
  return {
    queues,
    /** Environment for a worker fixture on this backend. */
    env: { BQ_BACKEND: backend, BQ_PREFIX: prefix, BQ_SCHEMA: bqSchema, REDIS_URL: redisUrl, DATABASE_URL: databaseUrl },
    connection: backend === 'postgres' ? { connectionString: databaseUrl, schema: bqSchema } : { url: redisUrl },
    prefix,
    /** A Worker in this process on this backend (a processor function, or a sandboxed processor's file); errors swallowed; close it yourself. */
    worker(name: string, processor: object | string, opts: Partial<WorkerOptions> = {}): Worker {
      // one Worker type for both backends: only the common API is used
      const w =
        backend === 'postgres'
          ? (new Worker(name, processor as never, { connection: { connectionString: databaseUrl, schema: bqSchema, max: 3 }, ...opts } as never, createPostgresBackend) as unknown as Worker)
          : new Worker(name, processor as never, { connection: { url: redisUrl }, prefix, ...opts } as never);
      w.on('error', () => undefined);
      return w;
    },
    async cleanup() {
      for (const q of queues) {
        await q.obliterate({ force: true }).catch(() => undefined);
        await q.close();
      }
      if (backend === 'postgres') {
        const client = new pg.Client({ connectionString: databaseUrl });
        await client.connect();
        await client.query(`DROP SCHEMA IF EXISTS "${bqSchema}" CASCADE`);
        await client.end();
      }
    },
  };
}
