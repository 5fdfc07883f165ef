import { UnrecoverableError } from 'bullmq';
import { PG_SEMAPHORE_ERROR } from '../errors/pg-semaphore-error.js';

/**
 * A job was cancelled (`worker.cancelJob(id, reason)` or `worker.cancelAllJobs(reason)`)
 * while it waited in its worker for tickets, before its processor started. The message
 * carries the reason (BullMQ records only an error's message as `failedReason`), and
 * `reason` keeps it as it was given.
 *
 * It extends BullMQ's `UnrecoverableError`, BullMQ's documented way to end a cancelled job:
 * the job fails at once instead of being retried into the same wait (this replaces
 * `job.discard()`, which BullMQ 6 removed). It carries pg-semaphore's error brand, so
 * `err instanceof PgSemaphoreError` is true for it as well.
 *
 * @example
 * ```ts
 * worker.cancelJob(job.id, 'user asked');
 * // the job fails with failedReason 'cancelled while waiting for a ticket of "openai": user asked'
 * ```
 */
export class WaitCancelledError extends UnrecoverableError {
  /** The cancellation reason as given to `cancelJob` (the AbortSignal's reason). */
  readonly reason: unknown;

  constructor(names: readonly string[], reason: unknown) {
    super(`cancelled while waiting for a ticket of ${names.map((n) => JSON.stringify(n)).join(', ')}: ${describeReason(reason)}`);
    this.name = 'WaitCancelledError';
    this.reason = reason;
  }
}
Object.defineProperty(WaitCancelledError.prototype, PG_SEMAPHORE_ERROR, { value: true });

function describeReason(reason: unknown): string {
  if (reason instanceof Error) return reason.message || reason.name;
  if (reason === undefined) return 'no reason given';
  if (typeof reason === 'string') return reason;
  try {
    return JSON.stringify(reason) ?? String(reason);
  } catch {
    return String(reason);
  }
}
