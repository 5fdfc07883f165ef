import { describe, expect, it } from 'vitest';
import { localRoom, WorkerSlots } from '../../src/bullmq/fair-share.js';

// How many jobs of one semaphore set may wait inside a worker process, without any server.

describe('localRoom: the fair share of worker slots', () => {
  it('shares the slots but one among the active semaphore sets', () => {
    expect(localRoom({ concurrency: 16, activeSets: 1, holding: 0 })).toBe(15);
    expect(localRoom({ concurrency: 16, activeSets: 3, holding: 0 })).toBe(5);
    expect(localRoom({ concurrency: 50, activeSets: 4, holding: 0 })).toBe(12);
  });

  it('counts the slots a set fills with holds against its share', () => {
    expect(localRoom({ concurrency: 16, activeSets: 1, holding: 5 })).toBe(10);
    expect(localRoom({ concurrency: 16, activeSets: 3, holding: 2 })).toBe(3);
  });

  it('keeps at least one waiter per hold, plus one, so a hold can always be handed on', () => {
    expect(localRoom({ concurrency: 16, activeSets: 3, holding: 4 })).toBe(5);
    expect(localRoom({ concurrency: 1, activeSets: 1, holding: 0 })).toBe(1);
    expect(localRoom({ concurrency: 8, activeSets: 20, holding: 0 })).toBe(1);
  });

  it('is maxLocalWaiters when that option is set', () => {
    expect(localRoom({ concurrency: 16, activeSets: 3, holding: 4, maxLocalWaiters: 0 })).toBe(0);
    expect(localRoom({ concurrency: 16, activeSets: 1, holding: 0, maxLocalWaiters: 2 })).toBe(2);
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
