// Postgres time and WAL per run, from pg_stat_statements and the WAL position, attributed to
// pg-semaphore or to BullMQ's Postgres backend.
//
// On the benchmark's own server (bench/lib/postgres.ts) each purpose has its own database, so
// a statement's database says whose it is, BEGIN/COMMIT/ROLLBACK/SELECT 1 included; the
// statistics are reset before each run. On a server given by DATABASE_URL nothing is reset
// (others may use it): statistics are read before and after and subtracted, and a statement
// is pg-semaphore's or BullMQ's only if its text names the run's schema, so the bare
// BEGIN/COMMIT/ROLLBACK/SELECT 1 shared by both stay unattributed.
import pg from 'pg';

export type Owner = 'sem' | 'bq' | 'shared' | 'other';

export interface StatementRow {
  owner: Owner;
  /** A short name: the library function called, or the statement text. */
  label: string;
  /** false: run inside a function (pg_stat_statements.track = all); not summed. */
  toplevel: boolean;
  calls: number;
  totalMs: number;
  meanMs: number;
  walBytes: number;
}

export interface Totals {
  calls: number;
  execMs: number;
  walBytes: number;
}

export interface PgRunStats {
  /** How statements were attributed (own databases, or schema names in the text). */
  method: string;
  /** WAL the whole server wrote during the run (pg_current_wal_lsn() before/after). */
  serverWalBytes: number | null;
  /** Top-level statements only (nested ones are inside these). null: no pg_stat_statements. */
  sem: Totals | null;
  bq: Totals | null;
  /** Statements that could belong to either (external server only). */
  shared: Totals | null;
  top: StatementRow[];
}

export interface PgTarget {
  mode: 'own' | 'external';
  /** Where the benchmark's own bookkeeping (sampling, statistics) connects. */
  adminUrl: string;
  /** pg-semaphore's database. */
  semUrl: string;
  /** BullMQ Postgres backend's database. */
  bqUrl: string;
  /** On the own server: the databases' names. */
  semDb?: string;
  bqDb?: string;
  /** Postmaster pid of the own server, to count only its CPU. */
  postmasterPid?: number;
  /** Words for the report. */
  description: string;
}

interface RawRow {
  key: string;
  datname: string;
  toplevel: boolean;
  query: string;
  calls: number;
  total: number;
  wal: number;
}

const SHARED_TEXT = /^\s*(begin|commit|rollback|select \$1|select 1)\s*;?\s*$/i;

export class PgMeter {
  private statements = false;
  private before: Map<string, RawRow> | undefined;
  private lsn: string | undefined;
  private readonly pool: pg.Pool;

  constructor(private readonly target: PgTarget) {
    this.pool = new pg.Pool({ connectionString: target.adminUrl, max: 1, application_name: 'bench-pgstats' });
    this.pool.on('error', () => undefined);
  }

  /** Whether pg_stat_statements can be read; call once. */
  async init(): Promise<{ statements: boolean; why?: string }> {
    try {
      await this.pool.query('SELECT count(*) FROM pg_stat_statements');
      this.statements = true;
      return { statements: true };
    } catch (err) {
      this.statements = false;
      return { statements: false, why: (err as Error).message };
    }
  }

  async begin(): Promise<void> {
    this.before = undefined;
    if (this.statements) {
      if (this.target.mode === 'own') await this.pool.query('SELECT pg_stat_statements_reset()');
      else this.before = await this.read();
    }
    this.lsn = (await this.pool.query<{ l: string }>('SELECT pg_current_wal_lsn()::text AS l')).rows[0]!.l;
  }

  async end(schemas: { sem: string; bq: string }): Promise<PgRunStats> {
    const wal = this.lsn
      ? Number((await this.pool.query<{ d: string }>('SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::text AS d', [this.lsn])).rows[0]!.d)
      : null;
    const method =
      this.target.mode === 'own'
        ? `own server: pg-semaphore in database "${this.target.semDb}", BullMQ's Postgres backend in "${this.target.bqDb}"; statistics reset before the run`
        : this.statements
          ? `DATABASE_URL server: statements whose text names the run's schema; BEGIN/COMMIT/ROLLBACK/SELECT 1 cannot be told apart (shared)`
          : 'DATABASE_URL server without pg_stat_statements: WAL position only';
    if (!this.statements) return { method, serverWalBytes: wal, sem: null, bq: null, shared: null, top: [] };
    const after = await this.read();
    const rows: StatementRow[] = [];
    const totals: Record<Owner, Totals> = {
      sem: { calls: 0, execMs: 0, walBytes: 0 },
      bq: { calls: 0, execMs: 0, walBytes: 0 },
      shared: { calls: 0, execMs: 0, walBytes: 0 },
      other: { calls: 0, execMs: 0, walBytes: 0 },
    };
    for (const r of after.values()) {
      const b = this.before?.get(r.key);
      const calls = r.calls - (b?.calls ?? 0);
      if (calls <= 0) continue;
      const totalMs = r.total - (b?.total ?? 0);
      const walBytes = r.wal - (b?.wal ?? 0);
      const owner = this.ownerOf(r, schemas);
      rows.push({ owner, label: labelOf(r.query, schemas), toplevel: r.toplevel, calls, totalMs, meanMs: totalMs / calls, walBytes });
      if (r.toplevel) {
        totals[owner].calls += calls;
        totals[owner].execMs += totalMs;
        totals[owner].walBytes += walBytes;
      }
    }
    // The table: each owner's heaviest top-level statements, and the heaviest nested ones inside pg-semaphore's functions.
    const pick = (owner: Owner, toplevel: boolean, n: number) =>
      rows
        .filter((r) => r.owner === owner && r.toplevel === toplevel)
        .sort((a, b) => b.totalMs - a.totalMs)
        .slice(0, n);
    const top = [...pick('sem', true, 8), ...pick('sem', false, 4), ...pick('shared', true, 4), ...pick('bq', true, 6)];
    return {
      method,
      serverWalBytes: wal,
      sem: totals.sem,
      bq: totals.bq.calls > 0 ? totals.bq : null,
      shared: this.target.mode === 'external' ? totals.shared : null,
      top,
    };
  }

  async close(): Promise<void> {
    await this.pool.end().catch(() => undefined);
  }

  private ownerOf(r: RawRow, schemas: { sem: string; bq: string }): Owner {
    if (this.target.mode === 'own') {
      if (r.datname === this.target.semDb) return 'sem';
      if (r.datname === this.target.bqDb) return 'bq';
      return 'other';
    }
    if (r.query.includes(schemas.sem)) return 'sem';
    if (r.query.includes(schemas.bq)) return 'bq';
    if (SHARED_TEXT.test(r.query)) return 'shared';
    return 'other';
  }

  private async read(): Promise<Map<string, RawRow>> {
    const { rows } = await this.pool.query<{ userid: string; dbid: string; queryid: string; toplevel: boolean; datname: string; query: string; calls: string; total: number; wal: string }>(
      `SELECT s.userid::text, s.dbid::text, s.queryid::text, s.toplevel, d.datname, s.query, s.calls::text,
              s.total_exec_time AS total, s.wal_bytes::text AS wal
         FROM pg_stat_statements s LEFT JOIN pg_database d ON d.oid = s.dbid`,
    );
    const out = new Map<string, RawRow>();
    for (const r of rows) {
      const key = `${r.userid}/${r.dbid}/${r.queryid}/${r.toplevel}`;
      out.set(key, { key, datname: r.datname, toplevel: r.toplevel, query: r.query, calls: Number(r.calls), total: Number(r.total), wal: Number(r.wal) });
    }
    return out;
  }
}

/** `acquire` for `SELECT * FROM "pgsem_bench_x".acquire($1…)`, else the text, shortened. */
export function labelOf(query: string, schemas: { sem: string; bq: string }): string {
  let q = query.replace(/\s+/g, ' ').trim();
  for (const [s, name] of [
    [schemas.sem, '<sem>'],
    [schemas.bq, '<bq>'],
  ] as const) {
    q = q.split(`"${s}"`).join(name).split(s).join(name);
  }
  // a call of one of the library's functions: SELECT [* | a.* | cols FROM] <sem>.fn(...)
  const fn = /^SELECT (?:[\w.*, ]+ FROM )?<sem>\.(\w+)\([^()]*\)(?: \w+)?$/i.exec(q);
  if (fn) return `${fn[1]}()`;
  return q.length > 90 ? `${q.slice(0, 87)}...` : q;
}
