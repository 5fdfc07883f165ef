import { Job, PostgresQueueBackend } from 'bullmq';
import { isUnavailable } from '../sqlstate.js';
import type { WaitingList } from './waiting-list.js';

/**
 * The promotion policy, and everything that depends on which BullMQ backend a queue uses.
 *
 * A put-back job is recorded in the waiting list; a release that finds no local waiter on its
 * semaphores takes the oldest recorded jobs and promotes them (`job.promote()`), so they come
 * back before their delay runs out. On BullMQ's Postgres backend nothing is promoted: BullMQ 6.7's
 * promote there does not re-check the job's state under a lock, and racing its own due-time
 * promotion it can send an active job back to wait and run it twice (seen in the benchmark).
 * So on that backend jobs are not recorded either (no waiting-list round trips), and they
 * come back by a short delay (see `SHORT_PUT_BACK_MS` in `put-back.ts`).
 * @internal
 */

/** The parts of a BullMQ job the promotion policy reads. @internal */
export interface QueuedJob {
  readonly id?: string;
  readonly queueName: string;
  readonly queueQualifiedName?: string;
}

/**
 * Whether the backend behind this queue handle (a Worker or Queue) promotes safely: Redis yes,
 * Postgres no; no handle (a sandboxed processor's job, rebuilt in the child) no, as nothing there
 * could promote it. @internal
 */
export function backendPromotes(queueHandle: unknown): boolean {
  if (queueHandle === undefined || queueHandle === null) return false;
  return !((queueHandle as { backend?: unknown } | undefined)?.backend instanceof PostgresQueueBackend);
}

/** The handle (the Worker) a job was fetched by; BullMQ keeps it on the job as `queue`. @internal */
export function queueHandleOf(job: QueuedJob): unknown {
  return (job as unknown as { queue?: unknown }).queue;
}

/** The waiting list's name for a job's queue. @internal */
export function queueKey(job: QueuedJob): string {
  return job.queueQualifiedName ?? job.queueName;
}

/** The promotion policy of one limited processor (see the file's comment). @internal */
export class Promotion {
  /** Handles of the queues seen in this process whose backend promotes, by {@link queueKey}; the first seen wins. */
  private readonly queues = new Map<string, unknown>();

  constructor(
    private readonly waitingList: Pick<WaitingList, 'enqueue' | 'dequeue' | 'forget'>,
    /** `wakeOnRelease`: off, nothing is recorded or promoted. */
    private readonly enabled: boolean,
    /** Called once per job promoted. */
    private readonly onPromoted: () => void,
  ) {}

  /** Remembers the queue of a job this process runs, so releases can promote its jobs. */
  seen(job: QueuedJob): void {
    const key = queueKey(job);
    const handle = queueHandleOf(job);
    if (!this.queues.has(key) && backendPromotes(handle)) this.queues.set(key, handle);
  }

  /** Whether a release may promote anything: promotion on, and a queue whose backend promotes seen. */
  get active(): boolean {
    return this.enabled && this.queues.size > 0;
  }

  /** Whether this job's backend promotes put-back jobs (when it does not, they come back by a short delay). */
  promotes(job: QueuedJob): boolean {
    return backendPromotes(queueHandleOf(job));
  }

  /**
   * Records a job that is being put back, unless nothing could promote it (promotion off, no
   * id, a backend that does not promote) or Postgres is unreachable: known so from the last
   * acquire call, or found so by this call (e.g. "too many clients" for a new connection right
   * after an acquire went through): the job is then put back unrecorded, not failed.
   * @returns its place in the waiting list, for the delay estimate; undefined when not recorded.
   */
  async record(job: QueuedJob, names: readonly string[], unavailable: boolean): Promise<{ ahead: number; capacity: number } | undefined> {
    if (!this.enabled || job.id === undefined || unavailable || !this.promotes(job)) return undefined;
    try {
      return await this.waitingList.enqueue(names, queueKey(job), job.id);
    } catch (err) {
      if (isUnavailable(err)) return undefined;
      throw err;
    }
  }

  /** Forgets a job that was put back before and now got its tickets (in the background). */
  forget(job: QueuedJob, reschedules: number): void {
    if (reschedules === 0 || !this.enabled || job.id === undefined || !this.promotes(job)) return;
    void this.waitingList.forget(queueKey(job), job.id).catch(() => undefined);
  }

  /**
   * After a release that found no local waiter on its semaphores while jobs are recorded as waiting: promotes
   * the oldest put-back jobs of these semaphores, one per ticket freed, from the queues
   * this process knows. A job that moved on meanwhile (running, done, removed) is skipped:
   * its own delay covers it.
   */
  async promoteWaiting(hold: { readonly semaphoreIds: readonly number[]; readonly tickets: readonly unknown[] }): Promise<void> {
    if (!this.enabled || this.queues.size === 0) return;
    const jobs = await this.waitingList.dequeue(hold.semaphoreIds, [...this.queues.keys()], Math.max(1, hold.tickets.length));
    for (const { queue, jobId } of jobs) {
      const handle = this.queues.get(queue);
      if (!handle) continue;
      try {
        const waiting = await Job.fromId(handle as never, jobId);
        if (waiting && (await waiting.isDelayed())) {
          await waiting.promote();
          this.onPromoted();
        }
      } catch {
        // already moved on: its own delay covers it
      }
    }
  }
}
