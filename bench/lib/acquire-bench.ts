// The acquire microbenchmark (issue 11, target 5): one client doing acquire-and-release
// cycles back to back on a quiet server, against a bare advisory-lock cycle.
//
//   bare 3 RT      BEGIN; SELECT pg_try_advisory_xact_lock($1, $2); COMMIT   (3 messages)
//   bare 1 msg     the same as one simple-query message
//   library        PgSemaphore.hold(name) / hold.release() on a pool of its own (max 1)
//   raw SQL        BEGIN; SELECT * FROM <schema>.acquire('{x}','{1}',NULL,30000); COMMIT on one connection
//
// each on an empty 5-ticket semaphore and on a 10,000-ticket one with 9,900 tickets held by
// other connections (open transactions that took 990 tickets each). Cases are interleaved in
// rounds so drifting load on a shared machine hits them alike; each case's figure is its
// median round.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { PgSemaphore } from '../../src/index.js';

export interface AcquireCase {
  id: string;
  title: string;
  cycles: number;
  /** Median over rounds. */
  msPerCycle: number;
  cyclesPerSec: number;
  /** ms per cycle of every round. */
  rounds: number[];
  /** Round trips per cycle (sem.roundTrips for the library; messages sent otherwise). */
  roundTripsPerCycle: number;
  /** Top-level statements Postgres ran per cycle (pg_stat_statements; null where it is not loaded). */
  statementsPerCycle: number | null;
}

export interface AcquireResult {
  date: string;
  settings: { roundMs: number; rounds: number; held: number; capacity: number; holders: number };
  cases: AcquireCase[];
  /** library / bare 3 RT (target <= 1.3), raw SQL / bare 3 RT, and the full/empty ratios (target <= 1.5). */
  ratios: { libraryOverBare: number; rawOverBare: number; libraryFullOverEmpty: number; rawFullOverEmpty: number };
  totalSeconds: number;
}

const BIG = 10_000;
const HELD = 9_900;
const HOLDERS = 10;

export async function runAcquireBench(opts: {
  /** A database on a server the benchmark owns (or DATABASE_URL). */
  url: string;
  roundMs?: number;
  rounds?: number;
  log?: (s: string) => void;
}): Promise<AcquireResult> {
  const roundMs = opts.roundMs ?? 1_000;
  const rounds = opts.rounds ?? 3;
  const log = opts.log ?? (() => undefined);
  const started = Date.now();
  const schema = `pgsem_acq_${randomBytes(3).toString('hex')}`;
  const admin = new PgSemaphore({ connection: { connectionString: opts.url, max: 2 }, schema, applicationName: 'bench-acquire-admin' });
  const lib = new PgSemaphore({ connection: { connectionString: opts.url, max: 1 }, schema, applicationName: 'bench-acquire-lib' });
  const raw = new pg.Client({ connectionString: opts.url, application_name: 'bench-acquire-raw' });
  const bare = new pg.Client({ connectionString: opts.url, application_name: 'bench-acquire-bare' });
  const stats = new pg.Client({ connectionString: opts.url, application_name: 'bench-acquire-stats' });
  const holders: pg.Client[] = [];
  stats.on('error', () => undefined);
  raw.on('error', () => undefined);
  bare.on('error', () => undefined);
  try {
    await admin.migrate();
    await admin.make('small', 5);
    await admin.make('big', BIG);
    await raw.connect();
    await bare.connect();
    // 9,900 of 10,000 tickets held by other connections, in open transactions
    for (let h = 0; h < HOLDERS; h++) {
      const c = new pg.Client({ connectionString: opts.url, application_name: 'bench-acquire-holder' });
      c.on('error', () => undefined);
      await c.connect();
      holders.push(c);
      await c.query('BEGIN');
      const { rows } = await c.query<{ status: string; tickets: number[] }>(`SELECT * FROM "${schema}".acquire($1::text[], $2::integer[], NULL, NULL)`, [
        ['big'],
        [HELD / HOLDERS],
      ]);
      if (rows[0]?.status !== 'ok') throw new Error(`bench:acquire: a holder could not take ${HELD / HOLDERS} tickets: ${rows[0]?.status}`);
      await c.query('SELECT 1'); // close the portal
    }
    const held = (await admin.status('big')).holders.length;
    if (held !== HELD) throw new Error(`bench:acquire: expected ${HELD} tickets of "big" held, status() shows ${held}`);
    log(`bench:acquire: ${HELD} of ${BIG} tickets held by ${HOLDERS} connections`);

    let n = 0;
    const rawCycle = (name: string) => async () => {
      await raw.query('BEGIN');
      const { rows } = await raw.query<{ status: string }>(`SELECT * FROM "${schema}".acquire('{${name}}','{1}',NULL,30000)`);
      if (rows[0]?.status !== 'ok') throw new Error(`bench:acquire: raw acquire on ${name} said ${rows[0]?.status}`);
      await raw.query('COMMIT');
    };
    const libCycle = (name: string) => async () => {
      const h = await lib.hold(name);
      await h.release();
    };
    const cases: Array<{ id: string; title: string; run: () => Promise<void>; rt: () => number }> = [
      {
        id: 'bare-3rt',
        title: 'bare: BEGIN; SELECT pg_try_advisory_xact_lock(1, n); COMMIT (3 round trips)',
        run: async () => {
          await bare.query('BEGIN');
          await bare.query('SELECT pg_try_advisory_xact_lock($1, $2)', [1, (n = (n + 1) % 1_000_000)]);
          await bare.query('COMMIT');
        },
        rt: () => 3,
      },
      {
        id: 'bare-1msg',
        title: 'bare, one message: BEGIN; SELECT pg_try_advisory_xact_lock(1, n); COMMIT',
        run: async () => {
          n = (n + 1) % 1_000_000;
          await bare.query(`BEGIN; SELECT pg_try_advisory_xact_lock(1, ${n}); COMMIT`);
        },
        rt: () => 1,
      },
      { id: 'lib-empty5', title: 'library hold()/release(), empty 5-ticket semaphore', run: libCycle('small'), rt: () => NaN },
      { id: 'raw-empty5', title: "raw SQL BEGIN; acquire('{small}','{1}',NULL,30000); COMMIT, empty 5-ticket semaphore", run: rawCycle('small'), rt: () => 3 },
      { id: 'lib-full', title: `library hold()/release(), ${HELD} of ${BIG} tickets held`, run: libCycle('big'), rt: () => NaN },
      { id: 'raw-full', title: `raw SQL cycle, ${HELD} of ${BIG} tickets held`, run: rawCycle('big'), rt: () => 3 },
    ];
    // Statements per cycle, from pg_stat_statements where it is loaded (reset before each case's
    // round, read after it, outside the timed loop; the reading statements themselves are left out by their text).
    await stats.connect();
    const haveStats = await stats.query('SELECT pg_stat_statements_reset()').then(
      () => true,
      () => false,
    );
    const statementCalls = async () =>
      Number(
        (
          await stats.query<{ n: string }>(
            `SELECT coalesce(sum(calls), 0)::text AS n FROM pg_stat_statements WHERE toplevel AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND query NOT LIKE '%pg_stat_statements%'`,
          )
        ).rows[0]!.n,
      );
    const statementsOf = new Map<string, number>(cases.map((c) => [c.id, 0]));
    const perRound = new Map<string, number[]>(cases.map((c) => [c.id, []]));
    const cycles = new Map<string, number>(cases.map((c) => [c.id, 0]));
    const libRt = new Map<string, { rt: number; cycles: number }>();
    // warm-up: plans, the pool's connection, caches
    for (const c of cases) {
      const until = Date.now() + 200;
      while (Date.now() < until) await c.run();
    }
    for (let r = 0; r < rounds; r++) {
      for (const c of cases) {
        if (haveStats) await stats.query('SELECT pg_stat_statements_reset()');
        const rt0 = lib.roundTrips;
        let k = 0;
        const t0 = performance.now();
        const until = t0 + roundMs;
        while (performance.now() < until) {
          await c.run();
          k++;
        }
        const ms = performance.now() - t0;
        // the library's release may still be sending its last statement: let it land
        await new Promise((r) => setTimeout(r, 20));
        if (haveStats) statementsOf.set(c.id, statementsOf.get(c.id)! + (await statementCalls()));
        perRound.get(c.id)!.push(ms / k);
        cycles.set(c.id, cycles.get(c.id)! + k);
        if (c.id.startsWith('lib')) {
          const prev = libRt.get(c.id) ?? { rt: 0, cycles: 0 };
          libRt.set(c.id, { rt: prev.rt + lib.roundTrips - rt0, cycles: prev.cycles + k });
        }
      }
    }
    const median = (v: number[]) => {
      const s = [...v].sort((a, b) => a - b);
      return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
    };
    const out: AcquireCase[] = cases.map((c) => {
      const ms = median(perRound.get(c.id)!);
      const lr = libRt.get(c.id);
      return {
        id: c.id,
        title: c.title,
        cycles: cycles.get(c.id)!,
        msPerCycle: ms,
        cyclesPerSec: 1000 / ms,
        rounds: perRound.get(c.id)!,
        roundTripsPerCycle: lr ? lr.rt / lr.cycles : c.rt(),
        statementsPerCycle: haveStats ? statementsOf.get(c.id)! / cycles.get(c.id)! : null,
      };
    });
    const ms = (id: string) => out.find((c) => c.id === id)!.msPerCycle;
    return {
      date: new Date().toISOString(),
      settings: { roundMs, rounds, held: HELD, capacity: BIG, holders: HOLDERS },
      cases: out,
      ratios: {
        libraryOverBare: ms('lib-empty5') / ms('bare-3rt'),
        rawOverBare: ms('raw-empty5') / ms('bare-3rt'),
        libraryFullOverEmpty: ms('lib-full') / ms('lib-empty5'),
        rawFullOverEmpty: ms('raw-full') / ms('raw-empty5'),
      },
      totalSeconds: (Date.now() - started) / 1000,
    };
  } finally {
    for (const c of holders) await c.end().catch(() => undefined);
    await stats.end().catch(() => undefined);
    await raw.end().catch(() => undefined);
    await bare.end().catch(() => undefined);
    await lib.close().catch(() => undefined);
    await admin.close().catch(() => undefined);
    const drop = new pg.Client({ connectionString: opts.url });
    drop.on('error', () => undefined);
    await drop
      .connect()
      .then(() => drop.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`))
      .catch(() => undefined);
    await drop.end().catch(() => undefined);
  }
}

/** Markdown of one microbenchmark run. */
export function acquireMarkdown(r: AcquireResult, header: string[]): string {
  const md = ['# pg-semaphore acquire microbenchmark', '', ...header.map((h) => `- ${h}`), ''];
  md.push(
    '| case | cycles/s | ms/cycle (median round) | rounds ms/cycle | round trips/cycle (counted) | statements/cycle (pg_stat_statements) |',
    '| --- | ---: | ---: | --- | ---: | ---: |',
  );
  for (const c of r.cases) {
    md.push(
      `| ${c.title} | ${c.cyclesPerSec.toFixed(0)} | ${c.msPerCycle.toFixed(3)} | ${c.rounds.map((x) => x.toFixed(3)).join(' ')} | ${Number.isFinite(c.roundTripsPerCycle) ? c.roundTripsPerCycle.toFixed(2) : '—'} | ${c.statementsPerCycle === null ? '—' : c.statementsPerCycle.toFixed(2)} |`,
    );
  }
  md.push('', 'Round trips: sem.roundTrips for the library, the messages sent otherwise. Statements: top-level statements Postgres ran per cycle (a message with three statements counts three).');
  md.push('', ...acquireLines(r).map((l) => `- ${l}`), '');
  return md.join('\n');
}

/** The ratios and their targets, in words. */
export function acquireLines(r: AcquireResult): string[] {
  const v = (x: number, target: number) => `${x.toFixed(2)}x (target <= ${target}x: ${x <= target ? 'PASS' : 'MISS'})`;
  return [
    `library cycle / bare 3-round-trip cycle: ${v(r.ratios.libraryOverBare, 1.3)}; raw SQL acquire cycle / bare: ${r.ratios.rawOverBare.toFixed(2)}x`,
    `${r.settings.held} of ${r.settings.capacity} tickets held / empty 5-ticket semaphore: library ${v(r.ratios.libraryFullOverEmpty, 1.5)}; raw SQL ${r.ratios.rawFullOverEmpty.toFixed(2)}x`,
  ];
}
