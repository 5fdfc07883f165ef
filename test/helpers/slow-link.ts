import net, { type AddressInfo } from 'node:net';

/** A TCP relay to a server whose client-to-server direction can be slowed (see {@link startSlowLink}). */
export interface SlowLink {
  /** The relay's port on 127.0.0.1. */
  readonly port: number;
  /** `url` with its host and port replaced by the relay's. */
  via(url: string): string;
  /** Delay, in ms, of each chunk sent to the server from now on (order kept); 0 passes them at once. */
  delayMs: number;
  close(): Promise<void>;
}

/**
 * A relay to `target` (host and port) on a free port of 127.0.0.1: a slow network link to a
 * real server, for a test that needs a round trip to be slower than something it races.
 * Each connection's chunks reach the server in the order sent, each no sooner than
 * `delayMs` after it was sent; an end is passed on after the chunks before it.
 */
export async function startSlowLink(target: { host: string; port: number }): Promise<SlowLink> {
  const sockets = new Set<net.Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let delayMs = 0;
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: target.host, port: target.port, noDelay: true });
    client.setNoDelay(true);
    sockets.add(client).add(upstream);
    let chain = Promise.resolve();
    /** Runs `step` after the steps before it, and no sooner than the delay asked now. */
    const later = (step: () => void) => {
      const due = Date.now() + delayMs;
      chain = chain.then(async () => {
        const wait = due - Date.now();
        if (wait > 0) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(() => {
              timers.delete(timer);
              resolve();
            }, wait);
            timers.add(timer);
          });
        }
        step();
      });
    };
    client.on('data', (chunk) => later(() => upstream.write(chunk)));
    client.on('end', () => later(() => upstream.end()));
    upstream.on('data', (chunk) => client.write(chunk));
    upstream.on('end', () => client.end());
    const forget = (s: net.Socket) => () => void sockets.delete(s);
    client.on('close', forget(client));
    upstream.on('close', forget(upstream));
    // a broken side breaks the other (a clean end is passed on above)
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as AddressInfo;
  return {
    port,
    get delayMs() {
      return delayMs;
    },
    set delayMs(ms: number) {
      delayMs = ms;
    },
    via(url: string) {
      const u = new URL(url);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    close() {
      for (const timer of timers) clearTimeout(timer);
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
