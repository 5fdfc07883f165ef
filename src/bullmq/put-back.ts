import { backoff } from '../timing.js';
import { RescheduleBudgetError } from './reschedule-budget-error.js';

/**
 * The put-back policy: when a job that found no ticket is put back (`moveToDelayed`), how
 * long it stays away, and when it has waited too long and fails instead (the reschedule
 * budget). Pure: no server, no BullMQ; time and randomness come in as arguments, so the
 * rules are unit-tested (`test/unit/put-back.test.ts`).
 * @internal
 */

/** Bounds and budget of the put-back policy (the wrapper's options, checked). @internal */
export interface PutBackOptions {
  /** The shortest delay, and the first one without an estimate, in ms (`backoff.delay`). */
  minDelay: number;
  /** The longest delay, in ms (`backoff.maxDelay`). */
  maxDelay: number;
  /** Fail a job once it was put back this many times; undefined: no limit. */
  maxReschedules?: number;
  /** Fail a job once this long has passed since it was added, in ms; undefined: no limit. */
  maxWaitTime?: number;
}

/** What the delay of one put-back depends on. @internal */
export interface PutBackInput {
  /** How many times the job was put back before. */
  reschedules: number;
  /** When the job was added (`job.timestamp`, ms since the epoch). */
  timestamp: number;
  /**
   * Where the job stands in the waiting list, when it was recorded there: the jobs waiting
   * ahead of it and the smallest capacity among its semaphores. Undefined when it was not
   * recorded (no promotion, Postgres unreachable).
   */
  queued?: { ahead: number; capacity: number };
  /** The mean time a job of this semaphore set held its tickets in this process, in ms (0: unknown). */
  meanHoldMs: number;
  /** The last acquire could not reach Postgres. */
  unavailable: boolean;
  /** The job's BullMQ backend promotes put-back jobs (Redis does, the Postgres backend does not). */
  backendPromotes: boolean;
}

/** Delays never exceed this while Postgres is unreachable or nothing promotes: come back soon. */
export const SHORT_PUT_BACK_MS = 1_000;

/**
 * How many times a job was put back so far. Every put-back starts the job again
 * (`attemptsStarted` grows) without using an attempt (`attemptsMade` does not), so no state
 * of our own is needed.
 * @internal
 */
export function reschedulesOf(job: { attemptsStarted?: number; attemptsMade?: number }): number {
  return Math.max(0, (job.attemptsStarted ?? 1) - (job.attemptsMade ?? 0) - 1);
}

/** The put-back policy of one limited processor. @internal */
export class PutBackPolicy {
  constructor(
    private readonly options: PutBackOptions,
    /** Source of randomness in [0, 1), for tests. */
    private readonly random: () => number = Math.random,
  ) {}

  /** Fails a job that arrives after `maxWaitTime` has passed (throws {@link RescheduleBudgetError}). */
  checkArrival(names: readonly string[], timestamp: number, reschedules: number, now = Date.now()): void {
    const { maxWaitTime } = this.options;
    const waitedMs = now - timestamp;
    if (maxWaitTime !== undefined && waitedMs >= maxWaitTime) {
      throw new RescheduleBudgetError(
        `expected a ticket of ${list(names)} within ${maxWaitTime} ms, got none after ${waitedMs} ms (${reschedules} reschedules)`,
        reschedules,
        waitedMs,
      );
    }
  }

  /** Fails a job that would be put back once more than `maxReschedules` allows (throws {@link RescheduleBudgetError}). */
  checkReschedule(names: readonly string[], timestamp: number, reschedules: number, now = Date.now()): void {
    const { maxReschedules } = this.options;
    if (maxReschedules !== undefined && reschedules >= maxReschedules) {
      const waitedMs = now - timestamp;
      throw new RescheduleBudgetError(
        `expected a ticket of ${list(names)} within ${maxReschedules} reschedules, got none after ${reschedules} (waited ${waitedMs} ms)`,
        reschedules,
        waitedMs,
      );
    }
  }

  /**
   * The delay of one put-back, in ms:
   * 1. without an estimate, it doubles from `minDelay` per reschedule up to `maxDelay`;
   * 2. with one (the job is in the waiting list and a mean hold time is known), it is when
   *    the job's turn should come if promotion does not bring it back first:
   *    `(ahead + 1) / capacity x meanHoldMs x 1.5`, within the bounds;
   * 3. while Postgres is unreachable, or where nothing promotes, at most {@link SHORT_PUT_BACK_MS};
   * 4. jittered by ±25 %, and never past the job's `maxWaitTime` (at least 1 ms).
   */
  /**
   * The delay of a job put back because its worker is stopping: `minDelay` jittered by
   * ±25 %, so the jobs of a worker that stops (a rolling restart) do not all come back at
   * the same moment.
   */
  stoppingDelay(): number {
    return Math.max(1, Math.round(this.options.minDelay * (0.75 + this.random() / 2)));
  }

  delay(input: PutBackInput, now = Date.now()): number {
    const { minDelay, maxDelay, maxWaitTime } = this.options;
    let delay = backoff(Math.min(input.reschedules, 20), { min: minDelay, max: maxDelay, jitter: 0 });
    const { queued } = input;
    if (queued && queued.capacity > 0 && input.meanHoldMs > 0) {
      delay = clamp(((queued.ahead + 1) / queued.capacity) * input.meanHoldMs * 1.5, minDelay, maxDelay);
    }
    if (input.unavailable || !input.backendPromotes) delay = Math.min(delay, SHORT_PUT_BACK_MS);
    delay = Math.round(delay * (0.75 + this.random() / 2));
    if (maxWaitTime !== undefined) delay = Math.max(1, Math.min(delay, input.timestamp + maxWaitTime - now));
    return delay;
  }
}

function clamp(value: number, min: number, max: number): number {
  return Math.max(min, Math.min(max, value));
}

function list(names: readonly string[]): string {
  return names.map((n) => JSON.stringify(n)).join(', ');
}
