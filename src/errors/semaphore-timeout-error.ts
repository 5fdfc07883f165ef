import { PgSemaphoreError } from './pg-semaphore-error.js';

/**
 * Waiting ran out of time: for free tickets (`wait.timeout`), or for held tickets to be
 * returned before a shrink or destroy (`timeout`). Nothing was acquired or changed.
 */
export class SemaphoreTimeoutError extends PgSemaphoreError {
  /** What was waited for: `'acquire'`, `'make'` or `'destroy'`. */
  readonly operation: 'acquire' | 'make' | 'destroy';
  /** The semaphore names involved. */
  readonly names: string[];
  /** How long was waited, in milliseconds. */
  readonly timeoutMs: number;

  constructor(operation: 'acquire' | 'make' | 'destroy', names: string[], timeoutMs: number, detail?: string, options?: { cause?: unknown }) {
    super(
      detail ??
        `expected ${operation === 'acquire' ? 'free tickets' : 'held tickets to be returned'} of ${names.map((n) => JSON.stringify(n)).join(', ')} within ${timeoutMs} ms, got none in time`,
      options,
    );
    this.name = 'SemaphoreTimeoutError';
    this.operation = operation;
    this.names = names;
    this.timeoutMs = timeoutMs;
  }
}
