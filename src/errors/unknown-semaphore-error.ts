import { PgSemaphoreError } from './pg-semaphore-error.js';

/**
 * A semaphore that was asked for does not exist, and no `createWith` capacity was given
 * to create it on first use.
 */
export class UnknownSemaphoreError extends PgSemaphoreError {
  /** The names that do not exist. */
  readonly names: string[];

  constructor(names: string[]) {
    super(
      `expected existing semaphore${names.length > 1 ? 's' : ''}, got unknown ${names.map((n) => JSON.stringify(n)).join(', ')}` +
        ' (create it with make(), or pass createWith to create it on first use)',
    );
    this.name = 'UnknownSemaphoreError';
    this.names = names;
  }
}
