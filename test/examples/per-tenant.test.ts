import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { testSchemaName } from '../helpers/db.js';
import { main } from '../../examples/per-tenant/per-tenant.js';

const databaseUrl = inject('databaseUrl');
const schemas: string[] = [];

afterAll(async () => {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  for (const s of schemas) await client.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
  await client.end();
});

async function schemasLeft(names: string[]): Promise<number> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  const { rowCount } = await client.query('SELECT 1 FROM information_schema.schemata WHERE schema_name = ANY($1)', [names]);
  await client.end();
  return rowCount ?? 0;
}

describe('examples/per-tenant', () => {
  it('holds the per-tenant cap and the global cap together (BullMQ on Postgres), creating tenant semaphores on first use', async () => {
    const schema = testSchemaName('ex_tenant');
    const bqSchema = `bq_${schema}`;
    schemas.push(schema, bqSchema);
    const result = await main({ databaseUrl, backend: 'postgres', schema, bqSchema, jobs: 60, tenantCap: 2, cap: 5, log: () => undefined });
    expect(result).toMatchObject({ ok: true, completed: 60, failed: 0, ticketsHeldAfter: 0 });
    expect(result.maxInFlight).toBeLessThanOrEqual(5);
    for (const [tenant, t] of Object.entries(result.tenants)) {
      expect(t.maxInFlight, tenant).toBeLessThanOrEqual(2);
      expect(t.completed, tenant).toBe(t.jobs);
    }
    expect(Object.keys(result.tenants).sort()).toEqual(['acme', 'globex', 'hooli', 'initech', 'umbrella']);
    expect(result.semaphores).toEqual({
      'partner-api': 5,
      'tenant:acme': 2,
      'tenant:globex': 2,
      'tenant:hooli': 2,
      'tenant:initech': 2,
      'tenant:umbrella': 2,
    });
    expect(await schemasLeft([schema, bqSchema])).toBe(0);
  });

  it('per-tenant caps alone (no global cap), BullMQ on Redis', async () => {
    const schema = testSchemaName('ex_tenant_only');
    schemas.push(schema);
    const result = await main({
      databaseUrl,
      backend: 'redis',
      redisUrl: inject('redisUrl'),
      prefix: `pgsem_test_${schema}`,
      schema,
      jobs: 40,
      tenantCap: 2,
      cap: 0,
      log: () => undefined,
    });
    expect(result).toMatchObject({ ok: true, completed: 40, failed: 0, ticketsHeldAfter: 0 });
    for (const t of Object.values(result.tenants)) expect(t.maxInFlight).toBeLessThanOrEqual(2);
    expect(result.maxInFlight).toBeLessThanOrEqual(2 * Object.keys(result.tenants).length);
    expect(Object.keys(result.semaphores).every((n) => n.startsWith('tenant:'))).toBe(true);
    expect(await schemasLeft([schema])).toBe(0);
  });
});
