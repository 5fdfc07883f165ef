import pg from 'pg';
import type { Pool, PoolConfig } from 'pg';
import { sql as dsql } from 'drizzle-orm';
import { InvalidArgumentError } from './errors/invalid-argument-error.js';
import { PgSemaphoreError } from './errors/pg-semaphore-error.js';
import { SemaphoreBusyError } from './errors/semaphore-busy-error.js';
import { SemaphoreTimeoutError } from './errors/semaphore-timeout-error.js';
import { UnknownSemaphoreError } from './errors/unknown-semaphore-error.js';
import { Hold, type HoldHooks } from './hold.js';
import { Listener } from './listener.js';
import type { Logger } from './logger.js';
import { migrate as runMigrate } from './migrate.js';
import { normalizeRequest, type NormalizedRequest, type TicketRequest } from './request.js';
import { DEFAULT_SCHEMA, MAX_TICKETS, quoteSchema, validateInt, validateName, validateSchemaName, validateTimeout } from './validate.js';
import { raceLoss } from './race-loss.js';

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
  /** The held ticket ids. */
  tickets: readonly number[];
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
  /** When the holding transaction began. */
  since: Date | null;
  /** The label the holder chose, if any. */
  label: string | null;
}

/** A semaphore with its holders, as {@link PgSemaphore.status} shows it. */
export interface SemaphoreStatus extends SemaphoreInfo {
  holders: HolderInfo[];
}

/** Tickets taken by {@link PgSemaphore.tryAcquire} inside your transaction. */
export interface AcquiredTickets {
  names: string[];
  /** Ticket ids; they return when your transaction commits or rolls back. */
  tickets: number[];
}

/** Something `tryAcquire` can run SQL on: a Drizzle node-postgres database/transaction or a `pg` client. */
export type Executor = { execute(query: unknown): Promise<unknown> } | { query(text: string, values?: unknown[]): Promise<unknown> };

interface AcquireRow {
  status: 'ok' | 'busy' | 'missing' | 'exceeds';
  tickets: number[] | null;
  semaphore_ids: number[] | null;
  names: string[] | null;
}

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

  private readonly qs: string;
  private readonly ownsPool: boolean;
  private readonly livenessMs: number;
  private readonly maxPollMs: number;
  private readonly logger: Logger;
  private readonly listen: boolean;
  private listener: Listener | undefined;
  private readonly holds = new Set<Hold>();
  private readonly inflight = new Set<Promise<unknown>>();
  private closing = false;
  /** Aborts when close() starts, so waits in flight end promptly. */
  private readonly closed = new AbortController();
  private warnedDisabled = false;
  /** @internal counts round trips to Postgres for the benchmark. */
  roundTrips = 0;
  private readonly hooks: HoldHooks = { roundTrip: () => void this.roundTrips++ };

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
      const config: PoolConfig =
        typeof options.connection === 'string' ? { connectionString: options.connection } : { ...(options.connection as PoolConfig) };
      this.pool = new pg.Pool({ application_name: appName, keepAlive: true, keepAliveInitialDelayMillis: 10_000, ...config });
      this.ownsPool = true;
    } else {
      throw new InvalidArgumentError('connection', 'a connection string, a pg PoolConfig or a pg.Pool (or pass db)', options.connection);
    }
    // An idle pooled client that dies must not crash the process.
    if (this.ownsPool) this.pool.on('error', () => undefined);
  }

  // ---------------------------------------------------------------- install

  /**
   * Applies the library's migrations to this schema, using its own migrations table and an
   * advisory lock, so any number of processes may call it at once. Do not also install
   * through your own drizzle-kit history: pick one path.
   */
  async migrate(): Promise<{ applied: string[] }> {
    return runMigrate(this.pool, this.schema);
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
    await this.admin(`SELECT ${this.qs}.make($1, $2, $3)`, [name, tickets, timeout ?? null], 'make', [name], timeout);
  }

  /**
   * Waits until every ticket is returned (at most `timeout` ms), then removes the semaphore.
   * @returns false when no such semaphore existed.
   */
  async destroy(name: string, options: { timeout?: number } = {}): Promise<boolean> {
    checkOptions(options);
    validateName(name);
    const timeout = validateTimeout(options.timeout ?? 30_000, 'timeout');
    const { rows } = await this.admin<{ destroyed: boolean }>(
      `SELECT ${this.qs}.destroy($1, $2) AS destroyed`,
      [name, timeout ?? null],
      'destroy',
      [name],
      timeout,
    );
    return rows[0]?.destroyed === true;
  }

  /** Every semaphore with its capacity and how many tickets are held right now. */
  async list(): Promise<SemaphoreInfo[]> {
    const { rows } = await this.pool.query(`SELECT * FROM ${this.qs}.list()`);
    return rows.map(toInfo);
  }

  /** One semaphore with its holders, read from `pg_locks` joined with `pg_stat_activity`. */
  async status(name: string): Promise<SemaphoreStatus> {
    validateName(name);
    const [list, holders] = await Promise.all([
      this.pool.query(`SELECT * FROM ${this.qs}.list() WHERE name = $1`, [name]),
      this.pool.query(`SELECT * FROM ${this.qs}.holders($1)`, [name]),
    ]);
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
    for (let round = 0; ; round++) {
      const row = await this.runAcquire(tx, req, label, null);
      const done = await this.interpret(row, req, createWith, round);
      if (done === 'retry') continue;
      if (done === 'busy') return null;
      return { names: req.names, tickets: row.tickets ?? [] };
    }
  }

  // ---------------------------------------------------------------- hold on a connection of its own

  /**
   * Takes tickets on a connection of their own and keeps them until you call
   * {@link Hold.release}. Fails fast with {@link SemaphoreBusyError} unless `wait` is given.
   * Prefer {@link PgSemaphore.withTickets}, which releases for you.
   */
  async hold(request: TicketRequest, options: AcquireOptions = {}): Promise<Hold> {
    const got = await this.track(this.acquireHold(request, checkOptions(options), false));
    return got!;
  }

  /** Like {@link PgSemaphore.hold} without waiting, but returns null when no ticket is free. */
  async tryHold(request: TicketRequest, options: Omit<AcquireOptions, 'wait'> = {}): Promise<Hold | null> {
    return this.track(this.acquireHold(request, { ...checkOptions(options), wait: false }, true));
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
    const hold = await this.hold(request, options);
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
   * @example `await sem.withMutex('nightly-export', () => exportAll(), { wait: 60_000 })`
   */
  withMutex<T>(name: string, fn: (ctx: HoldContext) => Promise<T> | T, options: AcquireOptions = {}): Promise<T> {
    return this.withTickets(name, fn, { createWith: 1, ...options });
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
   */
  async watch(names: string[], onRelease: () => void): Promise<() => Promise<void>> {
    names.forEach((n, i) => validateName(n, `names[${i}]`));
    if (this.disabled || !this.listen) return async () => undefined;
    this.listener ??= new Listener(this.pool, this.qs, this.logger);
    return this.listener.watch(names, onRelease);
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
    this.closed.abort();
    await Promise.all([...this.inflight].map((p) => p.catch(() => undefined)));
    await Promise.all([...this.holds].map((h) => h.release({ commit: false }).catch(() => undefined)));
    await this.listener?.close();
    this.listener = undefined;
    if (this.ownsPool) await this.pool.end();
  }

  // ---------------------------------------------------------------- internals

  private async acquireHold(request: TicketRequest, options: AcquireOptions, nullIfBusy: boolean): Promise<Hold | null> {
    const req = normalizeRequest(request);
    const createWith = options.createWith === undefined ? undefined : validateInt(options.createWith, 'createWith', 1, MAX_TICKETS);
    const label = checkLabel(options.label);
    const wait = normalizeWait(options.wait);
    if (this.disabled) {
      this.warnDisabled();
      return new Hold(undefined, req.names, [], this.qs, [], this.livenessMs);
    }
    wait?.signal?.throwIfAborted();
    const started = Date.now();
    const deadline = wait?.timeout === undefined ? Infinity : started + wait.timeout;
    let unwatch: (() => Promise<void>) | undefined;
    let wake: (() => void) | undefined;
    let woken = false;
    try {
      for (let round = 0, sleeps = 0; ; round++) {
        const client = await this.pool.connect();
        const onError = () => undefined;
        client.on('error', onError);
        let row: AcquireRow;
        try {
          this.roundTrips += 2;
          // Two statements on one connection inside one transaction, so this also works
          // behind PgBouncer in transaction mode. The parameterised acquire leaves an open
          // portal that would keep a snapshot; the Hold closes it with a simple statement sent
          // right after, without making the caller wait for it.
          await client.query('BEGIN');
          const result = await client.query<AcquireRow>(`SELECT * FROM ${this.qs}.acquire($1::text[], $2::integer[], $3, $4)`, [
            req.names,
            req.counts,
            label ?? null,
            this.livenessMs,
          ]);
          row = result.rows[0]!;
        } catch (err) {
          client.removeListener('error', onError);
          client.release(err as Error);
          throw err;
        }
        if (row.status === 'ok' && (wait?.signal?.aborted || this.closing)) {
          // aborted or closing while the try was in flight: give the tickets straight back
          client.removeListener('error', onError);
          await client.query('ROLLBACK').then(
            () => client.release(),
            (err: Error) => client.release(err),
          );
          if (this.closing) throw new PgSemaphoreError('expected an open PgSemaphore, got one closed while acquiring');
          wait!.signal!.throwIfAborted();
        }
        if (row.status === 'ok') {
          client.removeListener('error', onError);
          const hold: Hold = new Hold(
            client,
            req.names,
            row.tickets ?? [],
            this.qs,
            row.semaphore_ids ?? [],
            this.livenessMs,
            this.hooks,
          );
          this.holds.add(hold);
          const release = hold.release.bind(hold);
          hold.release = (opts) => {
            this.holds.delete(hold);
            return release(opts);
          };
          return hold;
        }
        try {
          this.roundTrips++;
          await client.query('ROLLBACK');
          client.removeListener('error', onError);
          client.release();
        } catch (err) {
          client.removeListener('error', onError);
          client.release(err as Error);
        }
        const next = await this.interpret(row, req, createWith, round);
        if (next === 'retry') continue;
        // busy; an abort that came while we were talking to Postgres counts now
        wait?.signal?.throwIfAborted();
        if (!wait) {
          if (nullIfBusy) return null;
          throw new SemaphoreBusyError(req.names);
        }
        if (this.closing) throw new PgSemaphoreError('expected an open PgSemaphore, got one closed while waiting');
        const now = Date.now();
        if (now >= deadline) throw new SemaphoreTimeoutError('acquire', req.names, wait.timeout ?? 0);
        if (!unwatch && !this.listen) unwatch = async () => undefined;
        if (!unwatch) {
          try {
            this.listener ??= new Listener(this.pool, this.qs, this.logger);
            unwatch = await this.listener.watch(req.names, () => {
              woken = true;
              wake?.();
            });
            // a release between our failed try and the watch would be missed: try again at once
            continue;
          } catch (err) {
            this.logger.warn(`pg-semaphore: cannot LISTEN (${(err as Error).message}); waiting by polling only`);
            unwatch = async () => undefined;
          }
        }
        if (woken) {
          woken = false;
          continue;
        }
        const pause = Math.min(this.maxPollMs, 25 * 2 ** Math.min(sleeps++, 16)) * (0.5 + Math.random() / 2);
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(done, Math.min(pause, deadline - now));
          const closed = this.closed.signal;
          const onAbort = () => {
            clearTimeout(timer);
            closed.removeEventListener('abort', done);
            wake = undefined;
            reject(wait.signal!.reason);
          };
          function done() {
            clearTimeout(timer);
            wait?.signal?.removeEventListener('abort', onAbort);
            closed.removeEventListener('abort', done);
            wake = undefined;
            resolve();
          }
          wake = done;
          wait.signal?.addEventListener('abort', onAbort, { once: true });
          closed.addEventListener('abort', done, { once: true });
        });
        woken = false;
      }
    } finally {
      if (unwatch) await unwatch();
    }
  }

  private async runAcquire(tx: Executor, req: NormalizedRequest, label: string | undefined, idleMs: number | null): Promise<AcquireRow> {
    this.roundTrips++;
    if ('execute' in tx && typeof tx.execute === 'function') {
      const query = dsql`SELECT * FROM ${dsql.raw(this.qs)}.acquire(${dsql.param(req.names)}::text[], ${dsql.param(req.counts)}::integer[], ${label ?? null}, ${idleMs})`;
      const result = (await tx.execute(query)) as { rows?: AcquireRow[] } | AcquireRow[];
      const rows = Array.isArray(result) ? result : result.rows;
      return rows![0]!;
    }
    if ('query' in tx && typeof tx.query === 'function') {
      const result = (await tx.query(`SELECT * FROM ${this.qs}.acquire($1::text[], $2::integer[], $3, $4)`, [
        req.names,
        req.counts,
        label ?? null,
        idleMs,
      ])) as { rows: AcquireRow[] };
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
        await this.pool.query(`SELECT ${this.qs}.ensure($1::text[], $2)`, [missing, createWith]);
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

  private async admin<R extends Record<string, unknown> = Record<string, unknown>>(
    text: string,
    values: unknown[],
    operation: 'make' | 'destroy',
    names: string[],
    timeout: number | undefined,
  ): Promise<pg.QueryResult<R>> {
    try {
      return await this.pool.query<R>(text, values);
    } catch (err) {
      const e = err as { code?: string; hint?: string; message: string };
      if (e.code === '55P03' && e.hint === 'pg-semaphore:timeout') {
        throw new SemaphoreTimeoutError(operation, names, timeout ?? 0, e.message.replace(/^pg-semaphore: /, ''), { cause: err });
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
