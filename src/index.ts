export { PgSemaphore, DISABLE_ENV } from './pg-semaphore.js';
export type {
  PgSemaphoreOptions,
  AcquireOptions,
  WaitOptions,
  HoldContext,
  SemaphoreInfo,
  SemaphoreStatus,
  HolderInfo,
  AcquiredTickets,
  Executor,
} from './pg-semaphore.js';
export { Hold } from './hold.js';
export type { TicketRequest, TicketRequestItem } from './request.js';
export type { HeldTicket } from './tickets.js';
export type { Logger } from './logger.js';
export { installSql, loadMigrations } from './migrations.js';
export type { InstallPart, Migration } from './migrations.js';
export { functionsSql } from './functions-sql.js';
export { semaphoreTables } from './schema.js';
export { DEFAULT_SCHEMA, MAX_NAME_LENGTH, MAX_TICKETS, validateSchemaName } from './validate.js';
export * from './errors/index.js';
