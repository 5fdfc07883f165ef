/**
 * Base class of every error pg-semaphore throws, so one `instanceof` check catches them all.
 * Each subclass sets `name`, so `err.name === 'TicketLostError'` works across module copies too.
 */
export class PgSemaphoreError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PgSemaphoreError';
  }
}
