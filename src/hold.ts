import type { PoolClient } from 'pg';
import { drizzle } from 'drizzle-orm/node-postgres';
import { HoldingModeError } from './errors/holding-mode-error.js';
import { PgSemaphoreError } from './errors/pg-semaphore-error.js';
import { TicketLostError } from './errors/ticket-lost-error.js';
import { canPipeline, pipeline } from './pipeline.js';
import { errorCode, isConnectionLost, isPreparedStatementLost, SQLSTATE } from './sqlstate.js';
import type { HoldTx } from './tx.js';
import * as statements from './statements.js';
import type { Logger } from './logger.js';
import type { HeldTicket } from './tickets.js';
import type { SessionLink } from './session.js';

/** What a {@link Hold} is built from. @internal */
export interface HoldOptions {
  /** The connection whose open transaction holds the tickets; undefined when limiting is disabled. */
  client: PoolClient | undefined;
  /** The semaphore names, as asked for. */
  names: string[];
  /** The tickets held (semaphore name and ticket number, in request order). */
  tickets: HeldTicket[];
  /** The ids of the semaphores held (the release wakes their waiters). */
  semaphoreIds: number[];
  /** The quoted schema. */
  qs: string;
  /** The liveness window: the heartbeat runs every third of it. */
  livenessMs: number;
  /**
   * Whether the acquire left its unnamed portal open (it was not pipelined): the hold then
   * closes it at once with a `SELECT 1`, or it would keep a snapshot while the transaction sits idle.
   * @default false
   */
  portalOpen?: boolean;
  /**
   * Whether the release's wake-up may run as a prepared statement (see `PgSemaphore`); the
   * hold turns it off when its connection turns out not to keep prepared statements.
   */
  prepared?: { on: boolean };
  /** Called on every round trip the hold makes (heartbeat, relabel, release), for the benchmark. */
  onRoundTrip?: () => void;
  /** Called once, when the hold is released or discarded (before its connection goes back). */
  onSettle?: (hold: Hold) => void;
  /** The backend pid of this process's LISTEN connection, if open: a release wakes the next waiting process after it. */
  wakeAfter?: () => number | undefined;
  /** Where a release that freed the tickets but could not wake anybody says so. */
  logger?: Logger;
  /**
   * Session holding: the process's holding connection holds the tickets (session locks with
   * these row ids); there is no transaction, and the release goes through the link.
   */
  session?: { link: SessionLink; ticketIds: readonly number[] };
}

/** What {@link Hold.release} says. */
export interface ReleaseResult {
  /** Only with `checkJobsWaiting`: whether the BullMQ wrapper recorded jobs as waiting on these semaphores. */
  jobsWaiting: boolean;
  /** Whether the wake-up found a process waiting on one of these semaphores and sent it a NOTIFY. */
  notified: boolean;
}

/**
 * Tickets held by an open transaction on a connection of their own. Get one from
 * {@link PgSemaphore.hold}; give it back with {@link Hold.release} (or let
 * {@link PgSemaphore.withTickets} do both).
 *
 * While held, the connection is idle in a transaction that has no transaction id and no
 * snapshot; a heartbeat runs on it inside the liveness window. If the connection dies or
 * Postgres ends the session, {@link Hold.signal} aborts with a {@link TicketLostError}.
 *
 * In session holding (`holding: 'session'`) the process's one holding connection holds the
 * tickets as session locks: there is no transaction ({@link Hold.tx} throws a
 * {@link HoldingModeError}), the heartbeat is the connection's, and losing that connection
 * loses every hold on it.
 */
export class Hold {
  /** The semaphore names, as asked for. */
  readonly names: readonly string[];
  /** The ids of the semaphores held (the rows' ids). */
  readonly semaphoreIds: readonly number[];
  /**
   * The tickets held, in request order: each one's semaphore and its number within it
   * (1..capacity, as {@link PgSemaphore.status} shows it). Empty when limiting is disabled.
   */
  readonly tickets: readonly HeldTicket[];
  /** When the tickets were taken (`Date.now()` of this process). */
  readonly acquiredAt: number;

  /** Made on first use: a hold nobody asks for a signal and that is never lost costs no controller. */
  private controller: AbortController | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  /** The library's own statements on the holding connection run one after another. */
  private chain: Promise<unknown> = Promise.resolve();
  /** Statements queued or running on the holding connection. */
  private running = 0;
  private settled = false;
  /** Whether a statement was run on {@link Hold.tx}: then a commit that cannot be confirmed is an error. */
  private touched = false;
  private drizzleTx: HoldTx | undefined;
  private readonly onError: (err: Error) => void;
  private readonly onEnd: () => void;
  private readonly client: PoolClient | undefined;
  private readonly qs: string;
  private readonly onRoundTrip: (() => void) | undefined;
  private readonly onSettle: ((hold: Hold) => void) | undefined;
  private readonly wakeAfter: (() => number | undefined) | undefined;
  private readonly logger: Logger | undefined;
  private readonly session: HoldOptions['session'];
  private readonly prepared: HoldOptions['prepared'];

  /** @internal */
  constructor(options: HoldOptions) {
    const { client, livenessMs } = options;
    this.client = client;
    this.qs = options.qs;
    this.onRoundTrip = options.onRoundTrip;
    this.onSettle = options.onSettle;
    this.wakeAfter = options.wakeAfter;
    this.logger = options.logger;
    this.session = options.session;
    this.prepared = options.prepared;
    this.names = options.names;
    this.semaphoreIds = options.semaphoreIds;
    this.tickets = options.tickets;
    this.acquiredAt = Date.now();
    this.onError = (err: Error) => this.lose(`the holding connection failed (${err.message})`, err);
    this.onEnd = () => this.lose('the holding connection closed');
    if (client) {
      client.on('error', this.onError);
      client.on('end', this.onEnd);
      if (options.portalOpen) {
        // the acquire was a parameterised statement of its own: close its portal so no snapshot stays behind
        this.onRoundTrip?.();
        void this.serial(() => client.query(statements.PING)).catch(() => undefined);
      }
      this.heartbeat = setInterval(() => void this.beat(), Math.max(10, Math.floor(livenessMs / 3)));
      this.heartbeat.unref();
    }
  }

  /** Aborts, with a {@link TicketLostError} as its reason, when the tickets are lost. */
  get signal(): AbortSignal {
    this.controller ??= new AbortController();
    return this.controller.signal;
  }

  /** Whether the tickets were lost (the signal has aborted). */
  get lost(): boolean {
    return this.controller?.signal.aborted === true;
  }

  /**
   * Whether the hold is over: released, rolled back (also by {@link PgSemaphore.close}) or
   * discarded after a loss. Its tickets are not held any more, and {@link Hold.tx} refuses statements.
   */
  get released(): boolean {
    return this.settled;
  }

  /**
   * The holding transaction as a Drizzle database. Statements run on it are part of the
   * transaction that holds the tickets: they commit on a successful release and roll back
   * otherwise. Writes give the transaction an id, so use it only when you need to.
   * Typed as Drizzle's `NodePgDatabase` in a program that imports `pg-semaphore/drizzle`
   * (see {@link HoldTx}).
   */
  get tx(): HoldTx {
    if (this.session) {
      throw new HoldingModeError(
        'session',
        'a hold of a PgSemaphore in transaction holding to run statements in the holding transaction',
        "a hold in session holding, where no transaction holds the tickets: use your own db.transaction(), or holding: 'transaction'",
      );
    }
    if (!this.client) throw new PgSemaphoreError('expected a holding transaction, got none: limiting is disabled');
    // a NodePgDatabase; typed through HoldTx so the main entry's declarations load none of drizzle-orm's
    this.drizzleTx ??= drizzle({ client: this.portalClearingClient(this.client) }) as unknown as HoldTx;
    return this.drizzleTx;
  }

  /**
   * The holding client as Drizzle sees it: statements run one after another with the
   * library's own, and after the last of a burst a simple `SELECT 1` closes the unnamed
   * portal a parameterised statement leaves open, which would otherwise keep a snapshot
   * (and so hold back VACUUM) while the transaction sits idle.
   */
  private portalClearingClient(client: PoolClient): PoolClient {
    let pending = 0;
    const query = (...args: unknown[]) => {
      if (this.settled) {
        return Promise.reject(new PgSemaphoreError('expected an open hold, got one already released: its connection went back to the pool'));
      }
      this.touched = true;
      pending++;
      const run = this.serial(() => (client.query as (...a: unknown[]) => Promise<unknown>)(...args));
      const after = () => {
        if (--pending === 0 && !this.settled) void this.serial(() => client.query(statements.PING)).catch(() => undefined);
      };
      run.then(after, after);
      return run;
    };
    return new Proxy(client, {
      get(target, prop, receiver) {
        if (prop === 'query') return query;
        const value = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
  }

  private async beat(): Promise<void> {
    if (this.settled || !this.client) return;
    // Skip while statements run on the connection: it is not idle then.
    if (this.running > 0) return;
    try {
      this.onRoundTrip?.();
      await this.serial(() => this.client!.query(statements.PING));
    } catch (err) {
      this.lose(`the heartbeat failed (${(err as Error).message})`, err);
    }
  }

  /** Marks the tickets lost: the signal aborts with a {@link TicketLostError}. @internal */
  lose(reason: string, cause?: unknown): void {
    if (this.settled || this.lost) return;
    this.controller ??= new AbortController();
    this.controller.abort(new TicketLostError([...this.names], reason, { cause }));
  }

  /**
   * Changes the label `status()` shows for this holder, while the tickets stay held: one
   * round trip on the holding connection (the label is a bind parameter; the batch closes
   * its portal, so no snapshot stays behind).
   */
  async relabel(label: string): Promise<void> {
    // session holding: status() shows the process's label for every ticket it holds
    if (!this.client || this.settled || this.lost) return;
    const client = this.client;
    if (canPipeline(client)) {
      this.onRoundTrip?.();
      await this.serial(() => pipeline(client, [statements.relabel(label)])).catch(() => undefined);
      return;
    }
    this.onRoundTrip?.();
    await this.serial(() => client.query(statements.relabel(label))).catch(() => undefined);
    // close the parameterised statement's portal, or it keeps a snapshot while we sit idle
    this.onRoundTrip?.();
    await this.serial(() => client.query(statements.PING)).catch(() => undefined);
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    this.running++;
    const next = this.chain.then(fn, fn);
    this.chain = next.catch(() => undefined);
    const done = () => void this.running--;
    next.then(done, done);
    return next;
  }

  /**
   * Returns the tickets: commits the holding transaction (or rolls it back with
   * `{ commit: false }`) and wakes processes waiting on these semaphores, in one round trip.
   * Safe to call twice; a lost hold just discards its broken connection. When statements ran
   * on {@link Hold.tx} and the commit cannot happen or cannot be confirmed (the connection
   * was lost), it rejects (with the {@link TicketLostError}, or the connection's error).
   *
   * @param options.commit - false rolls the transaction back (anything run on {@link Hold.tx} is undone).
   * @param options.checkJobsWaiting - also ask whether the BullMQ wrapper recorded jobs as
   *   waiting on these semaphores (in the same round trip); without it `jobsWaiting` is false.
   * @returns `jobsWaiting`: whether jobs are recorded as waiting on these semaphores (the
   *   BullMQ wrapper then promotes the oldest); `notified`: whether the wake-up found a
   *   process waiting on one of them (its own LISTEN connection counts) and sent a NOTIFY.
   */
  async release(options: { commit?: boolean; checkJobsWaiting?: boolean } = {}): Promise<ReleaseResult> {
    const none: ReleaseResult = { jobsWaiting: false, notified: false };
    if (this.settled) return none;
    this.settled = true;
    this.onSettle?.(this);
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.session) {
      // nothing to commit or roll back: the session locks go, one statement
      if (this.lost) return none;
      return this.session.link.release(this, this.session.ticketIds, { checkJobsWaiting: options.checkJobsWaiting === true, after: this.wakeAfter?.() });
    }
    const client = this.client;
    if (!client) return none;
    const detach = () => {
      client.removeListener('end', this.onEnd);
      client.removeListener('error', this.onError);
    };
    const commit = options.commit !== false;
    if (this.lost) {
      detach();
      client.release(true);
      // what was run on tx did not commit: say so (the tickets are free either way)
      if (commit && this.touched) throw this.signal.reason;
      return none;
    }
    await this.chain;
    try {
      this.onRoundTrip?.();
      // a commit of a transaction only the library used checks for waiters before the COMMIT
      // (no transaction of its own for the wake-up); one that ran user statements may have
      // failed, so it commits first
      const early = commit && !this.touched;
      const jobsWaiting = options.checkJobsWaiting === true;
      const after = this.wakeAfter?.();
      let row: { notified?: number; jobs_waiting?: boolean } | undefined;
      if (early && this.prepared?.on && canPipeline(client)) {
        // the wake-up prepared once per connection, and the COMMIT, in one round trip
        const results = await pipeline(client, [statements.wakeBeforeCommit(this.qs, this.semaphoreIds, jobsWaiting, after), statements.COMMIT]);
        row = results[0]?.rows[0];
      } else {
        const text = statements.release(this.qs, this.semaphoreIds, commit, jobsWaiting, { early, after });
        const result = (await client.query(text)) as unknown as Array<{ rows: Array<{ notified: number; jobs_waiting?: boolean }> }>;
        row = result[early ? 0 : 1]?.rows[0];
      }
      detach();
      client.release();
      return { jobsWaiting: row?.jobs_waiting === true, notified: (row?.notified ?? 0) > 0 };
    } catch (err) {
      // The transaction ends one way or another (a dead connection frees its locks). A lost
      // connection is no error for a hold that only held tickets, but when statements ran on
      // tx, their commit is unknown: never report it as done.
      // On a live connection the failed statement skipped the COMMIT behind it: roll back
      // before returning, so the tickets are free when release() returns (a destroyed
      // connection frees them only once its backend notices, a moment later). The connection
      // is destroyed all the same: what failed on it is not known to be harmless.
      if (!isConnectionLost(err)) {
        this.onRoundTrip?.();
        await client.query(statements.ROLLBACK).catch(() => undefined);
      }
      detach();
      client.release(err as Error);
      // An early wake-up that failed (a transaction that had failed unnoticed, a role without
      // EXECUTE on wake(), an install whose wake() differs): the COMMIT was skipped and the
      // rollback frees the tickets, all a hold of tickets only needs; only the NOTIFY is
      // missing (waiters poll). Released, never a failed job. Said unless the connection died
      // or the transaction had already failed.
      if (commit && !this.touched) {
        if (isPreparedStatementLost(err)) {
          // a transaction pooler without prepared statements: the next releases send it as text
          if (this.prepared) this.prepared.on = false;
        } else if (!isConnectionLost(err) && errorCode(err) !== SQLSTATE.inFailedTransaction) {
          this.logger?.warn(`pg-semaphore: tickets released, but waking waiters failed (${(err as Error).message}); they poll`);
        }
        return none;
      }
      if (commit) throw err;
      return none;
    }
  }
}

