/**
 * One `'abort'` listener per signal, shared by every waiter of a {@link PgSemaphore} that
 * waits with that signal. Callers often pass one long-lived signal (a shutdown signal) to
 * many waits at once: a listener per wait would trip Node's MaxListenersExceededWarning at
 * 11, and `AbortSignal.any` leaves an entry on the source signal per call that Node 20 never
 * collects. Here the listener is added when the first waiter subscribes and removed when the
 * last one leaves, so a signal carries at most one listener per instance, and none after.
 * @internal
 */
export class AbortFanout {
  private readonly subscribers = new Map<AbortSignal, { callbacks: Set<() => void>; onAbort: () => void }>();

  /** Calls `callback` when `signal` aborts; returns the function that unsubscribes. */
  subscribe(signal: AbortSignal, callback: () => void): () => void {
    let entry = this.subscribers.get(signal);
    if (!entry) {
      const callbacks = new Set<() => void>();
      const onAbort = () => {
        this.subscribers.delete(signal);
        for (const cb of [...callbacks]) cb();
      };
      entry = { callbacks, onAbort };
      this.subscribers.set(signal, entry);
      signal.addEventListener('abort', onAbort, { once: true });
    }
    const { callbacks, onAbort } = entry;
    callbacks.add(callback);
    return () => {
      if (!callbacks.delete(callback) || callbacks.size > 0) return;
      if (this.subscribers.get(signal)?.callbacks === callbacks) this.subscribers.delete(signal);
      signal.removeEventListener('abort', onAbort);
    };
  }
}
