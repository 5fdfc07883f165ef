// The plans the SQL functions' ticket queries get on a large semaphore whose tickets table has
// no statistics yet (right after make(); autovacuum analyzes it a minute or so later, and is
// kept off here), read with auto_explain (nested statements, as NOTICEs to this client) under
// the generic plans PL/pgSQL uses after its first calls. The ordered searches must walk the
// (semaphore_id, no) index and stop at the first free ticket, never read and sort all of them,
// and the re-reads must fetch the tickets taken by their ids, not every ticket of the semaphore.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl, setupSchema } from '../helpers/db.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let client: pg.Client;
let s: string;
const plans: unknown[] = [];
let explains = false;

beforeAll(async () => {
  ctx = await setupSchema('plans');
  s = `"${ctx.schema}"`;
  await ctx.admin.query(`ALTER TABLE ${s}.tickets SET (autovacuum_enabled = false)`);
  await ctx.sem.make('big', 1000);
  await ctx.sem.make('small', 5);
  client = new pg.Client({ connectionString: databaseUrl() });
  await client.connect();
  client.on('notice', (n) => {
    const text = n.message ?? '';
    const json = text.slice(text.indexOf('\n') + 1);
    if (text.startsWith('duration:') && json.trim().startsWith('{')) plans.push(JSON.parse(json));
  });
  // auto_explain needs a superuser and the contrib module: without them the tests skip
  explains = await client.query(`LOAD 'auto_explain'`).then(
    () => true,
    () => false,
  );
  await client.query(`SET plan_cache_mode = force_generic_plan`);
});
afterAll(async () => {
  await client?.end();
  await ctx?.drop();
});

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Index Name'?: string;
  Filter?: string;
  Plans?: PlanNode[];
}

/** The plans auto_explain logged (nested statements too) while `run` ran. */
async function plansOf(run: () => Promise<unknown>): Promise<Array<{ Plan: PlanNode }>> {
  await client.query(
    `SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on; SET auto_explain.log_format = 'json'; SET auto_explain.log_level = 'notice'`,
  );
  plans.length = 0;
  try {
    await run();
  } finally {
    await client.query('SET auto_explain.log_min_duration = -1');
  }
  expect(plans.length, 'auto_explain logged the statements').toBeGreaterThan(0);
  return [...plans] as Array<{ Plan: PlanNode }>;
}

/** Every scan of the tickets table in the plans logged while `run` ran, as "node type/index/filter" (and "/sorted" under a Sort). */
async function ticketScans(run: () => Promise<unknown>): Promise<string[]> {
  const logged = await plansOf(run);
  const scans: string[] = [];
  const walk = (node: PlanNode, parent?: PlanNode) => {
    const index = node['Index Name'] ?? node.Plans?.find((p) => p['Index Name'])?.['Index Name'];
    if (node['Relation Name'] === 'tickets') scans.push(`${node['Node Type']}/${index ?? '-'}/${node.Filter ?? '-'}${parent?.['Node Type'] === 'Sort' ? '/sorted' : ''}`);
    for (const p of node.Plans ?? []) walk(p, node);
  };
  for (const p of logged) walk(p.Plan);
  return scans;
}

/**
 * What a ticket scan may be: an ordered index walk for the searches (filtered only by the
 * tickets this transaction holds already), a primary-key fetch for the re-reads.
 */
const GOOD = /^(Index Scan\/tickets_semaphore_no_key\/(-|\(id <> ALL .*\))|Index Scan\/tickets_pkey\/-|Bitmap Heap Scan\/tickets_pkey\/-)$/;

describe('ticket queries of the SQL functions on a large semaphore without statistics', () => {
  it('acquire(), one ticket and several semaphores, and acquire_session(): ordered index walks and fetches by id only', async ({ skip }) => {
    if (!explains) skip();
    const stats = await ctx.admin.query(`SELECT count(*)::int AS n FROM pg_stats WHERE schemaname = $1 AND tablename = 'tickets'`, [ctx.schema]);
    expect(stats.rows[0].n).toBe(0);
    // a few calls first, each in its own transaction (the tickets return at its end)
    const cycle = async () => {
      await client.query('BEGIN');
      await client.query(`SELECT * FROM ${s}.acquire('{big}', '{1}', NULL, NULL, '{500}')`);
      await client.query(`SELECT * FROM ${s}.acquire('{big,small}', '{2,1}', NULL, NULL, '{700,1}')`);
      await client.query('COMMIT');
      const got = await client.query<{ status: string; ticket_ids: number[] }>(
        `SELECT * FROM ${s}.acquire_session('{0}', '{big}', '{1}', NULL, '{300}')`,
      );
      expect(got.rows[0]!.status).toBe('ok');
      await client.query(`SELECT pg_advisory_unlock(${s}._ns(), i) FROM unnest($1::integer[]) i`, [got.rows[0]!.ticket_ids]);
    };
    for (let i = 0; i < 2; i++) await cycle();
    const scans = await ticketScans(cycle);
    expect(scans.length).toBeGreaterThanOrEqual(5);
    expect(scans.filter((x) => !GOOD.test(x)), `ticket scans: ${scans.join(', ')}`).toEqual([]);
  });
});

describe("wake() and another release's check", () => {
  it('a waiter marker held exclusively by another release (its check, not committed yet): the NOTIFY to every listener, no search, no pg_locks read', async ({ skip }) => {
    if (!explains) skip();
    const id = (await ctx.admin.query<{ id: number }>(`SELECT id FROM ${s}.semaphores WHERE name = 'small'`)).rows[0]!.id;
    const readsLocks = (logged: Array<{ Plan: PlanNode }>) => JSON.stringify(logged).includes('pg_lock_status');
    const other = await ctx.admin.connect();
    const waiter = new pg.Client({ connectionString: databaseUrl() });
    await waiter.connect();
    try {
      await other.query('BEGIN');
      const got = await other.query<{ got: boolean }>(`SELECT pg_try_advisory_xact_lock(${s}._ns() # 2, $1) AS got`, [id]);
      expect(got.rows[0]!.got).toBe(true);
      let sent: number | undefined;
      const quiet = await plansOf(async () => {
        sent = (await client.query<{ n: number }>(`SELECT ${s}.wake($1::integer[]) AS n`, [[id]])).rows[0]!.n;
      });
      // the NOTIFY without a pid (for a waiter queued behind that release), and no search
      expect(sent).toBe(1);
      expect(readsLocks(quiet)).toBe(false);
      await other.query('ROLLBACK');
      // a waiter of an older library (no slot): wake() finds it through pg_locks and names it
      await waiter.query(`SELECT ${s}.hears(); SELECT ${s}.watch('{small}')`);
      const found = await plansOf(async () => {
        sent = (await client.query<{ n: number }>(`SELECT ${s}.wake($1::integer[]) AS n`, [[id]])).rows[0]!.n;
      });
      expect(sent).toBe(1);
      expect(readsLocks(found)).toBe(true);
    } finally {
      await other.query('ROLLBACK').catch(() => undefined);
      other.release();
      await waiter.end();
    }
  });
});
