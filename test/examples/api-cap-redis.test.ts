import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { testSchemaName } from '../helpers/db.js';
import { main } from '../../examples/api-cap-redis/api-cap-redis.js';

const databaseUrl = inject('databaseUrl');
const schema = testSchemaName('ex_api_redis');
const prefix = `pgsem_test_${schema}`;

afterAll(async () => {
  // main() removes its schema itself; make sure, whatever happened.
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await client.end();
});

describe('examples/api-cap-redis', () => {
  it('caps the partner API across hosts on BullMQ Redis, runs every job once and cleans up', async () => {
    const lines: string[] = [];
    const result = await main({ databaseUrl, redisUrl: inject('redisUrl'), schema, prefix, jobs: 80, cap: 3, hosts: 3, concurrency: 10, log: (l) => lines.push(l) });
    expect(result.maxInFlight).toBeLessThanOrEqual(result.cap);
    expect(result.maxInFlight).toBeGreaterThan(0);
    expect(result).toMatchObject({ ok: true, cap: 3, jobs: 80, completed: 80, failed: 0, apiCalls: 80, ticketsHeldAfter: 0 });
    expect(result.perHost.reduce((a, b) => a + b, 0)).toBe(80);
    expect(lines.at(-1)).toMatch(/at most \d calls at once \(cap 3\)/);

    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    const { rowCount } = await client.query('SELECT 1 FROM information_schema.schemata WHERE schema_name = $1', [schema]);
    await client.end();
    expect(rowCount).toBe(0);
  });
});
