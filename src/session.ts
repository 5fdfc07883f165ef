import { hostname } from 'node:os';
import type { Pool, PoolClient } from 'pg';
import { HoldingModeError } from './errors/holding-mode-error.js';
import { PgSemaphoreError } from './errors/pg-semaphore-error.js';
import type { Hold, ReleaseResult } from './hold.js';
import type { Logger } from './logger.js';
import { errorCode, isConnectionLost, SQLSTATE } from './sqlstate.js';
import * as statements from './statements.js';
import type { SessionAcquireRow, SessionRequest } from './statements.js';

/** How long the probe NOTIFY may take to reach a new holding session before it counts as pooled. */
const PROBE_TIMEOUT_MS = 5_000;
/** At most this many requests go in one acquire statement. */
const MAX_BATCH = 200;

/** What a {@link HoldingSession} needs. @internal */
export interface HoldingSessionOptions {
  pool: Pool;
  /** The quoted schema. */
  qs: string;
  /** The idle window: `idle_session_timeout` of the holding session; the heartbeat runs every third of it. */
  livenessMs: number;
  /** Counts round trips someone waits for (for the benchmark). */
  roundTrips(n: number): void;
  /** Counts round trips nobody waits for: releases written on a pipelined connection. */
  backgroundRoundTrips(n: number): void;
  logger: Logger;
}

/** The holding connection of one generation: when it dies, every hold taken on it is lost. @internal */
export interface SessionLink {
  /** Gives a hold's tickets back (one statement; the next acquire on this connection goes after it). */
  release(hold: Hold, ticketIds: readonly number[], options: { checkJobsWaiting: boolean; after?: number }): Promise<ReleaseResult>;
}

interface Pending {
  request: SessionRequest;
  resolve(answer: { row: SessionAcquireRow; generation: Generation }): void;
  reject(err: unknown): void;
}

/** One open holding connection and what it holds. */
interface Generation extends SessionLink {
  client: PoolClient;
  pid: number;
  /** The ticket ids this session holds for live holds: never taken again by this session. */
  held: Set<number>;
  /** The holds whose tickets this session holds; each is told when the session is lost. */
  holds: Map<Hold, readonly number[]>;
  dead: boolean;
  /** The statements queued or running on the connection, so close() can let them finish. */
  work: Set<Promise<unknown>>;
  /** The last statement queued: the next one goes after it (not pipelined). */
  chain: Promise<unknown>;
  /** Whether node-postgres pipelines statements on this connection (its `pipeline` mode). */
  pipelined: boolean;
  /**
   * When each statement still unanswered was queued, oldest first: the heartbeat's deadline,
   * and how many run (the heartbeat skips while any does).
   */
  started: number[];
  /** When the connection last had nothing held and nothing to do (closed after a liveness window of that). */
  idleSince: number | undefined;
}

/**
 * Session holding: one connection per {@link PgSemaphore} holds every ticket the process
 * holds, as session-level advisory locks. Acquires are queued and sent one statement at a
 * time, each serving every request queued meanwhile; the statement names the tickets this
 * session holds already, so a ticket is never handed to two holders of the process (a session
 * lock taken twice by one session succeeds). Releases go on the same connection, so the next
 * acquire always runs after them. When the connection dies every hold on it is lost (its
 * signal aborts with a {@link TicketLostError}) and the next acquire opens a new one.
 * @internal
 */
export class HoldingSession {
  private current: Generation | undefined;
  private opening: Promise<Generation> | undefined;
  private readonly queue: Pending[] = [];
  private sending = false;
  private closed = false;
  private readonly heartbeat: NodeJS.Timeout;
  private readonly label = `session ${hostname()}:${process.pid}`;

  constructor(private readonly options: HoldingSessionOptions) {
    this.heartbeat = setInterval(() => void this.beat(), Math.max(10, Math.floor(options.livenessMs / 3)));
    this.heartbeat.unref();
  }

  /** The backend pid of the holding connection, while one is open. */
  get pid(): number | undefined {
    return this.current && !this.current.dead ? this.current.pid : undefined;
  }

  /**
   * Takes tickets for one request (queued behind the statement in flight, and sent with every
   * request queued meanwhile). On `ok`, `adopt` must be called synchronously with the hold.
   */
  acquire(
    request: SessionRequest,
  ): Promise<{ row: SessionAcquireRow; link: SessionLink; alive(): boolean; adopt(hold: Hold): void; giveBack(): void }> {
    if (this.closed) return Promise.reject(new HoldingModeError('session', 'an open PgSemaphore', 'one that is closed'));
    return new Promise<{ row: SessionAcquireRow; generation: Generation }>((resolve, reject) => {
      this.queue.push({ request, resolve, reject });
      void this.send();
    }).then(({ row, generation }) => {
      const ids = row.ticket_ids ?? [];
      return {
        row,
        link: generation,
        /** Whether the connection that answered is still up (its locks died with it otherwise). */
        alive: () => !generation.dead,
        adopt: (hold: Hold) => {
          // lost before the hold was built: it is born lost
          if (generation.dead) hold.lose('the holding connection was lost');
          else generation.holds.set(hold, ids);
        },
        // no hold could be built around them: unlock them at once (nobody to wake)
        giveBack: () => void this.unlock(generation, ids, [], { checkJobsWaiting: false }),
      };
    });
  }

  private async send(): Promise<void> {
    if (this.sending || this.queue.length === 0) return;
    this.sending = true;
    let batch: Pending[] = [];
    try {
      let generation: Generation;
      try {
        // the heartbeat may close an idle connection between its answer and our statement
        do generation = await this.connection();
        while (generation.dead);
      } catch (err) {
        for (const p of this.queue.splice(0, MAX_BATCH)) p.reject(err);
        return;
      }
      // everything queued while the connection opened goes in this statement
      batch = this.queue.splice(0, MAX_BATCH);
      if (batch.length === 0) return; // close() took them meanwhile
      const statement = statements.acquireSession(this.options.qs, batch.map((p) => p.request), [...generation.held]);
      let rows: SessionAcquireRow[];
      this.options.roundTrips(1);
      try {
        rows = (await this.run(generation, () => generation.client.query<SessionAcquireRow>(statement))).rows;
      } catch (err) {
        // A dead session freed whatever the statement took. A statement that failed half-way
        // (an error, a cancel) may have taken session locks for the requests before the
        // failure: its rollback does not release them, and no hold knows of them. Only
        // ending the session frees them for sure (the holds on it are told they lost).
        // Also when the error looks like a lost connection: one without a SQLSTATE (a client-side
        // query_timeout, a type parser that threw) leaves the connection up and the statement
        // maybe run. lose() does nothing to a connection already gone.
        if (!generation.dead) {
          if (!isConnectionLost(err)) this.options.logger.warn(`pg-semaphore: acquiring session tickets failed (${(err as Error).message}); closing the holding connection`);
          this.lose(generation, `an acquire on the holding connection failed (${(err as Error).message})`, err);
        }
        for (const p of batch) p.reject(err);
        return;
      }
      // every taken ticket is marked held before anyone hears of it
      for (const row of rows) if (row.status === 'ok') for (const id of row.ticket_ids ?? []) generation.held.add(id);
      for (const row of rows) batch[row.req]!.resolve({ row, generation });
    } finally {
      this.sending = false;
      if (this.queue.length > 0) void this.send();
    }
  }

  /** The open holding connection, opened (and checked) when there is none. */
  private connection(): Promise<Generation> {
    if (this.current && !this.current.dead) return Promise.resolve(this.current);
    this.opening ??= this.open().finally(() => {
      this.opening = undefined;
    });
    return this.opening;
  }

  private async open(): Promise<Generation> {
    const { pool, livenessMs, roundTrips } = this.options;
    const client = await pool.connect();
    const generation: Generation = {
      client,
      pid: 0,
      held: new Set(),
      holds: new Map(),
      dead: false,
      work: new Set(),
      chain: Promise.resolve(),
      pipelined: false,
      started: [],
      idleSince: Date.now(),
      release: (hold, ids, options) => this.release(generation, hold, ids, options),
    };
    // a loss while opening ends the open at once (the probe would wait for nothing)
    let failOpen: (err: Error) => void = () => undefined;
    const lostWhileOpening = new Promise<never>((_, reject) => (failOpen = reject));
    lostWhileOpening.catch(() => undefined);
    const onError = (err: Error) => {
      failOpen(err);
      this.lose(generation, `the holding connection failed (${err.message})`, err);
    };
    const onEnd = () => {
      failOpen(new PgSemaphoreError('expected the holding connection to open, got it closed while opening'));
      this.lose(generation, 'the holding connection closed');
    };
    client.on('error', onError);
    client.on('end', onEnd);
    try {
      let probe: { resolve(): void } | undefined;
      const arrived = new Promise<void>((resolve) => (probe = { resolve }));
      client.on('notification', (n) => {
        if (n.channel === 'pg_semaphore_session' && n.payload === String(generation.pid)) probe?.resolve();
      });
      roundTrips(1);
      const results = (await client.query(statements.OPEN_SESSION)) as unknown as Array<{ rows: Array<{ pid: number }> }>;
      generation.pid = results.at(-1)!.rows[0]!.pid;
      // a NOTIFY sent from another connection reaches this one only if it is a session of its own
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), PROBE_TIMEOUT_MS)));
      let late: boolean;
      try {
        roundTrips(1);
        // sent on another connection of the pool: a pool too small to have one free (the
        // LISTEN connection of a waiting acquire and this one fill a pool of max 2) must
        // not hang the acquire
        const sent = pool.query(statements.sessionProbe(generation.pid)).then(() => 'sent' as const);
        sent.catch(() => undefined);
        if ((await Promise.race([sent, timedOut, lostWhileOpening])) === 'late') {
          throw new HoldingModeError(
            'session',
            `a free connection in the pool to send the holding connection's probe within ${PROBE_TIMEOUT_MS} ms`,
            `none (session holding needs the holding connection, the LISTEN connection while waiting, and one more: raise the pool's max)`,
          );
        }
        late = await Promise.race([arrived.then(() => false), timedOut.then(() => true), lostWhileOpening]);
      } finally {
        clearTimeout(timer);
      }
      if (late) {
        throw new HoldingModeError(
          'session',
          'a holding connection that is a session of its own (a direct connection, or a pooler in session mode)',
          `one no NOTIFY reached within ${PROBE_TIMEOUT_MS} ms (a pooler in transaction mode, such as PgBouncer's, would leave session locks on a shared server connection): use holding: 'transaction' there`,
        );
      }
      // only now the settings: through a transaction pooler they would have stayed on a
      // server connection other clients share (idle_session_timeout would end it when idle)
      roundTrips(1);
      await client.query(statements.settleSession(livenessMs, this.label));
      // From now on statements are pipelined where node-postgres can (its pipeline mode, 8.20+):
      // each is written at once, so an acquire is not held back until the release before it is
      // answered (they still run in the order written, which keeps a released ticket out of
      // the next acquire's way). The connection is idle here, and never goes back to the pool.
      const pipelined = client as unknown as { pipeline?: unknown };
      if (typeof pipelined.pipeline === 'boolean') {
        pipelined.pipeline = true;
        generation.pipelined = true;
      }
    } catch (err) {
      client.removeListener('error', onError);
      client.removeListener('end', onEnd);
      // lose() already gave a connection that died back (a second release throws)
      if (!generation.dead) {
        generation.dead = true;
        client.release(true);
      }
      if (errorCode(err) === SQLSTATE.undefinedObject) {
        throw new HoldingModeError(
          'session',
          'Postgres 14 or newer (session holding frees a frozen holder with idle_session_timeout)',
          `a server without idle_session_timeout (${(err as Error).message}): use holding: 'transaction'`,
          { cause: err },
        );
      }
      throw err;
    }
    if (this.closed && !generation.dead) {
      generation.dead = true;
      client.release(true);
      throw new HoldingModeError('session', 'an open PgSemaphore', 'one closed while connecting');
    }
    if (generation.dead) throw new PgSemaphoreError('expected the holding connection to open, got it lost while opening');
    this.current = generation;
    return generation;
  }

  /**
   * Runs a statement on the holding connection after those queued before it (the order is
   * what keeps a released ticket out of the next acquire's way). Pipelined connections write
   * it at once (Postgres runs it after the ones written before); otherwise it waits for the
   * previous one to be answered, as node-postgres wants one query at a time there.
   */
  private run<T>(generation: Generation, fn: () => Promise<T>): Promise<T> {
    generation.idleSince = undefined;
    generation.started.push(Date.now());
    const done = () => {
      // answers come in the order written: this one is the oldest still out
      generation.started.shift();
      generation.work.delete(work);
      if (generation.started.length === 0 && generation.holds.size === 0) generation.idleSince = Date.now();
    };
    // pipelined: written at once, answered in order; else one at a time
    const work = generation.pipelined ? fn() : generation.chain.then(fn, fn);
    generation.chain = work.catch(() => undefined);
    generation.work.add(work);
    work.then(done, done);
    return work;
  }

  private async release(
    generation: Generation,
    hold: Hold,
    ids: readonly number[],
    options: { checkJobsWaiting: boolean; after?: number },
  ): Promise<ReleaseResult> {
    if (!generation.holds.delete(hold)) return { jobsWaiting: false, notified: false };
    return this.unlock(generation, ids, hold.semaphoreIds, options);
  }

  /** Unlocks tickets of this session and wakes waiters of `semaphoreIds`: one statement. */
  private async unlock(
    generation: Generation,
    ids: readonly number[],
    semaphoreIds: readonly number[],
    options: { checkJobsWaiting: boolean; after?: number },
  ): Promise<ReleaseResult> {
    const none: ReleaseResult = { jobsWaiting: false, notified: false };
    if (generation.dead || ids.length === 0) return none;
    // free for the next acquire at once: this statement goes before it on the connection
    for (const id of ids) generation.held.delete(id);
    const statement = statements.releaseSession(this.options.qs, ids, semaphoreIds, options.checkJobsWaiting, options.after);
    // Nobody waits for a release (the BullMQ wrapper returns the job without its answer). On a
    // pipelined connection the next acquire is written right behind it, so it is on no one's
    // critical path; otherwise the next acquire waits for its answer, so it is counted when
    // answered (in that acquire's count when it queued behind it).
    const pipelined = generation.pipelined;
    if (pipelined) this.options.backgroundRoundTrips(1);
    try {
      const { rows } = await this.run(generation, () => generation.client.query<{ notified: number; jobs_waiting?: boolean }>(statement));
      if (!pipelined) this.options.roundTrips(1);
      return { jobsWaiting: rows[0]?.jobs_waiting === true, notified: (rows[0]?.notified ?? 0) > 0 };
    } catch (err) {
      // a dead connection freed them anyway; anything else (a role without EXECUTE on wake())
      // must not leave the locks behind: end the session, which frees every one of them
      // (also an error without a SQLSTATE, which may leave the connection up with the locks)
      if (!generation.dead) {
        if (!isConnectionLost(err)) this.options.logger.warn(`pg-semaphore: releasing session tickets failed (${(err as Error).message}); closing the holding connection`);
        this.lose(generation, `a release on the holding connection failed (${(err as Error).message})`, err);
      }
      return none;
    }
  }

  /** Ends a generation: every hold on it is lost, and the connection is destroyed (which frees its locks). */
  private lose(generation: Generation, reason: string, cause?: unknown): void {
    if (generation.dead) return;
    generation.dead = true;
    if (this.current === generation) this.current = undefined;
    generation.client.release(cause instanceof Error ? cause : true);
    for (const hold of generation.holds.keys()) hold.lose(reason, cause);
    generation.holds.clear();
    generation.held.clear();
  }

  /**
   * Every third of the idle window: a `SELECT 1` keeps a holding session alive (Postgres ends
   * a silent one after the window, freeing its tickets); a session that held nothing for half
   * a window is closed (and not pinged meanwhile).
   */
  private async beat(): Promise<void> {
    const generation = this.current;
    if (!generation || generation.dead) return;
    // A statement unanswered for two thirds of the window (a network that drops packets
    // without a reset): Postgres may already have ended the session and given the tickets to
    // others, so the holds must hear it now, not when TCP gives up.
    const oldest = generation.started[0];
    if (oldest !== undefined && Date.now() - oldest > (this.options.livenessMs * 2) / 3) {
      const lost = new Error(`the holding connection did not answer for ${Date.now() - oldest} ms`);
      // cut the socket: a graceful end would wait for the statements still out
      (generation.client as unknown as { connection?: { stream?: { destroy?: (err?: Error) => void } } }).connection?.stream?.destroy?.(lost);
      this.lose(generation, lost.message, lost);
      return;
    }
    if (oldest !== undefined) return;
    if (generation.holds.size === 0) {
      // nothing to keep alive: no ping (it would restart the idle clock, so an idle
      // connection would never close); closed once idle for half the window, before
      // Postgres's idle_session_timeout would end it
      if (generation.idleSince !== undefined && Date.now() - generation.idleSince >= this.options.livenessMs / 2) this.lose(generation, 'idle');
      return;
    }
    try {
      this.options.roundTrips(1);
      await this.run(generation, () => generation.client.query(statements.PING));
    } catch (err) {
      this.lose(generation, `the heartbeat failed (${(err as Error).message})`, err);
    }
  }

  /** Closes the holding connection (its session locks go with it). Holds should be released first. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.heartbeat);
    for (const p of this.queue.splice(0)) p.reject(new HoldingModeError('session', 'an open PgSemaphore', 'one closed while acquiring'));
    await this.opening?.catch(() => undefined);
    const generation = this.current;
    if (!generation) return;
    // releases already sent finish first (their wake-ups go out); the session's end frees the rest
    await Promise.allSettled([...generation.work]);
    this.lose(generation, 'the PgSemaphore was closed');
  }
}
