import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * The loopback HTTP server standing in for the capped external API. It holds each call for
 * the `hold` ms asked (0: answers on the next event-loop turn), and counts calls in flight overall and per tenant:
 * the most it saw is the benchmark's shared check that a cap held across processes. Overall,
 * a call counts its weight `w` (default 1: a job taking 2 tickets of the global cap counts 2).
 */
export async function startFakeApi(tenants: number) {
  let inflight = 0;
  let max = 0;
  let calls = 0;
  const tenantInflight = new Int32Array(Math.max(1, tenants));
  const tenantMax = new Int32Array(Math.max(1, tenants));
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const tenant = Number(url.searchParams.get('tenant') ?? -1);
    const hold = Number(url.searchParams.get('hold')) || 0;
    const weight = Number(url.searchParams.get('w')) || 1;
    calls++;
    inflight += weight;
    if (inflight > max) max = inflight;
    const perTenant = tenant >= 0 && tenant < tenants;
    if (perTenant) {
      tenantInflight[tenant]!++;
      if (tenantInflight[tenant]! > tenantMax[tenant]!) tenantMax[tenant] = tenantInflight[tenant]!;
    }
    let open = true;
    const finish = () => {
      if (!open) return;
      open = false;
      inflight -= weight;
      if (perTenant) tenantInflight[tenant]!--;
    };
    res.on('close', finish);
    const reply = () => {
      // counted out before the answer leaves, so a caller's next call never overlaps it here
      finish();
      res.end('ok');
    };
    // 0 ms: answer on the next turn of the event loop, so calls arriving together overlap here too
    if (hold > 0) setTimeout(reply, hold);
    else setImmediate(reply);
  });
  // Longer than any run: a worker's socket may sit idle for seconds while its job waits for a
  // ticket (large cap: 40 of 240 slots wait), and a server closing an idle keep-alive socket
  // just as the worker reuses it fails that job's call with "socket hang up".
  server.keepAliveTimeout = 120_000;
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
    get calls() {
      return calls;
    },
    /** The most calls in flight seen for any one tenant. */
    get tenantMax() {
      return tenantMax.reduce((a, b) => Math.max(a, b), 0);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
