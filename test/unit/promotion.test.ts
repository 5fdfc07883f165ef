import { describe, expect, it } from 'vitest';
import { Promotion } from '../../src/bullmq/promotion.js';

/** A waiting list whose enqueue fails with `err`. */
function failingList(err: Error) {
  return {
    enqueue: () => Promise.reject(err),
    dequeue: () => Promise.resolve([]),
    forget: () => Promise.resolve(),
  };
}

// A job fetched by a Redis-backed Worker (any handle that is not BullMQ's Postgres backend): its
// put-backs are recorded. A job without a handle (a sandboxed child's) is never recorded.
const job = { id: '1', queueName: 'q', queue: {} };

describe('Promotion.record', () => {
  // Seen in the oracle stress test (test/stress/oracle.test.ts) with the shared server full:
  // the acquire went through, then recording the put-back job found no free connection slot
  // and the job failed (using an attempt) instead of being put back.
  it('puts a job back unrecorded when Postgres cannot take another connection', async () => {
    const full = Object.assign(new Error('sorry, too many clients already'), { code: '53300' });
    const promotion = new Promotion(failingList(full), true, () => undefined);
    await expect(promotion.record(job, ['api'], false)).resolves.toBeUndefined();
  });

  it('still fails on an error that is not about reaching Postgres', async () => {
    const wrong = Object.assign(new Error('invalid parameter value'), { code: '22023' });
    const promotion = new Promotion(failingList(wrong), true, () => undefined);
    await expect(promotion.record(job, ['api'], false)).rejects.toThrow('invalid parameter value');
  });

  it('records nothing for a job without a queue handle (a sandboxed child), whatever the list does', async () => {
    const wrong = Object.assign(new Error('invalid parameter value'), { code: '22023' });
    const promotion = new Promotion(failingList(wrong), true, () => undefined);
    await expect(promotion.record({ id: '1', queueName: 'q' }, ['api'], false)).resolves.toBeUndefined();
  });
});
