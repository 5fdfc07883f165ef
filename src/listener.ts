import type { Notification, Pool, PoolClient } from 'pg';
import type { Logger } from './logger.js';
import { SQLSTATE } from './sqlstate.js';
import * as statements from './statements.js';

/**
 * Called when a release may have freed a ticket of a watched semaphore. Returns false when the
 * consumer did not take the wake-up (nobody of it could try): the listener offers it to the
 * next consumer. `relay` passes a wake-up that named this process on to the next waiting
 * process (a no-op for broadcasts, or once called): call it later when the try it caused came
 * back busy on another semaphore of the request. `own`: the consumer is the only one of this
 * process watching that semaphore (a per-key semaphore of its request, such as `tenant:7`);
 * false for a semaphore several consumers watch, and for wake-ups of no one semaphore.
 * @internal
 */
export type OnRelease = (relay: () => void, own?: boolean) => boolean | void;

interface Waiter {
  ids: number[];
  wake: OnRelease;
  /** The connection holding its waiter markers (replaced on a reconnect). */
  client: PoolClient;
  /** The slot its markers were also taken under, if any. */
  slot: number | undefined;
}

const noRelay = () => undefined;

/** Probes sent at once on a connection, each after the one before arrived while a statement ran. */
const QUICK_PROBES = 5;
/** After those, the pause before each further probe: from 1 s, doubling, at most this long. */
const MAX_PROBE_PAUSE_MS = 30_000;
/** How long statements on the LISTEN connection wait for a probe on its way (see `Listener.quiet`). */
const QUIET_MS = 250;
/** A lost LISTEN connection with waiters is reopened after this pause, doubling while it fails... */
const REOPEN_FIRST_MS = 100;
/** ...up to this one (Postgres down for a while). */
const REOPEN_MAX_MS = 5_000;

/**
 * One LISTEN connection per {@link PgSemaphore}, opened the first time something waits.
 * Waiters register the semaphores they wait on (a shared session-level advisory lock via
 * `watch()`, so releasers know to send a NOTIFY); a notification wakes the oldest local
 * waiter on that semaphore. If this connection is lost, waiters fall back to polling, and it
 * is reopened on the next wait, or soon after the loss while waiters are registered.
 * @internal
 */
export class Listener {
  private client: PoolClient | undefined;
  private connecting: Promise<PoolClient> | undefined;
  private ns: number | undefined;
  /** The LISTEN connection's backend pid: a NOTIFY that names another pid is for another process. */
  private backendPid: number | undefined;
  /** The probe sent over another connection arrived on this one: NOTIFYs reach this process. */
  private heard = false;
  /**
   * This LISTEN session's slot (`hears_slot()`, 0005_functions): releasers find the next
   * waiting process by slot markers instead of reading `pg_locks`, and name it `-(slot + 1)`.
   */
  private slot: number | undefined;
  /** The install has no `hears_slot()` (before 0005_functions): hear by `hears()` and the pid. */
  private noSlots = false;
  private readonly waiters = new Map<number, Waiter[]>();
  /** Gives up the current LISTEN connection (waiters poll until the next wait reconnects). */
  private drop: ((err?: Error) => void) | undefined;
  /** Statements on the LISTEN connection run one after another. */
  private chain: Promise<unknown> = Promise.resolve();

  /** Statements in flight on the LISTEN connection. */
  private busy = 0;
  /** Probes sent on the current connection. */
  private probes = 0;
  /** The next probe, once the quick ones all arrived while the connection was busy. */
  private probeTimer: NodeJS.Timeout | undefined;
  /**
   * A probe is on its way: statements wait to start until it arrives (at most `QUIET_MS`), so
   * that it finds the connection idle even while waiters watch and unwatch back to back.
   */
  private quiet: { done: Promise<void>; end(): void } | undefined;
  /** Wake-ups relayed to the next waiting process (tests read it). */
  relays = 0;
  /** A relay failed (and was logged). */
  private relayFailed = false;
  /** The reopening of a lost connection, pending (see {@link Listener.reopenSoon}). */
  private reopenTimer: NodeJS.Timeout | undefined;
  /** Reopenings tried since the connection was last open. */
  private reopenTries = 0;
  /** `close()` ran: nothing is reopened. */
  private closed = false;

  private run<T>(fn: () => Promise<T>): Promise<T> {
    const counted = async () => {
      while (this.quiet) await this.quiet.done;
      this.busy++;
      try {
        return await fn();
      } finally {
        this.busy--;
      }
    };
    const next = this.chain.then(counted, counted);
    this.chain = next.catch(() => undefined);
    return next;
  }

  constructor(
    private readonly pool: Pool,
    private readonly qs: string,
    private readonly logger: Logger,
  ) {}

  /**
   * How a wake-up names this process, once NOTIFYs are known to reach it (its probe arrived):
   * `-(slot + 1)` when the session holds a slot, else the LISTEN connection's backend pid;
   * undefined before, or when they never will (PgBouncer in transaction mode). A release
   * passes it to `wake()` so that the next waiting process after this one is woken.
   */
  get pid(): number | undefined {
    return this.hears ? this.wakeId : undefined;
  }

  /** How wake-ups name this LISTEN session: `-(slot + 1)` with a slot, else its backend pid. */
  private get wakeId(): number | undefined {
    return this.slot !== undefined ? -this.slot - 1 : this.backendPid;
  }

  /** NOTIFYs are known to reach this process: the probe sent when the connection opened arrived. */
  get hears(): boolean {
    return this.client !== undefined && this.heard;
  }

  /** Registers a waiter on the semaphores named; returns a function that unregisters it. */
  async watch(names: string[], wake: OnRelease): Promise<() => Promise<void>> {
    const client = await this.connect();
    // registered inside the statement's turn on the connection: a statement queued behind it
    // (the slot's, which moves every registered waiter's markers under the slot) sees it
    const waiter = await this.run(async () => {
      const slot = this.client === client ? this.slot : undefined;
      const { rows } = await client.query<{ ids: number[] }>(statements.watch(this.qs, names, slot));
      const registered: Waiter = { ids: rows[0]?.ids ?? [], wake, client, slot };
      for (const id of registered.ids) {
        const list = this.waiters.get(id) ?? [];
        list.push(registered);
        this.waiters.set(id, list);
      }
      return registered;
    }).catch((err: Error) => {
      // on a connection still open (a timeout, a cancel), the markers the statement took before
      // it failed stay held (session locks outlive it) with no waiter to give them back: give
      // up the connection with them (the listener reopens one while waiters are registered)
      if (this.client === client) this.drop?.(err);
      throw err;
    });
    const { ids } = waiter;
    return async () => {
      for (const id of ids) {
        const list = this.waiters.get(id);
        if (!list) continue;
        const i = list.indexOf(waiter);
        if (i >= 0) list.splice(i, 1);
        if (list.length === 0) this.waiters.delete(id);
      }
      // the markers live on the connection that holds them now (re-taken after a reconnect)
      const holder = waiter.client;
      if (this.client === holder) {
        await this.run(() => holder.query(statements.unwatch(this.qs, ids, waiter.slot))).catch(() => undefined);
      }
    };
  }

  private connect(): Promise<PoolClient> {
    if (this.client) return Promise.resolve(this.client);
    this.connecting ??= (async () => {
      const client = await this.pool.connect();
      if (this.closed) {
        // a reopening that got its connection after close(): give it back
        this.connecting = undefined;
        client.release();
        throw new Error('pg-semaphore: the listener is closed');
      }
      const drop = (err?: Error) => {
        if (this.client !== client) return;
        this.drop = undefined;
        this.client = undefined;
        this.heard = false;
        this.slot = undefined;
        this.connecting = undefined;
        this.stopProbing();
        client.removeListener('notification', this.onNotification);
        client.release(err ?? true);
        // Waiters see no wake-ups until the connection is back; their poll covers the gap.
        for (const list of this.waiters.values()) for (const w of list) w.wake(noRelay);
        this.reopenSoon();
      };
      client.on('error', (err) => {
        this.logger.warn(`pg-semaphore: listener connection lost (${err.message}); waiters poll until it is back`);
        drop(err);
      });
      let again: Waiter[] = [];
      try {
        const { rows } = await client.query<{ ns: number; pid: number }>(statements.namespace(this.qs));
        this.ns = rows[0]!.ns;
        this.backendPid = rows[0]!.pid;
        client.on('notification', this.onNotification);
        // one round trip: keepalives (see KEEPALIVES) and LISTEN
        await client.query(`${statements.KEEPALIVES}; ${statements.LISTEN}`);
        // Waiters registered on a previous connection lost their markers with it.
        again = this.allWaiters();
        const ids = again.flatMap((w) => w.ids);
        if (ids.length > 0) await client.query(statements.watchIds(this.qs, ids));
        for (const w of again) {
          w.client = client;
          w.slot = undefined;
        }
      } catch (err) {
        this.connecting = undefined;
        client.release(err as Error);
        throw err;
      }
      this.client = client;
      this.drop = drop;
      this.heard = false;
      this.slot = undefined;
      this.probes = 0;
      // A waiter that stopped while this connection opened found none to give its markers back
      // on; they were taken again above: give them back (a waiter stopping from now on does).
      const gone = again.filter((w) => !w.ids.some((id) => this.waiters.get(id)?.includes(w))).flatMap((w) => w.ids);
      if (gone.length > 0) void this.run(() => client.query(statements.unwatch(this.qs, gone))).catch(() => undefined);
      this.probe(client);
      return client;
    })();
    return this.connecting;
  }

  /**
   * Reopens a lost LISTEN connection while waiters are registered, without waiting for a new
   * `watch()`: a BullMQ gate watches once for as long as anyone waits there, so one whose
   * waiters never all leave made none, and heard no NOTIFY again. Reopened, the waiters'
   * markers are taken again ({@link Listener.connect}) and each is woken once: a release
   * between the loss and now found no marker of theirs and sent them nothing. While it fails
   * (Postgres down), tried again after a pause that doubles up to `REOPEN_MAX_MS`.
   */
  private reopenSoon(): void {
    if (this.closed || this.reopenTimer || this.waiters.size === 0) return;
    const pause = Math.min(REOPEN_MAX_MS, REOPEN_FIRST_MS * 2 ** this.reopenTries++);
    this.reopenTimer = setTimeout(() => {
      this.reopenTimer = undefined;
      if (this.closed || this.client || this.waiters.size === 0) return;
      this.connect().then(
        () => {
          if (!this.closed) for (const w of this.allWaiters()) w.wake(noRelay);
        },
        () => this.reopenSoon(),
      );
    }, pause);
    this.reopenTimer.unref();
  }

  /**
   * Sends a NOTIFY naming this connection from another one: at once for the first few, then
   * after a pause that doubles up to 30 s. A connection that runs a statement whenever a probe
   * arrives (waiters of a busy process watching and unwatching back to back) would otherwise
   * never count as hearing: no slot, named by no release of a process with one, woken mostly by
   * its poll. A probe that arrives while it runs nothing ends this.
   */
  private probe(client: PoolClient): void {
    if (!this.mayProbe(client)) return;
    if (this.probes >= QUICK_PROBES) {
      if (this.probeTimer) return;
      const pause = Math.min(MAX_PROBE_PAUSE_MS, 1_000 * 2 ** (this.probes - QUICK_PROBES));
      this.probeTimer = setTimeout(() => {
        this.probeTimer = undefined;
        this.sendProbe(client);
      }, pause);
      this.probeTimer.unref();
      return;
    }
    this.sendProbe(client);
  }

  private stopProbing(): void {
    clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
    this.endQuiet();
  }

  /** Holds back the statements of this connection until {@link Listener.endQuiet}, or `QUIET_MS`. */
  private beginQuiet(): void {
    if (this.quiet) return;
    let resolve!: () => void;
    const done = new Promise<void>((r) => (resolve = r));
    const timer = setTimeout(() => this.endQuiet(), QUIET_MS);
    timer.unref();
    this.quiet = {
      done,
      end: () => {
        clearTimeout(timer);
        resolve();
      },
    };
  }

  private endQuiet(): void {
    const quiet = this.quiet;
    this.quiet = undefined;
    quiet?.end();
  }

  /** `client` is still the LISTEN connection, known by its backend pid, and not yet known to hear. */
  private mayProbe(client: PoolClient): boolean {
    return this.ns !== undefined && this.backendPid !== undefined && this.client === client && !this.heard;
  }

  /** Each waiter once (one waiting on several semaphores is listed under each). */
  private allWaiters(): Waiter[] {
    return [...new Set([...this.waiters.values()].flat())];
  }

  private sendProbe(client: PoolClient): void {
    if (!this.mayProbe(client)) return;
    this.probes++;
    // mayProbe: both known
    const probe = statements.probe(this.ns!, this.backendPid!);
    // after the statements queued so far, and holding back the ones queued after it until it
    // arrives: the answer finds the connection idle
    void this.chain.then(() => {
      if (this.client !== client) return;
      this.beginQuiet();
      void this.pool.query(probe.text, probe.values).catch(() => this.endQuiet());
    });
  }

  private readonly onNotification = (msg: Notification) => {
    if (msg.channel !== 'pg_semaphore' || !msg.payload) return;
    // '<ns>:<semaphore id>' for every waiting process (make() adding tickets, older
    // releasers), '<ns>:<semaphore id>:<pid>' for the one whose LISTEN connection has that pid,
    // '<ns>:<semaphore id>:<pid>:<origin>' relayed by a process that could not use it
    // ('<pid>' is '-<slot + 1>' for a process named by its slot)
    const [ns, id, pid, origin] = msg.payload.split(':');
    if (Number(ns) !== this.ns) return;
    if (pid !== undefined && Number(pid) !== this.backendPid && Number(pid) !== this.wakeId) return;
    if (id === '0') {
      // the probe is here: the statements held back for it may go
      this.endQuiet();
      const client = this.client;
      if (!client || this.heard) return;
      // Only a NOTIFY that arrives while this connection runs nothing proves that the server
      // pushes them to it: PgBouncer in transaction mode forwards one only to a client linked
      // to the server connection at that moment, i.e. one running a statement.
      if (this.busy > 0) {
        this.probe(client);
        return;
      }
      void this.run(() => this.markHears(client)).then(
        () => {
          if (this.client !== client) return;
          this.heard = true;
          // proved itself: a later loss is reopened quickly again (not a connection that dies
          // as it opens, e.g. its slot failing every time, reopened 10 times a second)
          this.reopenTries = 0;
        },
        (err: Error) => {
          // hears_slot() may have failed after taking its slot or some markers (session locks
          // outlive a failed statement): a slot nobody answers for must not stay held
          if (this.client !== client) return;
          this.logger.warn(`pg-semaphore: listener could not take its slot (${err.message}); waiters poll until it is back`);
          this.drop?.(err);
        },
      );
      return;
    }
    const semaphoreId = Number(id);
    let relay = noRelay;
    let relayed = false;
    const from = origin !== undefined && origin !== '' ? Number(origin) : undefined;
    if (pid !== undefined) {
      relay = () => {
        if (relayed) return;
        relayed = true;
        this.relay(semaphoreId, from);
      };
    }
    // A consumer relays a wake-up it took and could not use (its try found another semaphore
    // short) only at first hand: each relay of that kind costs a busy try elsewhere (global +
    // tenant, 1,000 jobs: 1.41 acquire calls per job without it, 2.28 relaying until the
    // wake-up went round, 1.81 relaying once). One nobody here takes at all is relayed until
    // it went round (the SQL stops it): that costs no try.
    const consumerRelay = from === undefined ? relay : noRelay;
    // the oldest consumer that takes it (two processors, or core waiters and the wrapper, may
    // watch the same semaphore); a wake-up naming this process that nobody takes is relayed
    const consumers = [...(this.waiters.get(semaphoreId) ?? [])];
    for (const w of consumers) if (w.wake(consumerRelay, consumers.length === 1) !== false) return;
    relay();
  };

  /**
   * Marks the LISTEN session as one that NOTIFYs reach, with a slot when the install has
   * `hears_slot()`: the waiters' markers held on it are taken again under the slot. Runs on
   * the statement chain, so no watch or unwatch interleaves.
   */
  private async markHears(client: PoolClient): Promise<void> {
    if (!this.noSlots) {
      const waiters = this.allWaiters().filter((w) => w.client === client);
      const ids = waiters.flatMap((w) => w.ids);
      try {
        const { rows } = await client.query<{ slot: number | null }>(statements.hearsSlot(this.qs, ids));
        const slot = rows[0]?.slot ?? undefined;
        if (this.client !== client || slot === undefined) return;
        this.slot = slot;
        for (const w of waiters) w.slot = slot;
        return;
      } catch (err) {
        // an install before 0005_functions, or a role not granted hears_slot(): hear without a slot
        const code = (err as { code?: unknown }).code;
        if (code !== SQLSTATE.undefinedFunction && code !== SQLSTATE.insufficientPrivilege) throw err;
        this.noSlots = true;
      }
    }
    await client.query(statements.hears(this.qs));
  }

  /**
   * A wake-up that named this process found nothing here to use it: name the next waiting
   * process instead (one round trip, only on this path). `origin`: the first process that
   * could not use it; the SQL sends nothing when the next one would be it (it went round).
   */
  private relay(id: number, origin: number | undefined): void {
    const me = this.wakeId;
    if (me === undefined || !Number.isInteger(id)) return;
    this.relays++;
    const statement = statements.relay(this.qs, id, me, origin ?? me);
    void this.pool
      .query(statement.text, statement.values)
      .catch((err: Error) => {
        // once per listener: a role without EXECUTE on wake(integer[], integer, integer) fails every time
        if (this.relayFailed) return;
        this.relayFailed = true;
        this.logger.warn(`pg-semaphore: could not pass a wake-up on (${err.message}); waiters poll`);
      });
  }

  /** Closes the LISTEN connection, if open. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.reopenTimer);
    this.reopenTimer = undefined;
    const client = this.client ?? (this.connecting ? await this.connecting.catch(() => undefined) : undefined);
    this.client = undefined;
    this.connecting = undefined;
    this.drop = undefined;
    this.heard = false;
    this.slot = undefined;
    this.stopProbing();
    if (client) {
      client.removeListener('notification', this.onNotification);
      client.release(true);
    }
  }
}
