import type { Notification, Pool, PoolClient } from 'pg';
import type { Logger } from './logger.js';
import * as statements from './statements.js';

interface Waiter {
  ids: number[];
  wake: () => void;
}

/**
 * One LISTEN connection per {@link PgSemaphore}, opened the first time something waits.
 * Waiters register the semaphores they wait on (a shared session-level advisory lock via
 * `watch()`, so releasers know to send a NOTIFY); a notification wakes the oldest local
 * waiter on that semaphore. If this connection is lost, waiters fall back to polling and
 * it is reopened on the next wait.
 * @internal
 */
export class Listener {
  private client: PoolClient | undefined;
  private connecting: Promise<PoolClient> | undefined;
  private ns: number | undefined;
  private readonly waiters = new Map<number, Waiter[]>();
  /** Statements on the LISTEN connection run one after another. */
  private chain: Promise<unknown> = Promise.resolve();

  private run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.chain.then(fn, fn);
    this.chain = next.catch(() => undefined);
    return next;
  }

  constructor(
    private readonly pool: Pool,
    private readonly qs: string,
    private readonly logger: Logger,
  ) {}

  /** Registers a waiter on the semaphores named; returns a function that unregisters it. */
  async watch(names: string[], wake: () => void): Promise<() => Promise<void>> {
    const client = await this.connect();
    const { rows } = await this.run(() => client.query<{ ids: number[] }>(statements.watch(this.qs, names)));
    const ids = rows[0]?.ids ?? [];
    const waiter: Waiter = { ids, wake };
    for (const id of ids) {
      const list = this.waiters.get(id) ?? [];
      list.push(waiter);
      this.waiters.set(id, list);
    }
    return async () => {
      for (const id of ids) {
        const list = this.waiters.get(id);
        if (!list) continue;
        const i = list.indexOf(waiter);
        if (i >= 0) list.splice(i, 1);
        if (list.length === 0) this.waiters.delete(id);
      }
      if (this.client === client) {
        await this.run(() => client.query(statements.unwatch(this.qs, ids))).catch(() => undefined);
      }
    };
  }

  private connect(): Promise<PoolClient> {
    if (this.client) return Promise.resolve(this.client);
    this.connecting ??= (async () => {
      const client = await this.pool.connect();
      const drop = (err?: Error) => {
        if (this.client !== client) return;
        this.client = undefined;
        this.connecting = undefined;
        client.removeListener('notification', this.onNotification);
        client.release(err ?? true);
        // Waiters now see no wake-ups until the next wait reconnects; their poll covers the gap.
        for (const list of this.waiters.values()) for (const w of list) w.wake();
      };
      client.on('error', (err) => {
        this.logger.warn(`pg-semaphore: listener connection lost (${err.message}); waiters poll until it is back`);
        drop(err);
      });
      try {
        const { rows } = await client.query<{ ns: number }>(statements.namespace(this.qs));
        this.ns = rows[0]!.ns;
        client.on('notification', this.onNotification);
        await client.query(statements.LISTEN);
        // Waiters registered on a previous connection lost their markers with it.
        const ids = [...this.waiters.entries()].flatMap(([id, list]) => list.map(() => id));
        if (ids.length > 0) await client.query(statements.watchIds(this.qs, ids));
      } catch (err) {
        this.connecting = undefined;
        client.release(err as Error);
        throw err;
      }
      this.client = client;
      return client;
    })();
    return this.connecting;
  }

  private readonly onNotification = (msg: Notification) => {
    if (msg.channel !== 'pg_semaphore' || !msg.payload) return;
    const colon = msg.payload.indexOf(':');
    if (Number(msg.payload.slice(0, colon)) !== this.ns) return;
    const list = this.waiters.get(Number(msg.payload.slice(colon + 1)));
    list?.[0]?.wake();
  };

  /** Closes the LISTEN connection, if open. */
  async close(): Promise<void> {
    const client = this.client ?? (this.connecting ? await this.connecting.catch(() => undefined) : undefined);
    this.client = undefined;
    this.connecting = undefined;
    if (client) {
      client.removeListener('notification', this.onNotification);
      client.release(true);
    }
  }
}
