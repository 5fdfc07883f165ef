// Which Postgres the benchmark uses: its own (default; see postgres.ts) or DATABASE_URL.
import { BQ_DB, OWN_SETTINGS, SEM_DB, canStartOwn, startOwnPostgres, type OwnPostgres } from './postgres.js';
import type { PgTarget } from './pgstats.js';

export interface ResolvedTarget {
  target: PgTarget;
  own: OwnPostgres | undefined;
}

/**
 * `--pg=own` forces a server of our own, `--pg=url` the DATABASE_URL one (default
 * postgres://postgres@127.0.0.1:5432/test). Without `--pg`: DATABASE_URL when it is set,
 * else our own server (or, without Postgres binaries, the default URL).
 */
export async function resolveTarget(choice: string | undefined, log: (s: string) => void): Promise<ResolvedTarget> {
  const envUrl = process.env.DATABASE_URL;
  const useOwn = choice === 'own' || (choice === undefined && !envUrl && canStartOwn());
  if (!useOwn) {
    const url = envUrl ?? 'postgres://postgres@127.0.0.1:5432/test';
    return {
      target: { mode: 'external', adminUrl: url, semUrl: url, bqUrl: url, description: `DATABASE_URL server ${redact(url)} (shared with whoever else uses it)` },
      own: undefined,
    };
  }
  const own = await startOwnPostgres(log);
  const settings = Object.entries(OWN_SETTINGS)
    .filter(([k]) => k !== 'listen_addresses')
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
  return {
    target: {
      mode: 'own',
      adminUrl: own.url('postgres'),
      semUrl: own.url(SEM_DB),
      bqUrl: own.url(BQ_DB),
      semDb: SEM_DB,
      bqDb: BQ_DB,
      postmasterPid: own.pid,
      description: `the benchmark's own Postgres (initdb in a temp folder, 127.0.0.1:${own.port}, ${settings}; fsync off: a throwaway server, commits are not flushed to disk)`,
    },
    own,
  };
}

function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparsable URL)';
  }
}
