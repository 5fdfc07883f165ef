import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { inject } from 'vitest';
import { PgSemaphore, type PgSemaphoreOptions } from '../../src/index.js';

/** The Postgres the tests use (see global-setup). */
export function databaseUrl(): string {
  return inject('databaseUrl');
}

/**
 * A fresh schema name for one test file. CI runs the suite twice: once with the prefix
 * `semaphore` and once with PGSEM_TEST_SCHEMA_PREFIX set to another name, so nothing may
 * depend on the default schema name.
 */
export function testSchemaName(label: string): string {
  const prefix = process.env.PGSEM_TEST_SCHEMA_PREFIX ?? 'semaphore';
  return `${prefix}_${label}_${randomBytes(3).toString('hex')}`.toLowerCase().replace(/[^a-z0-9_]/g, '_');
}

/**
 * A migrated schema of its own for one test file, with a PgSemaphore on it and an admin
 * pool. Call `drop()` in afterAll: it closes everything and drops the schema.
 */
export async function setupSchema(label: string, options: Partial<PgSemaphoreOptions> = {}) {
  const schema = testSchemaName(label);
  const admin = new pg.Pool({ connectionString: databaseUrl(), max: 4 });
  admin.on('error', () => undefined);
  const sem = new PgSemaphore({ connection: databaseUrl(), schema, ...options });
  await sem.migrate();
  return {
    schema,
    sem,
    admin,
    /** Another PgSemaphore on the same schema (its own pool). */
    another(extra: Partial<PgSemaphoreOptions> = {}) {
      return new PgSemaphore({ connection: databaseUrl(), schema, ...options, ...extra });
    },
    async drop() {
      await sem.close();
      // End stray sessions of this schema's tests so DROP is not blocked by a held ticket.
      await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await admin.end();
    },
  };
}

/** Polls `check` until it returns a truthy value or the deadline passes. */
export async function waitFor<T>(check: () => Promise<T> | T, { timeout = 10_000, interval = 20, what = 'condition' } = {}): Promise<T> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}
