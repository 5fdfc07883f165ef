import { PgSemaphoreError } from './pg-semaphore-error.js';

/**
 * An argument was not what pg-semaphore expected. Thrown before anything is sent to
 * Postgres, so nothing changed.
 *
 * @example
 * ```ts
 * await sem.make('', 5); // InvalidArgumentError: name: expected a string of 1 to 200 characters, got ""
 * ```
 */
export class InvalidArgumentError extends PgSemaphoreError {
  /** Which argument or option was wrong, e.g. `tickets`. */
  readonly argument: string;
  /** What was expected, in words. */
  readonly expected: string;
  /** What came in (the value itself). */
  readonly received: unknown;

  constructor(argument: string, expected: string, received: unknown) {
    super(`${argument}: expected ${expected}, got ${describe(received)}`);
    this.name = 'InvalidArgumentError';
    this.argument = argument;
    this.expected = expected;
    this.received = received;
  }
}

function describe(value: unknown): string {
  if (typeof value === 'string') {
    const shown = value.length > 40 ? `${JSON.stringify(value.slice(0, 40))}… (${value.length} characters)` : JSON.stringify(value);
    return shown;
  }
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return String(value);
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === 'function') return 'a function';
  return `an object (${Object.prototype.toString.call(value)})`;
}
