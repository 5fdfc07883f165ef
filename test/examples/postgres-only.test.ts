import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { testSchemaName } from '../helpers/db.js';
import { main } from '../../examples/postgres-only/postgres-only.js';

const databaseUrl = inject('databaseUrl');
const schema = testSchemaName('ex_pgonly');
const bqSchema = `bq_${schema}`;

afterAll(async () => {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  for (const s of [schema, bqSchema]) await client.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
  await client.end();
});

describe('examples/postgres-only', () => {
  it('caps the renderer on a Postgres-only fleet, shows the holders from pg_locks and drops its schemas', async () => {
    const result = await main({ databaseUrl, schema, bqSchema, jobs: 60, cap: 3, hosts: 2, concurrency: 8, log: () => undefined });
    expect(result).toMatchObject({ ok: true, cap: 3, jobs: 60, completed: 60, failed: 0, ticketsHeldAfter: 0 });
    expect(result.maxInFlight).toBeLessThanOrEqual(3);
    expect(result.maxHolders).toBeGreaterThan(0);
    expect(result.maxHolders).toBeLessThanOrEqual(3);
    for (const h of result.holdersSample) {
      expect(h.pid).toBeGreaterThan(0);
      expect(h.ticket).toBeGreaterThanOrEqual(1);
      expect(h.ticket).toBeLessThanOrEqual(3);
    }

    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    const { rowCount } = await client.query('SELECT 1 FROM information_schema.schemata WHERE schema_name = ANY($1)', [[schema, bqSchema]]);
    await client.end();
    expect(rowCount).toBe(0);
  });
});
