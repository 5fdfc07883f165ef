// Behind PgBouncer in transaction mode (PgBouncer started by this test on a free port, in
// front of a Postgres of this test's own). Transaction-level advisory locks, the idle-hold
// window and heartbeats live inside one transaction, so they survive transaction pooling;
// LISTEN and the session-level "watch" markers need a session, so wake-ups are not reliable
// there and waiting falls back to polling.
//
// The acquire runs as BEGIN plus one parameterised statement inside the transaction, so
// transaction pooling keeps both on one server connection.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PgSemaphore } from '../../src/index.js';
import { bullmqQueues } from '../helpers/bullmq.js';
import { within } from '../helpers/core.js';
import { testSchemaName, waitFor } from '../helpers/db.js';
import { startFakeApi } from '../helpers/fake-api.js';
import { Fleet, finishedCounts } from '../helpers/fleet.js';
import { startPgBouncer, startPostgres, type PgBouncerServer, type PostgresServer } from '../helpers/servers.js';

let server: PostgresServer;
let bouncer: PgBouncerServer;
let admin: pg.Pool;
const schema = testSchemaName('bouncer');
const opened: PgSemaphore[] = [];

function viaBouncer(extra: Record<string, unknown> = {}): PgSemaphore {
  const sem = new PgSemaphore({ connection: { connectionString: bouncer.url(), max: 10 }, schema, ...extra });
  opened.push(sem);
  return sem;
}

beforeAll(async () => {
  server = await startPostgres();
  bouncer = await startPgBouncer(server.port, { poolMode: 'transaction', poolSize: 40 });
  admin = new pg.Pool({ connectionString: server.url(), max: 2 });
  admin.on('error', () => undefined);
  // installing goes through PgBouncer too (one transaction)
  const sem = viaBouncer();
  await sem.migrate();
  await sem.make('api', 2);
  await sem.make('other', 3);
}, 60_000);
afterAll(async () => {
  for (const s of opened.splice(0)) await s.close().catch(() => undefined);
  await admin?.end().catch(() => undefined);
  await bouncer?.stop();
  await server?.stop();
});

/** Ticket numbers of a semaphore, read straight from Postgres. */
async function ticketNumbers(name: string): Promise<Set<number>> {
  const { rows } = await admin.query<{ no: number }>(
    `SELECT t.no FROM "${schema}".tickets t JOIN "${schema}".semaphores m ON m.id = t.semaphore_id WHERE m.name = $1`,
    [name],
  );
  return new Set(rows.map((r) => r.no));
}

describe('behind PgBouncer (transaction mode)', () => {
  it('tickets: concurrent holders on two semaphores never exceed the caps and always get tickets of the semaphore they asked for', async () => {
    const ids = { api: await ticketNumbers('api'), other: await ticketNumbers('other') };
    const caps = { api: 2, other: 3 };
    const sems = [viaBouncer(), viaBouncer(), viaBouncer()];
    const inflight = { api: 0, other: 0 };
    const max = { api: 0, other: 0 };
    const wrong: string[] = [];
    const loops = Array.from({ length: 10 }, (_, i) =>
      (async () => {
        const name = i % 2 === 0 ? 'api' : 'other';
        const sem = sems[i % sems.length]!;
        for (let n = 0; n < 15; n++) {
          await sem.withTickets(
            name,
            async ({ tickets }) => {
              for (const t of tickets) if (t.name !== name || !ids[name].has(t.ticket)) wrong.push(`${name} got ticket ${t.ticket} of ${t.name}`);
              inflight[name]++;
              max[name] = Math.max(max[name], inflight[name]);
              await new Promise((r) => setTimeout(r, 5 + Math.random() * 10));
              inflight[name]--;
            },
            { wait: 30_000 },
          );
        }
      })(),
    );
    await within(Promise.all(loops), 90_000, 'the holders to finish');
    expect(wrong).toEqual([]);
    expect(max.api).toBeLessThanOrEqual(caps.api);
    expect(max.other).toBeLessThanOrEqual(caps.other);
    expect(max.api).toBe(caps.api);
    const held = await admin.query(`SELECT count(*)::int AS n FROM "${schema}".holders()`);
    expect(held.rows[0].n).toBe(0);
  });

  it('prepared statements: a transaction the pooler puts on a server connection that never prepared the acquire retries unprepared, takes its ticket, and nothing is left held', async () => {
    const warnings: string[] = [];
    const sem = viaBouncer({ connection: { connectionString: bouncer.url(), max: 1 }, logger: { warn: (m: string) => void warnings.push(m) } });
    // prepared on the one server connection in use
    for (let i = 0; i < 3; i++) await (await sem.hold('other')).release();
    // a client that takes that server connection (PgBouncer hands out the most recently used
    // one first) and keeps it, inside a transaction, so the next acquire lands elsewhere
    const blocker = new pg.Client({ connectionString: bouncer.url() });
    blocker.on('error', () => undefined);
    await blocker.connect();
    try {
      await blocker.query('BEGIN');
      const { rows } = await blocker.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_prepared_statements WHERE name LIKE 'pgsem\\_%'`);
      expect(rows[0]!.n, "the blocker sits on the server connection that prepared pg-semaphore's statements").toBeGreaterThan(0);
      const hold = await within(sem.hold('other', { label: 'moved' }), 10_000, 'the hold on another server connection');
      expect((await admin.query(`SELECT label FROM "${schema}".holders('other')`)).rows.map((r) => r.label)).toEqual(['moved']);
      await hold.release();
      for (let i = 0; i < 3; i++) await (await sem.hold('other')).release();
      await blocker.query('COMMIT');
    } finally {
      await blocker.end().catch(() => undefined);
    }
    expect((await admin.query(`SELECT count(*)::int AS n FROM "${schema}".holders()`)).rows[0].n).toBe(0);
    expect(warnings).toEqual([]);
  });

  it('heartbeats keep a hold past the idle-hold window; a silent holder loses its ticket after it', async () => {
    const sem = viaBouncer({ livenessTimeout: 600 });
    const hold = await sem.hold('api');
    await new Promise((r) => setTimeout(r, 2_500));
    expect(hold.lost).toBe(false);
    expect((await sem.status('api')).held).toBe(1);
    await hold.release();
    expect((await sem.status('api')).held).toBe(0);

    // a holder that goes silent (a raw client through PgBouncer, no heartbeat)
    const silent = new pg.Client({ connectionString: bouncer.url() });
    silent.on('error', () => undefined);
    await silent.connect();
    try {
      await silent.query('BEGIN');
      const { rows } = await silent.query(`SELECT * FROM "${schema}".acquire(ARRAY['api'], ARRAY[1], 'silent', 500)`);
      expect(rows[0].status).toBe('ok');
      expect((await sem.status('api')).held).toBe(1);
      const t0 = Date.now();
      await waitFor(async () => (await sem.status('api')).held === 0, { timeout: 5_000, interval: 20, what: 'the silent holder to lose its ticket' });
      console.log(`[pgbouncer] silent holder's ticket free ${Date.now() - t0} ms after it went quiet (window 500 ms)`);
      await expect(silent.query('SELECT 1')).rejects.toThrow();
    } finally {
      await silent.end().catch(() => undefined);
    }
  });

  it('waiting works behind PgBouncer by polling: NOTIFY wake-ups do not reach a LISTEN made through transaction pooling', async () => {
    // The holder keeps the tickets long enough for the waiter's poll to back off to its
    // maximum (1 s): a wake-up answers within milliseconds, a poll within up to a second.
    const measure = async (make: () => PgSemaphore, rounds: number) => {
      const a = make();
      const b = make();
      const lat: number[] = [];
      for (let i = 0; i < rounds; i++) {
        const hold = await a.hold({ name: 'api', tickets: 2 });
        const waited = b.withTickets('api', () => Date.now(), { wait: 10_000 });
        await new Promise((r) => setTimeout(r, 1_500));
        const releasedAt = Date.now();
        await hold.release();
        lat.push((await within(waited, 10_000, 'the waiter')) - releasedAt);
      }
      return lat;
    };
    const direct = await measure(() => {
      const sem = new PgSemaphore({ connection: server.url(), schema, maxPollInterval: 1_000 });
      opened.push(sem);
      return sem;
    }, 3);
    const bounced = await measure(() => viaBouncer({ maxPollInterval: 1_000 }), 3);
    expect(bounced).toHaveLength(3);
    expect((await admin.query(`SELECT count(*)::int AS n FROM "${schema}".holders()`)).rows[0].n).toBe(0);
    // PgBouncer drops a notification that arrives on a server connection no client is linked to
    const dropped = (bouncer.log(100_000).match(/got packet 'A' from server when not linked/g) ?? []).length;
    console.log(
      `[pgbouncer] waiter got the ticket after the release: direct (LISTEN/NOTIFY) ${direct.join(', ')} ms; ` +
        `via PgBouncer ${bounced.join(', ')} ms (by polling, maxPollInterval 1,000 ms); ` +
        `notifications PgBouncer dropped for want of a linked client: ${dropped}`,
    );
  });

  it('the BullMQ wrapper works through PgBouncer: cap holds, every job completes, no ticket left', async () => {
    const api = await startFakeApi(20);
    const bq = await bullmqQueues('redis', ['bouncer']);
    const fleet = new Fleet({
      ...bq.env,
      DATABASE_URL: bouncer.url(),
      SEM_SCHEMA: schema,
      SEM_NAME: 'other',
      QUEUES: 'bouncer',
      API_URL: api.url,
      CONCURRENCY: 6,
      LIVENESS: 2_000,
      QUIET: 1,
    });
    const jobs = 150;
    try {
      await fleet.start(2);
      const [queue] = bq.queues;
      await queue!.addBulk(Array.from({ length: jobs }, (_, i) => ({ name: 'call', data: { i }, opts: { attempts: 3 } })));
      const t0 = Date.now();
      await waitFor(
        async () => {
          const c = await finishedCounts(queue!);
          return c && c.completed + c.failed >= jobs;
        },
        { timeout: 40_000, interval: 100, what: 'all jobs to finish' },
      );
      expect(await finishedCounts(queue!)).toEqual({ completed: jobs, failed: 0 });
      expect(api.calls.size).toBe(jobs);
      expect(api.max).toBeLessThanOrEqual(3);
      expect(fleet.events('unhandled')).toEqual([]);
      expect(fleet.events('lost')).toEqual([]);
      await waitFor(async () => (await admin.query(`SELECT count(*)::int AS n FROM "${schema}".holders()`)).rows[0].n === 0, {
        timeout: 10_000,
        what: 'no ticket held',
      });
      const warnings = fleet.events('warn').map((e) => e.message);
      console.log(
        `[pgbouncer] BullMQ wrapper: ${jobs} jobs in ${Date.now() - t0} ms through PgBouncer, api max ${api.max}/3` +
          (warnings.length ? `; library warnings: ${[...new Set(warnings)].slice(0, 3).join(' | ')}` : ''),
      );
    } finally {
      await fleet.close();
      await bq.cleanup();
      await api.close();
    }
  }, 90_000);
});
