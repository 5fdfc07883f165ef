// Fifty callers waiting at once in one process: no MaxListenersExceededWarning (no listener
// per waiter on a shared signal, neither the instance's close signal nor a caller's signal),
// and every one is served in turn.
import { getEventListeners } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupSchema, waitFor } from '../helpers/db.js';
import { heldOf, within } from '../helpers/core.js';
import type { PgSemaphore } from '../../src/index.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
let waiter: PgSemaphore;
const warnings: Error[] = [];
const onWarning = (w: Error) => void warnings.push(w);
beforeAll(async () => {
  ctx = await setupSchema('many');
  await ctx.sem.make('one', 1);
  waiter = ctx.another({ maxPollInterval: 200 });
  process.on('warning', onWarning);
});
afterAll(async () => {
  process.off('warning', onWarning);
  await waiter?.close();
  await ctx?.drop();
});

describe('50 waiters in one process', () => {
  it('emit no warning, add no lasting listener to a shared signal, and are all served one at a time', async () => {
    const N = 50;
    const shared = new AbortController(); // one caller signal for every wait, as a shutdown signal would be
    const blocker = await ctx.sem.hold('one');
    let inside = 0;
    let most = 0;
    const start = waiter.roundTrips;
    const runs = Array.from({ length: N }, (_, i) =>
      waiter.withTickets(
        'one',
        async () => {
          most = Math.max(most, ++inside);
          await new Promise((resolve) => setImmediate(resolve));
          inside--;
          return i;
        },
        { wait: { timeout: 60_000, signal: shared.signal } },
      ),
    );
    for (const run of runs) run.catch(() => undefined); // a failed test leaves no unhandled rejection behind
    // each waiter fails two tries (2 round trips each: the acquire and its rollback; before and after registering for wake-ups) before it first sleeps
    await waitFor(() => waiter.roundTrips - start >= N * 4, { timeout: 30_000, interval: 10, what: 'the 50 waiters to be waiting' });
    // one listener for all fifty waits of this instance (its AbortFanout), none per waiter
    expect(getEventListeners(shared.signal, 'abort').length).toBeLessThanOrEqual(1);
    await blocker.release();
    const served = await within(Promise.all(runs), 60_000, 'all 50 waiters to be served');
    expect(served.sort((a, b) => a - b)).toEqual(Array.from({ length: N }, (_, i) => i));
    expect(most).toBe(1);
    expect(await heldOf(ctx.sem, 'one')).toBe(0);
    expect(getEventListeners(shared.signal, 'abort')).toHaveLength(0);
    // process 'warning' is emitted on the next tick after the listener that triggers it
    await new Promise((resolve) => setImmediate(resolve));
    expect(warnings.map((w) => `${w.name}: ${w.message}`)).toEqual([]);
  }, 120_000);
});
