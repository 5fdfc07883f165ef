import { afterEach, describe, expect, it, vi } from 'vitest';
import { PutBackPolicy, reschedulesOf, SHORT_PUT_BACK_MS, type PutBackInput } from '../../src/bullmq/put-back.js';
import { RescheduleBudgetError } from '../../src/bullmq/reschedule-budget-error.js';

// The put-back policy without any server: the delay estimate, its bounds and jitter, and the
// reschedule budget. Time comes from fake timers.

const T0 = Date.UTC(2026, 0, 1);
/** random() = 0.5 makes the ±25 % jitter a factor of exactly 1. */
const policy = (options: Partial<ConstructorParameters<typeof PutBackPolicy>[0]> = {}, random = () => 0.5) =>
  new PutBackPolicy({ minDelay: 200, maxDelay: 10_000, ...options }, random);
const input = (over: Partial<PutBackInput> = {}): PutBackInput => ({
  reschedules: 0,
  timestamp: T0,
  meanHoldMs: 0,
  unavailable: false,
  backendPromotes: true,
  ...over,
});

afterEach(() => {
  vi.useRealTimers();
});

describe('the put-back delay', () => {
  it('without an estimate doubles from minDelay per reschedule, up to maxDelay', () => {
    const p = policy();
    expect([0, 1, 2, 3, 5, 6, 100].map((reschedules) => p.delay(input({ reschedules }), T0))).toEqual([
      200, 400, 800, 1_600, 6_400, 10_000, 10_000,
    ]);
  });

  it('with a place in the waiting list and a mean hold, is when the turn should come: (ahead + 1) / capacity x mean hold x 1.5', () => {
    const p = policy();
    // 9 ahead on 5 tickets of 100 ms: two rounds, 200 ms, x 1.5
    expect(p.delay(input({ reschedules: 4, queued: { ahead: 9, capacity: 5 }, meanHoldMs: 100 }), T0)).toBe(300);
    // kept within the bounds
    expect(p.delay(input({ queued: { ahead: 0, capacity: 50 }, meanHoldMs: 10 }), T0)).toBe(200);
    expect(p.delay(input({ queued: { ahead: 10_000, capacity: 1 }, meanHoldMs: 500 }), T0)).toBe(10_000);
  });

  it('falls back to doubling when the capacity or the mean hold is unknown', () => {
    const p = policy();
    expect(p.delay(input({ reschedules: 2, queued: { ahead: 3, capacity: 0 }, meanHoldMs: 100 }), T0)).toBe(800);
    expect(p.delay(input({ reschedules: 2, queued: { ahead: 3, capacity: 2 }, meanHoldMs: 0 }), T0)).toBe(800);
  });

  it('stays short while Postgres is unreachable and where the backend does not promote', () => {
    const p = policy();
    expect(p.delay(input({ reschedules: 10, unavailable: true }), T0)).toBe(SHORT_PUT_BACK_MS);
    expect(p.delay(input({ reschedules: 10, backendPromotes: false }), T0)).toBe(SHORT_PUT_BACK_MS);
    // shorter delays are kept
    expect(p.delay(input({ reschedules: 1, backendPromotes: false }), T0)).toBe(400);
  });

  it('is jittered by ±25 %', () => {
    expect(policy({}, () => 0).delay(input({ reschedules: 3 }), T0)).toBe(1_200);
    expect(policy({}, () => 0.999_999).delay(input({ reschedules: 3 }), T0)).toBe(2_000);
  });

  it('never runs past maxWaitTime, and is at least 1 ms', () => {
    vi.useFakeTimers();
    vi.setSystemTime(T0 + 9_500);
    const p = policy({ maxWaitTime: 10_000 });
    expect(p.delay(input({ reschedules: 5 }))).toBe(500);
    vi.setSystemTime(T0 + 10_000);
    expect(p.delay(input({ reschedules: 5 }))).toBe(1);
  });
});

describe('the reschedule budget', () => {
  it('counts put-backs from attemptsStarted and attemptsMade', () => {
    expect(reschedulesOf({ attemptsStarted: 1, attemptsMade: 0 })).toBe(0);
    expect(reschedulesOf({ attemptsStarted: 4, attemptsMade: 1 })).toBe(2);
    expect(reschedulesOf({})).toBe(0);
  });

  it('fails a job that arrives once maxWaitTime has passed, not before', () => {
    vi.useFakeTimers();
    const p = policy({ maxWaitTime: 300 });
    vi.setSystemTime(T0 + 299);
    expect(() => p.checkArrival(['api'], T0, 2)).not.toThrow();
    vi.setSystemTime(T0 + 300);
    const err = (() => {
      try {
        p.checkArrival(['api'], T0, 2);
      } catch (e) {
        return e;
      }
    })() as RescheduleBudgetError;
    expect(err).toBeInstanceOf(RescheduleBudgetError);
    expect(err.message).toBe('expected a ticket of "api" within 300 ms, got none after 300 ms (2 reschedules)');
    expect([err.reschedules, err.waitedMs]).toEqual([2, 300]);
  });

  it('fails a job that would be put back more than maxReschedules times', () => {
    vi.useFakeTimers();
    vi.setSystemTime(T0 + 50);
    const p = policy({ maxReschedules: 2 });
    expect(() => p.checkReschedule(['api', 'tenant:a'], T0, 1)).not.toThrow();
    expect(() => p.checkReschedule(['api', 'tenant:a'], T0, 2)).toThrow(
      'expected a ticket of "api", "tenant:a" within 2 reschedules, got none after 2 (waited 50 ms)',
    );
  });

  it('has no limit unless one is set', () => {
    const p = policy();
    expect(() => p.checkArrival(['api'], 0, 1e6, T0)).not.toThrow();
    expect(() => p.checkReschedule(['api'], 0, 1e6, T0)).not.toThrow();
  });
});

describe('PutBackPolicy.stoppingDelay', () => {
  it('is minDelay jittered by ±25 %, so a stopping worker does not send its jobs back in one burst', () => {
    expect(policy({}, () => 0).stoppingDelay()).toBe(150);
    expect(policy({}, () => 0.5).stoppingDelay()).toBe(200);
    expect(policy({}, () => 0.999_999).stoppingDelay()).toBe(250);
    expect(policy({ minDelay: 1 }, () => 0).stoppingDelay()).toBe(1);
  });
});
