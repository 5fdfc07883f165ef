// What one read of pg_locks costs as the server's lock table fills: the wake-up path
// (wake(), run by a release when a semaphore has waiters) reads pg_locks once, and every held
// ticket is a lock entry, so at a large cap that read grows with the tickets held fleet-wide.
// Used by docs/SCALE.md. Starts the benchmark's own throwaway Postgres (bench/lib/postgres.ts).
//
//   npx tsx bench/locks-scan.ts
import pg from 'pg';
import { startOwnPostgres } from './lib/postgres.js';

const own = await startOwnPostgres((s) => process.stderr.write(`${s}\n`));
try {
  const holder = new pg.Client({ connectionString: own.url('postgres') });
  const reader = new pg.Client({ connectionString: own.url('postgres') });
  await holder.connect();
  await reader.connect();
  // the shape of wake()'s read: granted two-key advisory ShareLocks of two namespaces in this database
  const scan = `SELECT count(*) FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted AND l.mode = 'ShareLock'
       AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
       AND ((l.classid::bigint = 7 AND l.objid::bigint = ANY ('{1,2,3}'::bigint[])) OR (l.classid::bigint = 8 AND l.objid = 0))`;
  const rounds = 300;
  let held = 0;
  console.log('| ticket locks held on the server | one pg_locks read (wake-up path), ms |');
  console.log('| ---: | ---: |');
  for (const n of [0, 100, 200, 500, 1000, 2000, 5000]) {
    if (n > held) {
      await holder.query(`SELECT count(pg_advisory_lock(1, i)) FROM generate_series($1::int, $2::int) i`, [held + 1, n]);
      held = n;
    }
    const runs: number[] = [];
    for (let k = 0; k < 5; k++) {
      const r = (await reader.query(`DO $$ DECLARE t0 timestamptz := clock_timestamp(); n bigint; BEGIN
          FOR i IN 1..${rounds} LOOP EXECUTE $q$${scan}$q$ INTO n; END LOOP;
          PERFORM set_config('bench.ms', ((extract(epoch FROM clock_timestamp() - t0) * 1000) / ${rounds})::text, false);
        END $$`).then(() => reader.query<{ ms: string }>(`SELECT current_setting('bench.ms') AS ms`))).rows[0]!.ms;
      runs.push(Number(r));
    }
    runs.sort((a, b) => a - b);
    console.log(`| ${n} | ${runs[0]!.toFixed(3)} (median of 5 x ${rounds}: ${runs[2]!.toFixed(3)}) |`);
  }
  await holder.end();
  await reader.end();
} finally {
  await own.stop();
}
