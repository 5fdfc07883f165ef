import { UnrecoverableError } from 'bullmq';
import { PG_SEMAPHORE_ERROR } from '../errors/pg-semaphore-error.js';

/**
 * A job waited for tickets longer than its reschedule budget allows (`maxReschedules` or
 * `maxWaitTime`). It extends BullMQ's `UnrecoverableError`, so the job fails at once
 * instead of being retried into the same wait. It carries pg-semaphore's error brand, so
 * `err instanceof PgSemaphoreError` is true for it as well.
 */
export class RescheduleBudgetError extends UnrecoverableError {
  /** How many times the job had been put back. */
  readonly reschedules: number;
  /** How long the job had waited, in milliseconds (since it was added). */
  readonly waitedMs: number;

  constructor(message: string, reschedules: number, waitedMs: number) {
    super(message);
    this.name = 'RescheduleBudgetError';
    this.reschedules = reschedules;
    this.waitedMs = waitedMs;
  }
}
Object.defineProperty(RescheduleBudgetError.prototype, PG_SEMAPHORE_ERROR, { value: true });
