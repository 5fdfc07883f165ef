// The exact overlap oracle: one server (in the test process) that every job body tells
// "enter" before its work and "exit" after it, each time waiting for the acknowledgement.
// The oracle counts holders in flight per key as it processes the messages, one at a time.
//
// Why it cannot be fooled (unlike clock stamps from several processes, or a fake API that
// only sees what reaches it within a tick):
// - It cannot invent an overlap. A job sends "enter" after it got its ticket and waits for
//   the "exit" acknowledgement before it returns (and so before its ticket is released). If
//   job A's hold ends before job B's begins, the oracle processed A's exit (it acknowledged
//   it) before A released, so before B acquired and sent its enter.
// - It cannot miss one. A job's work lies between the enter acknowledgement and the exit
//   message, so the oracle counts the job in flight during all of it: if two works overlap
//   at some instant, both enters were processed before and both exits after that instant.
// With no work between the acknowledgements (0 ms holds) the acknowledged interval is the
// work itself.
//
// Wire format: one JSON object per line, both ways. Client → oracle:
//   {"id": n, "op": "enter" | "exit", "job": "...", "pid": 123, "keys": ["api", "tenant:1"]}
// Oracle → client: {"id": n} once the message is counted.
import net from 'node:net';
import type { AddressInfo } from 'node:net';

/** One job in flight, as the oracle saw it. */
export interface OracleHolder {
  job: string;
  pid: number;
}

/** The oracle saw more holders of a key than its cap. */
export interface OracleViolation {
  key: string;
  cap: number;
  /** In flight after the enter that broke the cap. */
  inflight: number;
  /** Every holder of the key at that moment (the last one is the job that entered). */
  holders: OracleHolder[];
  /** Messages processed before this one (where in the run it happened). */
  seq: number;
}

/** A protocol error: an exit without its enter, a job entering twice, a malformed line. */
export interface OracleError {
  message: string;
  line: string;
}

/** The server side. `cap(key)` is the cap the oracle checks for a key. */
export interface Oracle {
  /** Where clients connect (`ORACLE_PORT` for the fixtures). */
  port: number;
  /** Highest in flight seen, per key. */
  max: Map<string, number>;
  /** Highest in flight over every key that matched `prefix` (e.g. `tenant:`), or of one key. */
  maxOf(prefix: string): number;
  violations: OracleViolation[];
  errors: OracleError[];
  /** Enters processed (jobs whose body ran), per key. */
  enters: Map<string, number>;
  /** Jobs in flight right now (all keys). */
  readonly inflight: number;
  /** Clears the counts between runs (nothing may be in flight). */
  reset(): void;
  close(): Promise<void>;
}

/** Starts the oracle on a free loopback port. */
export async function startOracle(cap: (key: string) => number): Promise<Oracle> {
  const holders = new Map<string, Map<string, OracleHolder>>();
  const inJob = new Map<string, string[]>();
  const max = new Map<string, number>();
  const enters = new Map<string, number>();
  const violations: OracleViolation[] = [];
  const errors: OracleError[] = [];
  const sockets = new Set<net.Socket>();
  let seq = 0;

  const handle = (line: string): void => {
    seq++;
    let m: { op?: string; job?: string; pid?: number; keys?: string[] };
    try {
      m = JSON.parse(line);
    } catch {
      errors.push({ message: 'malformed line', line });
      return;
    }
    const job = String(m.job);
    const holder = { job, pid: Number(m.pid) };
    if (m.op === 'enter') {
      if (inJob.has(job)) errors.push({ message: `job ${job} entered twice without an exit`, line });
      const keys = m.keys ?? [];
      inJob.set(job, keys);
      for (const key of keys) {
        const set = holders.get(key) ?? new Map<string, OracleHolder>();
        holders.set(key, set);
        set.set(job, holder);
        enters.set(key, (enters.get(key) ?? 0) + 1);
        max.set(key, Math.max(max.get(key) ?? 0, set.size));
        const c = cap(key);
        if (set.size > c) violations.push({ key, cap: c, inflight: set.size, holders: [...set.values()], seq });
      }
    } else if (m.op === 'exit') {
      const keys = inJob.get(job);
      if (!keys) {
        errors.push({ message: `exit of job ${job} without an enter`, line });
        return;
      }
      inJob.delete(job);
      for (const key of keys) holders.get(key)?.delete(job);
    } else {
      errors.push({ message: 'unknown op', line });
    }
  };

  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.setNoDelay(true);
    socket.setEncoding('utf8');
    let buffer = '';
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      let nl: number;
      const acks: string[] = [];
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        handle(line);
        const id = /"id":(\d+)/.exec(line)?.[1];
        if (id !== undefined) acks.push(`{"id":${id}}\n`);
      }
      if (acks.length > 0) socket.write(acks.join(''));
    });
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    port,
    max,
    maxOf(prefix: string) {
      let m = 0;
      for (const [key, v] of max) if (key === prefix || key.startsWith(prefix)) m = Math.max(m, v);
      return m;
    },
    violations,
    errors,
    enters,
    get inflight() {
      return inJob.size;
    },
    reset() {
      if (inJob.size > 0) throw new Error(`oracle reset with ${inJob.size} jobs in flight`);
      holders.clear();
      max.clear();
      enters.clear();
      violations.length = 0;
      errors.length = 0;
      seq = 0;
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The client side, for a job body in a worker process: `await enter(...)`, work, `await exit(...)`. */
export interface OracleClient {
  /** Tells the oracle this job now holds `keys`; resolves once it is counted. */
  enter(job: string, keys: string[]): Promise<void>;
  /** Tells the oracle this job's work is over; resolves once it is counted. */
  exit(job: string): Promise<void>;
  close(): void;
}

/** Connects a worker process to the oracle on `port` (one connection per process). */
export async function connectOracle(port: number): Promise<OracleClient> {
  const socket = net.connect({ port, host: '127.0.0.1', noDelay: true });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.setEncoding('utf8');
  const pending = new Map<number, () => void>();
  let nextId = 1;
  let buffer = '';
  let broken: Error | undefined;
  socket.on('data', (chunk: string) => {
    buffer += chunk;
    let nl: number;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const id = Number(/"id":(\d+)/.exec(buffer.slice(0, nl))?.[1]);
      buffer = buffer.slice(nl + 1);
      const resolve = pending.get(id);
      pending.delete(id);
      resolve?.();
    }
  });
  const fail = (err: Error) => {
    broken = err;
    // A job must not go on as if counted: its pending call rejects (the job fails, visibly).
    for (const resolve of pending.values()) resolve();
    pending.clear();
  };
  socket.on('error', fail);
  socket.on('close', () => fail(new Error('oracle connection closed')));
  const call = (op: 'enter' | 'exit', job: string, keys?: string[]) =>
    new Promise<void>((resolve, reject) => {
      if (broken) return reject(broken);
      const id = nextId++;
      pending.set(id, () => (broken ? reject(broken) : resolve()));
      socket.write(`${JSON.stringify({ id, op, job, pid: process.pid, keys })}\n`);
    });
  return {
    enter: (job, keys) => call('enter', job, keys),
    exit: (job) => call('exit', job),
    close: () => socket.destroy(),
  };
}

/**
 * What clock stamps say instead: the most [start, end] intervals (weighted) that overlap at
 * one instant. Ends sort before starts at the same instant (a release that happens-before an
 * acquire is stamped no later than it). Only as good as the clocks: stamps from different
 * processes can invent overlaps or hide them (see docs/RELIABILITY.md, "The overlap oracle").
 */
export function clockOverlap(intervals: ReadonlyArray<{ start: number; end: number; weight?: number }>): number {
  const events = intervals.flatMap((i) => [
    { t: i.start, d: i.weight ?? 1 },
    { t: i.end, d: -(i.weight ?? 1) },
  ]);
  events.sort((a, b) => a.t - b.t || a.d - b.d);
  let now = 0;
  let max = 0;
  for (const e of events) {
    now += e.d;
    max = Math.max(max, now);
  }
  return max;
}
