#!/usr/bin/env node
/**
 * `pg-semaphore`: the command line of pg-semaphore.
 *
 * ```
 * pg-semaphore [--database-url url] [--schema name] [--json] <command>
 *   migrate                                   apply the library's migrations (its own migrations table)
 *   sql [--part all|tables|functions]         print the install SQL (needs no database)
 *   make <name> <tickets> [--timeout ms]      create or resize a semaphore
 *   list                                      every semaphore with capacity and held tickets
 *   status [name] [--watch] [--interval ms]   live holders of one semaphore, or all semaphores
 *   destroy <name> [--timeout ms]             remove a semaphore once its tickets are returned
 * ```
 *
 * The database comes from `--database-url`, else the environment variable `DATABASE_URL`.
 * With `--json` every command prints one JSON document on stdout (`status --watch`: one per
 * line and frame), and errors are printed as `{"error": {...}}` on stderr.
 *
 * Exit codes, for scripts:
 * - 0 ok
 * - 1 unexpected error
 * - 2 usage or bad input (unknown command or option, "5x" tickets, bad schema name, missing database
 *   URL or one that is not a postgres:// URL)
 * - 3 not found (unknown semaphore; destroy of a semaphore that does not exist; a schema where
 *   pg-semaphore is not, or not fully, installed)
 * - 4 timeout (make/destroy waited `--timeout` ms for held tickets to be returned)
 * - 5 cannot connect to Postgres (refused, unreachable, authentication, unknown database)
 */
import { Argument, Command, CommanderError, Option, InvalidArgumentError as UsageError } from 'commander';
import pkg from '../package.json' with { type: 'json' };
import { NotInstalledError } from './errors/not-installed-error.js';
import { installSql, type InstallPart } from './migrations.js';
import { PgSemaphore, type HolderInfo, type SemaphoreInfo, type SemaphoreStatus } from './pg-semaphore.js';
import { isCannotConnect, isNotInstalled, SQLSTATE } from './sqlstate.js';
import { sleep } from './timing.js';
import { DEFAULT_SCHEMA, MAX_TICKETS, validateSchemaName } from './validate.js';

const EXIT = { ok: 0, unexpected: 1, usage: 2, notFound: 3, timeout: 4, connect: 5 } as const;
const MAX_MS = 2_147_483_647;
const CONNECT_TIMEOUT_MS = 10_000;

/** The options every command sees (given before or after the command name). */
interface GlobalOptions {
  databaseUrl?: string;
  schema: string;
  json: boolean;
}

/** An expected failure with the exit code it maps to. */
class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
    readonly kind: string,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

// ------------------------------------------------------------------ parsing

function wholeNumber(min: number, max: number) {
  return (raw: string): number => {
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || value < min || value > max) {
      throw new UsageError(`Expected a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}.`);
    }
    return value;
  };
}

function schemaName(raw: string): string {
  try {
    return validateSchemaName(raw);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

const timeoutOption = () =>
  new Option('--timeout <ms>', 'how long to wait for held tickets to be returned').argParser(wholeNumber(0, MAX_MS)).default(30_000);

function buildProgram(json: boolean): Command {
  const program = new Command('pg-semaphore')
    .description('Fleet-wide semaphores held by Postgres transactions: manage and inspect them.')
    .version(pkg.version)
    // settings before the subcommands, which inherit them: throw instead of exiting, and in
    // --json mode let report() print usage errors as JSON
    .exitOverride()
    // `<command> --help` lists --database-url, --schema and --json too
    .configureHelp({ showGlobalOptions: true })
    .configureOutput({ outputError: (text, write) => (json ? undefined : write(text)) })
    .showHelpAfterError(json ? false : '(run with --help for usage)')
    .addOption(new Option('--database-url <url>', 'Postgres connection string').env('DATABASE_URL'))
    .addOption(new Option('--schema <name>', 'the schema pg-semaphore lives in').argParser(schemaName).default(DEFAULT_SCHEMA))
    .option('--json', 'machine-readable output (one JSON document on stdout)', false)
    .addHelpText(
      'after',
      '\nExit codes: 0 ok, 1 unexpected error, 2 usage/bad input, 3 not found, 4 timeout, 5 cannot connect.',
    );

  program
    .command('migrate')
    .description("apply the library's migrations to the schema (do not also install it through your own drizzle-kit history)")
    .action((_opts, cmd: Command) => withSemaphore(cmd, (sem, g) => migrateCommand(sem, g)));

  program
    .command('sql')
    .description('print the install SQL for the schema (for a DBA or a drizzle-kit --custom migration); needs no database')
    .addOption(new Option('--part <part>', 'which part').choices(['all', 'tables', 'functions']).default('all'))
    .action((opts: { part: InstallPart }, cmd: Command) => sqlCommand(globals(cmd), opts.part));

  program
    .command('make')
    .description('create a semaphore, or resize it (shrinking waits until the removed tickets are returned)')
    .argument('<name>', 'semaphore name')
    .addArgument(new Argument('<tickets>', `capacity, 0 to ${MAX_TICKETS}`).argParser(wholeNumber(0, MAX_TICKETS)))
    .addOption(timeoutOption())
    .action((name: string, tickets: number, opts: { timeout: number }, cmd: Command) =>
      withSemaphore(cmd, (sem, g) => makeCommand(sem, g, name, tickets, opts.timeout)),
    );

  program
    .command('list')
    .description('every semaphore with its capacity and how many tickets are held')
    .action((_opts, cmd: Command) => withSemaphore(cmd, async (sem, g) => print(g, await sem.list(), formatList)));

  program
    .command('status')
    .description('live holders of a semaphore (from pg_locks); without a name, every semaphore with its held count')
    .argument('[name]', 'semaphore name')
    .option('--watch', 'redraw until interrupted (Ctrl-C / SIGTERM)', false)
    .addOption(new Option('--interval <ms>', 'redraw interval for --watch').argParser(wholeNumber(100, 3_600_000)).default(1_000))
    .action((name: string | undefined, opts: { watch: boolean; interval: number }, cmd: Command) =>
      withSemaphore(cmd, (sem, g) => (opts.watch ? watchStatus(sem, g, name, opts.interval) : statusOnce(sem, g, name))),
    );

  program
    .command('destroy')
    .description('remove a semaphore once every ticket is returned')
    .argument('<name>', 'semaphore name')
    .addOption(timeoutOption())
    .action((name: string, opts: { timeout: number }, cmd: Command) =>
      withSemaphore(cmd, (sem, g) => destroyCommand(sem, g, name, opts.timeout)),
    );
  return program;
}

function globals(cmd: Command): GlobalOptions {
  return cmd.optsWithGlobals<GlobalOptions>();
}

/** Runs `fn` with a PgSemaphore on the chosen database and schema, and always closes its pool. */
async function withSemaphore(cmd: Command, fn: (sem: PgSemaphore, g: GlobalOptions) => Promise<void>): Promise<void> {
  const g = globals(cmd);
  if (!g.databaseUrl) {
    throw new CliError('no database given: pass --database-url or set DATABASE_URL', EXIT.usage, 'usage');
  }
  checkDatabaseUrl(g.databaseUrl, cmd.getOptionValueSourceWithGlobals('databaseUrl') === 'env' ? 'DATABASE_URL' : '--database-url');
  const sem = new PgSemaphore({
    connection: { connectionString: g.databaseUrl, connectionTimeoutMillis: CONNECT_TIMEOUT_MS, max: 2 },
    schema: g.schema,
    applicationName: 'pg-semaphore-cli',
  });
  try {
    await fn(sem, g);
  } catch (err) {
    if (err instanceof NotInstalledError) throw explainNotInstalled(err, g);
    if ((err as Error | null)?.name === 'UnknownSemaphoreError') {
      const names = (err as { names?: string[] }).names ?? [];
      throw new CliError(`no semaphore named ${names.map((n) => JSON.stringify(n)).join(', ')} in schema "${g.schema}"`, EXIT.notFound, 'not_found');
    }
    throw explainDatabaseError(err, g);
  } finally {
    await sem.close().catch(() => undefined);
  }
}

const URL_PROTOCOLS = ['postgres:', 'postgresql:', 'socket:'];

/**
 * Refuses a database URL node-postgres would misread (`not-a-url` becomes a socket path or host
 * "base", and fails only at connect time with a misleading "getaddrinfo ENOTFOUND"). The value is
 * echoed with any user and password masked.
 */
function checkDatabaseUrl(raw: string, source: string): void {
  let protocol: string | undefined;
  try {
    protocol = new URL(raw).protocol;
  } catch {
    protocol = undefined;
  }
  if (protocol !== undefined && URL_PROTOCOLS.includes(protocol)) return;
  const shown = JSON.stringify(raw.replace(/\/\/[^/@]*@/, '//***@'));
  throw new CliError(`${source}: expected a postgres:// or postgresql:// URL, got ${shown}`, EXIT.usage, 'usage');
}

// ------------------------------------------------------------------ commands

async function migrateCommand(sem: PgSemaphore, g: GlobalOptions): Promise<void> {
  const { applied } = await sem.migrate();
  print(g, { schema: g.schema, applied }, () =>
    applied.length === 0 ? `schema "${g.schema}" is up to date` : `applied to schema "${g.schema}": ${applied.join(', ')}`,
  );
}

function sqlCommand(g: GlobalOptions, part: InstallPart): void {
  const sql = installSql(g.schema, { part });
  if (g.json) process.stdout.write(`${JSON.stringify({ schema: g.schema, part, sql })}\n`);
  else process.stdout.write(sql);
}

async function makeCommand(sem: PgSemaphore, g: GlobalOptions, name: string, tickets: number, timeout: number): Promise<void> {
  await sem.make(name, tickets, { timeout });
  print(g, { name, tickets }, () => `semaphore "${name}" has ${tickets} ticket${tickets === 1 ? '' : 's'}`);
}

async function destroyCommand(sem: PgSemaphore, g: GlobalOptions, name: string, timeout: number): Promise<void> {
  const destroyed = await sem.destroy(name, { timeout });
  if (!destroyed) throw new CliError(`no semaphore named ${JSON.stringify(name)} in schema "${g.schema}"`, EXIT.notFound, 'not_found');
  print(g, { name, destroyed }, () => `destroyed semaphore "${name}"`);
}

async function statusOnce(sem: PgSemaphore, g: GlobalOptions, name: string | undefined): Promise<void> {
  if (name === undefined) print(g, await sem.list(), formatList);
  else print(g, withHolding(await sem.status(name)), formatStatus);
}

/** A holder as the CLI shows it: how its ticket is held, and `since` only where it means something. */
interface CliHolder extends HolderInfo {
  /**
   * `session`: a session-level advisory lock (session holding, or a plain-SQL
   * `pg_advisory_lock`); `since` is null, Postgres does not record when it was taken.
   * `transaction`: held by the transaction that began at `since`.
   */
  holding: 'session' | 'transaction';
}

interface CliStatus extends SemaphoreStatus {
  holders: CliHolder[];
}

/**
 * Tells session-level holders apart (pg_locks does not): `holders()` gives no start time for a
 * holder without an open transaction (a transaction-level lock exists only inside one, so it
 * holds a session lock) nor for session holding's connections (only ever in a transaction
 * while they run a statement, whose start says nothing about when a ticket was taken).
 */
function withHolding(status: SemaphoreStatus): CliStatus {
  return {
    ...status,
    holders: status.holders.map((h): CliHolder => ({ ...h, holding: h.since === null ? 'session' : 'transaction' })),
  };
}

/** Redraws the status every `interval` ms until SIGINT or SIGTERM; then exits with 0. */
async function watchStatus(sem: PgSemaphore, g: GlobalOptions, name: string | undefined, interval: number): Promise<void> {
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const tty = process.stdout.isTTY === true && !g.json;
  try {
    while (!stop.signal.aborted) {
      const data = name === undefined ? await sem.list() : withHolding(await sem.status(name));
      if (stop.signal.aborted) break;
      if (g.json) {
        process.stdout.write(`${JSON.stringify(data)}\n`);
      } else {
        const body = name === undefined ? formatList(data as SemaphoreInfo[]) : formatStatus(data as CliStatus);
        const header = `schema "${g.schema}" at ${new Date().toISOString()}, every ${interval} ms (Ctrl-C to stop)`;
        process.stdout.write(`${tty ? '\x1b[H\x1b[2J' : '\n'}${header}\n${body}\n`);
      }
      await sleep(interval, stop.signal);
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

// ------------------------------------------------------------------ output

function print<T>(g: GlobalOptions, data: T, format: (data: T) => string): void {
  process.stdout.write(`${g.json ? JSON.stringify(data) : format(data)}\n`);
}

function formatList(list: SemaphoreInfo[]): string {
  if (list.length === 0) return 'no semaphores';
  return table(
    ['NAME', 'TICKETS', 'HELD', 'FREE'],
    list.map((s) => [s.name, String(s.tickets), String(s.held), String(Math.max(0, s.tickets - s.held))]),
  );
}

function formatStatus(s: CliStatus): string {
  const head = `${s.name}: ${s.held} of ${s.tickets} ticket${s.tickets === 1 ? '' : 's'} held, ${Math.max(0, s.tickets - s.held)} free`;
  if (s.holders.length === 0) return `${head}\nno holders`;
  const rows = s.holders.map((h) => [
    String(h.ticket),
    String(h.pid),
    h.label ?? '',
    h.applicationName ?? '',
    h.clientAddr ?? 'local',
    h.holding === 'session' ? '(session lock)' : h.since ? `${h.since.toISOString()} (${ago(h.since)})` : '',
  ]);
  const note = s.holders.some((h) => h.holding === 'session')
    ? '\n(session lock: held by a session, not a transaction, so no start time. In session holding, PID is the one ' +
      'connection that holds all tickets of a process, and LABEL names that process as host:pid.)'
    : '';
  return `${head}\n${table(['TICKET', 'PID', 'LABEL', 'APPLICATION', 'CLIENT', 'SINCE'], rows)}${note}`;
}

function ago(since: Date): string {
  const s = Math.max(0, Math.round((Date.now() - since.getTime()) / 1000));
  return s < 120 ? `${s}s ago` : s < 7200 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

// ------------------------------------------------------------------ errors

interface ErrorLike {
  code?: string;
  message?: string;
  errors?: unknown[];
}

function errorText(err: unknown): string {
  const e = err as ErrorLike;
  if (e.message) return e.message;
  const first = Array.isArray(e.errors) ? (e.errors[0] as ErrorLike | undefined) : undefined;
  return first?.message ?? e.code ?? String(err);
}

/** Where we tried to connect, without user or password. */
function describeTarget(url: string | undefined): string {
  try {
    const u = new URL(url ?? '');
    return `${u.host || 'localhost'}${u.pathname}`;
  } catch {
    return 'the database';
  }
}

/**
 * The library's NotInstalledError in the CLI's words (its own message suggests
 * `sem.migrate()`): exit 3, as for anything else that is not there. `owned-elsewhere` (migrate
 * on a schema another migration history installed) keeps the library's message and exit 1.
 */
function explainNotInstalled(err: NotInstalledError, g: GlobalOptions): unknown {
  const detail = errorText(err.cause ?? err);
  const s = `--schema ${g.schema}`;
  if (err.problem === 'missing') {
    return new CliError(`pg-semaphore is not installed in schema "${g.schema}" (${detail}); run: pg-semaphore migrate ${s}`, EXIT.notFound, 'not_installed');
  }
  if (err.problem === 'functions-missing') {
    return new CliError(
      `pg-semaphore's SQL functions are missing in schema "${g.schema}" (${detail}); add the output of ` +
        `\`pg-semaphore sql --part functions ${s}\` to your drizzle-kit history as a custom migration, or run: pg-semaphore migrate ${s}`,
      EXIT.notFound,
      'not_installed',
    );
  }
  return new CliError(err.message, EXIT.unexpected, 'owned_elsewhere');
}

/** Turns database failures we can explain into CliErrors; leaves the rest alone. */
function explainDatabaseError(err: unknown, g: GlobalOptions): unknown {
  if (isCannotConnect(err)) {
    return new CliError(`cannot connect to Postgres at ${describeTarget(g.databaseUrl)}: ${errorText(err)}`, EXIT.connect, 'cannot_connect');
  }
  // a raw error the library did not wrap (it wraps its own statements' errors in NotInstalledError)
  if (isNotInstalled(err)) {
    return new CliError(
      `pg-semaphore is not installed in schema "${g.schema}" (${errorText(err)}); run: pg-semaphore migrate --schema ${g.schema}`,
      EXIT.notFound,
      'not_installed',
    );
  }
  return err;
}

/** Maps any error to its exit code, a short kind for --json, and whether a stack helps. */
function classify(err: unknown): { exitCode: number; kind: string; expected: boolean } {
  if (err instanceof CliError) return { exitCode: err.exitCode, kind: err.kind, expected: true };
  if (err instanceof CommanderError) return { exitCode: err.exitCode === 0 ? EXIT.ok : EXIT.usage, kind: 'usage', expected: true };
  const name = (err as Error | null)?.name;
  if (name === 'InvalidArgumentError') return { exitCode: EXIT.usage, kind: 'usage', expected: true };
  if (name === 'UnknownSemaphoreError') return { exitCode: EXIT.notFound, kind: 'not_found', expected: true };
  if (name === 'SemaphoreTimeoutError') return { exitCode: EXIT.timeout, kind: 'timeout', expected: true };
  const code = (err as ErrorLike | null)?.code;
  // invalid input caught by the SQL functions themselves
  if (code === SQLSTATE.invalidParameterValue) return { exitCode: EXIT.usage, kind: 'usage', expected: true };
  // any other Postgres error: its message says enough
  if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) return { exitCode: EXIT.unexpected, kind: 'database', expected: true };
  return { exitCode: EXIT.unexpected, kind: 'unexpected', expected: false };
}

function report(err: unknown, json: boolean): number {
  const { exitCode, kind, expected } = classify(err);
  if (exitCode === EXIT.ok) return exitCode;
  const message = err instanceof CommanderError ? err.message.replace(/^error: /, '') : errorText(err);
  if (json) {
    const name = (err as Error | null)?.name ?? 'Error';
    process.stderr.write(`${JSON.stringify({ error: { kind, name, message, exitCode } })}\n`);
  } else if (!(err instanceof CommanderError)) {
    // commander already printed its own usage errors
    process.stderr.write(`pg-semaphore: ${expected ? message : ((err as Error | null)?.stack ?? message)}\n`);
  }
  return exitCode;
}

async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const program = buildProgram(json);
  try {
    await program.parseAsync(argv);
    return EXIT.ok;
  } catch (err) {
    return report(err, json);
  }
}

// Built as ESM only (tsup.config.ts); the promise is left to run, the exit code set when done.
// `pg-semaphore --help | head` closes the pipe early: that is the reader's choice, not an error.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
}

void main(process.argv).then((code) => {
  process.exitCode = code;
});
