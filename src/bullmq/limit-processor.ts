import { EventEmitter } from 'node:events';
import { DelayedError, type Job } from 'bullmq';
import { InvalidArgumentError } from '../errors/invalid-argument-error.js';
import type { Hold } from '../hold.js';
import type { HeldTicket } from '../tickets.js';
import type { PgSemaphore } from '../pg-semaphore.js';
import type { NormalizedRequest } from '../request.js';
import { isUnavailable } from '../sqlstate.js';
import { raceLoss } from '../race-loss.js';
import { mayWaitHere, WorkerSlots } from './fair-share.js';
import type { Attempt, Gate } from './gate.js';
import { GateSet } from './gate-set.js';
import { LingerClock } from './linger.js';
import { JobRequests } from './job-request.js';
import { LimiterMetrics } from './metrics.js';
import { DEFAULT_LINGER_MAX_MS, DEFAULT_LINGER_MS, resolveOptions, type LimitOptions } from './options.js';
import { Promotion, queueHandleOf, type QueuedJob } from './promotion.js';
import { PutBackPolicy, reschedulesOf } from './put-back.js';
import { WaitCancelledError } from './wait-cancelled-error.js';
import { WaitingList } from './waiting-list.js';
import { WorkerStop } from './worker-stop.js';

export type { LimitOptions } from './options.js';

/** What a limited processor receives as its fourth argument. */
export interface LimitedContext {
  /** The tickets held, in request order: `{ name, ticket }` (ticket numbers 1..capacity, as `status()` shows them). */
  readonly tickets: readonly HeldTicket[];
  /**
   * The transaction holding the tickets, as a Drizzle database (opt-in: touching it makes
   * the release commit your statements, or roll them back if the processor throws).
   */
  readonly tx: Hold['tx'];
}

/**
 * A BullMQ processor that runs while holding tickets. Same shape as BullMQ's own
 * `(job, token, signal)`, so an existing processor can be wrapped as it is, plus an
 * optional fourth argument with the holding transaction. `signal` aborts on
 * `worker.cancelJob` and, with a `TicketLostError`, when the tickets are lost. When the
 * wrapper is given the signal BullMQ made for the job (it is the Worker's processor, or code
 * around it passes that signal on), `signal` is that one, and a loss aborts it through the
 * worker's per-job AbortController: code around the processor that holds it sees the loss too
 * (tell it from a cancel by its reason). Given any other signal, the processor gets one of its
 * own that aborts on either.
 */
export type LimitedProcessorFn<D = unknown, R = unknown, N extends string = string> = (
  job: Job<D, R, N>,
  token: string | undefined,
  signal: AbortSignal,
  ctx: LimitedContext,
) => Promise<R> | R;

/** Events a limited processor emits (on `processor.events`). */
export interface LimiterEventMap {
  /** A job got its tickets; `handoff` when they came straight from the previous job. */
  acquired: [{ job: Job; names: readonly string[]; tickets: readonly HeldTicket[]; waitedMs: number; handoff: boolean }];
  /** A job was put back to wait, with the delay chosen. */
  rescheduled: [{ job: Job; names: readonly string[]; delay: number; reschedules: number }];
  /**
   * A job gave its tickets back (or handed them on), after holding them `heldMs`. Emitted once
   * the release went through: for a job that did not use `ctx.tx`, and in session holding,
   * that can be after BullMQ completed the job (the job does not wait for its release).
   */
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


/**
 * Wraps a BullMQ processor so every job runs holding tickets of a Postgres semaphore, and
 * jobs that find none are put back with a delay (`moveToDelayed` + `DelayedError`) without
 * using an attempt. Works with BullMQ on Redis and on its Postgres backend.
 *
 * A job's way through (see docs/DESIGN-NOTES.md for the map): it arrives at the gate of its
 * semaphore set and tries, or waits in this process for a hand-off or a free ticket
 * (`gate.ts`, bounded by the fair share of `fair-share.ts`), or is put back (`put-back.ts`,
 * recorded for promotion by `promotion.ts`); it runs; and the gate decides what happens to
 * its hold.
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
  const opts = resolveOptions(options);
  const requests = new JobRequests<Job<D, R, N>>(options.semaphore, options.tickets);

  const metrics = new LimiterMetrics(options.meter);
  const events = new EventEmitter<LimiterEventMap>();
  const stats: LimiterStats = { attempts: 0, busy: 0, handoffs: 0, reschedules: 0, promotions: 0, ran: 0 };
  /** Set when the last acquire call could not reach Postgres; cleared by the next one that did. */
  let unavailable = false;

  /** One acquire call: Postgres unreachable counts as no ticket, so the job is put back instead of failing. */
  const tryHold = async (req: NormalizedRequest, label: string, onShort?: (names: readonly string[]) => void): Promise<Attempt<Hold>> => {
    stats.attempts++;
    let hold: Hold | null;
    try {
      hold = await sem.tryHold(
        req.names.map((name, i) => ({ name, tickets: req.counts[i] === 0 ? ('all' as const) : req.counts[i]! })),
        { createWith: opts.createWith, label, onBusy: onShort },
      );
    } catch (err) {
      if (!isUnavailable(err)) throw err;
      unavailable = true;
      return 'unavailable';
    }
    unavailable = false;
    metrics.attempts.add(1, { result: hold ? 'acquired' : 'busy' });
    if (!hold) stats.busy++;
    return hold ?? 'busy';
  };

  const promotion = new Promotion(new WaitingList(sem), opts.wakeOnRelease, () => void stats.promotions++);
  const putBack = new PutBackPolicy(opts);
  const slots = new WorkerSlots();
  // the default `linger` (a fixed set only) follows the pace of the slot's next jobs; one you set stays as set
  const defaultLinger = opts.linger === undefined && requests.oneSet;
  const gates = new GateSet<Hold>(
    {
      wakeOnRelease: opts.wakeOnRelease,
      maxHandoffs: opts.maxHandoffs,
      linger: opts.linger ?? (defaultLinger ? DEFAULT_LINGER_MS : 0),
      lingerClock: defaultLinger ? new LingerClock(DEFAULT_LINGER_MS, DEFAULT_LINGER_MAX_MS) : undefined,
    },
    { tryHold, watch: (names, onRelease) => sem.watch(names, onRelease), hearsReleases: () => sem.hearsWakeUps, promote: (hold) => promotion.promoteWaiting(hold), mayPromote: () => promotion.active },
  );

  /** A closing worker fetches no next job: the holds kept for one (`linger`) go back at once. */
  const releaseParked = () => gates.releaseParked();

  /**
   * Try on arrival; else wait in this process if there is room; null: put the job back.
   * `waitSignal` is called only when the job is about to wait (a job served on arrival pays
   * for no signal); its `done` runs when the wait ends.
   */
  const acquire = async (gate: Gate<Hold>, label: string, waitSignal: () => { signal: AbortSignal | undefined; done: () => void }) => {
    // the hold the slot's last job of this set left behind (`linger`): a hand-off; else a try
    const got = await gate.arriveOrTakeParked(label);
    if (got) return got;
    if (!opts.wakeOnRelease || opts.localWait === 0 || unavailable) return null;
    const { group, activeGroups } = gates.groupOf(gate);
    const admitted = mayWaitHere({
      concurrency: slots.concurrency,
      oneSet: requests.oneSet,
      activeGroups,
      group,
      set: { holding: gate.holding, waiting: gate.waiting },
      meanHoldMs: gate.meanHoldMs,
      shortestPutBackMs: opts.minDelay,
      maxLocalWaiters: opts.maxLocalWaiters,
    });
    if (!admitted) return null;
    const w = waitSignal();
    try {
      return await gate.wait(label, w.signal, opts.localWait);
    } finally {
      w.done();
    }
  };

  /**
   * `acquire`, unless the job's worker is stopping (`close()` began, or `pause()`): then
   * 'stopping' and the job never starts here; a hold that came meanwhile is given on. A
   * cancel (`worker.cancelJob`) while the job waits fails it with {@link WaitCancelledError}.
   */
  const acquireUnlessStopping = async (gate: Gate<Hold>, label: string, signal: AbortSignal | undefined, stop: WorkerStop | undefined) => {
    if (stop?.stopping) return 'stopping' as const;
    let stopSignal: AbortSignal | undefined;
    let passed: AbortSignal | undefined;
    // the combined signal and the pause check only for a job that waits
    const waitSignal = () => {
      stopSignal = stop?.signal;
      const both = signal && stopSignal ? anySignal(signal, stopSignal) : undefined;
      passed = both?.signal ?? signal ?? stopSignal;
      const done = stop?.use();
      return {
        signal: passed,
        done: () => {
          both?.dispose();
          done?.();
        },
      };
    };
    let got: Awaited<ReturnType<typeof acquire>>;
    try {
      got = await acquire(gate, label, waitSignal);
    } catch (err) {
      // the stop first (read live): `cancelAllJobs(); close()` is a shutdown, not a cancel
      if (stop?.stopping || stopSignal?.aborted) return 'stopping' as const;
      // only the abort itself is a cancel: a real error is not hidden behind one
      if (signal?.aborted && passed?.aborted && err === passed.reason) throw new WaitCancelledError(gate.req.names, signal.reason);
      throw err;
    }
    if (got && (stop?.stopping || stopSignal?.aborted)) {
      // a release that fails (other than a lost connection) must not fail the job: it goes back all the same
      await gate.free(got.hold, { commit: true, reusable: true, mayKeep: false }).catch(() => undefined);
      return 'stopping' as const;
    }
    if (got && signal?.aborted) {
      // cancelled while the acquire was in flight: the processor never starts with an aborted signal
      await gate.free(got.hold, { commit: true, reusable: true });
      throw new WaitCancelledError(gate.req.names, signal.reason);
    }
    return got;
  };

  /** Runs a budget check; a job that fails it is forgotten in the waiting list (it will not come back). */
  const forgetIfThrows = (job: Job<D, R, N>, reschedules: number, check: () => void): void => {
    try {
      check();
    } catch (err) {
      promotion.forget(job, reschedules);
      throw err;
    }
  };

  /**
   * Fails the job past its budget, or moves it to delayed and throws BullMQ's DelayedError.
   * `stopping` (its worker is closing or paused): no budget check, no record, the shortest
   * delay (±25 %, so a rolling restart does not send them back in one burst), so it is back
   * in the queue at once for another worker.
   */
  const reschedule = async (job: Job<D, R, N>, token: string | undefined, gate: Gate<Hold>, reschedules: number, stopping = false): Promise<never> => {
    const names = gate.req.names;
    if (!stopping) forgetIfThrows(job, reschedules, () => putBack.checkReschedule(names, job.timestamp, reschedules));
    const queued = stopping ? undefined : await promotion.record(job, names, unavailable);
    const delay = stopping ? putBack.stoppingDelay() : putBack.delay({
      reschedules,
      timestamp: job.timestamp,
      queued,
      meanHoldMs: gate.meanHoldMs,
      unavailable,
      backendPromotes: promotion.promotes(job),
    });
    await job.moveToDelayed(Date.now() + delay, token);
    stats.reschedules++;
    metrics.reschedules.add(1, LimiterMetrics.attrs(names, job.queueName));
    events.emit('rescheduled', { job: job as Job, names, delay, reschedules: reschedules + 1 });
    throw new DelayedError();
  };

  const runJob = async (gate: Gate<Hold>, job: Job<D, R, N>, token: string | undefined, signal: AbortSignal | undefined): Promise<R> => {
    const names = gate.req.names;
    promotion.seen(job);
    slots.add(queueHandleOf(job));
    const label = options.label ? options.label(job) : `${job.queueName}:${job.id}`;
    const reschedules = reschedulesOf(job);
    forgetIfThrows(job, reschedules, () => putBack.checkArrival(names, job.timestamp, reschedules));

    const stop = WorkerStop.of(queueHandleOf(job));
    stop?.onClose(releaseParked);
    let got: Awaited<ReturnType<typeof acquireUnlessStopping>>;
    try {
      // the hold the slot's last job of this set left behind (`linger`), taken at once: most
      // jobs of a busy slot, spared the four awaits of an acquire
      const kept = stop?.stopping || signal?.aborted ? undefined : gate.takeParked();
      got = kept ? { hold: kept, handoff: true } : await acquireUnlessStopping(gate, label, signal, stop);
    } catch (err) {
      if (err instanceof WaitCancelledError) promotion.forget(job, reschedules);
      throw err;
    }
    if (got === 'stopping') return reschedule(job, token, gate, reschedules, true);
    if (!got) return reschedule(job, token, gate, reschedules, stop?.stopping === true);
    const { hold, handoff } = got;
    if (handoff) {
      stats.handoffs++;
      metrics.attempts.add(1, { result: 'handoff' });
    }
    promotion.forget(job, reschedules);

    const started = Date.now();
    const attrs = LimiterMetrics.attrs(names, job.queueName);
    let txUsed = false;
    const ctx: LimitedContext = {
      tickets: hold.tickets,
      get tx() {
        // read first: in session holding it throws, and nothing was used then
        const tx = hold.tx;
        txUsed = true;
        return tx;
      },
    };
    // The processor's signal aborts on a cancel and on a lost ticket. The job's own signal
    // does, when it is the one BullMQ's worker made for this job: a loss aborts it through
    // that worker's controller. Otherwise a signal of its own, listening to both.
    const own = signal ? ownController(job, signal) : undefined;
    const combined = signal && !own ? anySignal(signal, hold.signal) : { signal: signal ?? hold.signal, dispose: () => undefined };
    let ok = false;
    let relabel: NodeJS.Timeout | undefined;
    try {
      if (handoff) {
        // status() shows the new job once it has run `relabelAfter`: a round trip per hand-off
        // was most of the Postgres traffic of short jobs, for a label nobody could read in time
        const relabelNow = () => void hold.relabel(label).catch(() => undefined);
        if (opts.relabelAfter === 0) relabelNow();
        else {
          relabel = setTimeout(relabelNow, opts.relabelAfter);
          relabel.unref();
        }
      }
      metrics.held.add(hold.tickets.length, attrs);
      metrics.waitTime.record((started - job.timestamp) / 1000, attrs);
      events.emit('acquired', { job: job as Job, names, tickets: hold.tickets, waitedMs: started - job.timestamp, handoff });
      stats.ran++;
      const work = Promise.resolve().then(() => processor(job, token, combined.signal, ctx));
      const result = await raceLoss(hold.signal, work, own ? (reason) => own.abort(reason) : undefined);
      ok = true;
      return result;
    } catch (err) {
      if (hold.lost) events.emit('ticketLost', { job: job as Job, names, error: hold.signal.reason });
      throw err;
    } finally {
      clearTimeout(relabel);
      combined.dispose();
      const heldMs = Date.now() - started;
      gate.recordHoldTime(heldMs);
      metrics.held.add(-hold.tickets.length, attrs);
      metrics.holdTime.record(heldMs / 1000, attrs);
      let handedOff = false;
      // read once: nothing is kept for a next job, and the release is waited for (below)
      const stopping = stop?.stopping === true;
      const done = gate.free(hold, { commit: ok || !txUsed, reusable: !txUsed, mayKeep: !stopping }).then((handed) => void (handedOff = handed)).finally(() => events.emit('released', { job: job as Job, names, heldMs, handedOff }));
      if (sem.holding === 'session' || !txUsed) {
        // A release that cannot fail the job is not waited for: session holding's (one
        // statement on the process's holding connection, where the next acquire queues behind
        // it anyway; no transaction to commit), and a holding transaction the job never used
        // (its COMMIT has nothing of the job's to keep). The job is done at once, so BullMQ
        // completes it while the release's round trip runs (uncontended, every chain end had
        // it on the slot's path). The gate stays until the release's aftermath (waking a
        // waiter, promoting) has run. A job that used `tx` waits: its COMMIT is its result. In
        // transaction holding the slot's next job may arrive before that COMMIT: a try then may
        // find the ticket still taken and wait for the release's wake-up like any other waiter.
        // A stopping worker is the exception: `close()` waits for this job, so the job waits for
        // its release, and the tickets are back once `close()` resolves (not waiting, the
        // release's round trip could still be in flight then, and a status read counted it).
        gate.enter();
        const settled = done.catch(() => undefined).finally(() => gate.leave());
        if (stopping) await settled;
      } else {
        await done;
      }
    }
  };

  // BullMQ passes the AbortSignal only to processors declared with three parameters.
  const wrapped = (async (job: Job<D, R, N>, token: string | undefined, signal: AbortSignal | undefined) => {
    const gate = gates.gateFor(requests.of(job));
    gate.enter();
    try {
      return await runJob(gate, job, token, signal);
    } finally {
      gate.leave();
    }
  }) as LimitedProcessor<D, R, N>;
  wrapped.events = events;
  wrapped.stats = stats;
  return wrapped;
}

/**
 * The AbortController BullMQ's worker made for this job (`worker.cancelJob` aborts it), when
 * `signal` is its signal; else undefined (a job run by something else, or a signal the caller
 * swapped in). Read from the worker's lock manager, which BullMQ does not document: a BullMQ
 * that keeps it elsewhere only makes this undefined, and the job gets a signal of its own.
 * The processor then gets BullMQ's signal itself: no AbortSignal made and no listener added
 * per job (measured: the combined signal was a quarter of the wrapper's own CPU per hand-off).
 */
function ownController(job: QueuedJob, signal: AbortSignal): AbortController | undefined {
  const worker = queueHandleOf(job) as { lockManager?: { trackedJobs?: { get?: (id: string) => unknown } } } | undefined;
  const tracked = job.id === undefined ? undefined : worker?.lockManager?.trackedJobs?.get?.(job.id);
  const controller = (tracked as { abortController?: Partial<AbortController> } | undefined)?.abortController;
  return typeof controller?.abort === 'function' && controller.signal === signal ? (controller as AbortController) : undefined;
}

/**
 * One signal that aborts when either does; `dispose` detaches it. Not `AbortSignal.any`:
 * on Node 20 every call adds an entry to the source's dependant-signal set that is never
 * pruned (measured: 100,000 calls on one long-lived signal keep 100,000 entries and about
 * 120 MB after GC), and the hold's signal lives across up to `maxHandoffs` jobs.
 */
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
