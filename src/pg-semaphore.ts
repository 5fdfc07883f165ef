import pg from 'pg';
import type { Pool, PoolClient, PoolConfig } from 'pg';
import { InvalidArgumentError } from './errors/invalid-argument-error.js';
import { PgSemaphoreError } from './errors/pg-semaphore-error.js';
import { SemaphoreBusyError } from './errors/semaphore-busy-error.js';
import { SemaphoreTimeoutError } from './errors/semaphore-timeout-error.js';
import { UnknownSemaphoreError } from './errors/unknown-semaphore-error.js';
import { attempt, type AttemptContext } from './attempt.js';
import { AbortFanout } from './abort-fanout.js';
import { Hold, type HoldOptions } from './hold.js';
import type { HoldingMode } from './errors/holding-mode-error.js';
import { HoldingSession } from './session.js';
import { Listener, type OnRelease } from './listener.js';
import type { Logger } from './logger.js';
import { migrate as runMigrate } from './migrate.js';
import { normalizeRequest, type NormalizedRequest, type TicketRequest } from './request.js';
import { DEFAULT_SCHEMA, MAX_TICKETS, quoteSchema, validateInt, validateName, validateSchemaName, validateTimeout } from './validate.js';
import { raceLoss } from './race-loss.js';
import { explainMigrateConflict, explainNotInstalled } from './not-installed.js';
import { errorCode, isLibraryLockTimeout, isPreparedStatementLost, SQLSTATE } from './sqlstate.js';
import * as statements from './statements.js';
import { heldTickets, type HeldTicket } from './tickets.js';
import type { AcquireRow, AcquireStatements, Statement } from './statements.js';
import { backoff, sleep } from './timing.js';

/** Environment variable that turns limiting off when set to `1`, `true` or `yes`. */
export const DISABLE_ENV = 'PG_SEMAPHORE_DISABLED';

/** Options of {@link PgSemaphore}. */
export interface PgSemaphoreOptions {
  /**
   * Where Postgres is: a connection string, a `pg` pool config, or a `pg.Pool` you own.
   * Each held ticket set pins one connection of this pool for as long as it is held, plus
   * one LISTEN connection while anything waits, so size `max` above your caps.
   * When pg-semaphore builds the pool it turns TCP keepalives on.
   * Give this or `db`.
   */
  connection?: string | PoolConfig | Pool;
  /** A Drizzle node-postgres database whose `$client` is a `pg.Pool`; used instead of `connection`. */
  db?: { $client: unknown };
  /**
   * The Postgres schema the library's tables and functions live in.
   * @default 'semaphore'
   */
  schema?: string;
  /**
   * How long a holder may stay silent before Postgres ends its session and frees its
   * tickets (`idle_in_transaction_session_timeout`, set locally on the holding
   * transaction). A live holder heartbeats every third of this. Must exceed the longest
   * event-loop stall you expect.
   * @default 30_000
   */
  livenessTimeout?: number;
  /**
   * Turns limiting off: every acquire succeeds at once without touching Postgres, and a
   * warning is logged once. Also on when the environment variable
   * `PG_SEMAPHORE_DISABLED` is `1`, `true` or `yes`. For unit tests and emergencies.
   * @default false
   */
  disabled?: boolean;
  /**
   * Longest pause between two tries while waiting, when no wake-up arrives (the
   * fallback poll; delays start at 25 ms, double, and are jittered).
   * @default 1_000
   */
  maxPollInterval?: number;
  /** Where warnings go. @default console */
  logger?: Logger;
  /**
   * Use LISTEN/NOTIFY to wake waiters when tickets are released. Turn it off behind a
   * connection pooler in transaction mode (PgBouncer), where LISTEN does not work: waiting
   * then relies on the jittered poll alone.
   * @default true
   */
  listen?: boolean;
  /**
   * `application_name` of the connections pg-semaphore opens itself.
   * @default 'pg-semaphore'
   */
  applicationName?: string;
  /**
   * How held tickets are held.
   *
   * - `'transaction'`: each hold is an open transaction on a connection of its own (a
   *   connection per held ticket set). It gives {@link Hold.tx}, and works behind PgBouncer
   *   in transaction mode.
   * - `'session'`: one connection per `PgSemaphore` holds every ticket of the process, as
   *   session-level advisory locks (the same keys, so both modes share semaphores and caps).
   *   Holding connections follow processes, not tickets: for caps larger than your
   *   connection budget. Needs Postgres 14+ and a direct connection or a session-mode
   *   pooler; {@link Hold.tx} is not available. Losing that connection loses every hold of
   *   the process (each one's signal aborts with a {@link TicketLostError}); a frozen process
   *   loses them after `livenessTimeout` (`idle_session_timeout`). The pool needs at least
   *   3 connections (2 with `listen: false`): the holding one stays checked out.
   *
   * Wrong uses fail with a {@link HoldingModeError}.
   * @default 'transaction'
   * @example `new PgSemaphore({ connection: process.env.DATABASE_URL, holding: 'session' })`
   */
  holding?: HoldingMode;
}

/** Options of {@link PgSemaphore.hold}, {@link PgSemaphore.withTickets} and friends. */
export interface AcquireOptions {
  /**
   * Wait for tickets instead of failing at once: `true` waits without limit, a number is
   * a timeout in milliseconds, or give `{ timeout, signal }`. Waiting wakes when a holder
   * releases (LISTEN/NOTIFY) and polls, jittered, as a fallback.
   * @default false (fail fast)
   */
  wait?: boolean | number | WaitOptions;
  /**
   * Create semaphores that do not exist yet with this many tickets (per-key caps such as
   * `tenant:42`). The creation runs in its own short transaction, never in the holding one.
   */
  createWith?: number;
  /** A label shown by `status()` for this holder, e.g. a job id (at most 50 characters are kept). */
  label?: string;
}

/** Options of {@link PgSemaphore.tryHold}. */
export interface TryHoldOptions extends Omit<AcquireOptions, 'wait'> {
  /**
   * Called when no ticket was taken because some semaphores had too few free tickets, with
   * their names (request order, each once). Usually the first one found short; empty when
   * not known (e.g. against an install older than `0003_functions`).
   */
  onBusy?: (short: readonly string[]) => void;
}

/** How to wait for tickets. */
export interface WaitOptions {
  /** Give up after this many milliseconds with a {@link SemaphoreTimeoutError}. @default no limit */
  timeout?: number;
  /** Give up when this aborts (rejects with the signal's reason). */
  signal?: AbortSignal;
}

/** What the function run by {@link PgSemaphore.withTickets} receives. */
export interface HoldContext {
  /** Aborts when the tickets are lost; its reason is a {@link TicketLostError}. */
  signal: AbortSignal;
  /** The tickets held, in request order: `{ name, ticket }`, ticket numbers 1..capacity as {@link PgSemaphore.status} shows them. */
  tickets: readonly HeldTicket[];
  /** The holding transaction as a Drizzle database (see {@link Hold.tx}). */
  readonly tx: Hold['tx'];
}

/** One semaphore, as {@link PgSemaphore.list} shows it. */
export interface SemaphoreInfo {
  name: string;
  /** Capacity: how many tickets it has. */
  tickets: number;
  /** How many are held right now (from `pg_locks`). */
  held: number;
  createdAt: Date;
  updatedAt: Date;
}

/** A holder of one ticket, read from Postgres's own lock table. */
export interface HolderInfo {
  /** The ticket's number within its semaphore (1..capacity). */
  ticket: number;
  /** The holding backend's process id. */
  pid: number;
  /** The holder's `application_name` (set to `pg-semaphore:<label>` while a label is given). */
  applicationName: string | null;
  /** The holder's client address (null over a Unix socket). */
  clientAddr: string | null;
  /** When the holding transaction began; null for a session holder (`holding: 'session'`), which holds no transaction. */
  since: Date | null;
  /** The label the holder chose, if any. */
  label: string | null;
}

/** A row of the SQL function `holders`. */
interface HolderRow {
  ticket: number;
  pid: number;
  application_name: string | null;
  client_addr: string | null;
  since: Date | null;
  label: string | null;
}

/** A semaphore with its holders, as {@link PgSemaphore.status} shows it. */
export interface SemaphoreStatus extends SemaphoreInfo {
  holders: HolderInfo[];
}

/** Tickets taken by {@link PgSemaphore.tryAcquire} inside your transaction. */
export interface AcquiredTickets {
  names: string[];
  /** The tickets taken, in request order (`{ name, ticket }`); they return when your transaction commits or rolls back. */
  tickets: HeldTicket[];
}

/** Something `tryAcquire` can run SQL on: a Drizzle node-postgres database/transaction or a `pg` client. */
export type Executor = { execute(query: unknown): Promise<unknown> } | { query(text: string, values?: unknown[]): Promise<unknown> };

/**
 * Fleet-wide semaphores held by Postgres transactions. One instance per process and
 * schema is enough; it is safe to share.
 *
 * @example
 * ```ts
 * import { PgSemaphore } from 'pg-semaphore';
 *
 * const sem = new PgSemaphore({ connection: process.env.DATABASE_URL });
 * await sem.migrate();
 * await sem.make('openai', 5);
 * const answer = await sem.withTickets('openai', ({ signal }) => callOpenAI({ signal }), { wait: 30_000 });
 * await sem.close();
 * ```
 */
export class PgSemaphore {
  /** The schema name. */
  readonly schema: string;
  /** The pool holds and management use. */
  readonly pool: Pool;
  /** Whether limiting is off (option or environment). */
  readonly disabled: boolean;
  /** How held tickets are held (see {@link PgSemaphoreOptions.holding}). */
  readonly holding: HoldingMode;

  private readonly qs: string;
  private readonly ownsPool: boolean;
  private readonly livenessMs: number;
  private readonly maxPollMs: number;
  private readonly logger: Logger;
  private readonly listen: boolean;
  private listener: Listener | undefined;
  /** Session holding: the process's holding connection (opened on the first acquire). */
  private readonly session: HoldingSession | undefined;
  /** Holds open in this process; each leaves the set when it is released (its settle callback). */
  private readonly holds = new Set<Hold>();
  /** Acquires and management calls in flight; close() waits for them. */
  private readonly inflight = new Set<Promise<unknown>>();
  /**
   * One controller per acquire that is waiting; close() aborts each, so waits end promptly.
   * (One per wait, not one shared signal every waiter listens to: any number of waiters adds
   * no listener to a long-lived signal.)
   */
  private readonly waits = new Set<AbortController>();
  /** After a failed watch: when a wait may watch again, and failures in a row (see `watchWhileWaiting`). */
  private readonly watchRetry = { at: 0, failures: 0 };
  /** Caller signals shared by many waits get one listener each, not one per wait. */
  private readonly fanout = new AbortFanout();
  private closing = false;
  private warnedDisabled = false;
  /**
   * The ticket number this process returned last, per semaphore name: the next acquire of
   * that semaphore starts looking there (usually free again), so a nearly full semaphore
   * costs about what an empty one does. Bounded; the oldest entries go first.
   */
  private readonly lastTickets = new Map<string, number>();
  /** False once the installed `acquire` turned out to take no start positions (an install older than 0003_functions). */
  private startsSupported = true;
  /**
   * Whether a try for one ticket of one semaphore may skip the SQL function (statements.acquireOne).
   * `untested` until the function answered a call with start positions (only 0003_functions and
   * later take them: older installs, 0.1's included, fail that call and are refused or served
   * as before), then `on`. Until then every try goes through the function, which is what finds
   * a missing schema, functions of another version or no install at all; none of that changes
   * while the instance runs except by a migration, which only adds. `off` for good once the
   * direct statements were refused (no SELECT on the tables, say, with a SECURITY DEFINER
   * `acquire`; or the tables went away).
   */
  private direct: 'untested' | 'on' | 'off' = 'untested';
  /**
   * Whether the acquire and the release's wake-up (with their `BEGIN` and `COMMIT`) run as
   * prepared statements (parsed and planned once per pooled connection). Off for good once a connection turned out not to
   * keep them: behind a transaction pooler without prepared-statement support each
   * transaction may land on another server connection.
   */
  private readonly prepared = { on: true };
  /**
   * Round trips to Postgres made by this instance and its holds, for the benchmark and tests.
   * @internal
   */
  roundTrips = 0;
  /**
   * Round trips nobody waits for (session holding's releases on a pipelined connection), for
   * the benchmark; not in {@link PgSemaphore.roundTrips}.
   * @internal
   */
  backgroundRoundTrips = 0;
  private readonly countRoundTrip = () => void this.roundTrips++;

  constructor(options: PgSemaphoreOptions) {
    if (options === null || typeof options !== 'object') {
      throw new InvalidArgumentError('options', 'an object with connection or db', options);
    }
    this.schema = validateSchemaName(options.schema ?? DEFAULT_SCHEMA);
    this.qs = quoteSchema(this.schema);
    this.livenessMs = validateInt(options.livenessTimeout ?? 30_000, 'livenessTimeout', 100, 2_147_483_647);
    this.maxPollMs = validateInt(options.maxPollInterval ?? 1_000, 'maxPollInterval', 10, 600_000);
    this.logger = options.logger ?? console;
    this.listen = options.listen ?? true;
    if (options.holding !== undefined && options.holding !== 'transaction' && options.holding !== 'session') {
      throw new InvalidArgumentError('holding', "'transaction' or 'session'", options.holding);
    }
    this.holding = options.holding ?? 'transaction';
    const env = process.env[DISABLE_ENV]?.toLowerCase();
    this.disabled = options.disabled === true || env === '1' || env === 'true' || env === 'yes';
    const appName = options.applicationName ?? 'pg-semaphore';
    if (options.db !== undefined) {
      const client = options.db?.$client;
      if (!(client instanceof pg.Pool) && !isPoolLike(client)) {
        throw new InvalidArgumentError('db', 'a Drizzle node-postgres database built on a pg.Pool', options.db);
      }
      this.pool = client as Pool;
      this.ownsPool = false;
    } else if (isPoolLike(options.connection)) {
      this.pool = options.connection as Pool;
      this.ownsPool = false;
    } else if (typeof options.connection === 'string' || (options.connection && typeof options.connection === 'object')) {
      const config = checkPoolConfig(options.connection as string | PoolConfig);
      this.pool = new pg.Pool({ application_name: appName, keepAlive: true, keepAliveInitialDelayMillis: 10_000, ...config });
      this.ownsPool = true;
    } else {
      const unset = options.connection === undefined ? '; is DATABASE_URL set?' : '';
      throw new InvalidArgumentError('connection', `a connection string, a pg PoolConfig or a pg.Pool (or pass db${unset})`, options.connection);
    }
    // An idle pooled client that dies must not crash the process.
    if (this.ownsPool) this.pool.on('error', () => undefined);
    if (this.holding === 'session' && !this.disabled) {
      // The holding connection (and the LISTEN connection) stay checked out of the pool; with
      // no connection left over, opening the holding session (its probe NOTIFY) and every
      // other statement would wait for a free one forever.
      const max = (this.pool as { options?: { max?: unknown } }).options?.max;
      const least = this.listen ? 3 : 2;
      if (typeof max === 'number' && max < least) {
        throw new InvalidArgumentError(
          'connection.max',
          `a pool of at least ${least} connections in session holding (the holding connection${this.listen ? ' and the LISTEN connection stay' : ' stays'} checked out; other statements need one more)`,
          max,
        );
      }
    }
    this.session =
      this.holding === 'session' && !this.disabled
        ? new HoldingSession({ pool: this.pool, qs: this.qs, livenessMs: this.livenessMs, roundTrips: (n) => void (this.roundTrips += n),
            backgroundRoundTrips: (n) => void (this.backgroundRoundTrips += n),
            logger: this.logger,
          })
        : undefined;
  }

  // ---------------------------------------------------------------- install

  /**
   * Applies the library's migrations to this schema, using its own migrations table and an
   * advisory lock, so any number of processes may call it at once. Do not also install
   * through your own drizzle-kit history: pick one path.
   */
  async migrate(): Promise<{ applied: string[] }> {
    try {
      return await runMigrate(this.pool, this.schema);
    } catch (err) {
      throw explainMigrateConflict(err, this.schema);
    }
  }

  // ---------------------------------------------------------------- management

  /**
   * Creates a semaphore or resizes it. Growing is immediate; shrinking waits until the
   * removed tickets are returned, for at most `timeout` ms.
   * @param tickets - 0 to 10,000.
   * @example `await sem.make('openai', 5)`
   */
  async make(name: string, tickets: number, options: { timeout?: number } = {}): Promise<void> {
    checkOptions(options);
    validateName(name);
    validateInt(tickets, 'tickets', 0, MAX_TICKETS);
    const timeout = validateTimeout(options.timeout ?? 30_000, 'timeout');
    await this.admin(statements.make(this.qs, name, tickets, timeout ?? null), 'make', [name], timeout);
  }

  /**
   * Waits until every ticket is returned (at most `timeout` ms), then removes the semaphore.
   * @returns false when no such semaphore existed.
   */
  async destroy(name: string, options: { timeout?: number } = {}): Promise<boolean> {
    checkOptions(options);
    validateName(name);
    const timeout = validateTimeout(options.timeout ?? 30_000, 'timeout');
    const { rows } = await this.admin<{ destroyed: boolean }>(statements.destroy(this.qs, name, timeout ?? null), 'destroy', [name], timeout);
    return rows[0]?.destroyed === true;
  }

  /** Every semaphore with its capacity and how many tickets are held right now. */
  async list(): Promise<SemaphoreInfo[]> {
    const { rows } = await this.query(statements.list(this.qs));
    return rows.map(toInfo);
  }

  /** One semaphore with its holders, read from `pg_locks` joined with `pg_stat_activity`. */
  async status(name: string): Promise<SemaphoreStatus> {
    validateName(name);
    const [list, holders] = await Promise.all([this.query(statements.list(this.qs, name)), this.query<HolderRow>(statements.holders(this.qs, name))]);
    const row = list.rows[0];
    if (!row) throw new UnknownSemaphoreError([name]);
    return {
      ...toInfo(row),
      held: holders.rows.length,
      holders: holders.rows.map((h) => ({
        ticket: h.ticket,
        pid: h.pid,
        applicationName: h.application_name,
        clientAddr: h.client_addr,
        since: h.since,
        label: h.label,
      })),
    };
  }

  // ---------------------------------------------------------------- acquire in your transaction

  /**
   * Takes tickets inside a transaction you opened, all or nothing, in one round trip, without
   * waiting. They return when your transaction commits or rolls back. Returns null when not
   * enough tickets are free. Taking more tickets of a semaphore this transaction already
   * holds tickets of works: held tickets are never counted twice.
   *
   * @param tx - A Drizzle node-postgres transaction, or a `pg` client inside BEGIN.
   * @example
   * ```ts
   * await db.transaction(async (tx) => {
   *   const got = await sem.tryAcquire(tx, 'nightly-export');
   *   if (!got) return; // someone else is exporting
   *   await exportEverything(tx);
   * });
   * ```
   */
  async tryAcquire(tx: Executor, request: TicketRequest, options: Omit<AcquireOptions, 'wait'> = {}): Promise<AcquiredTickets | null> {
    if (tx === null || typeof tx !== 'object' || (typeof (tx as { execute?: unknown }).execute !== 'function' && typeof (tx as { query?: unknown }).query !== 'function')) {
      throw new InvalidArgumentError('tx', 'a Drizzle node-postgres transaction or a pg client inside BEGIN', tx);
    }
    checkOptions(options);
    const req = normalizeRequest(request);
    const createWith = options.createWith === undefined ? undefined : validateInt(options.createWith, 'createWith', 1, MAX_TICKETS);
    const label = checkLabel(options.label);
    if (this.disabled) {
      this.warnDisabled();
      return { names: req.names, tickets: [] };
    }
    const statement = statements.acquire(this.qs, req.names, req.counts, label ?? null, null);
    try {
      for (let round = 0; ; round++) {
        const row = await this.runAcquire(tx, statement);
        const done = await this.interpret(row, req, createWith, round);
        if (done === 'retry') continue;
        if (done === 'busy') return null;
        return { names: req.names, tickets: heldTickets(row, this.schema) };
      }
    } catch (err) {
      if (errorCode(err) === SQLSTATE.notReadCommitted) {
        const level = /got (.+)$/.exec((err as Error).message)?.[1] ?? 'another isolation level';
        throw new InvalidArgumentError('tx', 'a transaction at isolation level READ COMMITTED (BEGIN ISOLATION LEVEL READ COMMITTED)', level);
      }
      throw explainNotInstalled(err, this.schema);
    }
  }

  // ---------------------------------------------------------------- hold on a connection of its own

  /**
   * Takes tickets on a connection of their own and keeps them until you call
   * {@link Hold.release}. Fails fast with {@link SemaphoreBusyError} unless `wait` is given.
   * Prefer {@link PgSemaphore.withTickets}, which releases for you.
   */
  async hold(request: TicketRequest, options: AcquireOptions = {}): Promise<Hold> {
    const got = await this.track(this.acquireHold(request, checkOptions(options)));
    return got!;
  }

  /**
   * Like {@link PgSemaphore.hold} without waiting, but returns null when no ticket is free.
   * `onBusy`, if given, then hears which semaphores were short (no extra round trip).
   */
  async tryHold(request: TicketRequest, options: TryHoldOptions = {}): Promise<Hold | null> {
    checkOptions(options);
    const { onBusy, ...rest } = options;
    if (onBusy !== undefined && typeof onBusy !== 'function') throw new InvalidArgumentError('onBusy', 'a function', onBusy);
    return this.track(this.acquireHold(request, { ...rest, wait: false }, { nullIfBusy: true, onBusy }));
  }

  /** Remembers an acquire in flight so close() can wait for it. */
  private track<T>(work: Promise<T>): Promise<T> {
    if (this.closing) {
      work.catch(() => undefined);
      return Promise.reject(new PgSemaphoreError('expected an open PgSemaphore, got one that is closed'));
    }
    this.inflight.add(work);
    const done = () => void this.inflight.delete(work);
    work.then(done, done);
    return work;
  }

  /**
   * Runs `fn` while holding tickets, then releases them whatever the outcome. `fn`'s result
   * or error passes through. If the tickets are lost while `fn` runs, `fn`'s signal aborts
   * and this rejects at once with a {@link TicketLostError}.
   *
   * @example
   * ```ts
   * const reply = await sem.withTickets('openai', ({ signal }) => fetch(url, { signal }), { wait: { timeout: 10_000 } });
   * ```
   */
  async withTickets<T>(request: TicketRequest, fn: (ctx: HoldContext) => Promise<T> | T, options: AcquireOptions = {}): Promise<T> {
    if (typeof fn !== 'function') throw new InvalidArgumentError('fn', 'a function', fn);
    checkOptions(options);
    return this.runHolding(await this.hold(request, options), fn);
  }

  /** Runs `fn` under `hold`, then releases it: committed when `fn` succeeded, rolled back otherwise. */
  private async runHolding<T>(hold: Hold, fn: (ctx: HoldContext) => Promise<T> | T): Promise<T> {
    let ok = false;
    try {
      const ctx: HoldContext = {
        signal: hold.signal,
        tickets: hold.tickets,
        get tx() {
          return hold.tx;
        },
      };
      const result = await raceLoss(hold.signal, Promise.resolve().then(() => fn(ctx)));
      ok = true;
      return result;
    } finally {
      await hold.release({ commit: ok });
    }
  }

  /**
   * Runs `fn` alone across the fleet: a one-ticket semaphore, created on first use.
   *
   * A mutex has exactly one ticket. If a semaphore of that name already exists with more
   * than one ticket, this fails with an {@link InvalidArgumentError} naming its capacity
   * (argument `semaphore`) and holds nothing, rather than letting several holders in: use
   * {@link PgSemaphore.withExclusive} to take every ticket of a larger semaphore, or give the
   * mutex a name of its own. `createWith`, if given, must be 1. Checking costs no extra round trip.
   * @example `await sem.withMutex('nightly-export', () => exportAll(), { wait: 60_000 })`
   */
  async withMutex<T>(name: string, fn: (ctx: HoldContext) => Promise<T> | T, options: AcquireOptions = {}): Promise<T> {
    validateName(name, 'semaphore');
    if (typeof fn !== 'function') throw new InvalidArgumentError('fn', 'a function', fn);
    checkOptions(options);
    if (options.createWith !== undefined && options.createWith !== 1) {
      throw new InvalidArgumentError('createWith', '1 or nothing (a mutex has one ticket)', options.createWith);
    }
    const hold = await this.track(this.acquireHold(name, { ...options, createWith: 1 }, { mutex: true }));
    return this.runHolding(hold!, fn);
  }

  /**
   * Runs `fn` holding a shared lock: any number of shared holders (up to the semaphore's
   * capacity, `createWith` on first use, default 100) run together; an exclusive holder
   * excludes them all.
   */
  withShared<T>(name: string, fn: (ctx: HoldContext) => Promise<T> | T, options: AcquireOptions = {}): Promise<T> {
    return this.withTickets(name, fn, { createWith: 100, ...options });
  }

  /** Runs `fn` holding an exclusive lock: every ticket of the semaphore (see {@link PgSemaphore.withShared}). */
  withExclusive<T>(name: string, fn: (ctx: HoldContext) => Promise<T> | T, options: AcquireOptions = {}): Promise<T> {
    return this.withTickets({ name, tickets: 'all' }, fn, { createWith: 100, ...options });
  }

  /**
   * Calls `onRelease` when a holder in another process releases tickets of these
   * semaphores (LISTEN/NOTIFY on one connection per PgSemaphore). Wake-ups can be lost when
   * that connection drops, so pair this with a fallback poll. Returns a function that stops
   * watching. Used by the BullMQ wrapper; most code wants `wait` instead.
   * @internal
   */
  async watch(names: string[], onRelease: OnRelease): Promise<() => Promise<void>> {
    names.forEach((n, i) => validateName(n, `names[${i}]`));
    if (this.disabled || !this.listen) return async () => undefined;
    this.listener ??= new Listener(this.pool, this.qs, this.logger);
    return this.listener.watch(names, onRelease);
  }

  /**
   * Wake-ups from other processes reach this one: its LISTEN connection is open and a probe
   * NOTIFY arrived on it (never through PgBouncer in transaction mode). @internal
   */
  get hearsWakeUps(): boolean {
    return this.listener?.hears === true;
  }

  /** Holds currently open in this process. */
  get openHolds(): number {
    return this.holds.size;
  }

  /**
   * Closes the LISTEN connection and, if pg-semaphore built the pool, the pool. Holds still
   * open are released first (rolled back).
   */
  async close(): Promise<void> {
    this.closing = true;
    for (const wait of this.waits) wait.abort();
    await Promise.all([...this.inflight].map((p) => p.catch(() => undefined)));
    await Promise.all([...this.holds].map((h) => h.release({ commit: false }).catch(() => undefined)));
    await this.session?.close();
    await this.listener?.close();
    this.listener = undefined;
    if (this.ownsPool) await this.pool.end();
  }

  // ---------------------------------------------------------------- internals

  /**
   * Takes tickets on a connection of their own: tries, and while the semaphores are busy and
   * the caller waits, sleeps until a wake-up, the next poll (jittered backoff up to
   * `maxPollInterval`), the deadline, the caller's signal or close(). One try is
   * {@link attempt}; this loop owns only the deadline, the wake-ups and the backoff.
   * With `mutex`, a semaphore of more than one ticket is refused (see withMutex).
   */
  private async acquireHold(
    request: TicketRequest,
    options: AcquireOptions,
    how: { nullIfBusy?: boolean; mutex?: boolean; onBusy?: (short: readonly string[]) => void } = {},
  ): Promise<Hold | null> {
    const req = normalizeRequest(request);
    const createWith = options.createWith === undefined ? undefined : validateInt(options.createWith, 'createWith', 1, MAX_TICKETS);
    const label = checkLabel(options.label);
    const wait = normalizeWait(options.wait);
    if (this.disabled) {
      this.warnDisabled();
      return new Hold({ client: undefined, names: req.names, tickets: [], semaphoreIds: [], qs: this.qs, livenessMs: this.livenessMs });
    }
    wait?.signal?.throwIfAborted();
    const deadline = wait?.timeout === undefined ? Infinity : Date.now() + wait.timeout;
    // one ticket of one semaphore (nearly every try) skips the SQL function's PL/pgSQL call
    // (statements.acquireOne); the rest, and withMutex's capacity, go through acquire()
    const one = req.names.length === 1 && req.counts[0] === 1 && how.mutex !== true;
    const viaFunction = () =>
      statements.acquireCall(
        statements.acquire(this.qs, req.names, req.counts, label ?? null, this.livenessMs, {
          capacity: how.mutex === true,
          starts: this.startsSupported ? req.names.map((n) => this.lastTickets.get(n) ?? null) : undefined,
          prepared: this.prepared.on,
        }),
      );
    // only prepared: planned anew for every try (behind a pooler that keeps no prepared
    // statements) the find costs the backend more than the function, whose plans are kept
    const statement = (): AcquireStatements =>
      one && this.direct === 'on' && this.prepared.on
        ? {
            ...statements.acquireOne(this.qs, req.names[0]!, this.lastTickets.get(req.names[0]!) ?? 1, label ?? null, this.livenessMs, this.prepared.on),
            // a client that cannot pipeline (pg-native) would pay a round trip per statement
            alone: viaFunction,
          }
        : viaFunction();
    const ctx: AttemptContext = {
      pool: this.pool,
      roundTrips: (n) => void (this.roundTrips += n),
      toHold: (client, row, portalOpen) => this.newHold(req.names, row, { client, portalOpen }),
      veto: (row) => this.veto(row, req.names[0]!, wait?.signal, how.mutex === true),
    };
    // Ends the sleeps of this wait: close() aborts `stop`, and the caller's signal reaches us
    // through the instance's AbortFanout (one listener per signal however many wait on it),
    // both of which end the current nap. Not AbortSignal.any: on Node 20 every call leaves an
    // entry on a long-lived source signal that is never collected (measured: +124 MB after
    // 100,000 waits on one signal).
    // made when the first sleep begins: an acquire that never sleeps pays for no controller
    let stop: AbortController | undefined;
    let unsubscribe: (() => void) | undefined;
    let unwatch: (() => Promise<void>) | undefined;
    /** A watch of this wait failed (and was logged): the next ones are tried quietly. */
    let watchFailed = false;
    let woken = false;
    /** Passes on the wake-up that named this process (see `OnRelease`), until a try used it. */
    let relayWake: (() => void) | undefined;
    /** Aborted by a wake-up, the caller's signal or close(): ends the current sleep early. */
    let nap: AbortController | undefined;
    const interrupt = () => nap?.abort();
    try {
      for (let round = 0, sleeps = 0; ; round++) {
        const tried = statement();
        let got: Awaited<ReturnType<typeof attempt>>;
        try {
          got = this.session ? await this.sessionAttempt(req, ctx) : await attempt(ctx, tried);
        } catch (err) {
          // an install older than 0003_functions: its acquire takes no start positions
          if (!this.session && tried.statements.length === 1 && tried.statements[0]!.values?.length === 5 && (err as { code?: unknown }).code === SQLSTATE.undefinedFunction && this.startsSupported) {
            this.startsSupported = false;
            continue;
          }
          // the direct statements refused (see `direct`): the function from now on
          if (!this.session && tried.alone !== undefined && DIRECT_REFUSED.has(errorCode(err))) {
            this.direct = 'off';
            continue;
          }
          // a transaction pooler moved this connection's transaction to a server connection
          // that never prepared the acquire (the try failed before it ran): unprepared from now
          // on, for every try (a concurrent one may have turned it off already)
          if (!this.session && tried.statements[0]!.name !== undefined && isPreparedStatementLost(err)) {
            this.prepared.on = false;
            continue;
          }
          throw err;
        }
        const { hold, row } = got;
        // the function took start positions and answered: an install the direct statements suit
        if (this.direct === 'untested' && !this.session && tried.statements[0]!.values?.length === 5 && (row.status === 'ok' || row.status === 'busy')) {
          this.direct = 'on';
        }
        if (hold) return hold;
        if ((await this.interpret(row, req, createWith, round)) === 'retry') continue;
        // busy. A wake-up that named this process, and a try that found another semaphore of
        // the request short: the freed one may still be free, pass it on to the next process.
        const relay = relayWake;
        relayWake = undefined;
        const short = row?.names;
        if (relay && Array.isArray(short) && short.length > 0 && req.names.some((n) => !short.includes(n))) relay();
        // an abort that came while we were talking to Postgres counts now
        wait?.signal?.throwIfAborted();
        if (!wait) {
          if (how.nullIfBusy) {
            how.onBusy?.(req.names.filter((n, i) => row.names?.includes(n) && req.names.indexOf(n) === i));
            return null;
          }
          throw new SemaphoreBusyError(req.names);
        }
        if (this.closing) throw new PgSemaphoreError('expected an open PgSemaphore, got one closed while waiting');
        const now = Date.now();
        if (now >= deadline) throw new SemaphoreTimeoutError('acquire', req.names, wait.timeout ?? 0);
        if (!unwatch && this.listen) {
          const watching = await this.watchWhileWaiting(
            req.names,
            (relay) => {
              woken = true;
              relayWake = relay;
              nap?.abort();
            },
            watchFailed,
          );
          if (watching) {
            unwatch = watching;
            // a release between our failed try and the watch would be missed: try again at once
            continue;
          }
          // the watch failed (its connection lost while it ran, say): this turn polls, the next
          // watches again (once the LISTEN connection is back, the releases name this wait)
          watchFailed = true;
        }
        if (!woken) {
          if (!stop) {
            stop = new AbortController();
            this.waits.add(stop);
            stop.signal.addEventListener('abort', interrupt, { once: true });
            if (wait.signal) unsubscribe = this.fanout.subscribe(wait.signal, interrupt);
            if (this.closing) stop.abort();
          }
          nap = new AbortController();
          if (stop.signal.aborted || wait.signal?.aborted) nap.abort();
          await sleep(Math.min(backoff(sleeps++, { min: 25, max: this.maxPollMs }), deadline - Date.now()), nap.signal);
          nap = undefined;
          wait.signal?.throwIfAborted();
        }
        woken = false;
      }
    } catch (err) {
      throw explainNotInstalled(err, this.schema);
    } finally {
      if (stop) this.waits.delete(stop);
      unsubscribe?.();
      if (unwatch) await unwatch();
    }
  }

  /**
   * A hold on the tickets of `row`, held by a connection whose open transaction holds them
   * (`client`, with `portalOpen` when the acquire left its portal open) or by the process's
   * holding session (`session`); it leaves `holds` when settled.
   */
  private newHold(names: string[], row: AcquireRow, holder: { client: PoolClient; portalOpen: boolean } | { session: NonNullable<HoldOptions['session']> }): Hold {
    const hold = new Hold({
      client: 'client' in holder ? holder.client : undefined,
      names,
      tickets: heldTickets(row, this.schema),
      semaphoreIds: row.semaphore_ids ?? [],
      qs: this.qs,
      livenessMs: this.livenessMs,
      ...('client' in holder ? { portalOpen: holder.portalOpen, onRoundTrip: this.countRoundTrip, prepared: this.prepared } : { session: holder.session }),
      wakeAfter: () => this.listener?.pid,
      logger: this.logger,
      onSettle: (h) => {
        this.holds.delete(h);
        this.rememberTickets(h.tickets);
      },
    });
    this.holds.add(hold);
    return hold;
  }

  /**
   * One try in session holding: the request joins the next acquire statement on the holding
   * connection; on `ok` the hold is built around the session's locks. A veto (the caller gave
   * up, close() began, a mutex of several tickets) gives them back at once.
   */
  private async sessionAttempt(req: NormalizedRequest, ctx: AttemptContext): Promise<Awaited<ReturnType<typeof attempt>>> {
    const starts = req.names.map((n) => this.lastTickets.get(n) ?? null);
    let got = await this.session!.acquire({ names: req.names, counts: req.counts, starts });
    // tickets taken on a connection that died before we heard: they went with it, so the
    // hold would be born lost; ask again on a new connection (a second death is an answer)
    if (got.row.status === 'ok' && !got.alive()) got = await this.session!.acquire({ names: req.names, counts: req.counts, starts });
    const { row, link, adopt, giveBack } = got;
    if (row.status !== 'ok') {
      const veto = ctx.veto?.(row);
      if (veto !== undefined) throw veto;
      return { hold: undefined, row };
    }
    let hold: Hold;
    let veto: unknown;
    try {
      veto = ctx.veto?.(row);
      hold = this.newHold(req.names, row, { session: { link, ticketIds: row.ticket_ids ?? [] } });
    } catch (err) {
      giveBack();
      throw err;
    }
    adopt(hold);
    if (veto !== undefined) {
      await hold.release().catch(() => undefined);
      throw veto;
    }
    return { hold, row };
  }

  /** Remembers the tickets a hold returns as where the next acquire of their semaphores starts looking. */
  private rememberTickets(tickets: readonly HeldTicket[]): void {
    for (const { name, ticket } of tickets) {
      this.lastTickets.delete(name);
      this.lastTickets.set(name, ticket);
    }
    for (const name of this.lastTickets.keys()) {
      if (this.lastTickets.size <= 1_000) break;
      this.lastTickets.delete(name);
    }
  }

  /**
   * Whether a try's tickets must be given back at once, and the error to throw then: the
   * caller gave up or close() began while the try was in flight, or a mutex found a
   * semaphore of more than one ticket (busy or not).
   */
  private veto(row: AcquireRow, name: string, signal: AbortSignal | undefined, mutex: boolean): unknown {
    if (mutex && typeof row.capacity === 'number' && row.capacity > 1) {
      return new InvalidArgumentError(
        'semaphore',
        `the name of a mutex (a semaphore of one ticket), but ${JSON.stringify(name)} has ${row.capacity} tickets: ` +
          'use withExclusive() to take them all, or give the mutex a name of its own',
        name,
      );
    }
    if (row.status !== 'ok') return undefined;
    if (this.closing) return new PgSemaphoreError('expected an open PgSemaphore, got one closed while acquiring');
    return signal?.aborted ? signal.reason : undefined;
  }

  /**
   * Registers for wake-ups on these semaphores (LISTEN/NOTIFY); undefined when listening is
   * off or cannot start (waiting then polls).
   */
  private async watchWhileWaiting(names: string[], onRelease: OnRelease, retry = false): Promise<(() => Promise<void>) | undefined> {
    if (!this.listen) return undefined;
    // a wait's retry after a failed watch waits for the pause shared by the instance: a LISTEN
    // that keeps failing costs a connection per pause, not one per turn of every wait
    if (retry && Date.now() < this.watchRetry.at) return undefined;
    try {
      const unwatch = await this.watch(names, onRelease);
      this.watchRetry.failures = 0;
      return unwatch;
    } catch (err) {
      this.watchRetry.at = Date.now() + Math.min(WATCH_RETRY_MAX_MS, WATCH_RETRY_FIRST_MS * 2 ** this.watchRetry.failures++);
      // once per wait
      if (!retry) this.logger.warn(`pg-semaphore: cannot LISTEN (${(err as Error).message}); polling until a watch succeeds`);
      return undefined;
    }
  }

  /** Runs the acquire statement in the caller's transaction (Drizzle or `pg`). */
  private async runAcquire(tx: Executor, statement: Statement): Promise<AcquireRow> {
    this.roundTrips++;
    if ('execute' in tx && typeof tx.execute === 'function') {
      const result = (await tx.execute(statements.toDrizzle(statement))) as { rows?: AcquireRow[] } | AcquireRow[];
      const rows = Array.isArray(result) ? result : result.rows;
      return rows![0]!;
    }
    if ('query' in tx && typeof tx.query === 'function') {
      const result = (await tx.query(statement.text, statement.values)) as { rows: AcquireRow[] };
      return result.rows[0]!;
    }
    throw new InvalidArgumentError('tx', 'a Drizzle node-postgres transaction or a pg client', tx);
  }

  /** Turns a non-ok acquire result into an error, a retry (after creating) or 'busy'. */
  private async interpret(row: AcquireRow, req: NormalizedRequest, createWith: number | undefined, round: number): Promise<'ok' | 'busy' | 'retry'> {
    switch (row.status) {
      case 'ok':
        return 'ok';
      case 'busy':
        return 'busy';
      case 'missing': {
        const missing = row.names ?? [];
        if (createWith === undefined || round > 2) throw new UnknownSemaphoreError(missing);
        this.roundTrips++;
        await this.pool.query(statements.ensure(this.qs, missing, createWith));
        return 'retry';
      }
      case 'exceeds': {
        const names = row.names ?? [];
        throw new InvalidArgumentError(
          'tickets',
          `at most the capacity of ${names.map((n) => JSON.stringify(n)).join(', ')}`,
          req.counts[req.names.indexOf(names[0]!)] ?? req.counts,
        );
      }
      default:
        throw new PgSemaphoreError(`unexpected acquire status ${JSON.stringify(row.status)}`);
    }
  }

  /** Runs one of the library's statements on the pool; a schema without the library gets a `NotInstalledError`. */
  private async query<R extends pg.QueryResultRow = Record<string, unknown>>(statement: Statement): Promise<pg.QueryResult<R>> {
    try {
      return await this.pool.query<R>(statement);
    } catch (err) {
      throw explainNotInstalled(err, this.schema);
    }
  }

  /** {@link PgSemaphore.query} for make and destroy, whose waits for held tickets can time out. */
  private async admin<R extends pg.QueryResultRow = Record<string, unknown>>(
    statement: Statement,
    operation: 'make' | 'destroy',
    names: string[],
    timeout: number | undefined,
  ): Promise<pg.QueryResult<R>> {
    try {
      return await this.query<R>(statement);
    } catch (err) {
      if (isLibraryLockTimeout(err)) {
        throw new SemaphoreTimeoutError(operation, names, timeout ?? 0, (err as Error).message.replace(/^pg-semaphore: /, ''), { cause: err });
      }
      throw err;
    }
  }

  private warnDisabled(): void {
    if (this.warnedDisabled) return;
    this.warnedDisabled = true;
    this.logger.warn(`pg-semaphore: limiting is DISABLED (option disabled or ${DISABLE_ENV}); every acquire succeeds without a ticket`);
  }
}

const CONNECTION_STRING = 'a connection string such as postgres://user@host:5432/db';
/** After a failed watch, waits watch again after this pause, doubling while watches fail... */
const WATCH_RETRY_FIRST_MS = 250;
/** ...up to this one. */
const WATCH_RETRY_MAX_MS = 5_000;

/**
 * Errors of the direct statements after which the function serves every try: no right to read
 * the tables (a SECURITY DEFINER `acquire` does not need it), or the schema, tables or `_ns`
 * gone (the function's own error then says what is missing).
 */
const DIRECT_REFUSED = new Set<string>([SQLSTATE.insufficientPrivilege, SQLSTATE.undefinedTable, SQLSTATE.undefinedFunction, SQLSTATE.invalidSchemaName]);

/**
 * Checks the connection string, or a pool config's `connectionString` when the key is there:
 * `connection: process.env.DATABASE_URL` or `{ connectionString: process.env.DATABASE_URL }`
 * with DATABASE_URL unset would otherwise fail only at the first query, with "no PostgreSQL
 * user name specified in startup packet". Other pool configs are node-postgres's business
 * (it defaults the host to localhost and reads the PG* environment variables).
 */
function checkPoolConfig(connection: string | PoolConfig): PoolConfig {
  if (typeof connection === 'string') {
    if (connection.trim() === '') throw new InvalidArgumentError('connection', `${CONNECTION_STRING} (is DATABASE_URL empty?)`, connection);
    return { connectionString: connection };
  }
  const config = { ...connection };
  if ('connectionString' in config) {
    const { connectionString } = config;
    if (typeof connectionString !== 'string' || connectionString.trim() === '') {
      throw new InvalidArgumentError(
        'connection.connectionString',
        `${CONNECTION_STRING}, or no connectionString key and host/user/database instead (is DATABASE_URL set?)`,
        connectionString,
      );
    }
  }
  return config;
}

function isPoolLike(value: unknown): boolean {
  return (
    value instanceof pg.Pool ||
    (value !== null && typeof value === 'object' && typeof (value as Pool).connect === 'function' && typeof (value as Pool).query === 'function' && 'totalCount' in value)
  );
}

function toInfo(row: Record<string, unknown>): SemaphoreInfo {
  return {
    name: row.name as string,
    tickets: row.tickets as number,
    held: row.held as number,
    createdAt: row.created_at as Date,
    updatedAt: row.updated_at as Date,
  };
}

function checkOptions<T>(options: T, argument = 'options'): T {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidArgumentError(argument, 'an options object', options);
  }
  return options;
}

function checkLabel(label: unknown): string | undefined {
  if (label === undefined) return undefined;
  if (typeof label !== 'string' || label.includes('\u0000') || label.length > 1000) {
    throw new InvalidArgumentError('label', 'a string without NUL of at most 1000 characters', label);
  }
  return label;
}

function normalizeWait(wait: AcquireOptions['wait']): WaitOptions | undefined {
  if (wait === undefined || wait === false) return undefined;
  if (wait === true) return {};
  if (typeof wait === 'number') return { timeout: validateTimeout(wait, 'wait') };
  if (wait !== null && typeof wait === 'object') {
    if (wait.signal !== undefined && !(wait.signal instanceof AbortSignal)) {
      throw new InvalidArgumentError('wait.signal', 'an AbortSignal', wait.signal);
    }
    return { timeout: validateTimeout(wait.timeout, 'wait.timeout'), signal: wait.signal };
  }
  throw new InvalidArgumentError('wait', 'true, a timeout in ms, or { timeout, signal }', wait);
}
