import { PgSemaphoreError } from './pg-semaphore-error.js';

/**
 * No ticket was free and the caller asked not to wait (the default of `withTickets`).
 * Nothing was acquired.
 */
export class SemaphoreBusyError extends PgSemaphoreError {
  /** The semaphore names asked for. */
  readonly names: string[];

  constructor(names: string[]) {
    super(`expected a free ticket of ${names.map((n) => JSON.stringify(n)).join(', ')}, got none (pass wait: { timeout } to wait)`);
    this.name = 'SemaphoreBusyError';
    this.names = names;
  }
}
