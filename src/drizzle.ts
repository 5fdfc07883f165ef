/**
 * `pg-semaphore/drizzle`: the Drizzle tables, for re-export into your own drizzle-kit schema.
 * @packageDocumentation
 */
export { semaphoreTables, semaphoreSchema, semaphores, tickets, waitingJobs } from './schema.js';
export { installSql } from './migrations.js';
