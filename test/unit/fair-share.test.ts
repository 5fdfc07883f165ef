import { describe, expect, it } from 'vitest';
import { expectedWaitMs, mayWaitHere, WorkerSlots, type ShareInput } from '../../src/bullmq/fair-share.js';

// Whether one more job of a semaphore set may wait inside a worker process, without any server.

/** A processor with a request function, 16 slots, one active group, nothing held or waiting. */
const input = (over: Partial<ShareInput> = {}): ShareInput => ({
  concurrency: 16,
  oneSet: false,
  activeGroups: 1,
  group: { holding: 0, waiting: 0 },
  set: { holding: 0, waiting: 0 },
  meanHoldMs: 0,
  shortestPutBackMs: 200,
  ...over,
});
/** The most waiters a group may have by its share (no spare-slot loan: hold time unknown). */
const share = (over: Partial<ShareInput>): number => {
  let waiting = 0;
  while (waiting < 1_000 && mayWaitHere(input({ ...over, group: { holding: over.group?.holding ?? 0, waiting }, set: { holding: 0, waiting: waiting + 1 } }))) waiting++;
  return waiting;
};

describe('mayWaitHere: the fair share of worker slots', () => {
  it('with a request function, shares the slots but one among the active groups, minus the group holds', () => {
    expect(share({ activeGroups: 1 })).toBe(15);
    expect(share({ activeGroups: 3 })).toBe(5);
    expect(share({ concurrency: 50, activeGroups: 4 })).toBe(12);
    expect(share({ activeGroups: 1, group: { holding: 5, waiting: 0 } })).toBe(10);
    expect(share({ activeGroups: 3, group: { holding: 2, waiting: 0 } })).toBe(3);
  });

  it('with a fixed request, every slot may wait: no spare slot, so a saturated worker never fetches a job only to put it back', () => {
    const full = (holding: number, waiting: number) => input({ oneSet: true, group: { holding, waiting }, set: { holding, waiting } });
    expect(mayWaitHere(full(1, 14))).toBe(true); // 16 slots: 1 holds, 14 wait, this one is the 16th
    expect(mayWaitHere(full(0, 15))).toBe(true);
    // a function's processor keeps that slot free
    expect(mayWaitHere({ ...full(1, 14), oneSet: false })).toBe(false);
  });

  it('keeps at least one waiter per hold of the set, plus one, so a hold can always be handed on', () => {
    expect(mayWaitHere(input({ activeGroups: 20, group: { holding: 4, waiting: 30 }, set: { holding: 4, waiting: 4 } }))).toBe(true);
    expect(mayWaitHere(input({ activeGroups: 20, group: { holding: 4, waiting: 30 }, set: { holding: 4, waiting: 5 } }))).toBe(false);
    expect(mayWaitHere(input({ concurrency: 1, set: { holding: 0, waiting: 0 } }))).toBe(true);
  });

  it('lends the spare slot when the expected wait here is at most the shortest put-back', () => {
    // 15 slots by share, all taken (2 holds, 13 waiters): the 16th job
    const full = { group: { holding: 2, waiting: 13 }, set: { holding: 2, waiting: 13 } };
    // 14 x 20 ms / 2 holds = 140 ms <= 200 ms: waits here
    expect(mayWaitHere(input({ ...full, meanHoldMs: 20 }))).toBe(true);
    // 14 x 60 ms / 2 = 420 ms: a put-back lets other sets' jobs in meanwhile
    expect(mayWaitHere(input({ ...full, meanHoldMs: 60 }))).toBe(false);
    // hold time unknown, or no hold here (its turn depends on other processes): no loan
    expect(mayWaitHere(input({ ...full, meanHoldMs: 0 }))).toBe(false);
    expect(mayWaitHere(input({ group: { holding: 0, waiting: 15 }, set: { holding: 0, waiting: 15 }, meanHoldMs: 1 }))).toBe(false);
  });

  it('is maxLocalWaiters per set when that option is set', () => {
    expect(mayWaitHere(input({ set: { holding: 4, waiting: 0 }, maxLocalWaiters: 0 }))).toBe(false);
    expect(mayWaitHere(input({ set: { holding: 0, waiting: 1 }, maxLocalWaiters: 2 }))).toBe(true);
    expect(mayWaitHere(input({ set: { holding: 0, waiting: 2 }, maxLocalWaiters: 2, oneSet: true }))).toBe(false);
  });
});

describe('expectedWaitMs', () => {
  it('is (waiting + 1) x mean hold / holds here, unknown without a hold or a hold time', () => {
    expect(expectedWaitMs({ holding: 2, waiting: 3 }, 10)).toBe(20);
    expect(expectedWaitMs({ holding: 0, waiting: 3 }, 10)).toBeUndefined();
    expect(expectedWaitMs({ holding: 1, waiting: 3 }, 0)).toBeUndefined();
  });
});

describe('WorkerSlots', () => {
  it('sums the concurrency of each worker seen once; a worker without a number counts one', () => {
    const slots = new WorkerSlots();
    expect(slots.concurrency).toBe(0);
    const a = { concurrency: 8 };
    slots.add(a);
    slots.add(a);
    slots.add({ concurrency: 4 });
    slots.add({});
    slots.add(undefined);
    expect(slots.concurrency).toBe(13);
    a.concurrency = 10; // BullMQ lets a worker's concurrency change
    expect(slots.concurrency).toBe(15);
  });
});
