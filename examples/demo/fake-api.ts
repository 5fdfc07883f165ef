import http from 'node:http';
import type { AddressInfo } from 'node:net';

/** One change of the number of calls in flight: [ms since the server started, calls in flight]. */
export type Sample = [t: number, inflight: number];

/**
 * A loopback HTTP server standing in for the rate-limited partner API. It holds each call
 * for a random 20-40 ms, counts the calls in flight, remembers the most it ever saw and
 * records every change, so the demo can draw the chart from what the API itself observed.
 */
export async function startFakeApi({ minHoldMs = 20, maxHoldMs = 40 } = {}) {
  const startedAt = performance.now();
  let inflight = 0;
  let max = 0;
  let calls = 0;
  /** Calls per job (the `job` query parameter), to spot a job that ran twice. */
  const perJob = new Map<string, number>();
  const series: Sample[] = [[0, 0]];
  const record = () => series.push([performance.now() - startedAt, inflight]);

  const server = http.createServer((req, res) => {
    calls++;
    const job = new URL(req.url ?? '/', 'http://x').searchParams.get('job') ?? '';
    perJob.set(job, (perJob.get(job) ?? 0) + 1);
    inflight++;
    max = Math.max(max, inflight);
    record();
    let open = true;
    const end = () => {
      if (!open) return;
      open = false;
      inflight--;
      record();
    };
    res.on('close', end);
    setTimeout(
      () => {
        end();
        res.end('ok');
      },
      minHoldMs + Math.random() * (maxHoldMs - minHoldMs),
    );
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    /** `performance.now()` when the server started; series times are relative to it. */
    startedAt,
    series,
    get inflight() {
      return inflight;
    },
    get max() {
      return max;
    },
    get calls() {
      return calls;
    },
    /** How many jobs called more than once. */
    get repeated() {
      let n = 0;
      for (const count of perJob.values()) if (count > 1) n++;
      return n;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export type FakeApi = Awaited<ReturnType<typeof startFakeApi>>;
