import { PgSemaphoreError } from './pg-semaphore-error.js';

/** The holding modes of {@link PgSemaphoreOptions.holding}. */
export type HoldingMode = 'transaction' | 'session';

/**
 * What was asked cannot work in this holding mode, or the server cannot give this mode what
 * it needs: {@link Hold.tx} in session mode (no transaction holds the tickets), session mode
 * on Postgres 13 or older (no `idle_session_timeout` to free a frozen holder), or session mode
 * through a pooler in transaction mode (the session locks would stay on a server connection
 * other clients share). Nothing was taken.
 */
export class HoldingModeError extends PgSemaphoreError {
  /** The holding mode of the instance that refused. */
  readonly holding: HoldingMode;

  constructor(holding: HoldingMode, expected: string, got: string, options?: { cause?: unknown }) {
    super(`expected ${expected}, got ${got}`, options);
    this.name = 'HoldingModeError';
    this.holding = holding;
  }
}
