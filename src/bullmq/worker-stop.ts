/**
 * Whether the BullMQ Worker that fetched a job is stopping: `worker.close()` (with or
 * without force) has begun, or `worker.pause()` is in effect. A job that is still waiting
 * for tickets in a stopping worker is put back at once instead of keeping `close()` or
 * `pause()` waiting for it (up to `localWait`), and is never started there.
 *
 * BullMQ keeps the Worker on each job it fetched (`job.queue`). `close()` emits `closing`
 * synchronously before it waits for active jobs, so closing is heard at once. `pause()`
 * sets its flag without an event, so while jobs of a worker wait, its flag is checked every
 * {@link PAUSE_CHECK_MS}. A job without a Worker (a sandboxed processor's child, a test's
 * fake) never stops this way.
 * @internal
 */

import { setMaxListeners } from 'node:events';

/** How often the pause flag of a worker with waiting jobs is checked, in ms. */
export const PAUSE_CHECK_MS = 50;

/** What is read of a BullMQ Worker. */
interface WorkerLike {
  on(event: 'closing', listener: () => void): unknown;
  closing?: unknown;
  isPaused(): boolean;
  cancelJob(jobId: string, reason?: string): boolean;
  isRunning(): boolean;
}

/**
 * A BullMQ Worker, told apart by methods only a Worker has (`cancelJob`, `isRunning`): a
 * Queue has `on()` and an async `isPaused()` too, and a job built from a Queue
 * (`queue.add()`'s result, `Job.fromId(queue, id)`) must not look like one that is stopping.
 */
function isWorker(handle: unknown): handle is WorkerLike {
  const w = handle as Partial<WorkerLike> | null | undefined;
  return typeof w?.on === 'function' && typeof w?.isPaused === 'function' && typeof w?.cancelJob === 'function' && typeof w?.isRunning === 'function';
}

/** The stop state of one Worker, shared by every limited processor in the process. @internal */
export class WorkerStop {
  private static readonly byWorker = new WeakMap<object, WorkerStop>();
  /** Aborted while the worker is stopping; replaced once a pause is over. */
  private controller = WorkerStop.controller();
  /** Jobs of this worker using the wrapper right now (the pause check runs while there are). */
  private users = 0;
  private timer: NodeJS.Timeout | undefined;
  /** `closing` was emitted (it comes before `worker.closing` is assigned). */
  private closeHeard = false;

  /** Called once when the worker starts closing (see {@link WorkerStop.onClose}). */
  private readonly closeListeners = new Set<() => void>();

  private constructor(private readonly worker: WorkerLike) {
    worker.on('closing', () => {
      this.closeHeard = true;
      this.check();
      for (const listener of this.closeListeners) listener();
      this.closeListeners.clear();
    });
  }

  /** Calls `listener` (once, however often it is added) when `close()` begins. */
  onClose(listener: () => void): void {
    if (!this.closeHeard) this.closeListeners.add(listener);
  }

  /** The stop state of the Worker behind a job's handle; undefined when the handle is no Worker. */
  static of(handle: unknown): WorkerStop | undefined {
    if (!isWorker(handle)) return undefined;
    let stop = WorkerStop.byWorker.get(handle);
    if (!stop) WorkerStop.byWorker.set(handle, (stop = new WorkerStop(handle)));
    return stop;
  }

  /** The worker is closing or paused right now. */
  get stopping(): boolean {
    return this.closeHeard || Boolean(this.worker.closing) || this.worker.isPaused() === true;
  }

  /** Aborts when the worker starts stopping (already aborted if it is). */
  get signal(): AbortSignal {
    this.check();
    return this.controller.signal;
  }

  /** A job starts using the wrapper; the returned function ends it. */
  use(): () => void {
    this.users++;
    this.timer ??= setInterval(() => this.check(), PAUSE_CHECK_MS).unref();
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (--this.users === 0 && this.timer) {
        clearInterval(this.timer);
        this.timer = undefined;
      }
    };
  }

  private check(): void {
    const stopping = this.stopping;
    if (stopping && !this.controller.signal.aborted) this.controller.abort(new Error('the worker is stopping'));
    else if (!stopping && this.controller.signal.aborted) this.controller = WorkerStop.controller();
  }

  /** One listener per waiting job of the worker: no warning past Node's default of 10. */
  private static controller(): AbortController {
    const controller = new AbortController();
    setMaxListeners(0, controller.signal);
    return controller;
  }
}
