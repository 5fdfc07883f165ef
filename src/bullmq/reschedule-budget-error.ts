import { UnrecoverableError } from 'bullmq';

/**
 * A job waited for tickets longer than its reschedule budget allows (`maxReschedules` or
 * `maxWaitTime`). It extends BullMQ's `UnrecoverableError`, so the job fails at once
 * instead of being retried into the same wait.
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
