import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** A child OS process running a TypeScript fixture (via tsx), talking over IPC. */
export interface Child {
  proc: ChildProcess;
  pid: number;
  messages: unknown[];
  /** Resolves with the first message (already received or future) that matches. */
  next<T = Record<string, unknown>>(match: (m: T) => boolean, timeout?: number): Promise<T>;
  send(message: unknown): void;
  exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): void;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

/** Starts `test/fixtures/<name>.ts` as a child process with extra environment variables. */
export function startChild(name: string, env: Record<string, string | number> = {}): Child {
  const script = fileURLToPath(new URL(`../fixtures/${name}.ts`, import.meta.url));
  const proc = fork(script, [], {
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, ...Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)])) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  live.add(proc);
  const messages: unknown[] = [];
  const waiters = new Set<{ match: (m: never) => boolean; resolve: (m: never) => void }>();
  proc.on('message', (m) => {
    messages.push(m);
    for (const w of waiters) {
      if (w.match(m as never)) {
        waiters.delete(w);
        w.resolve(m as never);
      }
    }
  });
  const exited = new Promise<number | null>((resolve) =>
    proc.once('exit', (code) => {
      live.delete(proc);
      resolve(code);
    }),
  );
  return {
    proc,
    pid: proc.pid!,
    messages,
    next<T>(match: (m: T) => boolean, timeout = 30_000) {
      const found = messages.find((m) => match(m as T));
      if (found) return Promise.resolve(found as T);
      return new Promise<T>((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`child ${name} (${proc.pid}): no matching message within ${timeout} ms; got ${JSON.stringify(messages).slice(0, 500)}`));
        }, timeout);
        const w = {
          match: match as (m: never) => boolean,
          resolve: (m: never) => {
            clearTimeout(timer);
            resolve(m as T);
          },
        };
        waiters.add(w);
        exited.then(() => {
          if (waiters.has(w)) {
            waiters.delete(w);
            clearTimeout(timer);
            reject(new Error(`child ${name} (${proc.pid}) exited before a matching message; got ${JSON.stringify(messages).slice(0, 500)}`));
          }
        });
      });
    },
    send(message: unknown) {
      proc.send(message as never);
    },
    exited,
    kill(signal: NodeJS.Signals = 'SIGKILL') {
      proc.kill(signal);
    },
  };
}
