import { PgSemaphoreError } from './pg-semaphore-error.js';

/**
 * What is wrong with the install:
 * - `'missing'`: the schema or its tables do not exist (`migrate()` was never run);
 * - `'functions-missing'`: the tables exist but not the library's SQL functions (install path 2
 *   with the tables from your drizzle-kit history and no custom migration for the functions);
 * - `'owned-elsewhere'`: `migrate()` found the library's objects already created by another
 *   migration history (your drizzle-kit migrations), which it will not take over.
 */
export type NotInstalledProblem = 'missing' | 'functions-missing' | 'owned-elsewhere';

/**
 * pg-semaphore is not (fully) installed in the schema, or `migrate()` was called on a schema
 * another migration history installed. The message says what to run. Nothing was changed.
 *
 * @example
 * ```ts
 * await sem.make('openai', 5);
 * // NotInstalledError: expected pg-semaphore installed in schema "semaphore", got schema "semaphore" does not exist;
 * //   run `await sem.migrate()` once (CLI: `pg-semaphore migrate --schema semaphore`), ...
 * ```
 */
export class NotInstalledError extends PgSemaphoreError {
  /** The schema asked for. */
  readonly schema: string;
  /** What is wrong. */
  readonly problem: NotInstalledProblem;
  /** The SQLSTATE Postgres raised (e.g. `3F000`, `42883`, `42P07`); the Postgres error is the `cause`. */
  readonly code: string;

  constructor(schema: string, problem: NotInstalledProblem, code: string, detail: string, options?: { cause?: unknown }) {
    super(explain(schema, problem, detail), options);
    this.name = 'NotInstalledError';
    this.schema = schema;
    this.problem = problem;
    this.code = code;
  }
}

function explain(schema: string, problem: NotInstalledProblem, detail: string): string {
  const s = JSON.stringify(schema);
  switch (problem) {
    case 'missing':
      return (
        `expected pg-semaphore installed in schema ${s}, got ${detail}; run \`await sem.migrate()\` once ` +
        `(CLI: \`pg-semaphore migrate --schema ${schema}\`), or install it from your own drizzle-kit history (\`pg-semaphore sql --schema ${schema}\`)`
      );
    case 'functions-missing':
      return (
        `expected pg-semaphore's SQL functions in schema ${s}, got ${detail}; if your drizzle-kit history creates the tables, ` +
        `add a custom migration (\`drizzle-kit generate --custom\`) holding the output of \`pg-semaphore sql --part functions --schema ${schema}\`, ` +
        `otherwise run \`await sem.migrate()\``
      );
    case 'owned-elsewhere':
      return (
        `expected schema ${s} to be free for pg-semaphore's own migrations, got ${detail}: the schema is owned by another ` +
        `migration history (your drizzle-kit migrations?). Pick one path: keep that history and do not call migrate() ` +
        `(update the functions with \`pg-semaphore sql --part functions\`), or use another schema for migrate()`
      );
  }
}
