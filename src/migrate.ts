import type { Pool } from 'pg';
import { loadMigrations } from './migrations.js';
import { quoteSchema } from './validate.js';

/**
 * Applies pending migrations in one transaction, serialised by an advisory lock keyed on
 * the schema, and records them in the schema's own `__pg_semaphore_migrations` table (never
 * drizzle's `__drizzle_migrations`, whose newest-timestamp check would skip ours or yours).
 * @internal use {@link PgSemaphore.migrate}
 */
export async function migrate(pool: Pool, schema: string): Promise<{ applied: string[] }> {
  const qs = quoteSchema(schema);
  const client = await pool.connect();
  const onError = () => undefined;
  client.on('error', onError);
  let broken: Error | undefined;
  try {
    await client.query('BEGIN');
    await client.query(`SELECT pg_advisory_xact_lock(hashtext('pg-semaphore:migrate'), hashtext($1))`, [qs]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${qs}`);
    await client.query(
      `CREATE TABLE IF NOT EXISTS ${qs}.__pg_semaphore_migrations (tag text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`,
    );
    const { rows } = await client.query<{ tag: string }>(`SELECT tag FROM ${qs}.__pg_semaphore_migrations`);
    const done = new Set(rows.map((r) => r.tag));
    const applied: string[] = [];
    for (const m of loadMigrations(schema)) {
      if (done.has(m.tag)) continue;
      for (const statement of m.sql.split('--> statement-breakpoint')) {
        if (statement.trim()) await client.query(statement);
      }
      await client.query(`INSERT INTO ${qs}.__pg_semaphore_migrations (tag) VALUES ($1)`, [m.tag]);
      applied.push(m.tag);
    }
    await client.query('COMMIT');
    return { applied };
  } catch (err) {
    broken = err as Error;
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.removeListener('error', onError);
    client.release(broken);
  }
}
