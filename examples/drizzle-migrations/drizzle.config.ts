import { defineConfig } from 'drizzle-kit';

// drizzle-kit config of the example app; run drizzle-kit from this folder (see README.md).
// drizzle-kit keeps its own bookkeeping table in schema "drizzle" by default. If you move it
// with `migrations: { schema }`, do not pick pg-semaphore's schema: the first migration's
// `CREATE SCHEMA "semaphore"` would then fail because the migrator created it already.
export default defineConfig({
  dialect: 'postgresql',
  schema: './schema.ts',
  out: './drizzle',
  // Only `migrate` connects; `generate` works without a database.
  dbCredentials: { url: process.env.DATABASE_URL! },
});
