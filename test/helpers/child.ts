// Helpers for the child side of test/fixtures/core-*.ts (run via startChild).

/** A clock shared by every process on this machine, with sub-millisecond resolution. */
export function now(): number {
  // CLOCK_MONOTONIC is one clock for every process on the machine; performance.timeOrigin is
  // sampled by each process at start-up (measured here: within 0.05 ms across 40 processes
  // started at once, but nothing bounds it under load).
  return Number(process.hrtime.bigint()) / 1e6;
}

/** Sends an IPC message to the parent and resolves once it is handed to the channel. */
export function send(message: Record<string, unknown>): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send) return resolve();
    process.send(message, undefined, undefined, () => resolve());
  });
}

/** Resolves with the next IPC message from the parent that matches. */
export function nextMessage<T extends { type: string }>(type: string): Promise<T> {
  return new Promise((resolve) => {
    const onMessage = (m: unknown) => {
      if (m !== null && typeof m === 'object' && (m as T).type === type) {
        process.off('message', onMessage);
        resolve(m as T);
      }
    };
    process.on('message', onMessage);
  });
}

/** Required environment variable. */
export function env(name: string): string {
  const value = process.env[name];
  if (value === undefined) throw new Error(`fixture: missing environment variable ${name}`);
  return value;
}

/** The PgSemaphore holding mode a fixture runs in: HOLDING (`transaction`, the default, or `session`). */
export function holdingMode(): 'transaction' | 'session' {
  const mode = process.env.HOLDING ?? 'transaction';
  if (mode !== 'transaction' && mode !== 'session') throw new Error(`fixture: HOLDING must be 'transaction' or 'session', got ${mode}`);
  return mode;
}

/** A child must not outlive its test: exit when the parent goes away. */
export function exitWithParent(): void {
  process.on('disconnect', () => process.exit(0));
}

/** Reports an unexpected error to the parent and exits non-zero. */
export async function fail(err: unknown): Promise<never> {
  const e = err as Error;
  await send({ type: 'error', name: e?.name, message: e?.message, stack: e?.stack });
  process.exit(1);
}
