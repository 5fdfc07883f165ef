import { PgSemaphoreError } from './pg-semaphore-error.js';

/**
 * Tickets that were held are no longer held: the holding connection died, Postgres ended
 * the session after the idle-hold window, or a heartbeat failed. Another holder may
 * already have them, so the work done under them is no longer protected by the cap.
 */
export class TicketLostError extends PgSemaphoreError {
  /** The semaphore names whose tickets were lost. */
  readonly names: string[];

  constructor(names: string[], reason: string, options?: { cause?: unknown }) {
    super(`expected to keep the tickets of ${names.map((n) => JSON.stringify(n)).join(', ')} until release, got them lost: ${reason}`, options);
    this.name = 'TicketLostError';
    this.names = names;
  }
}
