import { createHash } from 'node:crypto';
import { sql, type SQL } from 'drizzle-orm';

/**
 * Every statement the core runs at run time (not the install SQL, which lives in the
 * migrations; the BullMQ wrapper's waiting-list calls live in src/bullmq/waiting-list.ts), each written once, for a schema already validated and quoted (`qs`, from
 * `quoteSchema`). User values travel only in `values`, as bind parameters; the text holds
 * nothing but the quoted schema and, in {@link release}, ids this library read from Postgres.
 * @internal
 */
export interface Statement {
  text: string;
  values?: unknown[];
  /**
   * Prepared once per connection under this name and bound by name afterwards (node-postgres
   * and {@link pipeline} both honour it). Always {@link preparedName} of the text, so one
   * name never stands for two texts, whichever connection a pooler hands out.
   */
  name?: string;
  /** It returns no rows (`BEGIN`, `COMMIT`): a pipeline asks for no row description. */
  noRows?: boolean;
  /** It ends the transaction (`COMMIT`): as a pipeline's last statement, no portal is left to close. */
  endsTransaction?: boolean;
}

const preparedNames = new Map<string, string>();

/**
 * The name a statement text is prepared under: `pgsem_` and a hash of the text. The texts
 * the library prepares are few (one per schema and statement shape), so they are kept.
 * @internal
 */
export function preparedName(text: string): string {
  let name = preparedNames.get(text);
  if (name === undefined) {
    name = `pgsem_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`;
    if (preparedNames.size < 1_000) preparedNames.set(text, name);
  }
  return name;
}

/** The row of the SQL function `acquire` (see src/functions-sql.ts). @internal */
export interface AcquireRow {
  status: 'ok' | 'busy' | 'missing' | 'exceeds';
  /** Ticket numbers (1..capacity), in request order. */
  tickets: number[] | null;
  /** The semaphore of each ticket, aligned with `tickets`. */
  ticket_semaphores: string[] | null;
  semaphore_ids: number[] | null;
  names: string[] | null;
  /** Only with `{ capacity: true }`: the capacity of the first semaphore named (null when it does not exist). */
  capacity?: number | null;
}

/**
 * Opens the holding transaction, READ COMMITTED whatever the database's or role's default:
 * acquire's re-read against a concurrent shrink needs a fresh snapshot per statement. @internal
 */
export const BEGIN = 'BEGIN ISOLATION LEVEL READ COMMITTED';
/** {@link BEGIN} as a statement of a pipeline. @internal */
export const BEGIN_STATEMENT: Statement = { text: BEGIN, noRows: true };
/** {@link BEGIN_STATEMENT}, prepared (for a pipeline whose acquire is prepared). @internal */
export const BEGIN_PREPARED: Statement = { ...BEGIN_STATEMENT, name: preparedName(BEGIN) };
/** Ends the holding transaction, as a prepared statement of a pipeline (see {@link wakeBeforeCommit}). @internal */
export const COMMIT: Statement = { text: 'COMMIT', name: preparedName('COMMIT'), noRows: true, endsTransaction: true };
/** Gives tickets back without waking anyone (nothing was held long enough to matter). @internal */
export const ROLLBACK = 'ROLLBACK';
/**
 * The heartbeat, and what closes the unnamed portal a parameterised statement leaves open
 * (which would otherwise keep a snapshot while the transaction sits idle). @internal
 */
export const PING = 'SELECT 1';
/**
 * Server-side TCP keepalives for the LISTEN session (10 s idle, then 3 probes 5 s apart):
 * the session of a host that vanished without closing its socket ends within ~25 s, and its
 * waiter markers with it, instead of being named by wake-ups for up to the OS default of
 * ~2 hours (15 min on many systems). Ignored on Unix sockets. @internal
 */
export const KEEPALIVES = 'SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3';

/** Subscribes the listener connection to wake-ups. @internal */
export const LISTEN = 'LISTEN pg_semaphore';

/**
 * Takes tickets, all or nothing, inside the caller's transaction. `counts` 0 means every
 * ticket; `idleMs` sets `idle_in_transaction_session_timeout` locally (null: leave it).
 * `starts[i]` (optional) is the ticket number where the search for free tickets of
 * `names[i]` starts (the ticket this process returned last is usually free again).
 * With `capacity`, the row also carries the capacity of the first name (for `withMutex`).
 * @internal
 */
export function acquire(
  qs: string,
  names: readonly string[],
  counts: readonly number[],
  label: string | null,
  idleMs: number | null,
  options: { capacity?: boolean; starts?: ReadonlyArray<number | null>; prepared?: boolean } = {},
): Statement {
  const capacity = options.capacity ? `, (SELECT m.tickets FROM ${qs}.semaphores m WHERE m.name = ($1::text[])[1]) AS capacity` : '';
  const starts = options.starts?.some((n) => n !== null) ? options.starts : undefined;
  const statement = starts
    ? {
        text: `SELECT a.*${capacity} FROM ${qs}.acquire($1::text[], $2::integer[], $3, $4, $5::integer[]) a`,
        values: [names, counts, label, idleMs, starts],
      }
    : { text: `SELECT a.*${capacity} FROM ${qs}.acquire($1::text[], $2::integer[], $3, $4) a`, values: [names, counts, label, idleMs] };
  return options.prepared ? { ...statement, name: preparedName(statement.text) } : statement;
}

/**
 * An acquire as the statements a try sends after its `BEGIN`, and how their results read as
 * one {@link AcquireRow}. @internal
 */
export interface AcquireStatements {
  statements: Statement[];
  row(results: ReadonlyArray<{ rows: unknown[] }>): AcquireRow;
  /** What to send instead where the statements cannot share one round trip (a client that cannot pipeline). */
  alone?: () => AcquireStatements;
}

/** {@link acquire} as {@link AcquireStatements}: one statement, its row. @internal */
export function acquireCall(statement: Statement): AcquireStatements {
  return { statements: [statement], row: (results) => results[0]!.rows[0] as AcquireRow };
}

/**
 * The find's inner limit, a number no semaphore reaches (tickets are capped at 2^31 - 1): a
 * bound parameter rather than OFFSET 0 so that the generic plan, which cannot know it, expects
 * to read a few tickets and scans them in order through the (semaphore_id, no) index, stopping
 * at the first free one. With OFFSET 0 it read and sorted every ticket from the start position
 * on while the table had no statistics (a bitmap scan and a sort: 0.19 ms of executor time per
 * find on an idle 1,000-ticket semaphore, against 0.013 ms). Either way the subquery stays a
 * barrier: the lock is tried row by row above it, never pushed into it.
 */
const NO_LIMIT = '2147483647';

/**
 * One ticket of one semaphore in a transaction that holds nothing yet (the library's own
 * `BEGIN ISOLATION LEVEL READ COMMITTED` just before): the SQL function `acquire`'s fast path
 * as two plain statements, without the PL/pgSQL call around them (issue 11: about a quarter of
 * the backend's CPU per acquire-and-release cycle, measured in DESIGN-NOTES "Eleventh round").
 *
 * The first finds the semaphore, locks the first free ticket from `start` on, wrapping
 * around (the ordered lists are subqueries of their own, which Postgres neither merges nor
 * pushes the volatile lock into, and `LIMIT 1` stops at the first lock taken: it never locks
 * a ticket it does not return), and sets what `acquire` sets: the held-tickets setting, the
 * idle timeout and the label. The second re-reads that ticket with a snapshot of its own (a
 * new statement in READ COMMITTED): a concurrent shrink may have deleted it between the
 * first's snapshot and its lock, and then no row comes back and the try answers busy (the
 * caller rolls back, settings included). Only `name` and numbers travel, as bind parameters.
 * @internal
 */
export function acquireOne(qs: string, name: string, start: number, label: string | null, idleMs: number | null, prepared: boolean): AcquireStatements {
  const [find, reread] = acquireOneTexts(qs, prepared);
  return {
    statements: [{ ...find, values: [name, start, idleMs, label, NO_LIMIT] }, reread],
    row(results) {
      const found = results[0]!.rows[0] as { id: number; ticket: number | null } | undefined;
      if (found === undefined) return { status: 'missing', tickets: null, ticket_semaphores: null, semaphore_ids: null, names: [name] };
      // the re-read must find the very ticket the find locked (a session-level value of the
      // held-tickets setting, left by someone else, must never stand in for it)
      const ticket = results[1]!.rows[0] as { id: number; no: number } | undefined;
      if (found.ticket === null || ticket === undefined || ticket.id !== found.ticket) {
        return { status: 'busy', tickets: null, ticket_semaphores: null, semaphore_ids: null, names: [name] };
      }
      return { status: 'ok', tickets: [ticket.no], ticket_semaphores: [name], semaphore_ids: [found.id], names: null };
    },
  };
}

/**
 * Texts (and prepared names) made once per schema and shape and kept: the same string objects
 * every time, so neither the prepared-name lookup nor the pipeline's "prepared here already?"
 * check reads a long new string per try. Keyed by the schema's own string (its hash is kept)
 * and then by a small number, so no key is built per call. Bounded like `preparedNames`.
 */
function kept<T>(cache: Map<string, T[]>, qs: string, shape: number, make: () => T): T {
  let bySchema = cache.get(qs);
  if (bySchema === undefined) {
    bySchema = [];
    if (cache.size < 100) cache.set(qs, bySchema);
  }
  return (bySchema[shape] ??= make());
}

const oneTexts = new Map<string, Array<readonly [Statement, Statement]>>();

function acquireOneTexts(qs: string, prepared: boolean): readonly [Statement, Statement] {
  return kept(oneTexts, qs, prepared ? 1 : 0, () => acquireOneText(qs, prepared));
}

function acquireOneText(qs: string, prepared: boolean): readonly [Statement, Statement] {
  const held = `'pg_semaphore.held_' || to_hex(${qs}._ns())`;
  const find: Statement = {
    text:
      `SELECT m.id, c.id AS ticket, CASE WHEN c.id IS NOT NULL THEN concat(set_config(${held}, '{' || c.id || '}', true), ` +
      `CASE WHEN $3::integer IS NOT NULL THEN set_config('idle_in_transaction_session_timeout', $3::text, true) END, ` +
      `CASE WHEN $4::text IS NOT NULL THEN set_config('application_name', left('pg-semaphore:' || $4::text, 63), true) END) END AS settings ` +
      `FROM ${qs}.semaphores m LEFT JOIN LATERAL (SELECT f.id FROM (` +
      `(SELECT t.id FROM ${qs}.tickets t WHERE t.semaphore_id = m.id AND t.no >= $2 ORDER BY t.no LIMIT $5::bigint) UNION ALL ` +
      `(SELECT t.id FROM ${qs}.tickets t WHERE t.semaphore_id = m.id AND t.no < $2 ORDER BY t.no LIMIT $5::bigint)) f ` +
      `WHERE pg_try_advisory_xact_lock(${qs}._ns(), f.id) LIMIT 1) c ON true WHERE m.name = $1::text`,
  };
  const reread: Statement = {
    text: `SELECT t.id, t.no FROM ${qs}.tickets t WHERE t.id = (nullif(current_setting(${held}, true), '')::integer[])[1]`,
  };
  return prepared ? [{ ...find, name: preparedName(find.text) }, { ...reread, name: preparedName(reread.text) }] : [find, reread];
}

/** Creates the semaphores named that do not exist yet, with `tickets` tickets each. @internal */
export function ensure(qs: string, names: readonly string[], tickets: number): Statement {
  return { text: `SELECT ${qs}.ensure($1::text[], $2)`, values: [names, tickets] };
}

/** Creates or resizes a semaphore, waiting at most `timeoutMs` for returned tickets. @internal */
export function make(qs: string, name: string, tickets: number, timeoutMs: number | null): Statement {
  return { text: `SELECT ${qs}.make($1, $2, $3)`, values: [name, tickets, timeoutMs] };
}

/** Removes a semaphore once its tickets are returned; the row's `destroyed` says whether it existed. @internal */
export function destroy(qs: string, name: string, timeoutMs: number | null): Statement {
  return { text: `SELECT ${qs}.destroy($1, $2) AS destroyed`, values: [name, timeoutMs] };
}

/** Every semaphore with capacity and held count, or just the one named. @internal */
export function list(qs: string, name?: string): Statement {
  return name === undefined ? { text: `SELECT * FROM ${qs}.list()` } : { text: `SELECT * FROM ${qs}.list() WHERE name = $1`, values: [name] };
}

/** The holders of one semaphore, from `pg_locks` ⋈ `pg_stat_activity`. @internal */
export function holders(qs: string, name: string): Statement {
  return { text: `SELECT * FROM ${qs}.holders($1)`, values: [name] };
}

/**
 * Ends the holding transaction and wakes waiters of these semaphores, in one round trip
 * (simple protocol, two statements). With `jobsWaiting`, the wake-up's row also says
 * whether jobs are recorded as waiting on these semaphores (the BullMQ wrapper's promotion).
 * `early`: the wake-up runs in the holding transaction just before `COMMIT` (no transaction
 * of its own; only for a commit of a transaction known not to have failed, since a failed
 * one would reject it and skip the `COMMIT`). `after`: the releasing process's LISTEN pid,
 * so the wake-up goes to the next waiting process (see the SQL function `wake`).
 * Only integers this library read from Postgres go into the text.
 * @internal
 */
export function release(
  qs: string,
  semaphoreIds: readonly number[],
  commit: boolean,
  jobsWaiting = false,
  options: { early?: boolean; after?: number } = {},
): Statement {
  const ids = intArray(semaphoreIds);
  const after = options.after !== undefined && Number.isInteger(options.after) ? `, ${options.after}` : '';
  const wake = `SELECT ${qs}.wake(${ids}${after}) AS notified${jobsWaitingColumn(qs, ids, jobsWaiting)}`;
  if (commit && options.early) return { text: `${wake}; COMMIT` };
  return { text: `${commit ? 'COMMIT' : 'ROLLBACK'}; ${wake}` };
}

/**
 * The wake-up of {@link release}'s early form as a statement of its own, every value a bind
 * parameter, prepared under its name: a pipeline runs it and `COMMIT` in one round trip.
 * The statement is the same for every release of a schema (the ids are `$1`), so a
 * connection parses and plans it once. `after` as in {@link release}.
 * @internal
 */
export function wakeBeforeCommit(qs: string, semaphoreIds: readonly number[], jobsWaiting: boolean, after?: number): Statement {
  const pid = after !== undefined && Number.isInteger(after);
  const text = kept(wakeTexts, qs, (pid ? 2 : 0) + (jobsWaiting ? 1 : 0), () => wakeText(qs, pid, jobsWaiting));
  return { ...text, values: pid ? [semaphoreIds, after] : [semaphoreIds] };
}

/** {@link wakeBeforeCommit}'s texts and names, made once per schema and shape (see `kept`). */
const wakeTexts = new Map<string, Statement[]>();

function wakeText(qs: string, pid: boolean, jobsWaiting: boolean): Statement {
  // wake() begins by trying each semaphore's waiter marker exclusively (held shared by every
  // waiting process) and stops there when all are free: the same tries, here in the statement,
  // call it only for the semaphores someone waits on. A marker whose exclusive try fails is
  // held shared by waiters (c = 1), or exclusively by another release doing this same check
  // until its COMMIT (c = 2; a shared try, given back at once, tells the two apart). Then nobody
  // waits yet, but a waiter may be queued for the marker behind that release and retry once it
  // commits, while this release's tickets are still held: the NOTIFY without a pid, which every
  // listener hears after this COMMIT, covers it, as wake() would have ended after searching
  // slots and pg_locks for nobody (docs/DESIGN-NOTES.md, twelfth round). CASE keeps the order
  // of the tries (the unlock gives back the shared try and is true: c = 1), and OFFSET 0 makes
  // each try run once per id.
  const ns = `${qs}._ns()`;
  const text =
    `SELECT CASE WHEN w IS NULL THEN 0 ELSE ${qs}.wake(w${pid ? ', $2::integer' : ''}) END + ` +
    `coalesce((SELECT count(pg_notify('pg_semaphore', ${ns} || ':' || x))::integer FROM unnest(b) x), 0) AS notified` +
    `${jobsWaitingColumn(qs, '$1::integer[]', jobsWaiting)} FROM (SELECT array_agg(i) FILTER (WHERE c = 1) AS w, array_agg(i) FILTER (WHERE c = 2) AS b ` +
    `FROM (SELECT i, CASE WHEN pg_try_advisory_xact_lock(${ns} # 2, i) THEN 0 ` +
    `WHEN pg_try_advisory_lock_shared(${ns} # 2, i) THEN pg_advisory_unlock_shared(${ns} # 2, i)::integer ` +
    `ELSE 2 END AS c FROM unnest($1::integer[]) i OFFSET 0) t) s`;
  return { text, name: preparedName(text) };
}

/** A row of the SQL function `acquire_session`: one per request, with the tickets' row ids (the lock keys). @internal */
export interface SessionAcquireRow extends AcquireRow {
  /** The request's number (its index in the batch). */
  req: number;
  /** The row ids of the tickets taken (the second keys of their session locks), aligned with `tickets`. */
  ticket_ids: number[] | null;
  /** The capacity of the first semaphore of the request (in id order); null when missing. */
  capacity: number | null;
}

/** One request of a session acquire batch. @internal */
export interface SessionRequest {
  names: readonly string[];
  counts: readonly number[];
  starts: ReadonlyArray<number | null>;
}

/**
 * Takes tickets for several requests at once as session locks of the holding connection,
 * each request all or nothing; `held` are the ticket ids this session holds already (never
 * taken again). Named, so the holding connection parses it once. @internal
 */
export function acquireSession(qs: string, requests: readonly SessionRequest[], held: readonly number[]): Statement & { name: string } {
  const req: number[] = [];
  const names: string[] = [];
  const counts: number[] = [];
  const starts: Array<number | null> = [];
  requests.forEach((r, i) => {
    r.names.forEach((name, j) => {
      req.push(i);
      names.push(name);
      counts.push(r.counts[j]!);
      starts.push(r.starts[j] ?? null);
    });
  });
  return {
    name: `pg-semaphore:acquire_session:${qs}`,
    text: `SELECT * FROM ${qs}.acquire_session($1::integer[], $2::text[], $3::integer[], $4::integer[], $5::integer[])`,
    values: [req, names, counts, held, starts],
  };
}

/**
 * Returns session-held tickets (their row ids) and wakes the next process waiting on their
 * semaphores after `after`; with `jobsWaiting`, also says whether the BullMQ wrapper recorded
 * jobs as waiting on them. Only integers this library read from Postgres go into the text.
 * @internal
 */
export function releaseSession(qs: string, ticketIds: readonly number[], semaphoreIds: readonly number[], jobsWaiting: boolean, after?: number): Statement {
  const ids = intArray(semaphoreIds);
  const pid = after !== undefined && Number.isInteger(after) ? `${after}` : 'NULL';
  return { text: `SELECT ${qs}.release_session(${intArray(ticketIds)}, ${ids}, ${pid}) AS notified${jobsWaitingColumn(qs, ids, jobsWaiting)}` };
}

/** An `integer[]` literal of ids this library read from Postgres (anything else is dropped). */
function intArray(list: readonly number[]): string {
  return `'{${list.filter((n) => Number.isInteger(n)).join(',')}}'::integer[]`;
}

/** The release's optional column: whether the BullMQ wrapper recorded jobs as waiting on these semaphores. */
function jobsWaitingColumn(qs: string, ids: string, asked: boolean): string {
  return asked ? `, EXISTS (SELECT 1 FROM ${qs}.waiting_jobs WHERE semaphore_id = ANY (${ids})) AS jobs_waiting` : '';
}

/**
 * Opens a holding session, first step: a LISTEN on its own probe channel (a NOTIFY sent there
 * from another connection arrives only on a session of its own, never through a pooler in
 * transaction mode) and the backend pid. Nothing is set yet: through such a pooler these go
 * to a server connection other clients share, and the session is refused. @internal
 */
export const OPEN_SESSION = 'LISTEN pg_semaphore_session; SELECT pg_backend_pid() AS pid';

/**
 * Opens a holding session, second step, once the probe arrived: the idle window
 * (`idle_session_timeout`, Postgres 14+: on 13 the first SET fails with 42704), READ
 * COMMITTED, the label, keepalives, and the probe channel's UNLISTEN. The label is cut to
 * letters, digits and `._:@-` (it is written into the text). @internal
 */
export function settleSession(idleMs: number, label: string): Statement {
  const safe = `pg-semaphore:${label}`.replace(/[^A-Za-z0-9._:@ -]/g, '?').slice(0, 63);
  return {
    text:
      `SET idle_session_timeout = ${Math.trunc(idleMs)}; SET default_transaction_isolation = 'read committed'; ` +
      `SET application_name = '${safe}'; ${KEEPALIVES}; UNLISTEN pg_semaphore_session`,
  };
}

/** A NOTIFY on the holding session's probe channel, sent from another connection. @internal */
export function sessionProbe(pid: number): Statement {
  return { text: `SELECT pg_notify('pg_semaphore_session', $1)`, values: [String(pid)] };
}

/** Sets the `application_name` status() shows for a holder, for the rest of its transaction. @internal */
export function relabel(label: string): Statement {
  return { text: `SELECT set_config('application_name', left('pg-semaphore:' || $1, 63), true)`, values: [label] };
}

/**
 * The schema's advisory-lock namespace (the first key of every ticket lock), and this
 * session's backend pid (a NOTIFY naming it is meant for this listener). @internal
 */
export function namespace(qs: string): Statement {
  return { text: `SELECT ${qs}._ns() AS ns, pg_backend_pid() AS pid` };
}

/**
 * A NOTIFY to one listener (`'<ns>:0:<pid>'`, semaphore id 0 is never used), sent from
 * another connection: it arrives only where LISTEN really works (not through PgBouncer in
 * transaction mode, which drops notifications for a client not linked to the server
 * connection). @internal
 */
export function probe(ns: number, pid: number): Statement {
  return { text: `SELECT pg_notify('pg_semaphore', $1)`, values: [`${ns}:0:${pid}`] };
}

/**
 * Passes a wake-up of semaphore `id` that this process could not use on to the next waiting
 * process after `after` (this listener's pid); `origin`, the first process that could not use
 * it, stops it once it went round. @internal
 */
export function relay(qs: string, id: number, after: number, origin: number): Statement {
  return { text: `SELECT ${qs}.wake($1::integer[], $2::integer, $3::integer)`, values: [[id], after, origin] };
}

/** Marks this LISTEN session as one that NOTIFYs reach (the releasers' wake-up names it). @internal */
export function hears(qs: string): Statement {
  return { text: `SELECT ${qs}.hears()` };
}

/**
 * {@link hears}, and claims a slot for this LISTEN session (0005_functions): the row's `slot`,
 * or null when none is free. The waiter markers already held (`ids`, one per mark) are taken
 * again under it. @internal
 */
export function hearsSlot(qs: string, ids: readonly number[]): Statement {
  return { text: `SELECT ${qs}.hears_slot($1::integer[]) AS slot`, values: [ids] };
}

/**
 * Marks this session as waiting on the semaphores named (under its slot too, when it has
 * one); the row's `ids` are their ids. @internal
 */
export function watch(qs: string, names: readonly string[], slot?: number): Statement {
  if (slot !== undefined) return { text: `SELECT ${qs}.watch_slot($1::text[], $2::integer) AS ids`, values: [names, slot] };
  return { text: `SELECT ${qs}.watch($1::text[]) AS ids`, values: [names] };
}

/** Marks this session as waiting on these semaphore ids (once per id given; after a reconnect). @internal */
export function watchIds(qs: string, ids: readonly number[]): Statement {
  return { text: `SELECT ${qs}.watch_ids($1::integer[])`, values: [ids] };
}

/** Takes back one {@link watch} mark per id given (taken under `slot`, if given). @internal */
export function unwatch(qs: string, ids: readonly number[], slot?: number): Statement {
  if (slot !== undefined) return { text: `SELECT ${qs}.unwatch_slot($1::integer[], $2::integer)`, values: [ids, slot] };
  return { text: `SELECT ${qs}.unwatch($1::integer[])`, values: [ids] };
}

/**
 * The same statement for a Drizzle executor: each `$n` becomes a bound parameter.
 * @internal
 */
export function toDrizzle(statement: Statement): SQL {
  const parts = statement.text.split(/\$(\d+)/);
  const chunks: SQL[] = parts.map((part, i) => (i % 2 === 0 ? sql.raw(part) : sql`${sql.param(statement.values?.[Number(part) - 1])}`));
  return sql.join(chunks);
}
