/**
 * The brand every error pg-semaphore throws carries on its prototype. `Symbol.for`, so every
 * copy of the library loaded in a process (ESM and CommonJS builds, bundled entries) shares it.
 * @internal
 */
export const PG_SEMAPHORE_ERROR = Symbol.for('pg-semaphore.error');

/**
 * Base class of every error pg-semaphore throws, so one `instanceof` check catches them all.
 * Each subclass sets `name`, so `err.name === 'TicketLostError'` works across module copies too.
 *
 * `err instanceof PgSemaphoreError` checks the library's brand rather than the prototype chain,
 * so it is also true for `RescheduleBudgetError` (which must extend BullMQ's `UnrecoverableError`)
 * and for errors from another copy of the library. `instanceof` a subclass works as usual.
 */
export class PgSemaphoreError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PgSemaphoreError';
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    if (this !== PgSemaphoreError) return Function.prototype[Symbol.hasInstance].call(this, value);
    return typeof value === 'object' && value !== null && (value as { [PG_SEMAPHORE_ERROR]?: unknown })[PG_SEMAPHORE_ERROR] === true;
  }
}
Object.defineProperty(PgSemaphoreError.prototype, PG_SEMAPHORE_ERROR, { value: true });
