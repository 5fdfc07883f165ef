import net from 'node:net';
import type { TestProject } from 'vitest/node';

// Where the tests find Postgres and Redis: DATABASE_URL / REDIS_URL when set; else a server
// on the default local port; else a testcontainers container where Docker exists.

declare module 'vitest' {
  export interface ProvidedContext {
    databaseUrl: string;
    redisUrl: string;
  }
}

function reachable(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host });
    socket.setTimeout(1_000);
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
    socket.once('timeout', () => (socket.destroy(), resolve(false)));
  });
}

export default async function setup(project: TestProject) {
  const stops: Array<() => Promise<unknown>> = [];
  let databaseUrl = process.env.DATABASE_URL;
  if (!databaseUrl) {
    if (await reachable(5432)) {
      databaseUrl = 'postgres://postgres@127.0.0.1:5432/test';
    } else {
      const { PostgreSqlContainer } = await import('@testcontainers/postgresql');
      const container = await new PostgreSqlContainer('postgres:15-alpine').start();
      databaseUrl = container.getConnectionUri();
      stops.push(() => container.stop());
    }
  }
  let redisUrl = process.env.REDIS_URL;
  if (!redisUrl) {
    if (await reachable(6379)) {
      redisUrl = 'redis://127.0.0.1:6379';
    } else {
      const { GenericContainer } = await import('testcontainers');
      const container = await new GenericContainer('redis:7-alpine').withExposedPorts(6379).start();
      redisUrl = `redis://${container.getHost()}:${container.getMappedPort(6379)}`;
      stops.push(() => container.stop());
    }
  }
  project.provide('databaseUrl', databaseUrl);
  project.provide('redisUrl', redisUrl);
  process.env.DATABASE_URL = databaseUrl;
  process.env.REDIS_URL = redisUrl;
  return async () => {
    for (const stop of stops) await stop();
  };
}
