import type { PoolClient } from 'pg';
import { drizzle, type NodePgDatabase } from 'drizzle-orm/node-postgres';
import { PgSemaphoreError } from './errors/pg-semaphore-error.js';
import { TicketLostError } from './errors/ticket-lost-error.js';

/** Counters a hold reports to, for tests and the benchmark. @internal */
export interface HoldHooks {
  roundTrip(): void;
}

/**
 * Tickets held by an open transaction on a connection of their own. Get one from
 * {@link PgSemaphore.hold}; give it back with {@link Hold.release} (or let
 * {@link PgSemaphore.withTickets} do both).
 *
 * While held, the connection is idle in a transaction that has no transaction id and no
 * snapshot; a heartbeat runs on it inside the liveness window. If the connection dies or
 * Postgres ends the session, {@link Hold.signal} aborts with a {@link TicketLostError}.
 */
export class Hold {
  /** The semaphore names, as asked for. */
  readonly names: readonly string[];
  /** The ticket ids held (each is the second key of an advisory lock). Empty when limiting is disabled. */
  readonly tickets: readonly number[];
  /** When the tickets were taken (`Date.now()` of this process). */
  readonly acquiredAt: number;
  /** Aborts, with a {@link TicketLostError} as its reason, when the tickets are lost. */
  readonly signal: AbortSignal;

  private readonly controller = new AbortController();
  private heartbeat: NodeJS.Timeout | undefined;
  private settled = false;
  private drizzleTx: NodePgDatabase | undefined;
  private readonly onError: (err: Error) => void;
  private readonly onEnd: () => void;

  /** @internal */
  constructor(
    private readonly client: PoolClient | undefined,
    names: string[],
    tickets: number[],
    private readonly wakeSql: string | undefined,
    livenessMs: number,
    private readonly hooks?: HoldHooks,
  ) {
    this.names = names;
    this.tickets = tickets;
    this.acquiredAt = Date.now();
    this.signal = this.controller.signal;
    this.onError = (err: Error) => this.lose(`the holding connection failed (${err.message})`, err);
    this.onEnd = () => this.lose('the holding connection closed');
    if (client) {
      client.on('error', this.onError);
      client.on('end', this.onEnd);
      this.heartbeat = setInterval(() => void this.beat(), Math.max(10, Math.floor(livenessMs / 3)));
      this.heartbeat.unref();
    }
  }

  /** Whether the tickets were lost (the signal has aborted). */
  get lost(): boolean {
    return this.controller.signal.aborted;
  }

  /**
   * The holding transaction as a Drizzle database. Statements run on it are part of the
   * transaction that holds the tickets: they commit on a successful release and roll back
   * otherwise. Writes give the transaction an id, so use it only when you need to.
   */
  get tx(): NodePgDatabase {
    if (!this.client) throw new PgSemaphoreError('expected a holding transaction, got none: limiting is disabled');
    this.drizzleTx ??= drizzle({ client: this.client });
    return this.drizzleTx;
  }

  private async beat(): Promise<void> {
    if (this.settled || !this.client) return;
    try {
      this.hooks?.roundTrip();
      await this.client.query('SELECT 1');
    } catch (err) {
      this.lose(`the heartbeat failed (${(err as Error).message})`, err);
    }
  }

  private lose(reason: string, cause?: unknown): void {
    if (this.settled || this.controller.signal.aborted) return;
    this.controller.abort(new TicketLostError([...this.names], reason, { cause }));
  }

  /**
   * Returns the tickets: commits the holding transaction (or rolls it back with
   * `{ commit: false }`) and wakes processes waiting on these semaphores. Safe to call
   * twice; a lost hold just discards its broken connection.
   */
  async release(options: { commit?: boolean } = {}): Promise<void> {
    if (this.settled) return;
    this.settled = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    const client = this.client;
    if (!client) return;
    const detach = () => {
      client.removeListener('end', this.onEnd);
      // keep an error listener until the client is back in the pool's hands
      client.removeListener('error', this.onError);
    };
    if (this.controller.signal.aborted) {
      detach();
      client.release(true);
      return;
    }
    const end = options.commit === false ? 'ROLLBACK' : 'COMMIT';
    try {
      this.hooks?.roundTrip();
      await client.query(this.wakeSql ? `${end}; ${this.wakeSql}` : end);
      detach();
      client.release();
    } catch (err) {
      // The transaction ended one way or another (a dead connection frees its locks).
      detach();
      client.release(err as Error);
      if (end === 'COMMIT' && !isConnectionError(err)) throw err;
    }
  }
}

function isConnectionError(err: unknown): boolean {
  const code = (err as { code?: string } | undefined)?.code;
  return code === undefined || code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03' || code === '25P03';
}

/** Builds the statement a release sends after COMMIT to wake waiters. @internal */
export function wakeStatement(qs: string, semaphoreIds: number[]): string | undefined {
  const ids = semaphoreIds.filter((n) => Number.isInteger(n));
  if (ids.length === 0) return undefined;
  return `SELECT ${qs}.wake('{${ids.join(',')}}'::integer[])`;
}
