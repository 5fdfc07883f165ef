import net, { type AddressInfo } from 'node:net';

/** A TCP relay to a server whose client-to-server direction can be slowed (see {@link startSlowLink}). */
export interface SlowLink {
  /** The relay's port on 127.0.0.1. */
  port: number;
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
 * `delayMs` after it was sent.
 */
export async function startSlowLink(target: { host: string; port: number }): Promise<SlowLink> {
  const sockets = new Set<net.Socket>();
  const link = {
    delayMs: 0,
  } as SlowLink;
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: target.host, port: target.port, noDelay: true });
    client.setNoDelay(true);
    sockets.add(client).add(upstream);
    let chain = Promise.resolve();
    client.on('data', (chunk) => {
      const due = Date.now() + link.delayMs;
      chain = chain.then(async () => {
        const wait = due - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        upstream.write(chunk);
      });
    });
    upstream.on('data', (chunk) => client.write(chunk));
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  link.port = port;
  link.via = (url: string) => {
    const u = new URL(url);
    u.hostname = '127.0.0.1';
    u.port = String(port);
    return u.toString();
  };
  link.close = () => {
    for (const s of sockets) s.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return link;
}
