/**
 * Settles with `work`, or rejects at once with the signal's reason when the signal aborts
 * first (a lost ticket). `work` keeps running; its later rejection is swallowed. `onLoss`,
 * when given, runs first on that abort, or at once when the signal has aborted already.
 * @internal
 */
export function raceLoss<T>(signal: AbortSignal, work: Promise<T>, onLoss?: (reason: unknown) => void): Promise<T> {
  if (signal.aborted) {
    work.catch(() => undefined);
    onLoss?.(signal.reason);
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      work.catch(() => undefined);
      onLoss?.(signal.reason);
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}
