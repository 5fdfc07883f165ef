// What the demo's parent process and its worker processes ("hosts") say to each other over IPC.

/** Parent → host: everything a host needs to start. */
export interface HostConfig {
  host: number;
  databaseUrl: string;
  /** pg-semaphore's schema. */
  schema: string;
  /** The semaphore every job needs a ticket of. */
  semaphore: string;
  queues: string[];
  concurrency: number;
  apiUrl: string;
  /** BullMQ's backend: its Postgres backend (in `bqSchema`), or Redis (keys under `prefix`). */
  backend: 'postgres' | 'redis';
  bqSchema?: string;
  redisUrl?: string;
  prefix?: string;
}

export type ToHost = { type: 'start'; config: HostConfig } | { type: 'close' };

/** A host's counters, sent every 100 ms and once more when it closes. */
export interface HostStatus {
  host: number;
  pid: number;
  /** Jobs inside the processor (holding a ticket or waiting for one in process). */
  active: number;
  /** Jobs holding a ticket right now, i.e. calling the API. */
  holding: number;
  completed: number;
  failed: number;
  /** Jobs put back with a delay because no ticket was free. */
  reschedules: number;
  /** Put-back jobs promoted early because a ticket came free. */
  promotions: number;
  /** Jobs that got their ticket straight from the job before them (no acquire round trip). */
  handoffs: number;
  /** Acquire round trips. */
  attempts: number;
  /** Sum of ticket hold times, ms, and how many holds. */
  heldMs: number;
  holds: number;
  /** `Date.now()` of the last completed job. */
  lastCompletedAt: number;
  /** First failure reasons, if any. */
  failures: string[];
  /** BullMQ worker 'error' events (not job failures), and the first few messages. */
  workerErrors: number;
  errorMessages: string[];
}

export type FromHost =
  | { type: 'ready'; host: number }
  | { type: 'status'; status: HostStatus }
  | { type: 'closed'; status: HostStatus }
  | { type: 'error'; host: number; message: string };
