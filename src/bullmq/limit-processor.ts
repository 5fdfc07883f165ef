import { EventEmitter } from 'node:events';
import { DelayedError, Job, PostgresQueueBackend } from 'bullmq';
import type { Meter } from '@opentelemetry/api';
import { InvalidArgumentError } from '../errors/invalid-argument-error.js';
import type { Hold } from '../hold.js';
import type { PgSemaphore } from '../pg-semaphore.js';
import { normalizeRequest, type NormalizedRequest, type TicketRequest } from '../request.js';
import { MAX_TICKETS, validateInt } from '../validate.js';
import { LimiterMetrics } from './metrics.js';
import { RescheduleBudgetError } from './reschedule-budget-error.js';
import { raceLoss } from '../race-loss.js';

/** What a limited processor receives as its fourth argument. */
export interface LimitedContext {
  /** The held ticket ids. */
  readonly tickets: readonly number[];
  /**
   * The transaction holding the tickets, as a Drizzle database (opt-in: touching it makes
   * the release commit your statements, or roll them back if the processor throws).
   */
  readonly tx: Hold['tx'];
}

/**
 * A BullMQ processor that runs while holding tickets. Same shape as BullMQ's own
 * `(job, token, signal)`, so an existing processor can be wrapped as it is, plus an
 * optional fourth argument with the holding transaction.
 */
export type LimitedProcessorFn<D = unknown, R = unknown, N extends string = string> = (
  job: Job<D, R, N>,
  token: string | undefined,
  signal: AbortSignal,
  ctx: LimitedContext,
) => Promise<R> | R;

/** Options of {@link limitProcessor}. */
export interface LimitOptions<D = unknown, R = unknown, N extends string = string> {
  /**
   * Which semaphore(s) each job needs: a name, `{ name, tickets }`, a list of those taken
   * together, or a function of the job returning any of those (per-tenant caps, or "the
   * API's cap AND this tenant's cap" taken atomically).
   * @example `semaphore: (job) => ['openai', `tenant:${job.data.tenantId}`]`
   */
  semaphore: TicketRequest | ((job: Job<D, R, N>) => TicketRequest);
  /**
   * Tickets per job (weight) for every semaphore named by a plain string.
   * @default 1
   */
  tickets?: number;
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
   * How many jobs per semaphore set may wait inside one worker process. By default the
   * worker's slots but one are shared fairly among the semaphore sets it is serving (the
   * spare slot lets other semaphores' jobs in, at the price of fetching backlog jobs only to
   * put them back), and each set keeps at least one waiter per hold it has, plus one.
   * @default fair share of the worker's concurrency
   */
  maxLocalWaiters?: number;
  /**
   * A holding transaction is handed from job to job at most this many times before it is
   * committed, so other processes get a turn.
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
  /** Fail the job with a {@link RescheduleBudgetError} once it was put back this many times. @default unlimited */
  maxReschedules?: number;
  /** Fail the job with a {@link RescheduleBudgetError} once it has waited this long (ms since it was added). @default unlimited */
  maxWaitTime?: number;
  /** The holder label `status()` shows. @default `${queueName}:${jobId}` */
  label?: (job: Job<D, R, N>) => string;
  /** An OpenTelemetry meter for the metrics. @default metrics.getMeter('pg-semaphore') */
  meter?: Meter;
}

/** Events a limited processor emits (on `processor.events`). */
export interface LimiterEventMap {
  /** A job got its tickets; `handoff` when they came straight from the previous job. */
  acquired: [{ job: Job; names: readonly string[]; tickets: readonly number[]; waitedMs: number; handoff: boolean }];
  /** A job was put back to wait, with the delay chosen. */
  rescheduled: [{ job: Job; names: readonly string[]; delay: number; reschedules: number }];
  /** A job gave its tickets back (or handed them on), after holding them `heldMs`. */
  released: [{ job: Job; names: readonly string[]; heldMs: number; handedOff: boolean }];
  /** A job's tickets were lost while it ran. */
  ticketLost: [{ job: Job; names: readonly string[]; error: unknown }];
}

/** Counters of one limited processor, for tests and the benchmark. */
export interface LimiterStats {
  /** Acquire calls made (each a round trip that tried to take tickets). */
  attempts: number;
  /** Of those, how many found no ticket. */
  busy: number;
  /** Jobs that got tickets handed over from a finished job (no acquire call). */
  handoffs: number;
  /** Jobs put back with moveToDelayed. */
  reschedules: number;
  /** Put-back jobs promoted when tickets came free. */
  promotions: number;
  /** Jobs that ran while holding tickets. */
  ran: number;
}

/** A processor for `new Worker(...)`, with its events and counters. */
export type LimitedProcessor<D = unknown, R = unknown, N extends string = string> = ((
  job: Job<D, R, N>,
  token: string | undefined,
  signal: AbortSignal | undefined,
) => Promise<R>) & {
  events: EventEmitter<LimiterEventMap>;
  stats: LimiterStats;
};

interface Waiter {
  handed: Hold | undefined;
  trying: boolean;
  wake: (() => void) | undefined;
  kicked: boolean;
}

interface Gate {
  key: string;
  req: NormalizedRequest;
  waiters: Waiter[];
  /** Holds of this process on this gate right now. */
  holding: number;
  /** Jobs of this process using this gate (from arrival until they are done with it). */
  jobs: number;
  /** Acquire calls in flight from jobs that just arrived. */
  arriving: number;
  /** The last acquire call found no ticket (cleared by the next success). */
  saturated: boolean;
  meanHoldMs: number;
  unwatch: Promise<() => Promise<void>> | undefined;
}

interface HoldState {
  handoffs: number;
}

/**
 * Wraps a BullMQ processor so every job runs holding tickets of a Postgres semaphore, and
 * jobs that find none are put back with a delay (`moveToDelayed` + `DelayedError`) without
 * using an attempt. Works with BullMQ on Redis and on its Postgres backend.
 *
 * Never set `maxStartedAttempts` on a worker using this: every put-back counts as a start.
 *
 * @example
 * ```ts
 * import { Worker } from 'bullmq';
 * import { PgSemaphore } from 'pg-semaphore';
 * import { limitProcessor } from 'pg-semaphore/bullmq';
 *
 * const sem = new PgSemaphore({ connection: process.env.DATABASE_URL });
 * const processor = limitProcessor(sem, async (job, token, signal) => callTheApi(job.data, { signal }), {
 *   semaphore: 'openai',
 * });
 * new Worker('calls', processor, { connection, concurrency: 50 });
 * ```
 */
export function limitProcessor<D = unknown, R = unknown, N extends string = string>(
  sem: PgSemaphore,
  processor: LimitedProcessorFn<D, R, N>,
  options: LimitOptions<D, R, N>,
): LimitedProcessor<D, R, N> {
  if (typeof processor !== 'function') throw new InvalidArgumentError('processor', 'a function (job, token, signal, ctx)', processor);
  if (options === null || typeof options !== 'object') throw new InvalidArgumentError('options', 'an object with semaphore', options);
  const weight = validateInt(options.tickets ?? 1, 'tickets', 1, MAX_TICKETS);
  const createWith = options.createWith === undefined ? undefined : validateInt(options.createWith, 'createWith', 1, MAX_TICKETS);
  const wakeOnRelease = options.wakeOnRelease ?? true;
  const localWait = validateInt(options.localWait ?? 5_000, 'localWait', 0, 600_000);
  const maxLocalWaiters = options.maxLocalWaiters === undefined ? undefined : validateInt(options.maxLocalWaiters, 'maxLocalWaiters', 0, 100_000);
  const maxHandoffs = validateInt(options.maxHandoffs ?? 32, 'maxHandoffs', 0, 1_000_000);
  const minDelay = validateInt(options.backoff?.delay ?? 200, 'backoff.delay', 1, 3_600_000);
  const maxDelay = validateInt(options.backoff?.maxDelay ?? 10_000, 'backoff.maxDelay', minDelay, 86_400_000);
  const maxReschedules = options.maxReschedules === undefined ? undefined : validateInt(options.maxReschedules, 'maxReschedules', 0, 1e9);
  const maxWaitTime = options.maxWaitTime === undefined ? undefined : validateInt(options.maxWaitTime, 'maxWaitTime', 0, 2 ** 31 - 1);
  const fixed = typeof options.semaphore === 'function' ? undefined : normalizeRequest(withWeight(options.semaphore, weight));

  const metrics = new LimiterMetrics(options.meter);
  const events = new EventEmitter<LimiterEventMap>();
  const stats: LimiterStats = { attempts: 0, busy: 0, handoffs: 0, reschedules: 0, promotions: 0, ran: 0 };
  const gates = new Map<string, Gate>();
  /** Set when the last acquire call could not reach Postgres; cleared by the next success. */
  let unavailable = false;
  const holdState = new WeakMap<Hold, HoldState>();
  /** Queue handles this process has seen, by qualified name, for promotions. */
  const queues = new Map<string, unknown>();
  /** The workers (queue handles) this processor serves in this process. */
  const workers = new Set<object>();

  const requestOf = (job: Job<D, R, N>): NormalizedRequest => {
    if (fixed) return fixed;
    const fn = options.semaphore as (job: Job<D, R, N>) => TicketRequest;
    return normalizeRequest(withWeight(fn(job), weight), 'semaphore(job)');
  };

  const gateOf = (req: NormalizedRequest): Gate => {
    const key = JSON.stringify([req.names, req.counts]);
    let gate = gates.get(key);
    if (!gate) {
      gate = { key, req, waiters: [], holding: 0, jobs: 0, arriving: 0, saturated: false, meanHoldMs: 0, unwatch: undefined };
      gates.set(key, gate);
    }
    return gate;
  };

  const dropGateIfIdle = (gate: Gate) => {
    if (gate.jobs === 0 && gate.waiters.length === 0 && gate.holding === 0 && !gate.unwatch) gates.delete(gate.key);
  };

  const kick = (gate: Gate) => {
    const head = gate.waiters.find((w) => !w.trying);
    if (head) {
      head.kicked = true;
      head.wake?.();
    }
  };

  const startWatching = (gate: Gate) => {
    if (gate.unwatch) return;
    gate.unwatch = sem.watch(gate.req.names, () => kick(gate)).catch(() => async () => undefined);
  };

  const stopWatching = async (gate: Gate) => {
    const pending = gate.unwatch;
    if (!pending || gate.waiters.length > 0) return;
    gate.unwatch = undefined;
    const unwatch = await pending;
    await unwatch();
    dropGateIfIdle(gate);
  };

  /**
   * How many jobs of this gate may wait in this process. The worker's slots but one are
   * shared fairly among the semaphore sets this process is serving right now (the spare slot
   * lets jobs of other semaphores in), and every gate keeps at least one waiter per hold it
   * has, plus one.
   */
  const localRoom = (gate: Gate): number => {
    if (maxLocalWaiters !== undefined) return maxLocalWaiters;
    let concurrency = 0;
    for (const handle of workers) concurrency += Number((handle as { concurrency?: unknown }).concurrency) || 1;
    let active = 0;
    for (const g of gates.values()) if (g === gate || g.holding > 0 || g.waiters.length > 0) active++;
    // one slot stays free for semaphore sets not seen yet, so their jobs still get in
    const share = Math.floor((concurrency - 1) / active) - gate.holding;
    return Math.max(gate.holding + 1, share);
  };

  const tryAcquire = async (gate: Gate, label: string): Promise<Hold | null> => {
    stats.attempts++;
    const hold = await sem.tryHold(
      gate.req.names.map((name, i) => ({ name, tickets: gate.req.counts[i] === 0 ? ('all' as const) : gate.req.counts[i]! })),
      { createWith, label },
    );
    unavailable = false;
    gate.saturated = !hold;
    metrics.attempts.add(1, { result: hold ? 'acquired' : 'busy' });
    if (!hold) stats.busy++;
    return hold;
  };

  /**
   * An acquire call; when Postgres cannot be reached it counts as "no ticket", so the job
   * is put back (and retried later) instead of failing and using an attempt.
   */
  const tryOrBackOff = async (gate: Gate, label: string): Promise<Hold | null> => {
    try {
      return await tryAcquire(gate, label);
    } catch (err) {
      if (!isUnavailable(err)) throw err;
      unavailable = true;
      return null;
    }
  };

  /** Waits in process for a hand-off or a free ticket; null when the wait budget ran out. */
  const waitLocally = async (gate: Gate, label: string, signal: AbortSignal | undefined, budgetMs: number): Promise<Hold | null> => {
    const me: Waiter = { handed: undefined, trying: false, wake: undefined, kicked: false };
    gate.waiters.push(me);
    startWatching(gate);
    const deadline = Date.now() + budgetMs;
    let polls = 0;
    try {
      for (;;) {
        if (me.handed) return me.handed;
        if (signal?.aborted) throw signal.reason;
        const now = Date.now();
        if (now >= deadline) return null;
        const isHead = gate.waiters.find((w) => !w.trying) === me;
        if (isHead && (me.kicked || polls > 0)) {
          me.kicked = false;
          me.trying = true;
          let hold: Hold | null;
          try {
            hold = await tryOrBackOff(gate, label);
          } finally {
            me.trying = false;
          }
          if (hold) {
            // more tickets may be free: let the next waiter try too
            queueMicrotask(() => kick(gate));
            if (me.handed) {
              // A hand-off raced our own acquire: keep one, give the other back.
              void hold.release().catch(() => undefined);
            }
            return me.handed ?? hold;
          }
        }
        // Wake-ups come from local releases and NOTIFY; the head's poll is only the fallback
        // for a lost one, so it starts slow.
        const pause = isHead ? Math.min(2_000, 250 * 2 ** Math.min(polls, 10)) * (0.5 + Math.random() / 2) : deadline - now;
        polls++;
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            signal?.removeEventListener('abort', done);
            me.wake = undefined;
            resolve();
          };
          const timer = setTimeout(done, Math.max(1, Math.min(pause, deadline - now)));
          me.wake = done;
          signal?.addEventListener('abort', done, { once: true });
          if (me.handed || me.kicked) done();
        });
      }
    } finally {
      const i = gate.waiters.indexOf(me);
      if (i >= 0) gate.waiters.splice(i, 1);
      if (gate.waiters.length === 0) void stopWatching(gate);
    }
  };

  const reschedule = async (job: Job<D, R, N>, token: string | undefined, gate: Gate, reschedules: number): Promise<never> => {
    const waitedMs = Date.now() - job.timestamp;
    if (maxReschedules !== undefined && reschedules >= maxReschedules) {
      throw new RescheduleBudgetError(
        `expected a ticket of ${gate.req.names.map((n) => JSON.stringify(n)).join(', ')} within ${maxReschedules} reschedules, got none after ${reschedules} (waited ${waitedMs} ms)`,
        reschedules,
        waitedMs,
      );
    }
    let delay = Math.min(maxDelay, minDelay * 2 ** Math.min(reschedules, 20));
    // Record the job for promotion, except on BullMQ's Postgres backend, where nothing
    // promotes (see promoteWaiting): that would be a round trip for nothing.
    if (wakeOnRelease && job.id !== undefined && !unavailable && !isPostgresBackend(job)) {
      const { ahead, capacity } = await sem.enqueueJob(gate.req.names, queueKey(job), job.id);
      if (capacity > 0 && gate.meanHoldMs > 0) {
        // When this job's turn should come, if promotion does not bring it back first.
        delay = Math.max(minDelay, Math.min(maxDelay, ((ahead + 1) / capacity) * gate.meanHoldMs * 1.5));
      }
    }
    // Postgres unreachable, or no promotion on this backend (see promoteWaiting): come back
    // soon (jittered) rather than after a long estimated or doubling delay
    if (unavailable || isPostgresBackend(job)) delay = Math.min(delay, 1_000);
    delay = Math.round(delay * (0.75 + Math.random() / 2));
    if (maxWaitTime !== undefined) delay = Math.max(1, Math.min(delay, job.timestamp + maxWaitTime - Date.now()));
    await job.moveToDelayed(Date.now() + delay, token);
    stats.reschedules++;
    metrics.reschedules.add(1, LimiterMetrics.attrs(gate.req.names, job.queueName));
    events.emit('rescheduled', { job: job as Job, names: gate.req.names, delay, reschedules: reschedules + 1 });
    throw new DelayedError();
  };

  const promoteWaiting = async (hold: Hold) => {
    // Only queues whose backend can promote safely (see below): dequeuing others would
    // forget their jobs for nothing.
    const known = [...queues].filter(([, handle]) => !isPostgresHandle(handle)).map(([key]) => key);
    if (known.length === 0) return;
    const jobs = await sem.dequeueJobs(hold.semaphoreIds, known, Math.max(1, hold.tickets.length));
    for (const { queue, jobId } of jobs) {
      const handle = queues.get(queue);
      if (!handle) continue;
      // BullMQ 6.7's Postgres backend promotes without re-checking the job's state under a
      // lock: racing its own due-time promotion, it can send an active job back to wait and
      // run it twice (seen in the benchmark). Such queues are filtered out above; there,
      // put-back jobs come back by their delay.
      try {
        const waiting = await Job.fromId(handle as never, jobId);
        if (waiting && (await waiting.isDelayed())) {
          await waiting.promote();
          stats.promotions++;
        }
      } catch {
        // already moved on (running, done or removed): its own backoff covers it
      }
    }
  };

  /** After a job: hand the hold to a local waiter, or release it (and wake others). */
  const finish = async (gate: Gate, hold: Hold, ok: boolean, txUsed: boolean) => {
    gate.holding--;
    const state = holdState.get(hold) ?? { handoffs: 0 };
    const next = wakeOnRelease && !txUsed && !hold.lost && hold.tickets.length > 0 && state.handoffs < maxHandoffs
      ? gate.waiters.find((w) => !w.trying && !w.handed)
      : undefined;
    if (next) {
      state.handoffs++;
      holdState.set(hold, state);
      gate.holding++;
      next.handed = hold;
      const i = gate.waiters.indexOf(next);
      if (i >= 0) gate.waiters.splice(i, 1);
      next.wake?.();
      return true;
    }
    const { jobsWaiting } = await hold.release({ commit: ok || !txUsed });
    if (!wakeOnRelease) return false;
    if (gate.waiters.length > 0) kick(gate);
    else if (jobsWaiting) await promoteWaiting(hold).catch(() => undefined);
    return false;
  };

  const limited = async (job: Job<D, R, N>, token: string | undefined, signal: AbortSignal | undefined): Promise<R> => {
    const gate = gateOf(requestOf(job));
    gate.jobs++;
    try {
      return await runJob(gate, job, token, signal);
    } finally {
      gate.jobs--;
      dropGateIfIdle(gate);
    }
  };

  const runJob = async (gate: Gate, job: Job<D, R, N>, token: string | undefined, signal: AbortSignal | undefined): Promise<R> => {
    const req = gate.req;
    const qk = queueKey(job);
    const handle = (job as unknown as { queue: unknown }).queue;
    if (!queues.has(qk)) queues.set(qk, handle);
    if (handle && typeof handle === 'object') workers.add(handle);
    const label = options.label ? options.label(job) : `${job.queueName}:${job.id}`;
    const reschedules = Math.max(0, (job.attemptsStarted ?? 1) - (job.attemptsMade ?? 0) - 1);
    const waitedMs = Date.now() - job.timestamp;
    if (maxWaitTime !== undefined && waitedMs >= maxWaitTime) {
      throw new RescheduleBudgetError(
        `expected a ticket of ${req.names.map((n) => JSON.stringify(n)).join(', ')} within ${maxWaitTime} ms, got none after ${waitedMs} ms (${reschedules} reschedules)`,
        reschedules,
        waitedMs,
      );
    }

    let hold: Hold | null = null;
    let handoff = false;
    // While tickets are plentiful, arriving jobs acquire at once and in parallel. Once an
    // acquire found none, arriving jobs queue behind the waiters instead, and only one
    // acquire call per semaphore set is in flight at a time (no stampede on Postgres).
    if (!wakeOnRelease || (gate.waiters.length === 0 && (!gate.saturated || gate.arriving === 0))) {
      gate.arriving++;
      try {
        hold = await tryOrBackOff(gate, label);
      } finally {
        gate.arriving--;
      }
      if (hold && wakeOnRelease) kick(gate);
    }
    if (!hold && wakeOnRelease && localWait > 0 && !unavailable) {
      if (gate.waiters.length < localRoom(gate)) {
        hold = await waitLocally(gate, label, signal, localWait);
        if (hold && holdState.has(hold)) {
          handoff = true;
          stats.handoffs++;
          metrics.attempts.add(1, { result: 'handoff' });
          // queued on the idle holding connection; the ticket stays held meanwhile
          void hold.relabel(label);
        }
      }
    }
    if (!hold) return reschedule(job, token, gate, reschedules);
    if (!handoff) gate.holding++;
    if (!holdState.has(hold)) holdState.set(hold, { handoffs: 0 });
    if (reschedules > 0 && wakeOnRelease && job.id !== undefined && !isPostgresBackend(job)) void sem.forgetJob(qk, job.id).catch(() => undefined);

    const started = Date.now();
    const attrs = LimiterMetrics.attrs(req.names, job.queueName);
    metrics.held.add(hold.tickets.length, attrs);
    metrics.waitTime.record((started - job.timestamp) / 1000, attrs);
    events.emit('acquired', { job: job as Job, names: req.names, tickets: hold.tickets, waitedMs: started - job.timestamp, handoff });
    stats.ran++;

    let txUsed = false;
    const held = hold;
    const ctx: LimitedContext = {
      tickets: held.tickets,
      get tx() {
        txUsed = true;
        return held.tx;
      },
    };
    const combined = signal ? anySignal(signal, held.signal) : { signal: held.signal, dispose: () => undefined };
    let ok = false;
    let handedOff = false;
    try {
      const result = await raceLoss(held.signal, Promise.resolve().then(() => processor(job, token, combined.signal, ctx)));
      ok = true;
      return result;
    } catch (err) {
      if (held.lost) events.emit('ticketLost', { job: job as Job, names: req.names, error: held.signal.reason });
      throw err;
    } finally {
      combined.dispose();
      const heldMs = Date.now() - started;
      gate.meanHoldMs = gate.meanHoldMs === 0 ? heldMs : gate.meanHoldMs * 0.9 + heldMs * 0.1;
      metrics.held.add(-held.tickets.length, attrs);
      metrics.holdTime.record(heldMs / 1000, attrs);
      try {
        handedOff = await finish(gate, held, ok, txUsed);
      } finally {
        events.emit('released', { job: job as Job, names: req.names, heldMs, handedOff });
      }
    }
  };

  // BullMQ passes the AbortSignal only to processors declared with three parameters.
  const wrapped = ((job: Job<D, R, N>, token: string | undefined, signal: AbortSignal | undefined) =>
    limited(job, token, signal)) as LimitedProcessor<D, R, N>;
  wrapped.events = events;
  wrapped.stats = stats;
  return wrapped;
}

/** One signal that aborts when either does; `dispose` detaches it (a long-lived hold signal must not collect listeners). */
function anySignal(a: AbortSignal, b: AbortSignal): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  if (a.aborted || b.aborted) {
    controller.abort(a.aborted ? a.reason : b.reason);
    return { signal: controller.signal, dispose: () => undefined };
  }
  const onA = () => controller.abort(a.reason);
  const onB = () => controller.abort(b.reason);
  a.addEventListener('abort', onA, { once: true });
  b.addEventListener('abort', onB, { once: true });
  return {
    signal: controller.signal,
    dispose: () => {
      a.removeEventListener('abort', onA);
      b.removeEventListener('abort', onB);
    },
  };
}

/** Gives every semaphore named by a plain string `weight` tickets. */
function withWeight(request: TicketRequest, weight: number): TicketRequest {
  if (weight === 1) return request;
  const apply = (item: unknown) => (typeof item === 'string' ? { name: item, tickets: weight } : item);
  return (Array.isArray(request) ? request.map(apply) : apply(request)) as TicketRequest;
}

function isPostgresHandle(handle: unknown): boolean {
  return (handle as { backend?: unknown } | undefined)?.backend instanceof PostgresQueueBackend;
}

function isPostgresBackend(job: Job): boolean {
  return isPostgresHandle((job as unknown as { queue?: unknown }).queue);
}

/** Errors that mean "Postgres cannot be reached right now", not "this request is wrong". */
function isUnavailable(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | undefined;
  const code = typeof e?.code === 'string' ? e.code : '';
  if (/^(08|57P|53)/.test(code)) return true;
  if (['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH'].includes(code)) return true;
  const message = typeof e?.message === 'string' ? e.message : '';
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(message);
}

function queueKey(job: Job): string {
  return job.queueQualifiedName ?? job.queueName;
}
