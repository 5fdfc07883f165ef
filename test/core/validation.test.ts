// Bad input gets a typed error and changes nothing; hostile-but-valid names round-trip.
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { databaseUrl, setupSchema } from '../helpers/db.js';
import { errorOf, listSnapshot } from '../helpers/core.js';
import { InvalidArgumentError, PgSemaphore, PgSemaphoreError, UnknownSemaphoreError } from '../../src/index.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let before: string;
beforeAll(async () => {
  ctx = await setupSchema('validation');
  await ctx.sem.make('ok', 2);
  await ctx.sem.make('other', 1);
});
afterAll(async () => {
  await ctx?.drop();
});
beforeEach(async () => {
  before = await listSnapshot(ctx.sem);
});

/** `fn` fails with an InvalidArgumentError about `argument` that carries what came in, and changes nothing. */
async function expectInvalid(fn: () => unknown, argument: string | RegExp, received?: unknown) {
  const what = `${String(fn)} with ${show(received)}`;
  const err = await errorOf(fn, what);
  expect(err, `${what}: ${String(err)}`).toBeInstanceOf(InvalidArgumentError);
  const e = err as InvalidArgumentError;
  expect(e).toBeInstanceOf(PgSemaphoreError);
  expect(e.name).toBe('InvalidArgumentError');
  if (typeof argument === 'string') expect(e.argument).toBe(argument);
  else expect(e.argument).toMatch(argument);
  expect(typeof e.expected).toBe('string');
  expect(e.expected.length).toBeGreaterThan(5);
  if (arguments.length > 2) expect(Object.is(e.received, received) || JSON.stringify(e.received) === JSON.stringify(received)).toBe(true);
  expect(e.message).toContain(e.argument);
  expect(await listSnapshot(ctx.sem)).toBe(before);
  expect(ctx.sem.openHolds).toBe(0);
}

function show(value: unknown): string {
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'number' || value === undefined) return String(value);
  return JSON.stringify(value);
}

const fn = () => 'ran';
const badNames: unknown[] = ['', 'x'.repeat(300), 'a\u0000b', '\u0000', 123, null, undefined, {}, ['ok'], true];
const badCounts: unknown[] = [-1, NaN, 1.5, 10_001, 1e12, Infinity, '2', null];
const badTimeouts: unknown[] = [-1, NaN, 1.5, '100', 2 ** 31, {}, true];
const nonObjects: unknown[] = [null, 'options', 42, true];

describe('names', () => {
  it('bad names are rejected by every entry point', async () => {
    for (const name of badNames) {
      await expectInvalid(() => ctx.sem.make(name as string, 1), 'name', name);
      await expectInvalid(() => ctx.sem.destroy(name as string), 'name', name);
      await expectInvalid(() => ctx.sem.status(name as string), 'name', name);
      await expectInvalid(() => ctx.sem.hold({ name: name as string }), 'semaphore.name', name);
      await expectInvalid(() => ctx.sem.hold(['ok', { name: name as string, tickets: 1 }]), 'semaphore[1].name', name);
      if (Array.isArray(name)) continue; // a list of names is a valid request
      await expectInvalid(() => ctx.sem.hold(name as string), 'semaphore', name);
      await expectInvalid(() => ctx.sem.tryHold(name as string), 'semaphore', name);
      await expectInvalid(() => ctx.sem.withTickets(name as string, fn), 'semaphore', name);
      await expectInvalid(() => ctx.sem.withMutex(name as string, fn), 'semaphore', name);
      await expectInvalid(() => ctx.sem.hold(['ok', name as string]), 'semaphore[1]', name);
    }
  });

  it('a name of 200 characters is fine, 201 is not (counted in characters, not UTF-16 units)', async () => {
    await expectInvalid(() => ctx.sem.make('y'.repeat(201), 1), 'name');
    await expectInvalid(() => ctx.sem.make('😀'.repeat(201), 1), 'name');
    await ctx.sem.make('y'.repeat(200), 1);
    await ctx.sem.make('😀'.repeat(200), 1);
    const names = (await ctx.sem.list()).map((s) => s.name);
    expect(names).toContain('y'.repeat(200));
    expect(names).toContain('😀'.repeat(200));
    expect(await ctx.sem.destroy('y'.repeat(200))).toBe(true);
    expect(await ctx.sem.destroy('😀'.repeat(200))).toBe(true);
  });

  it('an unknown semaphore is an UnknownSemaphoreError for status()', async () => {
    const err = await errorOf(() => ctx.sem.status('nope'));
    expect(err).toBeInstanceOf(UnknownSemaphoreError);
    expect(err).toMatchObject({ name: 'UnknownSemaphoreError', names: ['nope'] });
    expect(await listSnapshot(ctx.sem)).toBe(before);
  });
});

describe('ticket counts', () => {
  it('bad counts are rejected by make, hold and createWith', async () => {
    for (const n of badCounts) {
      await expectInvalid(() => ctx.sem.make('ok', n as number), 'tickets', n);
      await expectInvalid(() => ctx.sem.make('new-one', n as number), 'tickets', n);
      await expectInvalid(() => ctx.sem.hold({ name: 'ok', tickets: n as number }), 'semaphore.tickets', n);
      await expectInvalid(() => ctx.sem.withTickets([{ name: 'ok', tickets: n as number }], fn), 'semaphore[0].tickets', n);
      await expectInvalid(() => ctx.sem.hold('fresh', { createWith: n as number }), 'createWith', n);
    }
    await expectInvalid(() => ctx.sem.hold({ name: 'ok', tickets: 0 }), 'semaphore.tickets', 0);
    await expectInvalid(() => ctx.sem.hold('fresh', { createWith: 0 }), 'createWith', 0);
  });

  it('more tickets than the semaphore has, and odd requests', async () => {
    await expectInvalid(() => ctx.sem.hold({ name: 'ok', tickets: 3 }), 'tickets');
    await expectInvalid(() => ctx.sem.hold([]), 'semaphore');
    await expectInvalid(() => ctx.sem.hold(Array(101).fill('ok')), 'semaphore');
    await expectInvalid(() => ctx.sem.hold(['ok', { name: 'ok', tickets: 'all' }]), 'semaphore');
    await expectInvalid(() => ctx.sem.hold({ name: 'ok', tickets: 'some' as 'all' }), 'semaphore.tickets');
    await expectInvalid(() => ctx.sem.withTickets('ok', 'not a function' as unknown as () => void), 'fn');
    await expectInvalid(() => ctx.sem.hold('ok', { label: 'a\u0000b' }), 'label');
    await expectInvalid(() => ctx.sem.hold('ok', { label: 'x'.repeat(1001) }), 'label');
    await expectInvalid(() => ctx.sem.hold('ok', { label: 7 as unknown as string }), 'label');
  });
});

describe('timeouts and options', () => {
  it('bad timeouts are rejected', async () => {
    for (const t of badTimeouts) {
      // (same size, and a name that does not exist: even if the bad option slipped through, nothing would change)
      await expectInvalid(() => ctx.sem.make('ok', 2, { timeout: t as number }), 'timeout', t);
      await expectInvalid(() => ctx.sem.destroy('absent', { timeout: t as number }), 'timeout', t);
      await expectInvalid(() => ctx.sem.hold('ok', { wait: { timeout: t as number } }), 'wait.timeout', t);
    }
    for (const w of [-1, NaN, 1.5, 2 ** 31]) await expectInvalid(() => ctx.sem.hold('ok', { wait: w }), 'wait', w);
    for (const w of ['soon', null, 0n]) await expectInvalid(() => ctx.sem.hold('ok', { wait: w as unknown as number }), 'wait', w);
    await expectInvalid(() => ctx.sem.hold('ok', { wait: { signal: 'x' as unknown as AbortSignal } }), 'wait.signal');
  });

  const withOptions: Record<string, (o: never) => Promise<unknown>> = {
    hold: (o) => ctx.sem.hold('ok', o),
    withTickets: (o) => ctx.sem.withTickets('ok', fn, o),
    tryHold: (o) => ctx.sem.tryHold('ok', o),
    // (same size, and a name that does not exist: even if the bad option slipped through, nothing would change)
    make: (o) => ctx.sem.make('ok', 2, o),
    destroy: (o) => ctx.sem.destroy('absent', o),
    tryAcquire: async (o) => {
      const client = await ctx.admin.connect();
      try {
        await client.query('BEGIN');
        return await ctx.sem.tryAcquire(client, 'ok', o);
      } finally {
        await client.query('ROLLBACK');
        client.release();
      }
    },
  };
  for (const [method, call] of Object.entries(withOptions)) {
    it(`${method}() rejects non-object options`, async () => {
      for (const o of nonObjects) await expectInvalid(() => call(o as never), 'options', o);
    });
  }

  it('tryAcquire needs a transaction it can run SQL on', async () => {
    await expectInvalid(() => ctx.sem.tryAcquire({} as never, 'ok'), 'tx');
    await expectInvalid(() => ctx.sem.tryAcquire(null as never, 'ok'), 'tx');
  });
});

describe('the constructor', () => {
  it('rejects schema names that are not plain identifiers, start with pg_, or are public', async () => {
    for (const schema of ['a-b', 'A', '"x"', 'x;drop', '', ' x', 'x y', '1abc', 'pg_x', 'pg_catalog', 'public', 'a'.repeat(64), 'é', 42, {}]) {
      const err = await errorOf(() => new PgSemaphore({ connection: databaseUrl(), schema: schema as string }));
      expect(err, JSON.stringify(schema)).toBeInstanceOf(InvalidArgumentError);
      expect(err).toMatchObject({ argument: 'schema' });
      expect(Object.is((err as InvalidArgumentError).received, schema)).toBe(true);
    }
    // and nothing was created for any of them
    const probe = new pg.Client({ connectionString: databaseUrl() });
    await probe.connect();
    try {
      const { rows } = await probe.query(`SELECT nspname FROM pg_namespace WHERE nspname = ANY ($1)`, [['a-b', 'A', '"x"', 'x;drop', 'x y']]);
      expect(rows).toEqual([]);
    } finally {
      await probe.end();
    }
  });

  it('rejects non-object options, a missing connection and bad numbers', async () => {
    for (const o of [null, undefined, 'postgres://x', 42]) {
      expect(await errorOf(() => new PgSemaphore(o as never))).toMatchObject({ name: 'InvalidArgumentError', argument: 'options' });
    }
    expect(await errorOf(() => new PgSemaphore({}))).toMatchObject({ name: 'InvalidArgumentError', argument: 'connection' });
    expect(await errorOf(() => new PgSemaphore({ connection: 42 as never }))).toMatchObject({ argument: 'connection' });
    expect(await errorOf(() => new PgSemaphore({ db: {} as never }))).toMatchObject({ argument: 'db' });
    for (const v of [0, -1, NaN, 1.5, '1000']) {
      expect(await errorOf(() => new PgSemaphore({ connection: databaseUrl(), livenessTimeout: v as number }))).toMatchObject({ argument: 'livenessTimeout' });
      expect(await errorOf(() => new PgSemaphore({ connection: databaseUrl(), maxPollInterval: v as number }))).toMatchObject({ argument: 'maxPollInterval' });
    }
  });
});

describe('where Postgres is', () => {
  /** Runs `fn` with PGHOST unset (node-postgres would otherwise take the host from it). */
  async function withoutPgHost<T>(fn: () => Promise<T>): Promise<T> {
    const saved = process.env.PGHOST;
    delete process.env.PGHOST;
    try {
      return await fn();
    } finally {
      if (saved !== undefined) process.env.PGHOST = saved;
    }
  }

  it('a connection string, where one is given, must not be empty, and the error mentions DATABASE_URL', async () => {
    await withoutPgHost(async () => {
      // new PgSemaphore({ connection: process.env.DATABASE_URL }) with DATABASE_URL unset
      await expectInvalid(() => new PgSemaphore({ connection: undefined }), 'connection', undefined);
      expect(String(await errorOf(() => new PgSemaphore({ connection: undefined })))).toContain('DATABASE_URL');
      await expectInvalid(() => new PgSemaphore({ connection: '' }), 'connection', '');
      await expectInvalid(() => new PgSemaphore({ connection: '   ' }), 'connection', '   ');
      // the pool-config form with DATABASE_URL unset
      await expectInvalid(() => new PgSemaphore({ connection: { connectionString: undefined, max: 30 } }), 'connection.connectionString', undefined);
      const unset = await errorOf(() => new PgSemaphore({ connection: { connectionString: undefined } }));
      expect(String(unset)).toContain('DATABASE_URL');
      expect(String(unset)).toContain('host');
      await expectInvalid(() => new PgSemaphore({ connection: { connectionString: '' } }), 'connection.connectionString', '');
      await expectInvalid(() => new PgSemaphore({ connection: { connectionString: 42 as never } }), 'connection.connectionString', 42);
    });
  });

  it('other pool configs are left to node-postgres (host defaults to localhost): { user, database }, { port }, { max }', async () => {
    await withoutPgHost(async () => {
      for (const connection of [{ user: 'nobody', database: 'nothing' }, { port: 5433 }, { max: 5 }]) {
        const sem = new PgSemaphore({ connection });
        await sem.close();
      }
    });
  });

  it('a host alone, or PGHOST, is enough', async () => {
    const url = new URL(databaseUrl());
    const byHost = new PgSemaphore({
      connection: {
        host: url.hostname,
        port: Number(url.port || 5432),
        user: decodeURIComponent(url.username),
        password: decodeURIComponent(url.password) || undefined,
        database: url.pathname.slice(1),
      },
      schema: ctx.schema,
    });
    try {
      expect((await byHost.status('ok')).tickets).toBe(2);
    } finally {
      await byHost.close();
    }
    const saved = process.env.PGHOST;
    process.env.PGHOST = url.hostname;
    try {
      const byEnv = new PgSemaphore({ connection: { max: 1 } });
      await byEnv.close();
    } finally {
      if (saved === undefined) delete process.env.PGHOST;
      else process.env.PGHOST = saved;
    }
  });
});

describe('hostile but valid names', () => {
  const hostile = [
    "it's",
    'say "hi"',
    'x; DROP TABLE tickets; --',
    "'); DROP SCHEMA public CASCADE; --",
    '$$ $body$ $1',
    '\\ backslash \\\\',
    '% _ * ?',
    ' leading and trailing ',
    'tab\tand\nnewline',
    'ünïcödé 名前 مرحبا',
    '😀🚀👩‍👩‍👧',
    '{a,b}',
    'NULL',
    'tenant:42',
  ];

  it('are stored verbatim, round-trip through list() and status(), and can be held', async () => {
    for (const [i, name] of hostile.entries()) await ctx.sem.make(name, (i % 3) + 1);
    const listed = await ctx.sem.list();
    for (const [i, name] of hostile.entries()) {
      expect(listed.find((s) => s.name === name), JSON.stringify(name)).toMatchObject({ name, tickets: (i % 3) + 1, held: 0 });
      expect((await ctx.sem.status(name)).name).toBe(name);
    }
    // the tables hold them verbatim too
    const { rows } = await ctx.admin.query<{ name: string }>(`SELECT name FROM "${ctx.schema}".semaphores WHERE name = ANY ($1)`, [hostile]);
    expect(rows.map((r) => r.name).sort()).toEqual([...hostile].sort());

    const hold = await ctx.sem.hold(hostile, { label: "job 'x'; --" });
    expect(hold.tickets).toHaveLength(hostile.length);
    for (const name of hostile) {
      const status = await ctx.sem.status(name);
      expect(status.held, JSON.stringify(name)).toBe(1);
      expect(status.holders[0]!.label).toBe("job 'x'; --");
    }
    await hold.release();
    expect(await ctx.sem.withTickets(hostile[2]!, () => 'ok')).toBe('ok');
    for (const name of hostile) expect(await ctx.sem.destroy(name)).toBe(true);
    expect(await listSnapshot(ctx.sem)).toBe(before);
    // the install survived
    expect((await ctx.sem.status('ok')).tickets).toBe(2);
  });
});
