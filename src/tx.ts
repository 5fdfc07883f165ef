/**
 * The type of a hold's `tx` (the holding transaction as a Drizzle database), kept out of the
 * main entry's declarations: drizzle-orm's own declarations do not type-check without
 * `skipLibCheck` (about 70 errors in its mysql, sqlite, singlestore and gel modules), so a
 * main entry that imported them would break every program that does not skip lib checks.
 *
 * `pg-semaphore/drizzle` fills {@link HoldTxTypes} in by declaration merging, which turns
 * {@link HoldTx} into Drizzle's `NodePgDatabase`. A program that imports that subpath anywhere
 * (`import type {} from 'pg-semaphore/drizzle'` is enough) sees the full Drizzle type; one that
 * does not sees {@link TxWithoutDrizzleTypes}.
 */

/**
 * Filled in by `pg-semaphore/drizzle` with `{ tx: NodePgDatabase }` (declaration merging).
 * Empty in a program that does not import that subpath.
 */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type -- filled in by declaration merging
export interface HoldTxTypes {}

/**
 * A hold's `tx` as the main entry alone types it: only `execute`. At run time it is always a
 * Drizzle `NodePgDatabase`; add `import type {} from 'pg-semaphore/drizzle'` once in your
 * program to type it so.
 */
export interface TxWithoutDrizzleTypes {
  /** Runs a statement (a Drizzle `sql` template or a string) inside the holding transaction. */
  execute(query: unknown): Promise<unknown>;
}

/**
 * The holding transaction as a Drizzle database: `NodePgDatabase` from
 * `drizzle-orm/node-postgres` once `pg-semaphore/drizzle` is imported anywhere in the program,
 * else {@link TxWithoutDrizzleTypes}.
 *
 * @example
 * ```ts
 * import type {} from 'pg-semaphore/drizzle'; // types ctx.tx as Drizzle's NodePgDatabase
 * await sem.withTickets('export', async ({ tx }) => {
 *   await tx.insert(exportLog).values({ at: new Date() }); // commits with the release
 * });
 * ```
 */
export type HoldTx = HoldTxTypes extends { tx: infer T } ? T : TxWithoutDrizzleTypes;
