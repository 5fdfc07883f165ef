import type { Pool, PoolClient } from 'pg';
import type { Hold } from './hold.js';
import { canPipeline, pipeline } from './pipeline.js';
import * as statements from './statements.js';
import type { AcquireRow, AcquireStatements } from './statements.js';

/** What one try of an acquire gave: the tickets as a {@link Hold}, or the row that says why not. @internal */
export type AttemptResult = { hold: Hold; row: AcquireRow } | { hold: undefined; row: AcquireRow };

/** What {@link attempt} needs from its caller. @internal */
export interface AttemptContext {
  /** Where the connection comes from. */
  pool: Pool;
  /** Counts round trips to Postgres (for the benchmark). */
  roundTrips(n: number): void;
  /**
   * Builds the hold around a connection whose open transaction now holds the tickets;
   * `portalOpen` when the acquire left its unnamed portal (and so a snapshot) open.
   */
  toHold(client: PoolClient, row: AcquireRow, portalOpen: boolean): Hold;
  /**
   * Asked once the acquire has answered: an error to throw instead of returning (the tickets,
   * if any, are given back first), e.g. when the caller gave up while the try was in flight.
   */
  veto?(row: AcquireRow): unknown;
}

/**
 * One try: `BEGIN` and the acquire's statements on a connection of its own, in one round trip
 * (one pipelined extended-protocol batch, see {@link pipeline}; a round trip each where the
 * client cannot pipeline, e.g. pg-native). Statements on one connection inside one
 * transaction, so this also works behind PgBouncer in transaction mode. On success the
 * connection, still in its transaction, goes to the hold; otherwise the transaction is rolled back and the connection goes back to the pool (destroyed when
 * it failed). This is the only owner of the connection until the hold takes it: it attaches
 * the error listener that keeps a dying idle socket from crashing the process, and removes it.
 * @internal
 */
export async function attempt(ctx: AttemptContext, asked: AcquireStatements): Promise<AttemptResult> {
  const client = await ctx.pool.connect();
  const onError = () => undefined;
  client.on('error', onError);
  const giveBack = (err?: Error) => {
    client.removeListener('error', onError);
    client.release(err);
  };
  let row: AcquireRow;
  const pipelined = canPipeline(client);
  const acquire = !pipelined && asked.alone ? asked.alone() : asked;
  try {
    if (pipelined) {
      ctx.roundTrips(1);
      // a prepared acquire comes with a prepared BEGIN (both or neither: behind a transaction
      // pooler the fallback turns both off)
      const begin = acquire.statements[0]!.name === undefined ? statements.BEGIN_STATEMENT : statements.BEGIN_PREPARED;
      const results = await pipeline(client, [begin, ...acquire.statements]);
      row = acquire.row(results.slice(1));
    } else {
      ctx.roundTrips(1 + acquire.statements.length);
      await client.query(statements.BEGIN);
      const results = [];
      for (const s of acquire.statements) results.push(await client.query(s));
      row = acquire.row(results);
    }
  } catch (err) {
    giveBack(err as Error);
    throw err;
  }
  const veto = ctx.veto?.(row);
  if (row.status === 'ok' && veto === undefined) {
    // the hold attaches its own error listener; ours stays until it has
    let hold: Hold;
    try {
      hold = ctx.toHold(client, row, !pipelined);
    } catch (err) {
      giveBack(err as Error); // destroyed: its transaction, and the tickets, end with it
      throw err;
    }
    client.removeListener('error', onError);
    return { hold, row };
  }
  try {
    ctx.roundTrips(1);
    await client.query(statements.ROLLBACK);
    giveBack();
  } catch (err) {
    giveBack(err as Error);
  }
  if (veto !== undefined) throw veto;
  return { hold: undefined, row };
}
