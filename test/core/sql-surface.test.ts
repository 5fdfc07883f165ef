// The SQL functions are a public surface: callable from plain SQL, as a user's migration would.
// Ticket numbers: one numbering (1..capacity within the semaphore) everywhere. Upgrades of an
// older install, through migrate() and through the functions SQL of install path 2.
import { randomBytes } from 'node:crypto';
import { drizzle } from 'drizzle-orm/node-postgres';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PgSemaphore, installSql } from '../../src/index.js';
import { loadMigrations } from '../../src/migrations.js';
import { databaseUrl, setupSchema, testSchemaName, waitFor } from '../helpers/db.js';
import { advisoryLocksOf, heldOf, listenerOf, nsOf, slotKey } from '../helpers/core.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let client: pg.Client;
let s: string;
beforeAll(async () => {
  ctx = await setupSchema('sqlsurface');
  s = `"${ctx.schema}"`;
  client = new pg.Client({ connectionString: databaseUrl() });
  await client.connect();
});
afterAll(async () => {
  await client?.end();
  await ctx?.drop();
});

describe('plain SQL', () => {
  it('make, list, acquire in BEGIN, holders, destroy', async () => {
    // as in a drizzle-kit custom migration (simple query protocol, several statements)
    await client.query(`SELECT ${s}.make('openai', 5);\nSELECT ${s}.make('tenant:1', 1);`);
    const { rows: listed } = await client.query(`SELECT name, tickets, held FROM ${s}.list()`);
    expect(listed).toEqual([
      { name: 'openai', tickets: 5, held: 0 },
      { name: 'tenant:1', tickets: 1, held: 0 },
    ]);
    expect((await ctx.sem.status('openai')).tickets).toBe(5);

    await client.query('BEGIN');
    const { rows } = await client.query(`SELECT * FROM ${s}.acquire(ARRAY['openai'], ARRAY[1])`);
    expect(rows[0]).toMatchObject({ status: 'ok', tickets: [1], ticket_semaphores: ['openai'], names: null });
    expect(rows[0].semaphore_ids).toHaveLength(1);
    // request order, each ticket with its semaphore; tickets already held are not returned again
    const { rows: two } = await client.query(`SELECT * FROM ${s}.acquire(ARRAY['tenant:1', 'openai'], ARRAY[1, 2], 'from-sql')`);
    expect(two[0]).toMatchObject({ status: 'ok', tickets: [1, 2, 3], ticket_semaphores: ['tenant:1', 'openai', 'openai'] });
    expect(await heldOf(ctx.sem, 'openai')).toBe(3);
    const { rows: busy } = await client.query(`SELECT * FROM ${s}.acquire(ARRAY['tenant:1'], ARRAY[1])`);
    expect(busy[0]).toMatchObject({ status: 'busy', tickets: null, ticket_semaphores: null });
    const { rows: missing } = await client.query(`SELECT * FROM ${s}.acquire(ARRAY['nope', 'openai'], ARRAY[1, 1])`);
    expect(missing[0]).toMatchObject({ status: 'missing', names: ['nope'] });
    const { rows: exceeds } = await client.query(`SELECT * FROM ${s}.acquire(ARRAY['tenant:1'], ARRAY[2])`);
    expect(exceeds[0]).toMatchObject({ status: 'exceeds', names: ['tenant:1'] });
    const { rows: holders } = await client.query(`SELECT name, ticket, pid, label, pid = pg_backend_pid() AS mine FROM ${s}.holders('openai')`);
    expect(holders).toHaveLength(3);
    expect(holders.every((h) => h.mine && h.label === 'from-sql')).toBe(true);
    const { rows: xid } = await client.query(`SELECT txid_current_if_assigned() AS xid`);
    expect(xid[0].xid).toBeNull();
    await client.query('COMMIT');
    expect(await heldOf(ctx.sem, 'openai')).toBe(0);

    await client.query(`SELECT ${s}.make('openai', 2, 1000)`);
    expect((await client.query(`SELECT ${s}.destroy('tenant:1') AS d`)).rows[0].d).toBe(true);
    expect((await client.query(`SELECT ${s}.destroy('tenant:1') AS d`)).rows[0].d).toBe(false);
    expect((await client.query(`SELECT name, tickets FROM ${s}.list()`)).rows).toEqual([{ name: 'openai', tickets: 2 }]);
  });

  it('bad arguments raise SQLSTATE 22023 and change nothing', async () => {
    const before = (await client.query(`SELECT name, tickets FROM ${s}.list()`)).rows;
    for (const q of [`SELECT ${s}.make('', 1)`, `SELECT ${s}.make('x', -1)`, `SELECT ${s}.make('x', 10001)`, `SELECT ${s}.make(NULL, 1)`, `SELECT ${s}.make(repeat('x', 201), 1)`]) {
      await expect(client.query(q), q).rejects.toMatchObject({ code: '22023' });
    }
    await client.query('BEGIN');
    await expect(client.query(`SELECT * FROM ${s}.acquire(ARRAY['openai'], ARRAY[1, 2])`)).rejects.toMatchObject({ code: '22023' });
    await client.query('ROLLBACK');
    expect((await client.query(`SELECT name, tickets FROM ${s}.list()`)).rows).toEqual(before);
  });
});

/** Creates and destroys semaphores until ticket row ids pass `above`, so ids and numbers differ. */
async function growRowIds(admin: pg.Pool, schema: string, above: number): Promise<void> {
  for (let i = 0; ; i++) {
    const { rows } = await admin.query<{ id: number | null }>(`SELECT max(id) AS id FROM "${schema}".tickets`);
    const { rows: seq } = await admin.query<{ last: string }>(`SELECT last_value::text AS last FROM "${schema}".tickets_id_seq`);
    if (Math.max(rows[0]!.id ?? 0, Number(seq[0]!.last)) > above) return;
    await admin.query(`SELECT "${schema}".make($1, 100)`, [`grow-${i}`]);
    await admin.query(`SELECT "${schema}".destroy($1)`, [`grow-${i}`]);
  }
}

describe('ticket numbers', () => {
  it('hold, withTickets and tryAcquire return numbers 1..capacity per semaphore, in request order, as status() shows them', async () => {
    await growRowIds(ctx.admin, ctx.schema, 300);
    await ctx.sem.make('api', 3);
    await ctx.sem.make('tenant:a', 2);
    const { rows: ids } = await ctx.admin.query<{ id: number }>(`SELECT min(t.id) AS id FROM ${s}.tickets t JOIN ${s}.semaphores m ON m.id = t.semaphore_id WHERE m.name = 'api'`);
    expect(ids[0]!.id).toBeGreaterThan(300); // row ids are large here

    const other = ctx.another();
    try {
      const first = await ctx.sem.hold('api', { label: 'first' });
      expect(first.tickets).toEqual([{ name: 'api', ticket: 1 }]);
      const both = await other.hold(['api', 'tenant:a'], { label: 'both' });
      expect(both.tickets).toEqual([
        { name: 'api', ticket: 2 },
        { name: 'tenant:a', ticket: 1 },
      ]);
      // the tenant named first comes first, with its two tickets
      const inside = await ctx.sem.withTickets([{ name: 'tenant:a', tickets: 1 }, 'api'], async ({ tickets }) => {
        const api = await other.status('api');
        const tenant = await other.status('tenant:a');
        return {
          tickets,
          status: {
            first: api.holders.filter((h) => h.label === 'first').map((h) => h.ticket),
            both: [...api.holders, ...tenant.holders].filter((h) => h.label === 'both').map((h) => h.ticket),
            inside: [...tenant.holders, ...api.holders].filter((h) => h.label === null).map((h) => h.ticket),
          },
        };
      });
      expect(inside.tickets).toEqual([
        { name: 'tenant:a', ticket: 2 },
        { name: 'api', ticket: 3 },
      ]);
      // what status() shows for each holder is what its hold returned
      expect(inside.status).toEqual({ first: [1], both: [2, 1], inside: [2, 3] });
      await both.release();

      const db = drizzle(ctx.admin);
      const got = await db.transaction(async (tx) => {
        const taken = await ctx.sem.tryAcquire(tx, { name: 'api', tickets: 2 }, { label: 'in-tx' });
        const holders = (await other.status('api')).holders.filter((h) => h.label === 'in-tx').map((h) => h.ticket);
        return { taken, holders };
      });
      expect(got.taken).toEqual({
        names: ['api'],
        tickets: [
          { name: 'api', ticket: 2 },
          { name: 'api', ticket: 3 },
        ],
      });
      expect(got.holders).toEqual([2, 3]);
      await first.release();
    } finally {
      await other.close();
    }
  });
});

describe('upgrading an older install (0.1: acquire returned row ids; 0002: acquire without start positions)', () => {
  const role = `pgsem_upgrade_${randomBytes(3).toString('hex')}`;
  const schemas: string[] = [];
  let admin: pg.Pool;
  beforeAll(async () => {
    admin = new pg.Pool({ connectionString: databaseUrl(), max: 3 });
    admin.on('error', () => undefined);
    await admin.query(`CREATE ROLE "${role}" LOGIN`);
  });
  afterAll(async () => {
    for (const schema of schemas) await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await admin.query(`DROP ROLE IF EXISTS "${role}"`);
    await admin.end();
  });

  /**
   * What migrate() of 0.1 left behind: its two migrations applied and recorded, acquire
   * granted to a worker role the way docs/SECURITY.md does (PUBLIC's right revoked).
   */
  async function oldInstall(label: string, upTo = '0001_functions'): Promise<string> {
    const schema = testSchemaName(label);
    schemas.push(schema);
    const all = loadMigrations(schema);
    const old = all.slice(0, all.findIndex((m) => m.tag === upTo) + 1);
    expect(old.map((m) => m.tag)).toEqual(upTo === '0001_functions' ? ['0000_tables', '0001_functions'] : ['0000_tables', '0001_functions', '0002_functions']);
    await admin.query(`CREATE SCHEMA "${schema}"`);
    await admin.query(`CREATE TABLE "${schema}".__pg_semaphore_migrations (tag text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`);
    for (const m of old) {
      for (const statement of m.sql.split('--> statement-breakpoint')) if (statement.trim()) await admin.query(statement);
      await admin.query(`INSERT INTO "${schema}".__pg_semaphore_migrations (tag) VALUES ($1)`, [m.tag]);
    }
    await admin.query(`REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA "${schema}" FROM PUBLIC`);
    await admin.query(`GRANT USAGE ON SCHEMA "${schema}" TO "${role}"`);
    await admin.query(`GRANT EXECUTE ON FUNCTION "${schema}".acquire, "${schema}"._ns TO "${role}"`);
    await admin.query(`GRANT SELECT ON "${schema}".semaphores, "${schema}".tickets TO "${role}"`);
    for (let i = 0; i < 3; i++) {
      await admin.query(`SELECT "${schema}".make($1, 100)`, [`grow-${i}`]);
      await admin.query(`SELECT "${schema}".destroy($1)`, [`grow-${i}`]);
    }
    await admin.query(`SELECT "${schema}".make('api', 3)`);
    return schema;
  }

  /** acquire's arguments and OUT columns, its privileges, and whether a moved-aside old one is left. */
  async function acquireShape(schema: string) {
    const { rows } = await admin.query<{ oid: number; args: string; columns: string[]; acl: string | null; old: number }>(
      `SELECT p.oid::int AS oid, oidvectortypes(p.proargtypes) AS args,
              (SELECT array_agg(u.n ORDER BY u.i) FROM unnest(p.proargnames, p.proargmodes) WITH ORDINALITY AS u(n, m, i) WHERE u.m = 'o') AS columns,
              p.proacl::text AS acl,
              (SELECT count(*)::int FROM pg_proc o WHERE o.pronamespace = p.pronamespace AND o.proname = '_acquire_old') AS old
         FROM pg_proc p WHERE p.pronamespace = $1::regnamespace AND p.proname = 'acquire'`,
      [`"${schema}"`],
    );
    expect(rows).toHaveLength(1);
    const { rows: can } = await admin.query<{ worker: boolean }>(`SELECT has_function_privilege($1, $2::oid, 'EXECUTE') AS worker`, [role, rows[0]!.oid]);
    return {
      args: rows[0]!.args,
      columns: rows[0]!.columns,
      publicCanExecute: /(^|[{,])=X/.test(rows[0]!.acl ?? '{=X/x}'),
      workerCanExecute: can[0]!.worker,
      oldLeft: rows[0]!.old,
    };
  }

  /** The shape of the newest acquire (0003_functions): start positions, ticket numbers. */
  const newest = {
    args: 'text[], integer[], text, integer, integer[]',
    columns: ['status', 'tickets', 'ticket_semaphores', 'semaphore_ids', 'names'],
    publicCanExecute: false,
    workerCanExecute: true,
    oldLeft: 0,
  };

  /** Takes one ticket of 'api' as the worker role, from plain SQL. */
  async function acquireAsWorker(schema: string): Promise<Record<string, unknown>> {
    const u = new URL(databaseUrl());
    u.username = role;
    u.password = '';
    const worker = new pg.Client({ connectionString: u.toString() });
    await worker.connect();
    try {
      await worker.query('BEGIN');
      const { rows } = await worker.query(`SELECT * FROM "${schema}".acquire('{api}', '{1}')`);
      await worker.query('ROLLBACK');
      return rows[0];
    } finally {
      await worker.end();
    }
  }

  it('migrate() applies 0002_functions and 0003_functions: numbers instead of row ids, grants kept, a ticket held across the upgrade stays held', async () => {
    const schema = await oldInstall('upg1');
    expect(await acquireShape(schema)).toEqual({
      args: 'text[], integer[], text, integer',
      columns: ['status', 'tickets', 'semaphore_ids', 'names'],
      publicCanExecute: false,
      workerCanExecute: true,
      oldLeft: 0,
    });
    // a holder that took its ticket with the old function, while the upgrade runs
    const holder = await admin.connect();
    try {
      await holder.query('BEGIN');
      const { rows: before } = await holder.query(`SELECT * FROM "${schema}".acquire('{api}', '{1}', 'old-holder')`);
      expect(before[0].status).toBe('ok');
      expect(before[0].tickets[0]).toBeGreaterThan(200); // 0.1 returned the row id

      const sem = new PgSemaphore({ connection: databaseUrl(), schema });
      try {
        // before the upgrade, this library refuses 0.1's functions (their tickets are row ids)
        await expect(sem.hold('api')).rejects.toMatchObject({ name: 'NotInstalledError', problem: 'functions-missing' });
        expect(await sem.migrate()).toEqual({ applied: ['0002_functions', '0003_functions', '0004_functions', '0005_functions', '0006_functions'] });
        expect(await acquireShape(schema)).toEqual(newest);
        expect(await acquireAsWorker(schema)).toMatchObject({ status: 'ok', tickets: [2], ticket_semaphores: ['api'] });
        // the old holder still holds ticket 1, so Node gets 2 and 3, then nothing
        expect((await sem.status('api')).holders.map((h) => [h.ticket, h.label])).toEqual([[1, 'old-holder']]);
        const hold = await sem.hold({ name: 'api', tickets: 2 });
        expect(hold.tickets).toEqual([
          { name: 'api', ticket: 2 },
          { name: 'api', ticket: 3 },
        ]);
        expect(await sem.tryHold('api')).toBeNull();
        await hold.release();
        expect(await sem.migrate()).toEqual({ applied: [] });
      } finally {
        await sem.close();
      }
    } finally {
      await holder.query('ROLLBACK');
      holder.release();
    }
  });

  it("install path 2: the functions SQL (`pg-semaphore sql --part functions`) upgrades it too, and applies again cleanly", async () => {
    const schema = await oldInstall('upg2');
    const functions = installSql(schema, { part: 'functions' });
    expect(functions).toContain('-- pg-semaphore 0006_functions');
    expect(functions).not.toContain('0002_functions');
    await admin.query(functions);
    await admin.query(functions);
    expect(await acquireShape(schema)).toEqual(newest);
    expect(await acquireAsWorker(schema)).toMatchObject({ status: 'ok', tickets: [1], ticket_semaphores: ['api'] });
  });

  it('0002 install: the new library works on it before migrate() (rolling upgrade), migrate() applies 0003_functions, grants kept', async () => {
    const schema = await oldInstall('upg3', '0002_functions');
    expect(await acquireShape(schema)).toEqual({ ...newest, args: 'text[], integer[], text, integer' });
    const sem = new PgSemaphore({ connection: databaseUrl(), schema });
    try {
      // the second hold passes a start position, which the 0002 acquire does not take: the
      // library notices once and goes on without
      for (let i = 0; i < 3; i++) {
        const hold = await sem.hold('api', { label: `before-${i}` });
        expect(hold.tickets).toEqual([{ name: 'api', ticket: 1 }]);
        await hold.release();
      }
      const holder = await sem.hold('api', { label: 'across-the-upgrade' });
      expect(await sem.migrate()).toEqual({ applied: ['0003_functions', '0004_functions', '0005_functions', '0006_functions'] });
      expect(await acquireShape(schema)).toEqual(newest);
      expect(await acquireAsWorker(schema)).toMatchObject({ status: 'ok', tickets: [2], ticket_semaphores: ['api'] });
      expect((await sem.status('api')).holders.map((h) => [h.ticket, h.label])).toEqual([[1, 'across-the-upgrade']]);
      await holder.release();
      const after = new PgSemaphore({ connection: databaseUrl(), schema });
      try {
        const hold = await after.hold('api');
        expect(hold.tickets).toEqual([{ name: 'api', ticket: 1 }]);
        await hold.release();
        await after.withTickets('api', ({ tickets }) => expect(tickets).toEqual([{ name: 'api', ticket: 1 }]));
      } finally {
        await after.close();
      }
    } finally {
      await sem.close();
    }
  });

  it('0003 install granted per the old docs/SECURITY.md: after migrate() a worker role still releases (wake after its slot) and is woken (hears_slot)', { timeout: 60_000 }, async () => {
    const schema = testSchemaName('upg0004');
    schemas.push(schema);
    const all = loadMigrations(schema);
    await admin.query(`CREATE SCHEMA "${schema}"`);
    await admin.query(`CREATE TABLE "${schema}".__pg_semaphore_migrations (tag text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`);
    for (const m of all.slice(0, all.findIndex((x) => x.tag === '0003_functions') + 1)) {
      for (const statement of m.sql.split('--> statement-breakpoint')) if (statement.trim()) await admin.query(statement);
      await admin.query(`INSERT INTO "${schema}".__pg_semaphore_migrations (tag) VALUES ($1)`, [m.tag]);
    }
    // the grants docs/SECURITY.md listed before 0004_functions
    await admin.query(`REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA "${schema}" FROM PUBLIC`);
    await admin.query(`ALTER DEFAULT PRIVILEGES IN SCHEMA "${schema}" REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC`);
    await admin.query(`GRANT USAGE ON SCHEMA "${schema}" TO "${role}"`);
    await admin.query(
      `GRANT EXECUTE ON FUNCTION ${['_ns', 'acquire', 'watch', 'watch_ids', 'unwatch', 'wake', 'wake_names', 'holders', 'list', 'enqueue_job', 'dequeue_jobs', 'forget_job']
        .map((f) => `"${schema}".${f}`)
        .join(', ')} TO "${role}"`,
    );
    await admin.query(`GRANT SELECT ON "${schema}".semaphores, "${schema}".tickets TO "${role}"`);
    await admin.query(`GRANT SELECT, INSERT, DELETE ON "${schema}".waiting_jobs TO "${role}"`);
    await admin.query(`SELECT "${schema}".make('api', 1)`);
    const owner = new PgSemaphore({ connection: databaseUrl(), schema });
    const u = new URL(databaseUrl());
    u.username = role;
    u.password = '';
    const warnings: string[] = [];
    const logger = { warn: (m: string) => warnings.push(m), info: () => undefined, error: (m: string) => warnings.push(m), debug: () => undefined };
    const holder = new PgSemaphore({ connection: u.toString(), schema, logger });
    const waiter = new PgSemaphore({ connection: u.toString(), schema, maxPollInterval: 10_000, logger });
    try {
      expect(await owner.migrate()).toEqual({ applied: ['0004_functions', '0005_functions', '0006_functions'] });
      // the holder's release names the process after its own LISTEN session's slot: wake(integer[], integer)
      const unwatch = await holder.watch(['none'], () => true);
      const hold = await holder.hold('api');
      const start = waiter.roundTrips;
      const waiting = waiter.hold('api', { wait: 20_000 });
      await waitFor(() => holder.hearsWakeUps && waiter.hearsWakeUps, { timeout: 5_000, what: 'both listeners to take hears()' });
      // the functions 0005_functions added got wake(integer[])'s grants (PUBLIC's taken back, the
      // worker's given), as the rolling-upgrade block promises
      const grantees = async (fn: string) =>
        (await admin.query<{ g: string }>(
          `SELECT coalesce(string_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, ',' ORDER BY 1), '') AS g
             FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
            WHERE p.oid = to_regprocedure($1) AND a.grantee <> p.proowner AND a.privilege_type = 'EXECUTE'`,
          [`"${schema}".${fn}`],
        )).rows[0]!.g;
      const wakeGrantees = await grantees('wake(integer[])');
      expect(wakeGrantees).toBe(role);
      for (const fn of ['hears_slot(integer[])', 'watch_slot(text[], integer)', 'unwatch_slot(integer[], integer)']) expect(await grantees(fn), fn).toBe(wakeGrantees);
      // both took a slot: the functions 0005_functions added got wake(integer[])'s grants
      const wakeIdOf = (s: PgSemaphore) => listenerOf(s).wakeId;
      expect([wakeIdOf(holder), wakeIdOf(waiter)].every((p) => p !== undefined && p < 0)).toBe(true);
      await waitFor(() => waiter.roundTrips - start >= 14, { timeout: 10_000, interval: 5, what: 'the waiter to back off' });
      const started = performance.now();
      await hold.release();
      const got = await waiting;
      expect(performance.now() - started).toBeLessThan(400);
      await got.release();
      // a wait now that the waiter holds a slot: watch_slot and unwatch_slot run as the worker role
      const slot = -wakeIdOf(waiter)! - 1;
      const listenerPid = listenerOf(waiter).backendPid!;
      const ns = await nsOf(admin, schema);
      const markers = (key1: number) => advisoryLocksOf(admin, listenerPid, key1);
      const second = await holder.hold('api');
      const waiting2 = waiter.hold('api', { wait: 20_000 });
      await waitFor(async () => (await markers(slotKey(ns, slot))) === 1, { timeout: 5_000, what: 'the waiter to mark its wait under its slot' });
      await second.release();
      await (await waiting2).release();
      await waitFor(async () => (await markers(slotKey(ns, slot))) + (await markers(ns ^ 2)) === 0, { timeout: 5_000, what: 'both markers to be given back' });
      // an early release whose wake-up fails for another reason than the connection still
      // releases (the rollback frees the tickets), with a warning
      await admin.query(`REVOKE EXECUTE ON FUNCTION "${schema}".wake(integer[], integer) FROM "${role}"`);
      const again = await holder.hold('api');
      await expect(again.release()).resolves.toMatchObject({ notified: false });
      expect(warnings.some((w) => w.includes('tickets released'))).toBe(true);
      (await holder.hold('api')).release();
      await unwatch();
    } finally {
      await holder.close();
      await waiter.close();
      await owner.close();
    }
  });

  it('0002 install: the functions SQL of install path 2 upgrades it, and applies again cleanly', async () => {
    const schema = await oldInstall('upg4', '0002_functions');
    const functions = installSql(schema, { part: 'functions' });
    await admin.query(functions);
    await admin.query(functions);
    expect(await acquireShape(schema)).toEqual(newest);
    expect(await acquireAsWorker(schema)).toMatchObject({ status: 'ok', tickets: [1], ticket_semaphores: ['api'] });
  });
});
