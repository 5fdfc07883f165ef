// The SQL functions are a public surface: callable from plain SQL, as a user's migration would.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl, setupSchema } from '../helpers/db.js';
import { heldOf } from '../helpers/core.js';

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
    expect(rows[0]).toMatchObject({ status: 'ok', names: null });
    expect(rows[0].tickets).toHaveLength(1);
    expect(rows[0].semaphore_ids).toHaveLength(1);
    const { rows: two } = await client.query(`SELECT * FROM ${s}.acquire(ARRAY['openai', 'tenant:1'], ARRAY[2, 1], 'from-sql')`);
    expect(two[0].status).toBe('ok');
    expect(two[0].tickets).toHaveLength(3);
    expect(await heldOf(ctx.sem, 'openai')).toBe(3);
    const { rows: busy } = await client.query(`SELECT * FROM ${s}.acquire(ARRAY['tenant:1'], ARRAY[1])`);
    expect(busy[0]).toMatchObject({ status: 'busy', tickets: null });
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
