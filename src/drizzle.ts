/**
 * `pg-semaphore/drizzle`: the Drizzle tables, for re-export into your own drizzle-kit schema.
 * Importing this subpath anywhere in a program also types a hold's `tx` as Drizzle's
 * `NodePgDatabase` (see {@link HoldTx}).
 * @packageDocumentation
 */
import type { NodePgDatabase } from 'drizzle-orm/node-postgres';
// Loads the main entry so the augmentation below has its target (tsconfig `paths` maps the
// name to src/index.ts here; in the package it is the package itself).
import type {} from 'pg-semaphore';
import type { HoldTx } from './tx.js';

export { semaphoreTables, semaphoreSchema, semaphores, tickets, waitingJobs } from './schema.js';
export { installSql } from './migrations.js';
export type { HoldTx };

declare module 'pg-semaphore' {
  /** Types a hold's `tx` as Drizzle's node-postgres database. */
  interface HoldTxTypes {
    tx: NodePgDatabase;
  }
}
