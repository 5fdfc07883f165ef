// The Drizzle schema of a small app that keeps pg-semaphore's tables in its own
// drizzle-kit migration history (install path 2 of the README: "semaphores in your own
// Drizzle migrations"). drizzle-kit reads this file (see drizzle.config.ts).
import { integer, pgTable, text, timestamp } from 'drizzle-orm/pg-core';
// This repository's examples import the library from its sources so they run without a
// build. A real project writes:
//   import { semaphoreTables } from 'pg-semaphore/drizzle';
import { semaphoreTables } from '../../src/schema.js';

// pg-semaphore's tables in the Postgres schema "semaphore". Export the schema object too:
// without it drizzle-kit writes the CREATE TABLEs but no CREATE SCHEMA. The tables are not
// a public interface: read and change semaphores through the SQL functions or PgSemaphore.
export const { schema: semaphoreSchema, semaphores, tickets, waitingJobs } = semaphoreTables('semaphore');

// A table of the app's own, in the same history.
export const appReports = pgTable('app_reports', {
  id: integer('id').primaryKey().generatedAlwaysAsIdentity(),
  title: text('title').notNull(),
  summary: text('summary'),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
});
