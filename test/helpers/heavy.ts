// Test files that start fleets of worker processes against the shared Postgres open many
// connections each (a BullMQ-on-Postgres fleet peaks around 60). The machine's test server
// allows 100 in all, and vitest runs two files at once: two such files together ran it out of
// connection slots ("sorry, too many clients already"). So each of them takes this one
// Postgres advisory lock for its whole run: at most one fleet file runs at a time, while a
// light file may run beside it.
import pg from 'pg';
import { afterAll, beforeAll } from 'vitest';
import { databaseUrl } from './db.js';

/** How long a fleet file may wait for another to finish (they run about 1-2 minutes each). */
const WAIT_MS = 540_000;

/**
 * Call once at the top level of a fleet test file, before its own hooks: its tests then run
 * while no other fleet file runs.
 */
export function oneFleetAtATime(): void {
  let client: pg.Client | undefined;
  beforeAll(async () => {
    client = new pg.Client({ connectionString: databaseUrl(), application_name: 'pgsem-tests:fleet-slot' });
    client.on('error', () => undefined);
    await client.connect();
    await client.query(`SET lock_timeout = ${WAIT_MS}`);
    await client.query(`SELECT pg_advisory_lock(hashtext('pg-semaphore tests: one fleet file at a time'))`);
  }, WAIT_MS + 10_000);
  afterAll(async () => {
    // Ending the session drops the lock.
    await client?.end().catch(() => undefined);
  });
}
