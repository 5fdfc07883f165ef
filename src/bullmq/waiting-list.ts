import type { PgSemaphore } from '../pg-semaphore.js';
import { quoteSchema } from '../validate.js';

/**
 * Which BullMQ jobs were put back waiting for which semaphores: the `waiting_jobs` table,
 * read and written only through the SQL functions `enqueue_job`, `dequeue_jobs` and
 * `forget_job` (user values as bind parameters; the schema name validated and quoted).
 * Every call is one round trip on `sem.pool`, counted in the same counter as the core's
 * (the benchmark reads it).
 *
 * Only the promotion policy (`promotion.ts`) uses this.
 * @internal
 */
export class WaitingList {
  private readonly qs: string;

  constructor(private readonly sem: Pick<PgSemaphore, 'pool' | 'schema' | 'roundTrips'>) {
    this.qs = quoteSchema(sem.schema);
  }

  /**
   * Records a job as waiting for tickets of these semaphores (again: its place is kept).
   * @returns how many jobs wait ahead of it, and the smallest capacity among the semaphores
   *   (0 when none of them exists).
   */
  async enqueue(names: readonly string[], queue: string, jobId: string): Promise<{ ahead: number; capacity: number }> {
    this.sem.roundTrips++;
    const { rows } = await this.sem.pool.query<{ ahead: number | null; capacity: number | null }>(
      `SELECT * FROM ${this.qs}.enqueue_job($1::text[], $2, $3)`,
      [names, queue, jobId],
    );
    return { ahead: rows[0]?.ahead ?? 0, capacity: rows[0]?.capacity ?? 0 };
  }

  /** Takes (and forgets) the oldest jobs waiting on these semaphores in the given queues. */
  async dequeue(semaphoreIds: readonly number[], queues: readonly string[], limit = 1): Promise<Array<{ queue: string; jobId: string }>> {
    this.sem.roundTrips++;
    const { rows } = await this.sem.pool.query<{ queue: string; job_id: string }>(
      `SELECT queue, job_id FROM ${this.qs}.dequeue_jobs($1::integer[], $2::text[], $3)`,
      [semaphoreIds, queues, limit],
    );
    return rows.map((r) => ({ queue: r.queue, jobId: r.job_id }));
  }

  /** Forgets a waiting job (it got its tickets or gave up). */
  async forget(queue: string, jobId: string): Promise<void> {
    this.sem.roundTrips++;
    await this.sem.pool.query(`SELECT ${this.qs}.forget_job($1, $2)`, [queue, jobId]);
  }
}
