// Scale: 10,000 per-key semaphores. Acquiring one of them is still one round trip (inside
// your transaction) and uses the indexes, never a scan of the 10,000 semaphores or their
// tickets; timings are printed (compared with a schema holding one semaphore), only
// functional facts are asserted.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PgSemaphore } from '../../src/index.js';
import { databaseUrl, setupSchema } from '../helpers/db.js';
import { percentile } from '../helpers/fleet.js';

const KEYS = 10_000;
const ROUNDS = 300;

let many: Awaited<ReturnType<typeof setupSchema>>;
let one: Awaited<ReturnType<typeof setupSchema>>;
beforeAll(async () => {
  [many, one] = await Promise.all([setupSchema('scale_many'), setupSchema('scale_one')]);
  await one.sem.make('tenant:1', 1);
  const names = Array.from({ length: KEYS }, (_, i) => `tenant:${i + 1}`);
  for (let i = 0; i < KEYS; i += 2_000) {
    await many.admin.query(`SELECT "${many.schema}".ensure($1::text[], 1)`, [names.slice(i, i + 2_000)]);
  }
  await many.admin.query(`ANALYZE "${many.schema}".semaphores, "${many.schema}".tickets`);
}, 120_000);
afterAll(async () => {
  await many?.drop();
  await one?.drop();
});

/** Sequential scans of the library's tables so far (stats are flushed when a backend exits). */
async function seqScans(admin: pg.Pool, schema: string): Promise<Record<string, number>> {
  const { rows } = await admin.query<{ relname: string; seq_scan: string; idx_scan: string }>(
    `SELECT relname, seq_scan, coalesce(idx_scan, 0) AS idx_scan FROM pg_stat_user_tables WHERE schemaname = $1 AND relname IN ('semaphores', 'tickets')`,
    [schema],
  );
  return Object.fromEntries(rows.flatMap((r) => [[r.relname, Number(r.seq_scan)], [`${r.relname}_idx`, Number(r.idx_scan)]]));
}

async function run(ctx: Awaited<ReturnType<typeof setupSchema>>, keys: number) {
  const sem = new PgSemaphore({ connection: { connectionString: databaseUrl(), max: 2 }, schema: ctx.schema, applicationName: 'scale-probe' });
  const client = new pg.Client({ connectionString: databaseUrl(), application_name: 'scale-probe' });
  await client.connect();
  const holdMs: number[] = [];
  const txMs: number[] = [];
  const tripsPerHold: number[] = [];
  const tripsPerTx: number[] = [];
  try {
    // warm up both paths
    await (await sem.hold('tenant:1')).release();
    const scansBefore = await seqScans(ctx.admin, ctx.schema);
    for (let i = 0; i < ROUNDS; i++) {
      const name = `tenant:${1 + Math.floor(Math.random() * keys)}`;
      let trips = sem.roundTrips;
      let t = performance.now();
      const hold = await sem.hold(name);
      holdMs.push(performance.now() - t);
      tripsPerHold.push(sem.roundTrips - trips);
      expect(hold.tickets).toHaveLength(1);
      await hold.release();

      await client.query('BEGIN');
      trips = sem.roundTrips;
      t = performance.now();
      const got = await sem.tryAcquire(client, name);
      txMs.push(performance.now() - t);
      tripsPerTx.push(sem.roundTrips - trips);
      expect(got?.tickets).toHaveLength(1);
      await client.query('COMMIT');
    }
    await sem.close();
    await client.end();
    // the backends are gone, so their table statistics are flushed
    await new Promise((r) => setTimeout(r, 300));
    const scansAfter = await seqScans(ctx.admin, ctx.schema);
    return {
      holdMs,
      txMs,
      tripsPerHold: [...new Set(tripsPerHold)],
      tripsPerTx: [...new Set(tripsPerTx)],
      seqScans: { semaphores: scansAfter.semaphores! - scansBefore.semaphores!, tickets: scansAfter.tickets! - scansBefore.tickets! },
      idxScans: scansAfter.semaphores_idx! - scansBefore.semaphores_idx! + scansAfter.tickets_idx! - scansBefore.tickets_idx!,
    };
  } finally {
    await sem.close().catch(() => undefined);
    await client.end().catch(() => undefined);
  }
}

describe(`${KEYS.toLocaleString('en')} per-key semaphores`, () => {
  it('exist; acquiring any one is one round trip in your transaction, uses no table scan, and costs about what one semaphore costs', async () => {
    const list = await many.sem.list();
    expect(list).toHaveLength(KEYS);
    expect(list.every((s) => s.tickets === 1 && s.held === 0)).toBe(true);

    const single = await run(one, 1);
    const tenK = await run(many, KEYS);
    // one round trip inside your transaction; hold() costs the same whatever the number of semaphores
    expect(tenK.tripsPerTx).toEqual([1]);
    expect(single.tripsPerTx).toEqual([1]);
    expect(tenK.tripsPerHold).toEqual(single.tripsPerHold);
    // found through the indexes, never by scanning 10,000 semaphores / tickets
    // (the index scans show that the statistics of the measured backends were flushed)
    expect(tenK.idxScans).toBeGreaterThanOrEqual(ROUNDS);
    expect(tenK.seqScans).toEqual({ semaphores: 0, tickets: 0 });

    const fmt = (xs: number[]) => `p50 ${percentile(xs, 50).toFixed(2)} ms, p95 ${percentile(xs, 95).toFixed(2)} ms`;
    console.log(
      `[scale] ${ROUNDS} acquires of a random key: tryAcquire in your transaction (${tenK.tripsPerTx[0]} round trip): ` +
        `1 semaphore ${fmt(single.txMs)} | ${KEYS} semaphores ${fmt(tenK.txMs)}; hold() (${tenK.tripsPerHold[0]} round trips): ` +
        `1 semaphore ${fmt(single.holdMs)} | ${KEYS} semaphores ${fmt(tenK.holdMs)}; sequential scans during the ${KEYS} run: ` +
        `${JSON.stringify(tenK.seqScans)}, index scans ${tenK.idxScans}`,
    );
  }, 120_000);
});
