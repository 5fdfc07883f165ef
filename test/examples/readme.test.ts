// The README's code, as a new user copies it: the quick-start script and the BullMQ worker
// (Redis and Postgres backend) compile under --strict, and the quick-start and the
// Postgres-backend worker run as written and exit by themselves once they close.
// Each run gets a database of its own, so the snippets keep their default schema names.
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl } from '../helpers/db.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const sh = promisify(execFile);

/** The `n`th fenced block of `lang` after the first occurrence of `anchor` in the README. */
function block(readme: string, anchor: string, n = 0, lang = 'ts'): string {
  const at = readme.indexOf(anchor);
  expect(at, `README should contain ${JSON.stringify(anchor)}`).toBeGreaterThanOrEqual(0);
  const blocks = [...readme.slice(at).matchAll(/```(\w+)\n([\s\S]*?)```/g)].filter((m) => m[1] === lang);
  expect(blocks.length, `a ${lang} block after ${JSON.stringify(anchor)}`).toBeGreaterThan(n);
  return blocks[n]![2]!;
}

/** Points the package's imports at this checkout's sources (the app lives in `<root>/app`). */
function fromSources(code: string): string {
  return code.replaceAll("from 'pg-semaphore/bullmq'", "from '../src/bullmq/index.js'").replaceAll("from 'pg-semaphore'", "from '../src/index.js'");
}

/** Replaces `from` (which must occur exactly once) with `to`. */
function replaceOnce(code: string, from: string, to: string): string {
  expect(code.split(from).length - 1, `the snippet should contain ${JSON.stringify(from)} once`).toBe(1);
  return code.replace(from, to);
}

/** The README's Postgres-backend worker: the Redis worker with the lines the README says change. */
function postgresWorker(readme: string): string {
  const redis = block(readme, 'A worker process on Redis');
  const [importLine, , ...rest] = block(readme, "On BullMQ's Postgres backend").trimEnd().split('\n');
  const redisLines = /const connection = \{ host[^\n]*\n(?:const (?:worker|queue) = new (?:Worker|Queue)[^\n]*\n){2}/;
  expect(redis).toMatch(redisLines);
  return replaceOnce(redis, "import { Queue, Worker } from 'bullmq';", importLine!).replace(redisLines, `${rest.join('\n')}\n`);
}

interface Run {
  stdout: string;
  stderr: string;
  code: number | null;
  /** Milliseconds from the line matching `mark` on stdout to the process's exit. */
  afterMark: number;
}

/** Runs a TypeScript file with tsx; resolves when the process exits by itself. */
function runTs(cwd: string, file: string, env: NodeJS.ProcessEnv, mark: RegExp, timeoutMs = 45_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', file], { cwd, env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    let markedAt: number | undefined;
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (markedAt === undefined && mark.test(stdout)) markedAt = Date.now();
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString().slice(0, 20_000)));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${file} did not exit within ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr.slice(0, 4000)}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ stdout, stderr, code, afterMark: markedAt === undefined ? Number.NaN : Date.now() - markedAt });
    });
  });
}

describe('the README as a new user copies it', () => {
  const database = `pgsem_readme_${randomBytes(3).toString('hex')}`;
  let admin: pg.Pool;
  let root: string;
  let app: string;
  let readme: string;
  let appUrl: string;
  let api: http.Server;
  let apiUrl: string;

  beforeAll(async () => {
    readme = await readFile(join(ROOT, 'README.md'), 'utf8');
    admin = new pg.Pool({ connectionString: databaseUrl(), max: 1 });
    admin.on('error', () => undefined);
    await admin.query(`CREATE DATABASE "${database}"`);
    const url = new URL(databaseUrl());
    url.pathname = `/${database}`;
    appUrl = url.toString();
    root = await mkdtemp(join(tmpdir(), 'pg-semaphore-readme-'));
    app = join(root, 'app');
    await mkdir(app);
    await symlink(join(ROOT, 'src'), join(root, 'src'), 'dir');
    await symlink(join(ROOT, 'node_modules'), join(root, 'node_modules'), 'dir');
    await writeFile(join(root, 'package.json'), JSON.stringify({ type: 'module' }));
    // the API the BullMQ example calls, answering JSON
    api = http.createServer((_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.setHeader('connection', 'close');
      res.end(JSON.stringify({ answer: 42 }));
    });
    await new Promise<void>((resolve) => api.listen(0, '127.0.0.1', resolve));
    apiUrl = `http://127.0.0.1:${(api.address() as AddressInfo).port}/v1/answer`;
  });

  afterAll(async () => {
    await admin?.query(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
    await admin?.end();
    await new Promise((resolve) => api?.close(resolve));
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('compiles the quick-start and both BullMQ workers under --strict', async () => {
    await writeFile(join(app, 'quick-start.ts'), fromSources(block(readme, 'A whole script (path 1)')));
    await writeFile(join(app, 'worker-redis.ts'), fromSources(block(readme, 'A worker process on Redis')));
    await writeFile(join(app, 'worker-postgres.ts'), fromSources(postgresWorker(readme)));
    const tsc = join(ROOT, 'node_modules/.bin/tsc');
    const args = ['--noEmit', '--strict', '--target', 'es2022', '--module', 'nodenext', '--types', 'node', '--skipLibCheck'];
    const result = await sh(tsc, [...args, 'quick-start.ts', 'worker-redis.ts', 'worker-postgres.ts'], { cwd: app, timeout: 170_000 }).catch(
      (err: { stdout?: string; stderr?: string }) => ({ stdout: err.stdout ?? String(err), stderr: err.stderr ?? '' }),
    );
    expect(result.stdout + result.stderr).toBe('');
  }, 180_000); // ~40 s on a busy 2-core machine: tsc checks the library's sources along with the snippets

  it('runs the quick-start, which exits promptly because it closes', async () => {
    await writeFile(join(app, 'quick-start.ts'), fromSources(block(readme, 'A whole script (path 1)')));
    const run = await runTs(app, 'quick-start.ts', { DATABASE_URL: appUrl }, /name: 'openai'/);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^done \[/);
    expect(run.stdout).toMatch(/tickets: 5,\s+held: 0/);
    // without close() the pool's idle clients keep Node alive for about 10 s
    expect(run.afterMark).toBeLessThan(5_000);
  }, 60_000);

  it("runs the BullMQ worker on BullMQ's Postgres backend; SIGTERM shuts it down cleanly", async () => {
    let code = postgresWorker(readme);
    code = replaceOnce(code, 'https://api.example.com/v1/answer', apiUrl);
    // stop once the job is done, through the README's own shutdown handler
    code += [
      "worker.on('completed', (job, result) => { console.log('completed', job.id, JSON.stringify(result)); process.kill(process.pid, 'SIGTERM'); });",
      "worker.on('failed', (job, err) => { console.log('failed', job?.id, err.message); process.kill(process.pid, 'SIGTERM'); });",
      '',
    ].join('\n');
    await writeFile(join(app, 'worker-postgres.ts'), fromSources(code));
    const run = await runTs(app, 'worker-postgres.ts', { DATABASE_URL: appUrl }, /^(completed|failed) /m);
    expect(run.stdout).toMatch(/^completed \S+ \{"answer":42\}$/m);
    expect(run.stderr).not.toMatch(/SchemaMigrationRequiredError/);
    expect(run.code).toBe(0);
    expect(run.afterMark).toBeLessThan(5_000);
    const check = new pg.Client({ connectionString: appUrl });
    await check.connect();
    try {
      const { rows } = await check.query(`SELECT name, tickets, held FROM semaphore.list()`);
      expect(rows).toEqual([{ name: 'openai', tickets: 5, held: 0 }]);
    } finally {
      await check.end();
    }
  }, 60_000);
});
