// wake() by slots (0005_functions): a LISTEN session that hears NOTIFYs claims a slot and marks
// what it waits on under it too, so a release finds the next waiting process by trying a few
// advisory locks instead of reading pg_locks. Plain sessions play the processes here, so the
// slot numbers and markers are exactly the ones each test sets up.
import pg from 'pg';
import { sql } from 'drizzle-orm';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl, setupSchema, waitFor } from '../helpers/db.js';
import { advisoryLocksOf, listenerOf, nsOf, slotKey, track, within } from '../helpers/core.js';
import type { PgSemaphore } from '../../src/index.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let ns: number;
let qs: string;
let id: number;
let listen: pg.Client;
const notes: string[] = [];
const sessions: pg.Client[] = [];

beforeAll(async () => {
  ctx = await setupSchema('wakeslots');
  qs = `"${ctx.schema}"`;
  ns = await nsOf(ctx.admin, ctx.schema);
  await ctx.sem.make('x', 1);
  const { rows } = await ctx.admin.query<{ id: number }>(`SELECT id FROM ${qs}.semaphores WHERE name = 'x'`);
  id = rows[0]!.id;
  listen = new pg.Client({ connectionString: ctx.admin.options.connectionString });
  await listen.connect();
  listen.on('notification', (n) => {
    // other test files share the channel: only this schema's namespace counts
    if (n.payload?.startsWith(`${ns}:`)) notes.push(n.payload);
  });
  await listen.query('LISTEN pg_semaphore');
});
afterEach(async () => {
  await Promise.all(sessions.splice(0).map((s) => s.end()));
});
afterAll(async () => {
  await listen?.end();
  await ctx?.drop();
});

/** A session of its own (a process's LISTEN connection), ended after the test. */
async function session(): Promise<pg.Client> {
  const s = new pg.Client({ connectionString: ctx.admin.options.connectionString });
  await s.connect();
  sessions.push(s);
  return s;
}

/** A session that hears NOTIFYs and holds the slot it returns. */
async function slotted(): Promise<{ s: pg.Client; slot: number }> {
  const s = await session();
  const { rows } = await s.query<{ slot: number }>(`SELECT ${qs}.hears_slot('{}') AS slot`);
  return { s, slot: rows[0]!.slot };
}

const named = (slot: number) => -slot - 1;

/** The backend pid of a session (pg sets it at connect; its typings do not list it). */
const pidOf = (s: pg.Client) => (s as unknown as { processID: number }).processID;

/** Runs wake() from a pool connection and returns its count and the NOTIFYs it sent. */
async function wake(after: number | null, origin: number | null = null): Promise<{ sent: number; notes: string[] }> {
  notes.length = 0;
  const { rows } = await ctx.admin.query<{ n: number }>(`SELECT ${qs}.wake($1::integer[], $2::integer, $3::integer) AS n`, [[id], after, origin]);
  const sent = rows[0]!.n;
  if (sent > 0) await waitFor(() => notes.length >= sent, { timeout: 2_000, what: 'the NOTIFYs' });
  // a NOTIFY arrives after its commit: one more round trip on the listening connection lets any
  // further one (there must be none) arrive before the count is read
  await listen.query('SELECT 1');
  return { sent, notes: [...notes] };
}

/** This session's advisory locks in the namespace's waiter keys: the marker, and its slot's. */
async function markersOf(pid: number, slot: number): Promise<{ plain: number; slotted: number }> {
  return { plain: await advisoryLocksOf(ctx.admin, pid, ns ^ 2, id), slotted: await advisoryLocksOf(ctx.admin, pid, slotKey(ns, slot), id) };
}

describe('wake() by slots', () => {
  it('claims the lowest free slot, and a released slot is claimed again', async () => {
    const a = await slotted();
    const b = await slotted();
    const c = await slotted();
    expect([b.slot - a.slot, c.slot - b.slot]).toEqual([1, 1]);
    await b.s.end();
    sessions.splice(sessions.indexOf(b.s), 1);
    const d = await slotted();
    expect(d.slot).toBe(b.slot);
  });

  it('names the first waiting slot after the releaser’s, wrapping round, the releaser’s own last', async () => {
    const a = await slotted();
    const b = await slotted();
    const c = await slotted();
    await b.s.query(`SELECT ${qs}.watch_slot('{x}', $1)`, [b.slot]);
    await c.s.query(`SELECT ${qs}.watch_slot('{x}', $1)`, [c.slot]);
    expect((await wake(named(a.slot))).notes).toEqual([`${ns}:${id}:${named(b.slot)}`]);
    expect((await wake(named(b.slot))).notes).toEqual([`${ns}:${id}:${named(c.slot)}`]);
    // after c: a does not wait, b does
    expect((await wake(named(c.slot))).notes).toEqual([`${ns}:${id}:${named(b.slot)}`]);
    await b.s.query(`SELECT ${qs}.unwatch_slot($1::integer[], $2)`, [[id], b.slot]);
    // only c waits: a release from c's own process names c
    expect((await wake(named(c.slot))).notes).toEqual([`${ns}:${id}:${named(c.slot)}`]);
    await c.s.query(`SELECT ${qs}.unwatch_slot($1::integer[], $2)`, [[id], c.slot]);
    // nobody waits: nothing is sent
    expect(await wake(named(a.slot))).toEqual({ sent: 0, notes: [] });
  });

  it('a relay goes on to the next slot and stops once it went round to its origin', async () => {
    const a = await slotted();
    const b = await slotted();
    const c = await slotted();
    await a.s.query(`SELECT ${qs}.watch_slot('{x}', $1)`, [a.slot]);
    await c.s.query(`SELECT ${qs}.watch_slot('{x}', $1)`, [c.slot]);
    // b could not use a wake-up first named for it: c next, the payload keeps the origin
    expect((await wake(named(b.slot), named(b.slot))).notes).toEqual([`${ns}:${id}:${named(c.slot)}:${named(b.slot)}`]);
    // c could not use it either: a next
    expect((await wake(named(c.slot), named(b.slot))).notes).toEqual([`${ns}:${id}:${named(a.slot)}:${named(b.slot)}`]);
    // with c gone, the next waiting slot after a is a itself: it went round, nothing is sent
    await c.s.query(`SELECT ${qs}.unwatch_slot($1::integer[], $2)`, [[id], c.slot]);
    expect(await wake(named(a.slot), named(b.slot))).toEqual({ sent: 0, notes: [] });
    // the next one being the origin stops it too
    await c.s.query(`SELECT ${qs}.watch_slot('{x}', $1)`, [c.slot]);
    expect(await wake(named(a.slot), named(c.slot))).toEqual({ sent: 0, notes: [] });
    // a relay whose origin is a pid (named through pg_locks) starts again from the relayer
    expect((await wake(named(a.slot), 12345)).notes).toEqual([`${ns}:${id}:${named(c.slot)}:${named(a.slot)}`]);
  });

  it('a waiter without a slot marker (an older library, behind a hole of 8 free slots) is named by its pid from pg_locks', async () => {
    const a = await slotted();
    // an older library's waiter: hears() and the one-argument watch()
    const old = await session();
    await old.query(`SELECT ${qs}.hears()`);
    await old.query(`SELECT ${qs}.watch('{x}')`);
    expect((await wake(named(a.slot))).notes).toEqual([`${ns}:${id}:${pidOf(old)}`]);
    // a relay never falls back to pg_locks (the pid path has its own relays)
    expect(await wake(named(a.slot), named(a.slot))).toEqual({ sent: 0, notes: [] });
    await old.end();
    sessions.splice(sessions.indexOf(old), 1);

    // slots a+1 .. a+9 given back, a+10 waits: the search upwards from a stops after 8 free ones in a row
    const hole = [];
    for (let i = 0; i < 9; i++) hole.push(await slotted());
    const far = await slotted();
    expect(far.slot).toBe(a.slot + 10);
    for (const h of hole) {
      await h.s.end();
      sessions.splice(sessions.indexOf(h.s), 1);
    }
    await far.s.query(`SELECT ${qs}.watch_slot('{x}', $1)`, [far.slot]);
    expect((await wake(named(a.slot))).notes).toEqual([`${ns}:${id}:${pidOf(far.s)}`]);
    // with the hole down to 7 free slots (a+3 .. a+9), the slot search from a+2 finds it
    const near = [await slotted(), await slotted()];
    expect(near.map((n) => n.slot)).toEqual([a.slot + 1, a.slot + 2]);
    expect((await wake(named(near[1]!.slot))).notes).toEqual([`${ns}:${id}:${named(far.slot)}`]);
  });

  it('a wake-up from a releaser without a slot (wake(ids), wake_names) finds the waiting slot too; waiters without one by pid', async () => {
    const w = await slotted();
    await w.s.query(`SELECT ${qs}.watch_slot('{x}', $1)`, [w.slot]);
    expect((await wake(null)).notes).toEqual([`${ns}:${id}:${named(w.slot)}`]);
    notes.length = 0;
    const { rows } = await ctx.admin.query<{ n: number }>(`SELECT ${qs}.wake_names('{x}') AS n`);
    expect(rows[0]!.n).toBe(1);
    await waitFor(() => notes.length === 1, { timeout: 2_000, what: 'the NOTIFY' });
    expect(notes).toEqual([`${ns}:${id}:${named(w.slot)}`]);
    await w.s.query(`SELECT ${qs}.unwatch_slot($1::integer[], $2)`, [[id], w.slot]);
    // an older library's waiter only: found through pg_locks, named by pid
    const old = await session();
    await old.query(`SELECT ${qs}.hears()`);
    await old.query(`SELECT ${qs}.watch('{x}')`);
    expect((await wake(null)).notes).toEqual([`${ns}:${id}:${pidOf(old)}`]);
  });

  it('a marker held by another release trying it at the same moment is not taken for a waiter', async () => {
    const w = await slotted();
    await w.s.query(`SELECT ${qs}.watch_slot('{x}', $1)`, [w.slot]);
    // a release after slot w+1 that has not committed: its tries of the free slots above keep their locks
    const first = await ctx.admin.connect();
    try {
      await first.query('BEGIN');
      await first.query(`SELECT ${qs}.wake($1::integer[], $2::integer)`, [[id], named(w.slot + 1)]);
      // another release after slot w+2 meets those locks on unclaimed slots: still it names w
      expect((await wake(named(w.slot + 2))).notes).toEqual([`${ns}:${id}:${named(w.slot)}`]);
    } finally {
      await first.query('ROLLBACK');
      first.release();
    }
  });

  it('a release whose check meets another release’s check on the marker does not call wake(): it sends the NOTIFY without a pid', async ({ skip }) => {
    // counting needs a superuser (track_functions) and Postgres 15 (pg_stat_force_next_flush)
    const who = await ctx.admin.query<{ su: boolean; v: number }>(
      `SELECT rolsuper AS su, current_setting('server_version_num')::int AS v FROM pg_roles WHERE rolname = current_user`,
    );
    if (!who.rows[0]!.su || who.rows[0]!.v < 150000) skip();
    // The library's release (prepared, early) tries the waiter marker itself and calls wake()
    // only for a semaphore someone waits on. A marker held exclusively is another release's
    // check until its COMMIT: no waiter holds it then, and wake() would search for one, in the
    // end through pg_locks, before sending the NOTIFY every listener hears. wake()'s calls are
    // counted by the server (track_functions on the library's one connection; superuser only).
    const sem = ctx.another({ connection: { connectionString: databaseUrl(), max: 1, options: '-c track_functions=pl' }, listen: false });
    const other = await ctx.admin.connect();
    const waiter = await session();
    try {
      // a few holds first: the release's wake-up is prepared after the first ones
      for (let i = 0; i < 6; i++) await (await sem.hold('x')).release();
      const wakeCalls = async () => {
        const r = await ctx.admin.query<{ n: string }>(
          `SELECT coalesce(sum(calls), 0)::text AS n FROM pg_stat_user_functions WHERE schemaname = $1 AND funcname = 'wake'`,
          [ctx.schema],
        );
        return Number(r.rows[0]!.n);
      };
      // the function counts the backend holds so far are sent with the next transaction that asks
      const flushed = async () => {
        const f = await sem.hold('x');
        await f.tx.execute(sql`SELECT pg_stat_force_next_flush()`);
        await f.release(); // a release after statements of the caller's own calls wake() itself: one call
        await waitFor(async () => (await wakeCalls()) > last, { timeout: 5_000, what: "the library backend's function counts" });
        last = await wakeCalls();
        return last;
      };
      let last = await wakeCalls();
      const before = await flushed();
      // another release's check, not committed yet
      await other.query('BEGIN');
      expect((await other.query<{ got: boolean }>('SELECT pg_try_advisory_xact_lock($1, $2) AS got', [ns ^ 2, id])).rows[0]!.got).toBe(true);
      notes.length = 0;
      await (await sem.hold('x')).release();
      await other.query('ROLLBACK');
      // instead, the NOTIFY without a pid, for a waiter that may be queued for the marker behind
      // that release (it retries once that release commits, while this one's ticket is still held)
      await waitFor(() => notes.includes(`${ns}:${id}`), { timeout: 2_000, what: 'the NOTIFY to every listener' });
      // counted: the flush's own call only
      const mid = await flushed();
      expect(mid).toBe(before + 1);
      // a waiter (an older library's: no slot): the next release calls wake(), which names it
      await waiter.query(`SELECT ${qs}.watch('{x}')`);
      notes.length = 0;
      await (await sem.hold('x')).release();
      await waitFor(() => notes.length === 1, { timeout: 2_000, what: "the waiter's NOTIFY" });
      // counted: that release's call and the flush's
      expect(await flushed()).toBe(mid + 2);
    } finally {
      await other.query('ROLLBACK').catch(() => undefined);
      other.release();
      await within(sem.close(), 5_000, 'sem.close()');
    }
  });

  it('hears_slot takes the markers held already under the slot; unwatch_slot gives both back', async () => {
    const a = await slotted();
    const b = await session();
    await b.query(`SELECT ${qs}.watch('{x}')`);
    await b.query(`SELECT ${qs}.watch('{x}')`);
    const { rows } = await b.query<{ slot: number }>(`SELECT ${qs}.hears_slot($1::integer[]) AS slot`, [[id, id]]);
    const slot = rows[0]!.slot;
    expect(await markersOf(pidOf(b), slot)).toEqual({ plain: 1, slotted: 1 });
    expect((await wake(named(a.slot))).notes).toEqual([`${ns}:${id}:${named(slot)}`]);
    await b.query(`SELECT ${qs}.unwatch_slot($1::integer[], $2)`, [[id], slot]);
    // session-level locks count: two watches, one unwatch, both kinds still held once
    expect(await markersOf(pidOf(b), slot)).toEqual({ plain: 1, slotted: 1 });
    await b.query(`SELECT ${qs}.unwatch_slot($1::integer[], $2)`, [[id], slot]);
    expect(await markersOf(pidOf(b), slot)).toEqual({ plain: 0, slotted: 0 });
    expect(await wake(named(a.slot))).toEqual({ sent: 0, notes: [] });
  });
});

describe('a PgSemaphore on an install without hears_slot() (before 0005_functions)', () => {
  let old: Awaited<ReturnType<typeof setupSchema>>;
  beforeAll(async () => {
    old = await setupSchema('wakeslots_old');
    await old.sem.make('y', 1);
    await old.admin.query(`DROP FUNCTION "${old.schema}".hears_slot(integer[])`);
  });
  afterAll(async () => {
    await old?.drop();
  });

  it('hears by its pid, and is woken by a release at once', async () => {
    const waiter = old.another({ maxPollInterval: 10_000 });
    const releaser = old.another();
    try {
      const held = await releaser.hold('y');
      const start = waiter.roundTrips;
      const w = track(waiter.hold('y', { wait: 20_000 }));
      await waitFor(() => waiter.hearsWakeUps, { timeout: 5_000, what: 'the probe' });
      const listener = listenerOf(waiter);
      expect(listener.wakeId).toBe(listener.backendPid);
      // its poll has backed off: only a wake-up is prompt
      await waitFor(() => waiter.roundTrips - start >= 14, { timeout: 10_000, interval: 5, what: 'the waiter to back off' });
      const started = performance.now();
      await held.release();
      const got = await within(w.promise, 15_000, 'the waiter to get the ticket');
      expect(performance.now() - started).toBeLessThan(400);
      await got.release();
    } finally {
      await within(waiter.close(), 5_000, 'waiter.close()');
      await within(releaser.close(), 5_000, 'releaser.close()');
    }
  });
});

describe('PgSemaphore waiters hold slots', () => {
  it('a listener whose connection runs watches and unwatches back to back still comes to hear: its probe holds them back until it arrives', async () => {
    const sem = ctx.another();
    // waiters coming and going back to back: a watch or an unwatch is always queued on the
    // LISTEN connection, so a probe that did not hold them back would always arrive while one
    // runs, and prove nothing (a listener that stopped after five such probes never heard)
    let churning = true;
    let rounds = 0;
    const churn = async () => {
      while (churning) {
        const stop = await sem.watch(['x'], () => true);
        await stop();
        rounds++;
      }
    };
    const loops = [churn(), churn(), churn(), churn()];
    try {
      await waitFor(() => rounds > 0, { timeout: 5_000, what: 'the churn to start' });
      await waitFor(() => sem.hearsWakeUps, { timeout: 15_000, what: 'the listener to hear while the churn goes on' });
      expect(listenerOf(sem).wakeId).toBeLessThan(0);
      // the statements were held back only while the probe was on its way
      const heardAt = rounds;
      await waitFor(() => rounds >= heardAt + 20, { timeout: 5_000, what: 'the churn to go on after the probe' });
    } finally {
      churning = false;
      await Promise.all(loops);
      await within(sem.close(), 5_000, 'sem.close()');
    }
  });

  it('a waiting PgSemaphore is named by its slot, and its markers are all given back when it stops waiting', async () => {
    const waiter = ctx.another({ maxPollInterval: 10_000 });
    const releaser: PgSemaphore = ctx.another();
    // the releaser listens too (it hears NOTIFYs and holds a slot): its release passes its slot
    const stopListening = await releaser.watch(['none'], () => true);
    try {
      await waitFor(() => releaser.hearsWakeUps, { timeout: 5_000, what: "the releaser's probe" });
      const held = await releaser.hold('x');
      const w = track(waiter.hold('x', { wait: 20_000 }));
      await waitFor(() => waiter.hearsWakeUps, { timeout: 5_000, what: 'the probe' });
      const listener = listenerOf(waiter);
      expect(listener.wakeId).toBeLessThan(0);
      const slot = -listener.wakeId! - 1;
      const pid = listener.backendPid!;
      // the waiter took its marker before the probe came back: hears_slot took it again under the slot
      await waitFor(async () => (await markersOf(pid, slot)).slotted === 1, { timeout: 5_000, what: 'the slot marker' });
      notes.length = 0;
      await held.release();
      const got = await within(w.promise, 15_000, 'the waiter to get the ticket');
      await waitFor(() => notes.some((n) => n.split(':')[1] === String(id)), { timeout: 2_000, what: 'the NOTIFY' });
      // the releaser's wake-up found the waiter by its slot marker and named its slot
      expect(notes.filter((n) => n.split(':')[1] === String(id))).toEqual([`${ns}:${id}:${listener.wakeId}`]);
      await got.release();
      await waitFor(async () => {
        const m = await markersOf(pid, slot);
        return m.plain + m.slotted === 0;
      }, { timeout: 5_000, what: 'the markers to be given back' });
    } finally {
      await stopListening();
      await within(waiter.close(), 5_000, 'waiter.close()');
      await within(releaser.close(), 5_000, 'releaser.close()');
    }
  });
});
