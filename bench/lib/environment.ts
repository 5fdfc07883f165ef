// Where and with what the benchmark ran.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import pg from 'pg';

export interface Environment {
  date: string;
  command: string;
  quick: boolean;
  machine: { cpus: number; cpuModel: string; memoryGiB: number; os: string; loadAvgAtStart: number[] };
  versions: { node: string; postgres: string; redis: string; bullmq: string; redisSemaphore: string; ioredis: string; pg: string };
  postgres: { maxConnections: number; connectionsAtStart: number };
  git: { head: string | null; srcSha256: string };
}

const root = fileURLToPath(new URL('../../', import.meta.url));

function pkgVersion(name: string): string {
  try {
    return (JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** A hash of src/ as it is on disk (the working tree may differ from HEAD). */
function srcHash(): string {
  const hash = createHash('sha256');
  const walk = (dir: string) => {
    for (const name of readdirSync(dir).sort()) {
      const p = join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else hash.update(p.slice(root.length)).update(readFileSync(p));
    }
  };
  walk(join(root, 'src'));
  return hash.digest('hex').slice(0, 16);
}

export async function collectEnvironment(databaseUrl: string, redisUrl: string, args: string[], quick: boolean): Promise<Environment> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  const version = (await client.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0]!.v;
  const maxConnections = Number((await client.query<{ v: string }>("SELECT current_setting('max_connections') AS v")).rows[0]!.v);
  const connectionsAtStart = (await client.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = $1', ['client backend'])).rows[0]!.n;
  await client.end();
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  const info = await redis.info('server');
  redis.disconnect();
  let head: string | null = null;
  try {
    head = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    head = null;
  }
  // `npm run bench[:quick] -- …` or a direct `npx tsx bench/bench.ts …`
  const script = process.env.npm_lifecycle_event;
  const viaNpmRun = script !== undefined && script !== 'npx' && (process.env.npm_lifecycle_script ?? '').includes('bench/bench.ts');
  const extra = viaNpmRun ? args.filter((a) => !(process.env.npm_lifecycle_script ?? '').includes(a)) : args;
  const command = viaNpmRun ? `npm run ${script}${extra.length ? ` -- ${extra.join(' ')}` : ''}` : `npx tsx bench/bench.ts${args.length ? ` ${args.join(' ')}` : ''}`;
  return {
    date: new Date().toISOString(),
    command,
    quick,
    machine: {
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model.trim() ?? 'unknown',
      memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
      os: `${os.type()} ${os.release()} ${os.arch()}`,
      loadAvgAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100),
    },
    versions: {
      node: process.version,
      postgres: `PostgreSQL ${version}`,
      redis: /redis_version:(\S+)/.exec(info)?.[1] ?? 'unknown',
      bullmq: pkgVersion('bullmq'),
      redisSemaphore: pkgVersion('redis-semaphore'),
      ioredis: pkgVersion('ioredis'),
      pg: pkgVersion('pg'),
    },
    postgres: { maxConnections, connectionsAtStart },
    git: { head, srcSha256: srcHash() },
  };
}
