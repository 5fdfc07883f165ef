import { describe, expect, it } from 'vitest';
import { LingerClock } from '../../src/bullmq/linger.js';

// How long a hold is kept for the slot's next job, from how long those jobs took to come.
// Every time is given explicitly: no clock runs here.

/** `n` holds kept and taken `gap` ms later. */
const takeAfter = (clock: LingerClock, gap: number, n: number) => {
  for (let i = 0; i < n; i++) clock.taken(1_000, 1_000 + gap);
};

describe('LingerClock', () => {
  it('keeps its base until it has 8 gaps, then 1.5 x their 90th percentile', () => {
    const clock = new LingerClock(20, 100);
    expect(clock.ms).toBe(20);
    takeAfter(clock, 40, 7);
    expect(clock.ms).toBe(20);
    takeAfter(clock, 40, 1);
    expect(clock.ms).toBe(60);
    // the 90th percentile of 16: the 15th smallest; one late job among them does not count
    takeAfter(clock, 30, 7);
    clock.taken(0, 90);
    expect(clock.ms).toBe(60);
  });

  // Where the 90th percentile's place moves: with up to 9 gaps it is the largest, from 10 on the
  // second largest (nearest rank: the ceil(0.9 x n)-th smallest).
  it.each([
    [9, 60],
    [10, 30],
  ])('with %i gaps, one of them late, the percentile is read at its place (%i ms)', (n, ms) => {
    const clock = new LingerClock(20, 100);
    takeAfter(clock, 20, n - 1);
    clock.taken(0, 40);
    expect(clock.ms).toBe(ms);
  });

  it('stays between its base and its most', () => {
    const fast = new LingerClock(20, 100);
    takeAfter(fast, 2, 16);
    expect(fast.ms).toBe(20);
    // 1.5 x 90 is 135: capped
    const slow = new LingerClock(20, 100);
    takeAfter(slow, 90, 16);
    expect(slow.ms).toBe(100);
  });

  it('reads the last 16 gaps only: it comes back down when the next jobs come sooner again', () => {
    const clock = new LingerClock(20, 100);
    takeAfter(clock, 60, 16);
    expect(clock.ms).toBe(90);
    // the 90th percentile's place among 16 is the 15th smallest: still 60 while two of the
    // gaps are 60, 10 once one is
    takeAfter(clock, 10, 14);
    expect(clock.ms).toBe(90);
    takeAfter(clock, 10, 1);
    expect(clock.ms).toBe(20);
  });

  it('a hold that went back unused counts from when it was kept to the next arrival that found none, oldest first', () => {
    const clock = new LingerClock(20, 100);
    // kept at 0, 10, ...: each gone back unused, the next arrival 50 ms after each was kept
    for (let i = 0; i < 8; i++) clock.expired(i * 10);
    for (let i = 0; i < 8; i++) clock.arrived(i * 10 + 50);
    expect(clock.ms).toBe(75);
    // an arrival with nothing gone back unused measures nothing
    clock.arrived(10_000);
    expect(clock.ms).toBe(75);
  });

  // Seven gaps taken, then holds gone back unused and one arrival: its gap decides.
  it.each([
    // from the one kept at 0: 50, making it 75 (from the newer one, 10 would leave it at 20)
    ['from the oldest hold that went back unused', 10, [0, 40], 50, 75],
    // 150 ms: counted as 20, so 60 stays the largest (90); counted as 150 it would be 100
    ['a gap longer than its most as its base: no keeping allowed would have caught it', 60, [0], 150, 90],
  ])('an arrival measures %s', (_what, takenGap, kept, arrivedAt, ms) => {
    const clock = new LingerClock(20, 100);
    takeAfter(clock, takenGap, 7);
    for (const at of kept) clock.expired(at);
    clock.arrived(arrivedAt);
    expect(clock.ms).toBe(ms);
  });

  it('a taken hold drops the unused ones kept before it (their next job has come)', () => {
    const clock = new LingerClock(20, 100);
    takeAfter(clock, 10, 7);
    clock.expired(0);
    clock.taken(10, 15);
    expect(clock.ms).toBe(20);
    // nothing left to measure from: an arrival measuring 60 ms from the one kept at 0 would make it 90
    clock.arrived(60);
    expect(clock.ms).toBe(20);
  });
});
