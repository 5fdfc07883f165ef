import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A loopback HTTP server standing in for the external API: it holds each call for
 * `holdMs`, counts calls in flight (overall and per tenant) and records the most it saw.
 */
export async function startFakeApi(holdMs: number) {
  let inflight = 0;
  let max = 0;
  const tenantInflight = new Map<string, number>();
  const tenantMax = new Map<string, number>();
  const calls = new Map<string, number>();
  let maxHold = Infinity;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const job = url.searchParams.get('job') ?? '';
    const tenant = url.searchParams.get('tenant') ?? '';
    const hold = Math.min(maxHold, Number(url.searchParams.get('hold')) || holdMs);
    calls.set(job, (calls.get(job) ?? 0) + 1);
    inflight++;
    max = Math.max(max, inflight);
    const t = (tenantInflight.get(tenant) ?? 0) + 1;
    tenantInflight.set(tenant, t);
    tenantMax.set(tenant, Math.max(tenantMax.get(tenant) ?? 0, t));
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      inflight--;
      tenantInflight.set(tenant, (tenantInflight.get(tenant) ?? 1) - 1);
    };
    res.on('close', finish);
    setTimeout(() => {
      finish();
      res.end('ok');
    }, hold);
  });
  server.keepAliveTimeout = 1;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    get max() {
      return max;
    },
    get inflight() {
      return inflight;
    },
    tenantMax,
    calls,
    /** Caps every later call's hold (e.g. to make reruns of long jobs quick). */
    setMaxHold(ms: number) {
      maxHold = ms;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
