/**
 * `pg-semaphore`: the core. Its declarations load nothing from drizzle-orm (whose own
 * declarations need `skipLibCheck`); the Drizzle tables and the Drizzle type of a hold's `tx`
 * come from `pg-semaphore/drizzle`.
 * @packageDocumentation
 */
export { PgSemaphore, DISABLE_ENV } from './pg-semaphore.js';
export type {
  PgSemaphoreOptions,
  AcquireOptions,
  TryHoldOptions,
  WaitOptions,
  HoldContext,
  SemaphoreInfo,
  SemaphoreStatus,
  HolderInfo,
  AcquiredTickets,
  Executor,
} from './pg-semaphore.js';
import type { Hold as HoldClass } from './hold.js';
/**
 * Tickets held by an open transaction on a connection of their own, from
 * {@link PgSemaphore.hold} or {@link PgSemaphore.tryHold}; give them back with `release()`.
 * A type only (an alias, so that no one calls the library's internal constructor).
 */
export type Hold = HoldClass;
export type { ReleaseResult } from './hold.js';
export type { HoldTx, HoldTxTypes, TxWithoutDrizzleTypes } from './tx.js';
export type { TicketRequest, TicketRequestItem } from './request.js';
export type { HeldTicket } from './tickets.js';
export type { Logger } from './logger.js';
export { installSql } from './migrations.js';
export type { InstallPart } from './migrations.js';
export { functionsSql } from './functions-sql.js';
export { DEFAULT_SCHEMA, MAX_NAME_LENGTH, MAX_TICKETS, validateSchemaName } from './validate.js';
export * from './errors/index.js';
