// A fleet of faults-worker processes (test/fixtures/faults-worker.ts) for the fault tests:
// start, kill, replace and close workers, and read every event they reported (dead ones too).
import { within } from './core.js';
import { startChild, type Child } from './processes.js';

export interface FleetEvent {
  type: string;
  job?: string;
  at?: number;
  reason?: string;
  message?: string;
  heldMs?: number;
  handoff?: boolean;
  rss?: number;
  heap?: number;
  /** The worker process that reported it. */
  pid: number;
}

export class Fleet {
  /** Every worker ever started (dead ones too, for their events). */
  readonly all: Child[] = [];

  constructor(private readonly env: Record<string, string | number>) {}

  /** Workers still running. */
  get alive(): Child[] {
    return this.all.filter((c) => c.proc.exitCode === null && c.proc.signalCode === null);
  }

  /** Starts `n` workers (extra environment on top of the fleet's) and waits until each is ready. */
  async start(n: number, extra: Record<string, string | number> = {}): Promise<Child[]> {
    const started = Array.from({ length: n }, () => startChild('faults-worker', { ...this.env, ...extra }));
    this.all.push(...started);
    await Promise.all(started.map((c) => c.next((m: { type: string }) => m.type === 'ready', 60_000)));
    return started;
  }

  /** Every event of a type, from every worker, in arrival order per worker. */
  events(type: string): FleetEvent[] {
    return this.all.flatMap((c) =>
      (c.messages as Array<Record<string, unknown>>).filter((m) => m.type === type).map((m) => ({ ...(m as object), pid: c.pid }) as FleetEvent),
    );
  }

  /** kill -9 a worker; resolves when it is gone. */
  async kill(child: Child): Promise<void> {
    child.proc.kill('SIGKILL');
    await within(child.exited, 10_000, `worker ${child.pid} to exit`);
  }

  /** Asks every live worker to close (workers drain their jobs), bounded; kills what is left. */
  async close(timeoutMs = 20_000): Promise<void> {
    const live = this.alive;
    for (const c of live) {
      try {
        c.send({ type: 'close' });
      } catch {
        // already gone
      }
    }
    await within(Promise.all(live.map((c) => c.exited)), timeoutMs, 'workers to close').catch(() => undefined);
    await this.killAll();
  }

  /** kill -9 (after SIGCONT) every worker still running. */
  async killAll(): Promise<void> {
    for (const c of this.alive) {
      c.proc.kill('SIGCONT');
      c.proc.kill('SIGKILL');
    }
    await within(Promise.all(this.all.map((c) => c.exited)), 10_000, 'workers to exit').catch(() => undefined);
  }
}

/** What finishedCounts needs of a BullMQ Queue (on either backend). */
export interface JobCounter {
  getJobCounts(...types: Array<'completed' | 'failed'>): Promise<Record<string, number>>;
}

/** Completed and failed jobs of a queue, or undefined while its Redis cannot be reached. */
export async function finishedCounts(queue: JobCounter): Promise<{ completed: number; failed: number } | undefined> {
  try {
    const c = await within(queue.getJobCounts('completed', 'failed'), 2_000, 'job counts');
    return { completed: c.completed ?? 0, failed: c.failed ?? 0 };
  } catch {
    return undefined;
  }
}

/** Mean of the first third and of the last third of a series. */
export function thirds(values: number[]): { first: number; last: number } {
  const n = Math.max(1, Math.floor(values.length / 3));
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  return { first: mean(values.slice(0, n)), last: mean(values.slice(-n)) };
}

/** A percentile (0..100) of a list of numbers. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}
