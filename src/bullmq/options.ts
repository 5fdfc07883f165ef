import type { Job } from 'bullmq';
import type { Meter } from '@opentelemetry/api';
import { InvalidArgumentError } from '../errors/invalid-argument-error.js';
import type { TicketRequest } from '../request.js';
import { MAX_TICKETS, validateInt } from '../validate.js';

/** Options of `limitProcessor`. */
export interface LimitOptions<D = unknown, R = unknown, N extends string = string> {
  /**
   * Which semaphore(s) each job needs: a name, `{ name, tickets }`, a list of those taken
   * together, or a function of the job returning any of those (per-tenant caps, or "the
   * API's cap AND this tenant's cap" taken atomically). A job's weight on one semaphore of
   * several goes here: `{ name, tickets }` inside the list.
   * @example `semaphore: (job) => ['openai', `tenant:${job.data.tenantId}`]`
   * @example `semaphore: (job) => [{ name: 'openai', tickets: job.data.cost }, `tenant:${job.data.tenantId}`]`
   */
  semaphore: TicketRequest | ((job: Job<D, R, N>) => TicketRequest);
  /**
   * Tickets per job (its weight), or a function of the job returning them, for a
   * `semaphore` that names ONE semaphore (an item with its own `tickets` keeps them). When
   * the request names several, give each its weight inside it instead (e.g.
   * `[{ name: 'openai', tickets: 2 }, 'tenant:a']`): a weight meant for the API's cap rarely
   * belongs on the tenant's too, so `tickets` with several semaphores is an
   * `InvalidArgumentError` (at once for a fixed request, on the job for a function).
   * @default 1
   * @example `{ semaphore: 'openai', tickets: (job) => job.data.cost }`
   */
  tickets?: number | ((job: Job<D, R, N>) => number);
  /** Create semaphores that do not exist yet with this capacity (per-key caps). */
  createWith?: number;
  /**
   * Hand freed tickets to waiting jobs: a finished job passes its still-open holding
   * transaction to the next job of this process waiting for the same semaphores, a
   * release wakes waiting processes, and put-back jobs are promoted oldest first. Turn it
   * off to get plain put-back-with-backoff (the benchmark's baseline).
   * @default true
   */
  wakeOnRelease?: boolean;
  /**
   * How long a job may wait inside its worker for a ticket before it is put back
   * (`moveToDelayed`), in ms. Waiting in process keeps a BullMQ slot busy, so only a few
   * jobs per semaphore do it (see `maxLocalWaiters`).
   * @default 5_000
   */
  localWait?: number;
  /**
   * How many jobs per semaphore set may wait inside one worker process. By default: with a
   * fixed `semaphore` (and `tickets`), every slot of the worker may wait, so a saturated
   * worker never fetches a job only to put it back. With a function, the worker's slots but
   * one are shared fairly among the groups of semaphore sets it is serving (sets sharing a
   * semaphore, such as `['api', 'tenant:1']` and `['api', 'tenant:2']`, form one group); the
   * spare slot lets other semaphores' jobs in, and is lent to a job whose expected wait here
   * is no longer than `backoff.delay`. Each set keeps at least one waiter per hold it has,
   * plus one.
   * @default fair share of the worker's concurrency
   */
  maxLocalWaiters?: number;
  /**
   * A holding transaction is handed from job to job at most this many times (and for at most
   * 250 ms after it was acquired; 1 s for jobs of ~30 ms or less kept for the next job with
   * `linger` while the last try saw a free ticket and a release within the last 250 ms saw
   * nobody waiting) before it is committed, so other processes get a turn.
   * @default 32
   */
  maxHandoffs?: number;
  /**
   * Delay bounds when a job is put back, in ms. The delay is estimated from the jobs
   * waiting ahead and the mean hold time, jittered, and kept within these bounds;
   * without an estimate it doubles from `delay` per reschedule.
   * @default { delay: 200, maxDelay: 10_000 }
   */
  backoff?: { delay?: number; maxDelay?: number };
  /** Fail the job with a `RescheduleBudgetError` once it was put back this many times. @default unlimited */
  maxReschedules?: number;
  /** Fail the job with a `RescheduleBudgetError` once it has waited this long (ms since it was added). @default unlimited */
  maxWaitTime?: number;
  /** The holder label `status()` shows. @default `${queueName}:${jobId}` */
  label?: (job: Job<D, R, N>) => string;
  /**
   * A job handed a hold by the job before it (transaction holding) shows in `status()` under
   * its own `label` once it has run this long, in ms; a job that ends sooner never relabels
   * the holder (it shows the label of the last job of the chain that did, or that acquired
   * the hold). Relabelling is one round trip on the holding connection per hand-off: at once
   * (`0`), nearly one per job at saturation.
   * @default 50
   */
  relabelAfter?: number;
  /**
   * How long, in ms, a hold stays with this worker after its job when no job here waits for
   * it, for the next job of the same semaphores that arrives: BullMQ hands a slot its next
   * job a moment after the last one ended, and that job then takes the hold as a hand-off,
   * without a round trip, instead of a release and a new acquire (two). Only while tickets
   * are plentiful: never when a try here found none, when another job of this worker waits
   * on one of the semaphores, or when the last release found another process waiting (until
   * a release finds none again), and within `maxHandoffs` and the chain's time limit like
   * any hand-off. A job whose try was in flight when the hold was kept and comes back without a
   * ticket takes a hold kept meanwhile, if one is left. A hold nobody takes is released when
   * the time is up, or as soon as its worker starts closing (`worker.close()`; a job that ends while its worker is closing or
   * paused releases at once). `0` releases at once; at most 1,000: nothing cuts a kept hold
   * short when another process starts waiting for it.
   * @default with a fixed `semaphore` (and `tickets`), 20 ms at first, then 1.5 x the 90th
   *   percentile of how long the slot's next job took to come (the last 16 times, once there
   *   are 8; a time over 100 ms counts as 20), between 20 and 100 ms, so a process that starts
   *   waiting may wait that long for a kept hold: on a busy 2-core machine BullMQ's next job
   *   often came after 5 ms (uncontended A/B: 0.55-0.59 acquire calls per job with 5, 0.18-0.23 with 20,
   *   30 % more jobs/s), and on BullMQ's Postgres backend later still (one uncontended run under
   *   load: p50 10 ms, p90 32 ms, 22 % after more than 20 ms). 0 when either is a function of the
   *   job, where the next job is mostly of another set (per-key caps: measured 17 % fewer jobs/s
   *   with 5, the holds idling for jobs of other tenants). A number you give is used as it is.
   */
  linger?: number;
  /** An OpenTelemetry meter for the metrics. @default metrics.getMeter('pg-semaphore') */
  meter?: Meter;
}

/** {@link LimitOptions} checked, with their defaults. @internal */
export interface ResolvedOptions {
  createWith: number | undefined;
  wakeOnRelease: boolean;
  localWait: number;
  maxLocalWaiters: number | undefined;
  maxHandoffs: number;
  minDelay: number;
  maxDelay: number;
  maxReschedules: number | undefined;
  maxWaitTime: number | undefined;
  relabelAfter: number;
  /** Undefined: the default, which depends on whether the request is fixed. */
  linger: number | undefined;
}

/** `linger` when not given, with a fixed `semaphore` (and `tickets`): where it starts. @internal */
export const DEFAULT_LINGER_MS = 20;
/** ... and the most it grows to while BullMQ's next jobs come late (see `LingerClock`). @internal */
export const DEFAULT_LINGER_MAX_MS = 100;

/**
 * Checks the options other than `semaphore` and `tickets` (see `job-request.ts`).
 * @throws InvalidArgumentError naming the option, what was expected and what came in.
 * @internal
 */
export function resolveOptions(options: unknown): ResolvedOptions {
  if (options === null || typeof options !== 'object') throw new InvalidArgumentError('options', 'an object with semaphore', options);
  const o = options as LimitOptions;
  const optional = (value: unknown, name: string, min: number, max: number) => (value === undefined ? undefined : validateInt(value, name, min, max));
  const minDelay = validateInt(o.backoff?.delay ?? 200, 'backoff.delay', 1, 3_600_000);
  return {
    createWith: optional(o.createWith, 'createWith', 1, MAX_TICKETS),
    wakeOnRelease: o.wakeOnRelease ?? true,
    localWait: validateInt(o.localWait ?? 5_000, 'localWait', 0, 600_000),
    maxLocalWaiters: optional(o.maxLocalWaiters, 'maxLocalWaiters', 0, 100_000),
    maxHandoffs: validateInt(o.maxHandoffs ?? 32, 'maxHandoffs', 0, 1_000_000),
    minDelay,
    maxDelay: validateInt(o.backoff?.maxDelay ?? 10_000, 'backoff.maxDelay', minDelay, 86_400_000),
    maxReschedules: optional(o.maxReschedules, 'maxReschedules', 0, 1e9),
    maxWaitTime: optional(o.maxWaitTime, 'maxWaitTime', 0, 2 ** 31 - 1),
    relabelAfter: validateInt(o.relabelAfter ?? 50, 'relabelAfter', 0, 2 ** 31 - 1),
    linger: optional(o.linger, 'linger', 0, 1_000),
  };
}
