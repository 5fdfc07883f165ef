// The benchmark's own Postgres 15, started from the machine's binaries so its statement
// statistics and WAL are the benchmark's alone: initdb into a fresh temporary folder, a free
// loopback port, pg_stat_statements loaded, one database per purpose so pg-semaphore's
// statements and BullMQ's Postgres backend's are told apart by database. Removed on stop(),
// and (synchronously, as a last resort) when the process exits.
//
// Postgres refuses to run as root: as root it runs as the `postgres` OS user, from a folder
// that user owns under a temp directory it can reach (never inside the checkout, which may
// be a 0700 clone).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, chownSync, closeSync, constants, existsSync, mkdtempSync, openSync, readFileSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';

export const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';

/** The database pg-semaphore's semaphores live in, on the benchmark's own server. */
export const SEM_DB = 'pgsem';
/** The database BullMQ's Postgres backend lives in, on the benchmark's own server. */
export const BQ_DB = 'bullmq';

/** Settings of the benchmark's own server (recorded in the results). */
export const OWN_SETTINGS: Record<string, string | number> = {
  listen_addresses: '127.0.0.1',
  // the large-cap workload in transaction holding: 4 processes x (60 holders + LISTEN) + BullMQ's
  max_connections: 400,
  shared_buffers: '128MB',
  // A throwaway benchmark server: no fsync (commits still write WAL; it is just not flushed
  // to disk), so the disk of a shared machine does not decide the figures. Never do this for real.
  fsync: 'off',
  shared_preload_libraries: 'pg_stat_statements',
  'pg_stat_statements.track': 'all',
  'pg_stat_statements.max': 5000,
  // the acquire microbenchmark holds 9,900 advisory locks at once
  max_locks_per_transaction: 128,
};

export interface OwnPostgres {
  port: number;
  dir: string;
  /** postmaster pid, to count only this server's CPU. */
  pid: number;
  url(database: string): string;
  stop(): Promise<void>;
  /** Last resort for process 'exit': SIGQUIT the server and remove its folder. */
  stopSync(): void;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** `postgres` when we are root (Postgres refuses root), else ourselves. */
function serverUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string) => Number(spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' }).stdout.trim());
  const uid = id('-u');
  const gid = id('-g');
  if (!Number.isInteger(uid) || !Number.isInteger(gid) || uid === 0) {
    throw new Error('bench: running as root, but there is no `postgres` OS user to run the benchmark\'s own Postgres as (or set DATABASE_URL)');
  }
  return { uid, gid };
}

/** A temp directory every user can pass through (os.tmpdir() may sit in a 0700 folder). */
function reachableTmp(): string {
  let dir = os.tmpdir();
  for (let d = dir; ; d = path.dirname(d)) {
    try {
      if ((statSync(d).mode & 0o001) === 0) {
        dir = '/tmp';
        break;
      }
    } catch {
      dir = '/tmp';
      break;
    }
    if (path.dirname(d) === d) break;
  }
  return dir;
}

/** Whether the machine has the binaries to start a server of our own. */
export function canStartOwn(): boolean {
  try {
    accessSync(path.join(PG_BIN, 'initdb'), constants.X_OK);
    accessSync(path.join(PG_BIN, 'postgres'), constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function logTail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startOwnPostgres(log: (s: string) => void = () => undefined): Promise<OwnPostgres> {
  const initdb = path.join(PG_BIN, 'initdb');
  if (!existsSync(initdb)) throw new Error(`bench: ${initdb} not found (set PG_BIN, or DATABASE_URL to use a server of yours)`);
  const user = serverUser();
  const dir = mkdtempSync(path.join(reachableTmp(), 'pgsem-bench-pg-'));
  if (user) chownSync(dir, user.uid, user.gid);
  const data = path.join(dir, 'data');
  const logFile = path.join(dir, 'server.log');
  let proc: ChildProcess | undefined;
  let removed = false;
  const removeDir = () => {
    if (removed) return;
    removed = true;
    rmSync(dir, { recursive: true, force: true });
  };
  const alive = () => !!proc && proc.exitCode === null && proc.signalCode === null;
  const onExit = () => server.stopSync();
  process.on('exit', onExit);
  const server: OwnPostgres = {
    port: 0,
    dir,
    pid: 0,
    url: (database) => `postgres://postgres@127.0.0.1:${server.port}/${database}`,
    async stop() {
      process.removeListener('exit', onExit);
      if (alive()) {
        const p = proc!;
        const exited = new Promise<void>((r) => p.once('exit', () => r()));
        p.kill('SIGINT'); // fast shutdown
        const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(t);
      }
      removeDir();
    },
    stopSync() {
      try {
        if (alive()) proc!.kill('SIGQUIT'); // immediate shutdown: takes its backends down too
      } catch {
        // gone
      }
      try {
        removeDir();
      } catch {
        // best effort
      }
    },
  };
  try {
    const t0 = Date.now();
    const init = spawnSync(initdb, ['-D', data, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync'], {
      uid: user?.uid,
      gid: user?.gid,
      encoding: 'utf8',
      env: { PATH: process.env.PATH, LC_ALL: 'C' },
      timeout: 60_000,
    });
    if (init.status !== 0) throw new Error(`initdb failed (${init.status}): ${init.stderr || init.stdout}`);
    server.port = await freePort();
    const settings = { ...OWN_SETTINGS, unix_socket_directories: dir };
    const fd = openSync(logFile, 'a');
    if (user) chownSync(logFile, user.uid, user.gid);
    proc = spawn(path.join(PG_BIN, 'postgres'), ['-D', data, '-p', String(server.port), ...Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`])], {
      uid: user?.uid,
      gid: user?.gid,
      stdio: ['ignore', fd, fd],
      env: { PATH: process.env.PATH, LC_ALL: 'C' },
    });
    closeSync(fd);
    server.pid = proc.pid ?? 0;
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (!alive()) throw new Error(`postgres exited during start-up:\n${logTail(logFile)}`);
      const c = new pg.Client({ connectionString: server.url('postgres'), connectionTimeoutMillis: 2_000 });
      c.on('error', () => undefined);
      try {
        await c.connect();
        await c.query('SELECT 1');
      } catch (err) {
        await c.end().catch(() => undefined);
        if (Date.now() > deadline) throw new Error(`postgres on ${server.port} not ready: ${(err as Error).message}\n${logTail(logFile)}`);
        await sleep(100);
        continue;
      }
      try {
        await c.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
        await c.query(`CREATE DATABASE ${SEM_DB}`);
        await c.query(`CREATE DATABASE ${BQ_DB}`);
      } finally {
        await c.end().catch(() => undefined);
      }
      // the view and reset function in pg-semaphore's database too (the acquire microbenchmark reads them there)
      const d = new pg.Client({ connectionString: server.url(SEM_DB) });
      d.on('error', () => undefined);
      try {
        await d.connect();
        await d.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
      } finally {
        await d.end().catch(() => undefined);
      }
      break;
    }
    log(`bench: own Postgres 15 on 127.0.0.1:${server.port} in ${dir} (fsync off, pg_stat_statements), ready after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return server;
  } catch (err) {
    await server.stop().catch(() => undefined);
    throw err;
  }
}
