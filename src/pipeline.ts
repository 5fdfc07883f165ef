import pg from 'pg';
import type { PoolClient, QueryResult } from 'pg';
import type { Statement } from './statements.js';

/** The parts of node-postgres's connection a pipeline writes to. */
interface Wire {
  /** node-postgres's record of the named statements prepared on this connection (name to text). */
  parsedStatements?: Record<string, string>;
  stream: { cork?: () => void; uncork?: () => void };
  parse(msg: { text: string; name?: string; types?: number[] }): void;
  bind(msg: { portal?: string; statement?: string; values?: unknown[]; valueMapper?: (v: unknown) => unknown }): void;
  describe(msg: { type: 'P' | 'S'; name?: string }): void;
  execute(msg: { portal?: string; rows?: number }): void;
  close(msg: { type: 'P' | 'S'; name?: string }): void;
  sync(): void;
}

interface PgInternals {
  Result: new (rowMode?: string, types?: unknown) => QueryResult & {
    addFields(fields: unknown[]): void;
    parseRow(fields: unknown[]): Record<string, unknown>;
    addRow(row: Record<string, unknown>): void;
    addCommandComplete(msg: unknown): void;
  };
  utils: { prepareValue(value: unknown): unknown };
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
    typeof internals.Result === 'function' &&
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
 * A statement with a `name` is prepared under it the first time this connection runs it (a
 * Close of the name first, then Parse) and only bound afterwards: Postgres then parses and
 * plans it once per connection. A statement that returns no rows (`noRows`) gets no Describe,
 * and a batch that ends its transaction (`COMMIT` last) no portal Close: messages nobody
 * reads, each a little work on both sides of every round trip.
 *
 * node-postgres answers a query only after its ReadyForQuery, which a batch has just one of,
 * so this is a "submittable" (the interface pg-cursor uses): it writes the messages itself and
 * collects the replies. Check {@link canPipeline} first.
 * @internal
 */
export function pipeline(client: PoolClient, statements: readonly Statement[]): Promise<QueryResult[]> {
  const { Result, utils } = internals as PgInternals;
  return new Promise((resolve, reject) => {
    const results: QueryResult[] = [];
    let current: InstanceType<PgInternals['Result']> | undefined;
    let failed: Error | undefined;
    const next = () => {
      current ??= new Result(undefined, (client as unknown as { _types?: unknown })._types);
      return current;
    };
    /** node-postgres's own record of the statements prepared on this connection (it checks it too). */
    let prepared: Record<string, string> | undefined;
    /** Named statements this batch prepares: recorded once it went through. */
    const preparing: Statement[] = [];
    const submittable = {
      submit(connection: Wire) {
        prepared = connection.parsedStatements;
        connection.stream.cork?.();
        try {
          for (const s of statements) {
            const name = s.name !== undefined && prepared ? s.name : undefined;
            if (name !== undefined && prepared![name] !== s.text) {
              // not known to be prepared here: a batch that failed may have prepared it or
              // not, and closing a statement that does not exist is no error
              connection.close({ type: 'S', name });
              connection.parse({ text: s.text, name, types: [] });
              preparing.push(s);
            } else if (name === undefined) {
              connection.parse({ text: s.text, types: [] });
            }
            connection.bind({ statement: name, values: s.values ?? [], valueMapper: utils.prepareValue });
            if (!s.noRows) connection.describe({ type: 'P', name: '' });
            connection.execute({ portal: '', rows: 0 });
          }
          if (!statements[statements.length - 1]?.endsTransaction) connection.close({ type: 'P', name: '' });
          connection.sync();
        } finally {
          connection.stream.uncork?.();
        }
        return null;
      },
      handleRowDescription(msg: { fields: unknown[] }) {
        next().addFields(msg.fields);
      },
      handleDataRow(msg: { fields: unknown[] }) {
        const result = next();
        result.addRow(result.parseRow(msg.fields));
      },
      handleCommandComplete(msg: unknown) {
        const result = next();
        result.addCommandComplete(msg);
        results.push(result);
        current = undefined;
      },
      handleEmptyQuery() {
        results.push(next());
        current = undefined;
      },
      handleError(err: Error) {
        // node-postgres forgets the query on an error; the ReadyForQuery that follows finds none
        failed ??= err;
        reject(err);
      },
      handleReadyForQuery() {
        if (failed) return;
        for (const s of preparing) prepared![s.name!] = s.text;
        resolve(results);
      },
      handlePortalSuspended() {},
      handleCopyInResponse() {},
      handleCopyData() {},
    };
    (client.query as unknown as (q: unknown) => unknown)(submittable);
  });
}
