/**
 * The fair share of a worker's slots: whether one more job of a semaphore set may wait inside
 * this process. Waiting keeps a BullMQ slot busy, so the slots are shared among the semaphore
 * sets the process is serving. Unit-tested in `test/unit/fair-share.test.ts`.
 *
 * - A processor whose request is fixed serves one set: every slot may wait (no other set's
 *   job could need a free slot), so a saturated worker never fetches a job only to put it
 *   back.
 * - A processor with a request function keeps one slot free so jobs of semaphore sets not
 *   seen yet still get fetched (without it, a tenant with a backlog fills every slot and a
 *   light tenant's job is never even fetched). The rest is shared evenly among the active
 *   groups of sets: sets that share a semaphore (`['api', 'tenant:1']` and
 *   `['api', 'tenant:2']`) form one group, since they wait for the same tickets anyway.
 * - That spare slot is lent to a job of an active group when its expected wait here is no
 *   longer than the shortest put-back: putting it back could not bring it back sooner, and
 *   the slot frees again within that time, so other sets' jobs are held back at most so long.
 * @internal
 */

/** Holds and waiters of this process, for one set or a group of sets. @internal */
export interface Occupancy {
  /** Holds in use by running jobs. */
  holding: number;
  /** Jobs waiting for a hold. */
  waiting: number;
}

/** What the decision for one more waiter depends on. @internal */
export interface ShareInput {
  /** The worker slots of this process serving the limited processor (sum of `concurrency`). */
  concurrency: number;
  /** Every job of the processor asks for the same set (a fixed request): no slot needs to stay free. */
  oneSet: boolean;
  /** Groups of sets active in this process (holding or with waiters), counting the asking set's. */
  activeGroups: number;
  /** The asking set's group (itself and the sets sharing a semaphore with it). */
  group: Occupancy;
  /** The asking set alone. */
  set: Occupancy;
  /** The mean time a job of the set held its tickets here, in ms (0: unknown). */
  meanHoldMs: number;
  /** The shortest put-back delay, in ms (`backoff.delay`). */
  shortestPutBackMs: number;
  /** The `maxLocalWaiters` option; when given it alone decides (per set). */
  maxLocalWaiters?: number;
}

/**
 * Whether one more job of a set may wait in this process:
 * 1. with `maxLocalWaiters`, while the set has fewer waiters than that;
 * 2. always while the set has fewer waiters than holds plus one (a hold can always be handed on);
 * 3. while its group has fewer waiters than its share: the slots (but one, with a request
 *    function) shared evenly among the active groups, minus the group's holds;
 * 4. with a request function, in the spare slot when {@link expectedWaitMs} is known and at
 *    most the shortest put-back.
 * @internal
 */
export function mayWaitHere(input: ShareInput): boolean {
  const { concurrency, oneSet, activeGroups, group, set, maxLocalWaiters } = input;
  if (maxLocalWaiters !== undefined) return set.waiting < maxLocalWaiters;
  if (set.waiting < set.holding + 1) return true;
  const spare = oneSet ? 0 : 1;
  const share = Math.floor((concurrency - spare) / Math.max(1, activeGroups)) - group.holding;
  if (group.waiting < share) return true;
  if (oneSet) return false;
  const wait = expectedWaitMs(group, input.meanHoldMs);
  return wait !== undefined && wait <= input.shortestPutBackMs;
}

/**
 * How long one more waiter of a group should wait here, in ms, if its holds here keep being
 * handed on: `(waiting + 1) x meanHold / holding`. Undefined when the group holds nothing
 * here or no hold time is known (its turn depends on other processes).
 * @internal
 */
export function expectedWaitMs(group: Occupancy, meanHoldMs: number): number | undefined {
  if (group.holding <= 0 || meanHoldMs <= 0) return undefined;
  return ((group.waiting + 1) * meanHoldMs) / group.holding;
}

/**
 * The workers a limited processor serves in this process, for their slot count. A job's
 * `queue` is the Worker that fetched it; a worker seen once counts from then on.
 * @internal
 */
export class WorkerSlots {
  /** Worker handles seen, each counted once. */
  private readonly workers = new Set<object>();

  /** Remembers the worker that fetched a job. */
  add(handle: unknown): void {
    if (handle !== null && typeof handle === 'object') this.workers.add(handle);
  }

  /** The sum of the workers' `concurrency` (a worker without a number counts 1). */
  get concurrency(): number {
    let total = 0;
    for (const handle of this.workers) total += Number((handle as { concurrency?: unknown }).concurrency) || 1;
    return total;
  }
}
