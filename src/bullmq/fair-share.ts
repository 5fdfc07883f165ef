/**
 * The fair share of a worker's slots: how many jobs of one semaphore set may wait inside
 * this process. Waiting keeps a BullMQ slot busy, so the slots are shared among the
 * semaphore sets the process is serving, and one slot stays free so jobs of semaphore sets
 * not seen yet still get fetched (without it, a tenant with a backlog fills every slot and a
 * light tenant's job is never even fetched). Unit-tested in `test/unit/fair-share.test.ts`.
 * @internal
 */

/** What the share of one semaphore set depends on. @internal */
export interface ShareInput {
  /** The worker slots of this process serving the limited processor (sum of `concurrency`). */
  concurrency: number;
  /** Semaphore sets active in this process (holding or with waiters), counting the one asking. */
  activeSets: number;
  /** Holds the asking set has in this process right now. */
  holding: number;
  /** The `maxLocalWaiters` option; when given it is the answer. */
  maxLocalWaiters?: number;
}

/**
 * How many jobs of one semaphore set may wait in this process: the slots but one, shared
 * evenly among the active sets, minus those the set already fills with holds; but always at
 * least one waiter per hold it has, plus one (so a hold can always be handed on).
 * @internal
 */
export function localRoom({ concurrency, activeSets, holding, maxLocalWaiters }: ShareInput): number {
  if (maxLocalWaiters !== undefined) return maxLocalWaiters;
  const share = Math.floor((concurrency - 1) / Math.max(1, activeSets)) - holding;
  return Math.max(holding + 1, share);
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
