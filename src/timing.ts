/**
 * Waits `ms` milliseconds, or less: resolves early (never rejects) when `signal` aborts, or
 * when the function handed to `onCut` is called (a way to cut it short without an
 * AbortController, whose abort builds a DOMException). Returns true when the full time
 * passed, false when it was cut short.
 *
 * Removes its abort listener when it settles, so any number of sleepers on one long-lived
 * signal add no lasting listeners. Not `timers/promises`: a sleep cut short there rejects
 * with a new AbortError, whose stack capture was about 5 % of a saturated worker's CPU.
 * @internal
 */
export function sleep(ms: number, signal?: AbortSignal, onCut?: (cut: () => void) => void): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(false);
  return new Promise<boolean>((resolve) => {
    const end = (full: boolean) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', cut);
      resolve(full);
    };
    const cut = () => end(false);
    const timer = setTimeout(() => end(true), Math.max(0, ms));
    signal?.addEventListener('abort', cut, { once: true });
    onCut?.(cut);
  });
}

/** Bounds of a {@link backoff}. @internal */
export interface BackoffOptions {
  /** The first delay, in ms. */
  min: number;
  /** The longest delay, in ms. */
  max: number;
  /** Growth per attempt. @default 2 */
  factor?: number;
  /** Random part: the result lies in [(1 - jitter) x d, d]. @default 0.5 */
  jitter?: number;
  /** Source of randomness in [0, 1), for tests. @default Math.random */
  random?: () => number;
}

/**
 * The delay before try number `attempt` (0-based): `min x factor^attempt`, capped at `max`,
 * then jittered down by up to `jitter` of itself so that many waiters spread out.
 * The one backoff of the core's wait loop and the BullMQ wrapper.
 * @internal
 */
export function backoff(attempt: number, options: BackoffOptions): number {
  const { min, max, factor = 2, jitter = 0.5, random = Math.random } = options;
  const base = Math.min(max, min * factor ** Math.min(Math.max(0, attempt), 64));
  return base * (1 - jitter + jitter * random());
}
