import { NotInstalledError } from './errors/not-installed-error.js';
import { SQLSTATE, errorCode, isNotInstalled } from './sqlstate.js';

/**
 * Turns the raw Postgres error of a schema without (all of) pg-semaphore's objects into a
 * {@link NotInstalledError} that says what to run; returns any other error unchanged.
 * Apply it only to errors of the library's own statements, never to those of user code.
 * @internal
 */
export function explainNotInstalled(err: unknown, schema: string): unknown {
  if (!isNotInstalled(err)) return err;
  const code = errorCode(err);
  const problem = code === SQLSTATE.undefinedFunction ? 'functions-missing' : 'missing';
  return new NotInstalledError(schema, problem, code, (err as Error).message, { cause: err });
}

/**
 * Turns the "already exists" error of `migrate()` on a schema that another migration history
 * installed into a {@link NotInstalledError} (`'owned-elsewhere'`); returns any other error unchanged.
 * @internal
 */
export function explainMigrateConflict(err: unknown, schema: string): unknown {
  const code = errorCode(err);
  if (code !== SQLSTATE.duplicateTable && code !== SQLSTATE.duplicateObject) return err;
  return new NotInstalledError(schema, 'owned-elsewhere', code, (err as Error).message, { cause: err });
}
