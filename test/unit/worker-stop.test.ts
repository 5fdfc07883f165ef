import { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { PAUSE_CHECK_MS, WorkerStop } from '../../src/bullmq/worker-stop.js';

// The stop state of a BullMQ Worker as the wrapper sees it, with a fake Worker: close() emits
// `closing` before it assigns `worker.closing`; pause() only sets a flag.

class FakeWorker extends EventEmitter {
  closing: Promise<void> | undefined;
  paused = false;
  isPaused() {
    return this.paused;
  }
  isRunning() {
    return !this.closing;
  }
  cancelJob() {
    return false;
  }
  close() {
    this.emit('closing', 'closing queue');
    this.closing = Promise.resolve();
  }
}

afterEach(() => {
  vi.useRealTimers();
});

describe('WorkerStop', () => {
  it('is undefined for a job without a Worker (a sandboxed child, a test fake)', () => {
    expect(WorkerStop.of(undefined)).toBeUndefined();
    expect(WorkerStop.of({ name: 'queue' })).toBeUndefined();
  });

  it('is one per worker, and aborts its signal the moment close() emits `closing`', () => {
    const w = new FakeWorker();
    const stop = WorkerStop.of(w)!;
    expect(WorkerStop.of(w)).toBe(stop);
    const signal = stop.signal;
    expect(stop.stopping).toBe(false);
    expect(signal.aborted).toBe(false);
    let seenInListener: boolean | undefined;
    signal.addEventListener('abort', () => (seenInListener = stop.stopping));
    w.close();
    expect(signal.aborted).toBe(true);
    expect(seenInListener).toBe(true);
    expect(stop.signal.aborted).toBe(true);
  });

  it('notices pause() within one check while jobs use it, and gives a fresh signal after resume', () => {
    vi.useFakeTimers();
    const w = new FakeWorker();
    const stop = WorkerStop.of(w)!;
    const done = stop.use();
    const signal = stop.signal;
    w.paused = true;
    expect(signal.aborted).toBe(false);
    vi.advanceTimersByTime(PAUSE_CHECK_MS);
    expect(signal.aborted).toBe(true);
    w.paused = false;
    const fresh = stop.signal;
    expect(fresh.aborted).toBe(false);
    expect(fresh).not.toBe(signal);
    done();
    done(); // idempotent
    // nobody uses it: no timer left running
    expect(vi.getTimerCount()).toBe(0);
  });

  it('allows many waiting jobs on one signal without a listener warning', () => {
    const warn = vi.spyOn(process, 'emitWarning');
    const stop = WorkerStop.of(new FakeWorker())!;
    for (let i = 0; i < 50; i++) stop.signal.addEventListener('abort', () => undefined);
    expect(warn).not.toHaveBeenCalled();
    warn.mockRestore();
  });
});
