// docs/SQL.md's psql session, read from the doc and run through a real psql process (or, where
// no psql is installed, the same strings over a plain pg client): its ticket counts against the
// cap together with a Node holder, status() shows it, and its one-line release wakes a Node
// waiter by NOTIFY, long before the waiter's next poll.
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PgSemaphore } from '../../src/index.js';
import { heldOf, nsOf, within } from '../helpers/core.js';
import { databaseUrl, setupSchema, waitFor } from '../helpers/db.js';

/** A SQL block of docs/SQL.md (marked `<!-- sql:NAME -->`), for the test's schema. */
function docSql(name: string, schema: string): string {
  const doc = readFileSync(new URL('../../docs/SQL.md', import.meta.url), 'utf8');
  const m = new RegExp(`<!-- sql:${name} -->\\s*\`\`\`sql\\n([\\s\\S]*?)\`\`\``).exec(doc);
  if (!m) throw new Error(`docs/SQL.md: no sql block "${name}"`);
  return m[1]!.replace(/\bsemaphore\./g, `"${schema}".`);
}

/** A session that runs SQL text as psql would and returns what it printed. */
interface Session {
  readonly kind: string;
  run(sql: string, until: RegExp): Promise<string>;
  end(): Promise<void>;
}

/** An interactive psql process fed on stdin: the doc's SQL, character for character. */
function psqlSession(bin: string): Session {
  const child: ChildProcessWithoutNullStreams = spawn(bin, ['-X', '-v', 'ON_ERROR_STOP=1', databaseUrl()], { stdio: 'pipe' });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    kind: 'psql',
    async run(sql, until) {
      const from = out.length;
      child.stdin.write(sql.endsWith('\n') ? sql : `${sql}\n`);
      await waitFor(() => until.test(out.slice(from)) || /ERROR/.test(err), { timeout: 10_000, interval: 2, what: `psql to print ${until}` });
      expect(err).not.toMatch(/ERROR/);
      return out.slice(from);
    },
    async end() {
      child.stdin.end();
      expect(await within(exited, 10_000, 'psql to exit')).toBe(0);
    },
  };
}

/** The same strings over a plain pg client (simple protocol; psql's `\;` joins two statements into one string). */
async function clientSession(): Promise<Session> {
  const client = new pg.Client({ connectionString: databaseUrl() });
  await client.connect();
  return {
    kind: 'pg client',
    async run(sql) {
      const results = await client.query(sql.replaceAll('\\;', ';'));
      return (Array.isArray(results) ? results : [results]).map((r: pg.QueryResult) => JSON.stringify(r.rows)).join('\n');
    },
    end: () => client.end(),
  };
}

function findPsql(): string | undefined {
  for (const bin of ['psql', '/usr/lib/postgresql/15/bin/psql']) {
    if (spawnSync(bin, ['--version']).status === 0) return bin;
  }
  return undefined;
}

let ctx: Awaited<ReturnType<typeof setupSchema>>;
beforeAll(async () => {
  ctx = await setupSchema('sqlproto');
});
afterAll(async () => {
  await ctx?.drop();
});

describe('docs/SQL.md: a psql holder next to Node holders', () => {
  it('counts against the cap, shows in status(), and its one-line release wakes a Node waiter by NOTIFY', async () => {
    await ctx.sem.make('openai', 2);
    const psql = findPsql();
    const session = psql ? psqlSession(psql) : await clientSession();
    console.log(`running docs/SQL.md through ${session.kind}`);

    // A waiter on a pool of its own, whose checkouts we can see: one per try (plus the LISTEN
    // connection, which it keeps). Its fallback poll may grow to 10 minutes.
    const pool = new pg.Pool({ connectionString: databaseUrl(), max: 4 });
    pool.on('error', () => undefined);
    const notified: number[] = [];
    // other test files share the database and the channel: count only this schema's NOTIFYs
    const ns = await nsOf(ctx.admin, ctx.schema);
    pool.on('connect', (client) =>
      client.on('notification', (n) => n.channel === 'pg_semaphore' && (n.payload ?? '').startsWith(`${ns}:`) && notified.push(Date.now())),
    );
    const returned: number[] = [];
    pool.on('release', () => returned.push(Date.now()));
    const waiter = new PgSemaphore({ connection: pool, schema: ctx.schema, maxPollInterval: 600_000 });
    const node = await ctx.sem.hold('openai', { label: 'node' });
    try {
      expect(node.tickets).toEqual([{ name: 'openai', ticket: 1 }]);

      // BEGIN; acquire(...) from the doc: psql gets the other ticket, labelled
      const took = await session.run(docSql('take', ctx.schema), /\(1 row\)|"status"/);
      expect(took).toMatch(/\bok\b/);
      // psql prints ` ok     | {2}     | ...`; the pg client fallback prints the rows as JSON
      const ticket = Number((/\bok\s*\|\s*\{(\d+)\}/.exec(took) ?? /"tickets":\[(\d+)\]/.exec(took))?.[1]);
      expect(ticket).toBe(2);
      const status = await ctx.sem.status('openai');
      expect(status.held).toBe(2);
      expect(status.holders.map((h) => [h.ticket, h.label])).toEqual([
        [1, 'node'],
        [2, 'psql:nightly-report'],
      ]);
      // the cap is full: psql's ticket counts like a Node holder's
      expect(await ctx.sem.tryHold('openai')).toBeNull();

      // The waiter fails 8 tries; after the 8th its next poll is at least 800 ms away
      // (backoff from 25 ms, doubling, jittered down by at most half).
      const got: { at?: number } = {};
      const waiting = waiter.hold('openai', { wait: 30_000, label: 'waiter' }).then((h) => ((got.at = Date.now()), h));
      await waitFor(() => returned.length >= 8, { timeout: 10_000, interval: 2, what: 'the waiter to fail 8 tries' });
      const lastTry = returned.at(-1)!;
      expect(got.at).toBeUndefined();
      expect(await heldOf(ctx.sem, 'openai')).toBe(2);

      // COMMIT \; SELECT wake_names(...) from the doc: one string, one round trip
      const released = Date.now();
      const woke = await session.run(docSql('release', ctx.schema), /\(1 row\)|wake_names/);
      const hold = await within(waiting, 5_000, 'the waiter to get the ticket');
      try {
        // wake_names saw the waiter and sent one NOTIFY, which reached the waiter's LISTEN connection
        expect(woke).toMatch(/(^|\n)\s*1\s*\n|"wake_names":1/);
        expect(notified.filter((t) => t >= released)).not.toHaveLength(0);
        // prompt, and sooner than any poll could have come
        const latency = got.at! - released;
        const note = notified.find((t) => t >= released)!;
        console.log(`released from ${session.kind} -> NOTIFY at the waiter ${note - released} ms -> waiter holds the ticket ${got.at! - note} ms later (${latency} ms in all)`);
        expect(latency).toBeLessThan(300);
        expect(got.at! - lastTry).toBeLessThan(800);
        expect(hold.tickets).toEqual([{ name: 'openai', ticket: 2 }]);
        expect((await ctx.sem.status('openai')).holders.map((h) => [h.ticket, h.label])).toEqual([
          [1, 'node'],
          [2, 'waiter'],
        ]);
      } finally {
        await hold.release();
      }
    } finally {
      await node.release();
      await session.end();
      await waiter.close();
      await pool.end();
    }
  });
});
