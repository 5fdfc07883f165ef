import pg from 'pg';
import type { PoolClient } from 'pg';
import type { Statement } from './statements.js';

/** The parts of node-postgres's connection a pipeline writes to. */
interface Wire {
  stream: { cork?: () => void; uncork?: () => void };
  parse(msg: { text: string; name?: string; types?: number[] }): void;
  bind(msg: { portal?: string; statement?: string; values?: unknown[]; valueMapper?: (v: unknown) => unknown }): void;
  describe(msg: { type: 'P' | 'S'; name?: string }): void;
  execute(msg: { portal?: string; rows?: number }): void;
  close(msg: { type: 'P' | 'S'; name?: string }): void;
  sync(): void;
}

interface PgInternals {
  types: { getTypeParser(oid: number, format?: string): (value: string) => unknown };
  utils: { prepareValue(value: unknown): unknown };
}

/** What one statement of a pipeline gave: its rows, each value parsed as node-postgres would (text format). */
export interface PipelineResult {
  rows: Array<Record<string, unknown>>;
}

const internals = pg as unknown as Partial<PgInternals>;

/**
 * Whether statements can be pipelined on this client: node-postgres's JavaScript client
 * (not pg-native), not in its own pipeline mode, and a `pg` that exposes what is used here.
 * @internal
 */
export function canPipeline(client: PoolClient): boolean {
  const c = client as unknown as { connection?: Partial<Wire>; pipeline?: unknown; native?: unknown };
  return (
    typeof c.connection?.parse === 'function' &&
    typeof c.connection.close === 'function' &&
    !c.pipeline &&
    typeof internals.types?.getTypeParser === 'function' &&
    typeof internals.utils?.prepareValue === 'function'
  );
}

/**
 * Runs several statements in ONE round trip: each as Parse/Bind/Describe/Execute of the
 * extended protocol, every value a bind parameter, then a Close of the unnamed portal and a
 * single Sync. One message batch, one answer, no portal left open (so no snapshot stays
 * behind while the transaction sits idle), and, like any extended-protocol batch, it stops
 * at the first error: the statements after it do not run. Statements may open a transaction
 * (`BEGIN`) for the ones after them; behind PgBouncer in transaction mode the batch stays on
 * one server connection.
 *
 * node-postgres answers a query only after its ReadyForQuery, which a batch has just one of,
 * so this is a "submittable" (the interface pg-cursor uses): it writes the messages itself and
 * collects the replies. Check {@link canPipeline} first.
 * @internal
 */
export function pipeline(client: PoolClient, statements: readonly Statement[]): Promise<PipelineResult[]> {
  const { utils } = internals as PgInternals;
  // the client's own type parsers (pg's Client keeps overrides there, falling back to pg.types)
  const types = (client as unknown as { _types?: PgInternals['types'] })._types ?? (internals as PgInternals).types;
  return new Promise((resolve, reject) => {
    const results: PipelineResult[] = [];
    // Rows are built here rather than by node-postgres's Result, whose per-statement set-up
    // (a dictionary-mode template object) showed in CPU profiles of the acquire (issue 11).
    let names: string[] = [];
    let parsers: Array<(value: string) => unknown> = [];
    let rows: Array<Record<string, unknown>> = [];
    const done = () => {
      results.push({ rows });
      rows = [];
      names = [];
      parsers = [];
    };
    const submittable = {
      submit(connection: Wire) {
        connection.stream.cork?.();
        try {
          for (const s of statements) {
            connection.parse({ text: s.text, types: [] });
            connection.bind({ values: s.values ?? [], valueMapper: utils.prepareValue });
            connection.describe({ type: 'P', name: '' });
            connection.execute({ portal: '', rows: 0 });
          }
          connection.close({ type: 'P', name: '' });
          connection.sync();
        } finally {
          connection.stream.uncork?.();
        }
        return null;
      },
      handleRowDescription(msg: { fields: Array<{ name: string; dataTypeID: number }> }) {
        names = msg.fields.map((f) => f.name);
        parsers = msg.fields.map((f) => types.getTypeParser(f.dataTypeID, 'text'));
      },
      handleDataRow(msg: { fields: Array<string | null> }) {
        const row: Record<string, unknown> = {};
        for (let i = 0; i < names.length; i++) {
          const value = msg.fields[i];
          row[names[i]!] = value === null || value === undefined ? null : parsers[i]!(value);
        }
        rows.push(row);
      },
      handleCommandComplete: done,
      handleEmptyQuery: done,
      handleError(err: Error) {
        // node-postgres forgets the query on an error; the ReadyForQuery that follows finds none
        failed ??= err;
        reject(err);
      },
      handleReadyForQuery() {
        if (failed) return;
        resolve(results);
      },
      handlePortalSuspended() {},
      handleCopyInResponse() {},
      handleCopyData() {},
    };
    let failed: Error | undefined;
    (client.query as unknown as (q: unknown) => unknown)(submittable);
  });
}
