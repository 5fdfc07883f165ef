// The `pg-semaphore` command line, run as a built binary (tsup bundle) in a child process.
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl, setupSchema, testSchemaName, waitFor } from '../helpers/db.js';
import { installSql } from '../../src/index.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLOSED_PORT_URL = 'postgres://postgres:secret@127.0.0.1:1/test';

let dir: string;
let cli: string;

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * Bundles src/cli.ts with the tsup CLI into a temp folder laid out like the package
 * (dist/cli.js next to drizzle/ and node_modules/, both symlinked to the repo's), so the
 * test does not depend on tsup.config.ts listing the cli entry.
 */
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pg-semaphore-cli-'));
  const externals = ['pg', 'drizzle-orm', 'commander', 'bullmq'].flatMap((p) => ['--external', p]);
  await promisify(execFile)(
    join(ROOT, 'node_modules/.bin/tsup'),
    ['src/cli.ts', '--no-config', '--format', 'esm', '--platform', 'node', '--target', 'node20', '--out-dir', join(dir, 'dist'), '--silent', ...externals],
    { cwd: ROOT },
  );
  await symlink(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
  await symlink(join(ROOT, 'drizzle'), join(dir, 'drizzle'), 'dir');
  await writeFile(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
  cli = join(dir, 'dist/cli.js');
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

function start(args: string[], env: Record<string, string | undefined> = {}) {
  const merged: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: databaseUrl(), ...env };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete merged[k];
  return spawn(process.execPath, [cli, ...args], { env: merged, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Runs the CLI to completion (at most 20 s). */
function run(args: string[], env: Record<string, string | undefined> = {}): Promise<Result> {
  const started = Date.now();
  const child = start(args, env);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  return new Promise((resolve) =>
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - started });
    }),
  );
}

/** Runs with `--json` and parses stdout. */
async function runJson<T = unknown>(args: string[]): Promise<T> {
  const r = await run(['--json', ...args]);
  expect(r, r.stderr).toMatchObject({ code: 0, stderr: '' });
  return JSON.parse(r.stdout) as T;
}

/** A migrated schema of its own, dropped by `drop()`. */
async function migrated(label: string) {
  return setupSchema(`cli_${label}`);
}

describe('help', () => {
  it('<command> --help lists the global options too', async () => {
    for (const command of ['make', 'status', 'migrate']) {
      const r = await run([command, '--help']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain(`Usage: pg-semaphore ${command}`);
      expect(r.stdout).toMatch(/Global Options:[\s\S]*--database-url <url>[\s\S]*--schema <name>[\s\S]*--json/);
    }
  });
});

describe('a closed pipe', () => {
  it('`pg-semaphore --help | head` ends quietly with exit 0 when the reader is gone before it writes', async () => {
    const child = start(['--help']);
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    // close our end of the pipe before the CLI writes, as a `head` that already exited does
    child.stdout.destroy();
    const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
  });
});

describe('sql', () => {
  it('prints the install SQL for a schema without touching a database', async () => {
    const schema = testSchemaName('cli_sql');
    const all = await run(['sql', '--schema', schema], { DATABASE_URL: undefined });
    expect(all.code).toBe(0);
    expect(all.stderr).toBe('');
    expect(all.stdout).toContain(`CREATE SCHEMA IF NOT EXISTS "${schema}"`);
    expect(all.stdout).toContain(`CREATE TABLE "${schema}"."semaphores"`);
    expect(all.stdout).toContain(`CREATE OR REPLACE FUNCTION "${schema}".make(`);
    expect(all.stdout).not.toContain('"semaphore".');

    const functions = await run(['--database-url', CLOSED_PORT_URL, 'sql', '--part', 'functions', '--schema', schema]);
    expect(functions.code).toBe(0);
    expect(functions.stdout).toContain(`CREATE OR REPLACE FUNCTION "${schema}".acquire(`);
    expect(functions.stdout).not.toContain('CREATE TABLE');

    const json = await runJson<{ schema: string; part: string; sql: string }>(['sql', '--part', 'tables', '--schema', schema]);
    expect(json).toMatchObject({ schema, part: 'tables' });
    expect(json.sql).toContain(`CREATE TABLE "${schema}"."tickets"`);
    expect(json.sql).not.toContain('CREATE OR REPLACE FUNCTION');
  });

  it('rejects a bad schema name or part with exit code 2', async () => {
    const cases = [['sql', '--schema', 'pg_reserved'], ['sql', '--schema', 'Bad-Name'], ['sql', '--part', 'views']];
    const results = await Promise.all(cases.map((args) => run(args)));
    for (const [i, r] of results.entries()) {
      expect(r.code, cases[i]!.join(' ')).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/schema|part/);
      expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
    }
    const json = await run(['--json', 'sql', '--schema', 'pg_x']);
    expect(json.code).toBe(2);
    expect(JSON.parse(json.stderr)).toMatchObject({ error: { kind: 'usage', exitCode: 2 } });
  });
});

describe('migrate', () => {
  it('applies the migrations once, then reports the schema up to date', async () => {
    const schema = testSchemaName('cli_migrate');
    const admin = new pg.Pool({ connectionString: databaseUrl(), max: 1 });
    try {
      const first = await run(['migrate', '--schema', schema]);
      expect(first.code, first.stderr).toBe(0);
      expect(first.stdout).toMatch(/0000_tables, 0001_functions, 0002_functions, 0003_functions, 0004_functions, 0005_functions, 0006_functions/);
      const again = await runJson<{ schema: string; applied: string[] }>(['migrate', '--schema', schema]);
      expect(again).toEqual({ schema, applied: [] });
      const { rows } = await admin.query(`SELECT count(*)::int AS n FROM "${schema}".__pg_semaphore_migrations`);
      expect(rows[0].n).toBe(7);
    } finally {
      await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await admin.end();
    }
  });
});

describe('make, list, status, destroy', () => {
  it('works in text form', async () => {
    const ctx = await migrated('text');
    const s = ['--schema', ctx.schema];
    try {
      expect((await run(['make', 'openai', '5', ...s])).stdout).toBe('semaphore "openai" has 5 tickets\n');
      expect((await run(['make', 'export', '1', ...s])).code).toBe(0);
      const list = await run(['list', ...s]);
      expect(list.code).toBe(0);
      expect(list.stdout.split('\n')[0]).toMatch(/^NAME\s+TICKETS\s+HELD\s+FREE$/);
      expect(list.stdout).toMatch(/^export\s+1\s+0\s+1$/m);
      expect(list.stdout).toMatch(/^openai\s+5\s+0\s+5$/m);
      const status = await run(['status', 'openai', ...s]);
      expect(status.stdout).toBe('openai: 0 of 5 tickets held, 5 free\nno holders\n');
      const all = await run(['status', ...s]);
      expect(all.stdout).toBe(list.stdout);
      const destroyed = await run(['destroy', 'export', ...s]);
      expect(destroyed).toMatchObject({ code: 0, stdout: 'destroyed semaphore "export"\n', stderr: '' });
      expect((await run(['list', ...s])).stdout).not.toContain('export');
    } finally {
      await ctx.drop();
    }
  });

  it('works with --json', async () => {
    const ctx = await migrated('json');
    const s = ['--schema', ctx.schema];
    try {
      expect(await runJson(['make', 'openai', '3', ...s])).toEqual({ name: 'openai', tickets: 3 });
      expect(await runJson(['make', 'openai', '4', '--timeout', '1000', ...s])).toEqual({ name: 'openai', tickets: 4 });
      const list = await runJson<Array<Record<string, unknown>>>(['list', ...s]);
      expect(list).toEqual([{ name: 'openai', tickets: 4, held: 0, createdAt: expect.any(String), updatedAt: expect.any(String) }]);
      expect(Number.isNaN(Date.parse(list[0]!.createdAt as string))).toBe(false);
      const status = await runJson(['status', 'openai', ...s]);
      expect(status).toMatchObject({ name: 'openai', tickets: 4, held: 0, holders: [] });
      expect(await runJson(['status', ...s])).toEqual(list);
      expect(await runJson(['destroy', 'openai', ...s])).toEqual({ name: 'openai', destroyed: true });
      expect(await runJson(['list', ...s])).toEqual([]);
      expect((await run(['list', ...s])).stdout).toBe('no semaphores\n');
    } finally {
      await ctx.drop();
    }
  });

  it('shows a holder with its label', async () => {
    const ctx = await migrated('holder');
    const s = ['--schema', ctx.schema];
    try {
      await ctx.sem.make('openai', 2);
      const hold = await ctx.sem.hold('openai', { label: 'job-42' });
      try {
        const text = await run(['status', 'openai', ...s]);
        expect(text.stdout).toContain('openai: 1 of 2 tickets held, 1 free');
        expect(text.stdout).toMatch(/^TICKET\s+PID\s+LABEL\s+APPLICATION\s+CLIENT\s+SINCE$/m);
        expect(text.stdout).toMatch(/^1\s+\d+\s+job-42\s+pg-semaphore:job-42\s+/m);
        const json = await runJson<{ held: number; holders: Array<Record<string, unknown>> }>(['status', 'openai', ...s]);
        expect(json.held).toBe(1);
        expect(json.holders).toEqual([
          { ticket: 1, pid: expect.any(Number), label: 'job-42', applicationName: 'pg-semaphore:job-42', clientAddr: expect.anything(), since: expect.any(String), holding: 'transaction' },
        ]);
        expect((await run(['status', ...s])).stdout).toMatch(/^openai\s+2\s+1\s+1$/m);
      } finally {
        await hold.release();
      }
    } finally {
      await ctx.drop();
    }
  });
});

describe('status with session holders', () => {
  it('shows session holding\'s holders as session locks (holding connection pid, process label, no start time), beside a transaction holder', async () => {
    const ctx = await migrated('session');
    const s = ['--schema', ctx.schema];
    const session = ctx.another({ holding: 'session' });
    const busy = new pg.Client({ connectionString: databaseUrl(), application_name: 'pg-semaphore:session otherhost:4242' });
    busy.on('error', () => undefined);
    try {
      await ctx.sem.make('openai', 4);
      const two = await session.hold({ name: 'openai', tickets: 2 }, { label: 'job-1' });
      const one = await ctx.sem.hold('openai', { label: 'job-42' });
      // another process's holding connection caught in the middle of a statement: a session
      // lock on ticket 4 and a transaction open (its start is the statement's, not the ticket's)
      await busy.connect();
      await busy.query(
        `SELECT pg_advisory_lock("${ctx.schema}"._ns(), t.id) FROM "${ctx.schema}".tickets t JOIN "${ctx.schema}".semaphores m ON m.id = t.semaphore_id
          WHERE m.name = 'openai' AND t.no = 4`,
      );
      const busyPid = (await busy.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
      await busy.query('BEGIN');
      await busy.query('SELECT 1');
      try {
        const { rows } = await ctx.admin.query<{ pid: number; app: string }>(
          `SELECT pid, application_name AS app FROM pg_stat_activity WHERE application_name LIKE $1`,
          [`pg-semaphore:session %:${process.pid}`],
        );
        expect(rows).toHaveLength(1);
        const holdingPid = rows[0]!.pid;
        const label = rows[0]!.app.slice('pg-semaphore:'.length);
        expect(label).toMatch(new RegExp(`^session \\S+:${process.pid}$`));

        const text = await run(['status', 'openai', ...s]);
        expect(text, text.stderr).toMatchObject({ code: 0, stderr: '' });
        const lines = text.stdout.split('\n');
        expect(lines[0]).toBe('openai: 4 of 4 tickets held, 0 free');
        expect(lines[1]).toMatch(/^TICKET\s+PID\s+LABEL\s+APPLICATION\s+CLIENT\s+SINCE$/);
        const byTicket = (n: number) => lines.find((l) => l.startsWith(`${n} `))!.split(/\s{2,}/);
        // the session holder's two tickets: its holding connection's pid, the process's label, no time
        for (const n of [1, 2]) expect(byTicket(n)).toEqual([String(n), String(holdingPid), label, `pg-semaphore:${label}`, expect.any(String), '(session lock)']);
        // the transaction holder: its label and when its transaction began
        expect(byTicket(3)).toEqual(['3', expect.stringMatching(/^\d+$/), 'job-42', 'pg-semaphore:job-42', expect.any(String), expect.stringMatching(/^\d{4}-\d\d-\d\dT.*Z \(\d+s ago\)$/)]);
        // the busy holding connection: not the start of its current statement
        expect(byTicket(4)).toEqual(['4', String(busyPid), 'session otherhost:4242', 'pg-semaphore:session otherhost:4242', expect.any(String), '(session lock)']);
        expect(text.stdout).toContain('(session lock: held by a session, not a transaction, so no start time.');

        const json = await runJson<{ held: number; holders: Array<Record<string, unknown>> }>(['status', 'openai', ...s]);
        expect(json.held).toBe(4);
        expect(json.holders).toEqual([
          { ticket: 1, pid: holdingPid, label, applicationName: `pg-semaphore:${label}`, clientAddr: expect.anything(), since: null, holding: 'session' },
          { ticket: 2, pid: holdingPid, label, applicationName: `pg-semaphore:${label}`, clientAddr: expect.anything(), since: null, holding: 'session' },
          { ticket: 3, pid: expect.any(Number), label: 'job-42', applicationName: 'pg-semaphore:job-42', clientAddr: expect.anything(), since: expect.any(String), holding: 'transaction' },
          { ticket: 4, pid: busyPid, label: 'session otherhost:4242', applicationName: 'pg-semaphore:session otherhost:4242', clientAddr: expect.anything(), since: null, holding: 'session' },
        ]);
        expect((await run(['list', ...s])).stdout).toMatch(/^openai\s+4\s+4\s+0$/m);
      } finally {
        await busy.query('ROLLBACK').catch(() => undefined);
        await Promise.all([two.release(), one.release()]);
      }
    } finally {
      await busy.end().catch(() => undefined);
      await session.close();
      await ctx.drop();
    }
  });
});

describe('exit codes', () => {
  it('2 for bad input, with a clear message and no stack trace', async () => {
    const ctx = await migrated('usage');
    const s = ['--schema', ctx.schema];
    try {
      const cases: Array<[string[], RegExp]> = [
        [['make', 'openai', '5x', ...s], /whole number from 0 to 10000, got "5x"/],
        [['make', 'openai', '-5', ...s], /whole number from 0 to 10000, got "-5"/],
        [['make', 'openai', '1.5', ...s], /whole number/],
        [['make', 'openai', '10001', ...s], /whole number from 0 to 10000/],
        [['make', 'openai', ...s], /missing required argument 'tickets'/],
        [['make', 'openai', '1', '--timeout', 'soon', ...s], /whole number/],
        [['status', '--watch', '--interval', '0', ...s], /whole number from 100/],
        [['make', 'x'.repeat(201), '1', ...s], /name: expected a string of 1 to 200 characters/],
        [['frobnicate'], /unknown command 'frobnicate'/],
        [['list', '--nope'], /unknown option '--nope'/],
        [['list', '--schema', 'public'], /schema/],
      ];
      const results = await Promise.all(cases.map(([args]) => run(args)));
      for (const [i, [args, message]] of cases.entries()) {
        const r = results[i]!;
        expect({ args, code: r.code }).toEqual({ args, code: 2 });
        expect(r.stderr).toMatch(message);
        expect(r.stderr).not.toMatch(/\n\s+at /);
        expect(r.stdout).toBe('');
      }
      const noUrl = await run(['list', ...s], { DATABASE_URL: undefined });
      expect(noUrl.code).toBe(2);
      expect(noUrl.stderr).toBe('pg-semaphore: no database given: pass --database-url or set DATABASE_URL\n');
      const json = await run(['--json', 'make', 'openai', '5x', ...s]);
      expect(json.code).toBe(2);
      expect(JSON.parse(json.stderr).error).toMatchObject({ kind: 'usage', exitCode: 2 });
      expect(await ctx.sem.list()).toEqual([]);
    } finally {
      await ctx.drop();
    }
  });

  it('3 for an unknown semaphore and for destroying a missing one', async () => {
    const ctx = await migrated('notfound');
    const s = ['--schema', ctx.schema];
    try {
      const status = await run(['status', 'ghost', ...s]);
      expect(status).toMatchObject({ code: 3, stdout: '', stderr: `pg-semaphore: no semaphore named "ghost" in schema "${ctx.schema}"\n` });
      const destroy = await run(['destroy', 'ghost', ...s]);
      expect(destroy).toMatchObject({ code: 3, stdout: '', stderr: `pg-semaphore: no semaphore named "ghost" in schema "${ctx.schema}"\n` });
      const json = await run(['--json', 'destroy', 'ghost', ...s]);
      expect(json.code).toBe(3);
      expect(json.stdout).toBe('');
      expect(JSON.parse(json.stderr)).toEqual({ error: { kind: 'not_found', name: 'CliError', message: expect.stringContaining('"ghost"'), exitCode: 3 } });
    } finally {
      await ctx.drop();
    }
  });

  it('4 when destroy times out while a ticket is held', async () => {
    const ctx = await migrated('timeout');
    const s = ['--schema', ctx.schema];
    try {
      await ctx.sem.make('openai', 1);
      const hold = await ctx.sem.hold('openai', { label: 'busy' });
      try {
        const r = await run(['destroy', 'openai', '--timeout', '200', ...s]);
        expect(r.code, r.stderr).toBe(4);
        expect(r.stdout).toBe('');
        expect(r.stderr).toMatch(/^pg-semaphore: timed out after 200 ms waiting for the tickets of "openai"/);
        expect(r.ms).toBeGreaterThanOrEqual(200);
        const shrink = await run(['--json', 'make', 'openai', '0', '--timeout', '200', ...s]);
        expect(shrink.code).toBe(4);
        expect(JSON.parse(shrink.stderr).error).toMatchObject({ kind: 'timeout', name: 'SemaphoreTimeoutError', exitCode: 4 });
      } finally {
        await hold.release();
      }
      expect((await ctx.sem.status('openai')).tickets).toBe(1);
      expect((await run(['destroy', 'openai', '--timeout', '200', ...s])).code).toBe(0);
    } finally {
      await ctx.drop();
    }
  });

  it('5 when Postgres cannot be reached', async () => {
    const r = await run(['--database-url', CLOSED_PORT_URL, 'list']);
    expect(r.code).toBe(5);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^pg-semaphore: cannot connect to Postgres at 127\.0\.0\.1:1\/test: .*ECONNREFUSED/);
    expect(r.stderr).not.toContain('secret');
    expect(r.ms).toBeLessThan(10_000);
    const env = await run(['--json', 'status', 'openai'], { DATABASE_URL: CLOSED_PORT_URL });
    expect(env.code).toBe(5);
    expect(JSON.parse(env.stderr).error).toMatchObject({ kind: 'cannot_connect', exitCode: 5 });
  });

  it('3 with a hint when the schema has no pg-semaphore, or only its tables', async () => {
    const schema = testSchemaName('cli_missing');
    const r = await run(['list', '--schema', schema]);
    expect(r).toMatchObject({ code: 3, stdout: '' });
    expect(r.stderr).toBe(`pg-semaphore: pg-semaphore is not installed in schema "${schema}" (schema "${schema}" does not exist); run: pg-semaphore migrate --schema ${schema}\n`);
    const json = await run(['--json', 'make', 'openai', '1', '--schema', schema]);
    expect(json.code).toBe(3);
    expect(JSON.parse(json.stderr).error).toMatchObject({ kind: 'not_installed', exitCode: 3 });

    // install path 2 half done: the tables from a drizzle-kit history, no functions
    const tablesOnly = testSchemaName('cli_tables');
    const admin = new pg.Client({ connectionString: databaseUrl() });
    await admin.connect();
    try {
      await admin.query(installSql(tablesOnly, { part: 'tables' }).replaceAll('--> statement-breakpoint', ''));
      const half = await run(['make', 'openai', '1', '--schema', tablesOnly]);
      expect(half.code, half.stderr).toBe(3);
      expect(half.stderr).toContain(`pg-semaphore's SQL functions are missing in schema "${tablesOnly}"`);
      expect(half.stderr).toContain(`pg-semaphore sql --part functions --schema ${tablesOnly}`);
      const { rows } = await admin.query(`SELECT count(*)::int AS n FROM "${tablesOnly}".semaphores`);
      expect(rows[0].n).toBe(0);
    } finally {
      await admin.query(`DROP SCHEMA IF EXISTS "${tablesOnly}" CASCADE`);
      await admin.end();
    }
  });

  it('2 for a database URL that is not a postgres:// URL, without trying to connect', async () => {
    const flag = await run(['--database-url', 'not-a-url', 'list']);
    expect(flag).toMatchObject({ code: 2, stdout: '', stderr: 'pg-semaphore: --database-url: expected a postgres:// or postgresql:// URL, got "not-a-url"\n' });
    expect(flag.stderr).not.toContain('ENOTFOUND');
    const env = await run(['--json', 'status', 'openai'], { DATABASE_URL: 'mysql://app:hunter2@db.example/prod' });
    expect(env.code).toBe(2);
    const error = JSON.parse(env.stderr).error;
    expect(error).toMatchObject({ kind: 'usage', exitCode: 2 });
    expect(error.message).toBe('DATABASE_URL: expected a postgres:// or postgresql:// URL, got "mysql://***@db.example/prod"');
    expect(env.stderr).not.toContain('hunter2');
    expect((await run(['--database-url', 'postgresql://postgres@127.0.0.1:1/test', 'list'])).code).toBe(5); // accepted, then refused
  });
});

describe('status --watch', () => {
  it('redraws until SIGTERM, then exits 0 promptly', async () => {
    const ctx = await migrated('watch');
    try {
      await ctx.sem.make('openai', 3);
      const hold = await ctx.sem.hold('openai', { label: 'watched' });
      try {
        for (const json of [false, true]) {
          const child = start([...(json ? ['--json'] : []), 'status', 'openai', '--watch', '--interval', '100', '--schema', ctx.schema]);
          let out = '';
          let err = '';
          child.stdout.on('data', (d) => (out += d));
          child.stderr.on('data', (d) => (err += d));
          const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
          const frames = () => (json ? out.split('\n').filter((l) => l.startsWith('{')) : out.match(/^openai: 1 of 3 tickets held/gm) ?? []);
          await waitFor(() => frames().length >= 2, { timeout: 10_000, what: `two frames (stderr: ${err})` });
          if (json) for (const line of frames()) expect(JSON.parse(line)).toMatchObject({ name: 'openai', held: 1, holders: [{ label: 'watched' }] });
          else expect(out).toContain('watched');
          const signalled = Date.now();
          child.kill('SIGTERM');
          const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 5_000))]);
          if (code === 'timeout') child.kill('SIGKILL');
          expect(code).toBe(0);
          expect(Date.now() - signalled).toBeLessThan(5_000);
          expect(err).toBe('');
        }
      } finally {
        await hold.release();
      }
    } finally {
      await ctx.drop();
    }
  });

  it('watches every semaphore without a name', async () => {
    const ctx = await migrated('watchall');
    try {
      await ctx.sem.make('a', 1);
      const child = start(['status', '--watch', '--interval', '100', '--schema', ctx.schema]);
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
      await waitFor(() => (out.match(/^a\s+1\s+0\s+1$/gm) ?? []).length >= 2, { what: 'two frames' });
      child.kill('SIGINT');
      expect(await exited).toBe(0);
    } finally {
      await ctx.drop();
    }
  });
});
