import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl, setupSchema, waitFor } from '../helpers/db.js';
import { gatedLockShim } from '../helpers/core.js';

// The fast path's "ticket vanished" result: acquire read a ticket row, a shrink deleted it
// and committed, acquire then locked it and its re-read found no row. It answers busy with
// the semaphore's name (not {NULL}: the re-read's settings must not land in the name).
//
// Provoked deterministically: the acquiring session's search_path puts a schema of the test
// before pg_catalog, whose pg_try_advisory_xact_lock waits on a gate (held by the test) before
// trying the lock of the ticket being deleted. The acquire's first query has its snapshot by
// then; the shrink commits while it waits.

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let pool: pg.Pool;
beforeAll(async () => {
  ctx = await setupSchema('vanish');
  pool = new pg.Pool({ connectionString: databaseUrl(), max: 3 });
});
afterAll(async () => {
  await pool?.end();
  await ctx?.drop();
});

describe('acquire fast path, a ticket deleted by a concurrent shrink', () => {
  it('answers busy naming the semaphore, and holds nothing', async () => {
    await ctx.sem.make('vanish', 3);
    const s = ctx.schema;
    let shim: Awaited<ReturnType<typeof gatedLockShim>> | undefined;
    const shrinker = await pool.connect();
    const acquirer = await pool.connect();
    try {
      const pid = (await acquirer.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
      const ticket3 = (await pool.query(`SELECT t.id FROM "${s}".tickets t JOIN "${s}".semaphores m ON m.id = t.semaphore_id WHERE m.name = 'vanish' AND t.no = 3`)).rows[0].id as number;
      shim = await gatedLockShim(ctx.admin, s, ticket3, 'pg_try_advisory_xact_lock', 4242);
      await shrinker.query('SELECT pg_advisory_lock(4242, $1)', [ticket3]); // the gate
      await acquirer.query(`SET search_path = "${shim.shim}", pg_catalog, public`);
      await acquirer.query('BEGIN');
      // searches from ticket 3, the one about to be deleted
      const pending = acquirer.query(`SELECT * FROM "${s}".acquire('{vanish}', '{1}', NULL, NULL, '{3}')`);
      await waitFor(async () => {
        const { rows } = await pool.query('SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1', [pid]);
        return rows[0]?.wait_event_type === 'Lock';
      }, { what: 'the acquire to wait at the gate' });
      await ctx.sem.make('vanish', 2); // deletes ticket 3 and commits
      await shrinker.query('SELECT pg_advisory_unlock(4242, $1)', [ticket3]);
      const { rows } = await pending;
      expect(rows[0]).toMatchObject({ status: 'busy', names: ['vanish'], tickets: null });
      // nothing is held as a ticket: the settings were not set either
      const held = await acquirer.query(`SELECT current_setting('pg_semaphore.held_' || to_hex("${s}"._ns()), true) AS held`);
      expect(held.rows[0].held ?? '').toBe('');
      await acquirer.query('ROLLBACK');
    } finally {
      await acquirer.query('ROLLBACK').catch(() => undefined);
      shrinker.release(true);
      acquirer.release(true);
      await shim?.drop();
    }
  });
});
