import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setupSchema } from '../helpers/db.js';

let ctx: Awaited<ReturnType<typeof setupSchema>>;
beforeAll(async () => {
  ctx = await setupSchema('basics');
});
afterAll(async () => {
  await ctx?.drop();
});

describe('make, list, status, destroy', () => {
  it('creates, lists and destroys a semaphore', async () => {
    await ctx.sem.make('api', 3);
    expect((await ctx.sem.list()).map(({ name, tickets, held }) => ({ name, tickets, held }))).toEqual([{ name: 'api', tickets: 3, held: 0 }]);
    const hold = await ctx.sem.hold('api', { label: 'job-7' });
    const status = await ctx.sem.status('api');
    expect(status.held).toBe(1);
    expect(status.holders[0]).toMatchObject({ label: 'job-7', ticket: 1 });
    expect(status.holders[0]!.pid).toBeGreaterThan(0);
    await hold.release();
    expect((await ctx.sem.status('api')).held).toBe(0);
    expect(await ctx.sem.destroy('api')).toBe(true);
    expect(await ctx.sem.destroy('api')).toBe(false);
  });
});
