import { sql } from 'drizzle-orm';
import { bigint, check, index, integer, pgSchema, text, timestamp, unique } from 'drizzle-orm/pg-core';
import { DEFAULT_SCHEMA, validateSchemaName } from './validate.js';

/**
 * Builds pg-semaphore's Drizzle tables inside the Postgres schema you name.
 *
 * Re-export the result from your own Drizzle schema file so `drizzle-kit generate` writes
 * `CREATE SCHEMA` and the tables into your migration history; then add the library's SQL
 * functions with a `drizzle-kit generate --custom` migration holding {@link installSql}'s
 * functions part (see the README, "Install path 2"). Tables are not a public interface:
 * read and change semaphores through the SQL functions or {@link PgSemaphore}.
 *
 * @param schemaName - A plain lower-case identifier, not starting with `pg_`.
 * @default schemaName `'semaphore'`
 * @example
 * ```ts
 * // src/db/schema.ts of your app
 * import { semaphoreTables } from 'pg-semaphore/drizzle';
 * export const { schema: semaphoreSchema, semaphores, tickets } = semaphoreTables('semaphore');
 * ```
 */
export function semaphoreTables(schemaName: string = DEFAULT_SCHEMA) {
  const schema = pgSchema(validateSchemaName(schemaName));
  const semaphores = schema.table(
    'semaphores',
    {
      id: integer('id').primaryKey().generatedAlwaysAsIdentity(),
      name: text('name').notNull(),
      tickets: integer('tickets').notNull(),
      createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
      updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
    },
    (t) => [
      unique('semaphores_name_key').on(t.name),
      check('semaphores_name_length', sql`char_length(${t.name}) BETWEEN 1 AND 200`),
      check('semaphores_tickets_range', sql`${t.tickets} BETWEEN 0 AND 10000`),
    ],
  );
  const tickets = schema.table(
    'tickets',
    {
      id: integer('id').primaryKey().generatedAlwaysAsIdentity(),
      semaphoreId: integer('semaphore_id')
        .notNull()
        .references(() => semaphores.id, { onDelete: 'cascade' }),
      no: integer('no').notNull(),
    },
    (t) => [unique('tickets_semaphore_no_key').on(t.semaphoreId, t.no)],
  );
  const waitingJobs = schema.table(
    'waiting_jobs',
    {
      id: bigint('id', { mode: 'number' }).primaryKey().generatedAlwaysAsIdentity(),
      semaphoreId: integer('semaphore_id')
        .notNull()
        .references(() => semaphores.id, { onDelete: 'cascade' }),
      queue: text('queue').notNull(),
      jobId: text('job_id').notNull(),
      since: timestamp('since', { withTimezone: true }).notNull().defaultNow(),
    },
    (t) => [unique('waiting_jobs_key').on(t.semaphoreId, t.queue, t.jobId), index('waiting_jobs_order').on(t.semaphoreId, t.id)],
  );
  return { schema, semaphores, tickets, waitingJobs };
}

const defaults = semaphoreTables(DEFAULT_SCHEMA);
/** The `semaphore` Postgres schema object (default schema name). */
export const semaphoreSchema = defaults.schema;
/** The semaphores table in the default schema: one row per semaphore. */
export const semaphores = defaults.semaphores;
/** The tickets table in the default schema: one row per ticket; a ticket's id is its advisory-lock key. */
export const tickets = defaults.tickets;
/** Jobs the BullMQ wrapper put back to wait for a ticket, oldest first, so a release can promote them. */
export const waitingJobs = defaults.waitingJobs;
