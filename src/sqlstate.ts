/**
 * Postgres error codes (SQLSTATE) and the network errors of node-postgres that pg-semaphore
 * reacts to, in one table, with the predicates the hold, the core, the BullMQ wrapper and
 * the CLI share. A code not listed here is passed on unchanged.
 * @internal
 */
export const SQLSTATE = {
  /** A connection could not be made or was lost (class 08). */
  connectionException: '08000',
  /** The server is shutting down by an administrator's request (fast/immediate shutdown). */
  adminShutdown: '57P01',
  /** The server crashed and is restarting. */
  crashShutdown: '57P02',
  /** The server is starting up or shutting down and refuses connections. */
  cannotConnectNow: '57P03',
  /** `idle_in_transaction_session_timeout` ended the session (a silent holder). */
  idleInTransactionTimeout: '25P03',
  /** The transaction had failed: statements are refused until its end. */
  inFailedTransaction: '25P02',
  /** `idle_session_timeout` ended the session (Postgres 14+). */
  idleSessionTimeout: '57P05',
  /** `max_connections` reached. */
  tooManyConnections: '53300',
  /** Wrong password / no such role (class 28). */
  invalidPassword: '28P01',
  invalidAuthorization: '28000',
  /** No such database. */
  invalidCatalogName: '3D000',
  /** No such schema. */
  invalidSchemaName: '3F000',
  /** No such function (e.g. the tables are installed but not the functions). */
  undefinedFunction: '42883',
  /** No such table. */
  undefinedTable: '42P01',
  /** An object already exists (e.g. `migrate()` on a schema drizzle-kit already owns). */
  duplicateTable: '42P07',
  duplicateObject: '42710',
  /** Bad input caught by the SQL functions themselves. */
  invalidParameterValue: '22023',
  /** `lock_timeout` expired (a resize or destroy waiting for held tickets). */
  lockNotAvailable: '55P03',
  /** pg-semaphore's own: acquire called in a transaction that is not READ COMMITTED. */
  notReadCommitted: 'PSB02',
  /** Permission denied. */
  insufficientPrivilege: '42501',
  /** An unrecognized configuration parameter, e.g. `idle_session_timeout` before Postgres 14. */
  undefinedObject: '42704',
  /** No prepared statement of that name on this server connection (a transaction pooler moved us to another one). */
  invalidStatementName: '26000',
  /** A prepared statement of that name exists already on this server connection. */
  duplicatePreparedStatement: '42P05',
  /** Not supported; among others "cached plan must not change result type" (a prepared statement whose function changed its result columns). */
  featureNotSupported: '0A000',
} as const;

/** node-postgres / Node socket error codes that mean the server cannot be reached. */
const NETWORK_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
]);

/** Messages node-postgres uses for a connection that failed without a code. */
const CONNECTION_MESSAGES = /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error|timeout expired/i;

interface ErrorLike {
  code?: unknown;
  message?: unknown;
  errors?: unknown;
}

/** The error's SQLSTATE or network code, or '' when it has none. */
export function errorCode(err: unknown): string {
  const code = (err as ErrorLike | null | undefined)?.code;
  return typeof code === 'string' ? code : '';
}

function message(err: unknown): string {
  const m = (err as ErrorLike | null | undefined)?.message;
  return typeof m === 'string' ? m : '';
}

/** Node's AggregateError (a host with several addresses) carries the real errors in `errors`. */
function some(err: unknown, predicate: (e: unknown) => boolean): boolean {
  if (predicate(err)) return true;
  const inner = (err as ErrorLike | null | undefined)?.errors;
  return Array.isArray(inner) && inner.some(predicate);
}

/**
 * The connection this error came from is gone or unusable: class 08, a server shutdown or
 * restart, an idle-timeout termination, a socket error, or an error without any code (what
 * node-postgres raises when the socket closes mid-query).
 */
export function isConnectionLost(err: unknown): boolean {
  const code = errorCode(err);
  if (code === '') return true;
  return (
    code.startsWith('08') ||
    code === SQLSTATE.adminShutdown ||
    code === SQLSTATE.crashShutdown ||
    code === SQLSTATE.cannotConnectNow ||
    code === SQLSTATE.idleInTransactionTimeout ||
    code === SQLSTATE.idleSessionTimeout ||
    NETWORK_CODES.has(code)
  );
}

/**
 * Postgres cannot be reached right now (down, restarting, refusing connections, out of
 * connection slots), as opposed to "this request is wrong". The wrapper puts jobs back on
 * these instead of failing them.
 */
export function isUnavailable(err: unknown): boolean {
  return some(err, (e) => {
    const code = errorCode(e);
    if (/^(08|57P|53)/.test(code) || NETWORK_CODES.has(code)) return true;
    return CONNECTION_MESSAGES.test(message(e));
  });
}

/** A connection could not be opened at all: network errors, authentication, unknown database, refusing, full. */
export function isCannotConnect(err: unknown): boolean {
  return some(err, (e) => {
    const code = errorCode(e);
    if (NETWORK_CODES.has(code)) return true;
    if (
      code === SQLSTATE.invalidAuthorization ||
      code === SQLSTATE.invalidPassword ||
      code === SQLSTATE.invalidCatalogName ||
      code === SQLSTATE.cannotConnectNow ||
      code === SQLSTATE.tooManyConnections
    ) {
      return true;
    }
    return CONNECTION_MESSAGES.test(message(e));
  });
}

/**
 * The prepared statements this client made on the connection cannot be used: the connection
 * does not keep them (a transaction pooler, PgBouncer before 1.21 or without
 * `max_prepared_statements`, hands each transaction a server connection of its choosing; or
 * somebody ran `DEALLOCATE`/`DISCARD ALL`), or a migration changed the result columns of a
 * function one of them calls (Postgres then refuses the cached plan).
 */
export function isPreparedStatementLost(err: unknown): boolean {
  const code = errorCode(err);
  return (
    code === SQLSTATE.invalidStatementName ||
    code === SQLSTATE.duplicatePreparedStatement ||
    (code === SQLSTATE.featureNotSupported && /cached plan must not change result type/.test(message(err)))
  );
}

/** The schema lacks pg-semaphore's objects: no schema, no function, or no table. */
export function isNotInstalled(err: unknown): boolean {
  const code = errorCode(err);
  return code === SQLSTATE.invalidSchemaName || code === SQLSTATE.undefinedFunction || code === SQLSTATE.undefinedTable;
}

/** A resize or destroy gave up waiting for held tickets (`lock_timeout` raised by the library's functions). */
export function isLibraryLockTimeout(err: unknown): boolean {
  return errorCode(err) === SQLSTATE.lockNotAvailable && (err as { hint?: unknown }).hint === 'pg-semaphore:timeout';
}
