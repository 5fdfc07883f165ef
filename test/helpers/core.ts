import type pg from 'pg';
import type { PgSemaphore } from '../../src/index.js';
import type { Child } from './processes.js';

/** Rejects with a clear message when `promise` does not settle within `ms`. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** Follows a promise so a test can ask whether it has settled yet, without awaiting it. */
export interface Tracked<T> {
  promise: Promise<T>;
  settled: boolean;
  value?: T;
  error?: unknown;
  /** `Date.now()` when it settled. */
  at?: number;
}

export function track<T>(promise: Promise<T>): Tracked<T> {
  const t: Tracked<T> = { promise, settled: false };
  promise.then(
    (value) => Object.assign(t, { settled: true, value, at: Date.now() }),
    (error: unknown) => Object.assign(t, { settled: true, error, at: Date.now() }),
  );
  return t;
}

/** The rejection of a promise that must reject (fails the test if it resolves). */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection, got a resolved promise');
}

/**
 * The error thrown by `fn`, synchronously or as a rejection (fails the test if none; a hold
 * or anything else with `release()` that came back instead is released first).
 */
export async function errorOf(fn: () => unknown, what = String(fn)): Promise<unknown> {
  let value: unknown;
  try {
    value = await fn();
  } catch (err) {
    return err;
  }
  if (value !== null && typeof value === 'object' && typeof (value as { release?: unknown }).release === 'function') {
    await (value as { release(): Promise<void> }).release();
  }
  throw new Error(`expected an error, got none: ${what}`);
}

/** How many tickets of `name` are held right now (from pg_locks, via status()). */
export async function heldOf(sem: PgSemaphore, name: string): Promise<number> {
  return (await sem.status(name)).held;
}

/** Name, capacity and held count of every semaphore, for "nothing changed" checks. */
export async function listSnapshot(sem: PgSemaphore): Promise<string> {
  const list = await sem.list();
  return JSON.stringify(list.map((s) => [s.name, s.tickets, s.held, s.updatedAt.toISOString()]));
}

/** The lock namespace key of a schema's install (first key of its ticket advisory locks). */
export async function nsOf(admin: pg.Pool, schema: string): Promise<number> {
  const { rows } = await admin.query<{ ns: number }>(`SELECT "${schema}"._ns() AS ns`);
  return rows[0]!.ns;
}

/**
 * Backends registered as waiting on semaphore `name` of `schema`: one pid per granted waiter
 * marker (a shared session-level advisory lock a LISTEN connection takes when something waits).
 */
export async function waiterMarkerPids(admin: pg.Pool, schema: string, name: string): Promise<number[]> {
  const ns = await nsOf(admin, schema);
  const { rows } = await admin.query<{ pid: number }>(
    `SELECT l.pid FROM pg_locks l JOIN "${schema}".semaphores m ON m.id = l.objid::bigint
      WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ShareLock' AND l.classid = $1::bigint AND l.objsubid = 2 AND m.name = $2
      ORDER BY l.pid`,
    [classidOf(ns ^ 2), name],
  );
  return rows.map((r) => r.pid);
}

/** `classid` of pg_locks for a two-key advisory lock whose first key is `key1`. */
export function classidOf(key1: number): number {
  return (key1 + 2 ** 32) % 2 ** 32;
}

/** Advisory locks of this schema's namespace that some backend waits for (a blocked shrink/destroy). */
export async function waitingTicketLocks(admin: pg.Pool, schema: string): Promise<number> {
  const ns = await nsOf(admin, schema);
  const { rows } = await admin.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = $1::bigint AND objsubid = 2`,
    [classidOf(ns)],
  );
  return rows[0]!.n;
}

/** pg_stat_activity of one backend. */
export async function backendOf(
  admin: pg.Pool,
  pid: number,
): Promise<{ state: string | null; backend_xid: string | null; backend_xmin: string | null } | undefined> {
  const { rows } = await admin.query(`SELECT state, backend_xid::text, backend_xmin::text FROM pg_stat_activity WHERE pid = $1`, [pid]);
  return rows[0];
}

/** Kills every child still running and waits (bounded) for them to exit. */
export async function killAll(children: Child[]): Promise<void> {
  for (const c of children) {
    if (c.proc.exitCode === null && c.proc.signalCode === null) {
      c.proc.kill('SIGCONT');
      c.proc.kill('SIGKILL');
    }
  }
  await within(Promise.all(children.map((c) => c.exited)), 10_000, 'children to exit').catch(() => undefined);
  children.length = 0;
}

/** First key of a LISTEN session's slot marker: `(ns # (slot << 8 | 5), semaphore id)` (0005_functions). */
export function slotKey(ns: number, slot: number): number {
  return ns ^ ((slot << 8) | 5);
}

/** A PgSemaphore's LISTEN connection: how wake-ups name it (`-(slot + 1)`, or its pid), its backend pid, and the probes sent on it. */
export function listenerOf(sem: PgSemaphore): { wakeId: number | undefined; backendPid: number | undefined; probes: number } {
  const listener = (sem as unknown as { listener?: { pid?: number; backendPid?: number; probes?: number } }).listener;
  return { wakeId: listener?.pid, backendPid: listener?.backendPid, probes: listener?.probes ?? 0 };
}

/** Granted two-key advisory locks a backend holds with first key `key1` (and second key `objid`, if given). */
export async function advisoryLocksOf(admin: pg.Pool, pid: number, key1: number, objid?: number): Promise<number> {
  const { rows } = await admin.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND pid = $1 AND classid = $2::bigint AND ($3::bigint IS NULL OR objid = $3::bigint)`,
    [pid, classidOf(key1), objid ?? null],
  );
  return rows[0]!.n;
}

/**
 * A schema `<schema>_shim` whose `lockFn(k1, k2)` (put before pg_catalog on a connection's
 * search_path) waits on a gate, the advisory lock (`gateKey`, `ticketId`) held by the test,
 * before trying the lock of ticket `ticketId`: a search that reaches that ticket has its
 * snapshot by then, so a shrink can delete the ticket and commit meanwhile. `searchPath` is
 * the connection option that puts the shim first; `drop()` removes it.
 */
export async function gatedLockShim(
  admin: pg.Pool,
  schema: string,
  ticketId: number,
  lockFn: 'pg_try_advisory_xact_lock' | 'pg_try_advisory_lock',
  gateKey = 4243,
): Promise<{ shim: string; searchPath: string; drop(): Promise<void> }> {
  const shim = `${schema}_shim`;
  await admin.query(`CREATE SCHEMA "${shim}"`);
  await admin.query(`CREATE FUNCTION "${shim}".${lockFn}(k1 integer, k2 integer) RETURNS boolean LANGUAGE plpgsql AS $$
    BEGIN
      IF k2 = ${Number(ticketId)} THEN
        PERFORM pg_catalog.pg_advisory_lock_shared(${Number(gateKey)}, ${Number(ticketId)});
        PERFORM pg_catalog.pg_advisory_unlock_shared(${Number(gateKey)}, ${Number(ticketId)});
      END IF;
      RETURN pg_catalog.${lockFn}(k1, k2);
    END $$`);
  return {
    shim,
    searchPath: `-c search_path="${shim}",pg_catalog,public`,
    drop: async () => void (await admin.query(`DROP SCHEMA IF EXISTS "${shim}" CASCADE`)),
  };
}
