import { afterEach, describe, expect, it, vi } from 'vitest';
import { Gate, Waiter, type Attempt, type GateContext, type GateHold, type GateOptions } from '../../src/bullmq/gate.js';
import { GateSet } from '../../src/bullmq/gate-set.js';

// Who gets a freed hold, without any server: the gate with a fake acquire call, fake holds
// and a fake NOTIFY. Each step here runs within microtasks, far below the head's first
// fallback poll (125 ms at the earliest), so no poll interferes.

interface FakeHold extends GateHold {
  id: string;
  release: ReturnType<typeof vi.fn<(options?: { commit?: boolean }) => Promise<{ jobsWaiting: boolean }>>>;
}
const hold = (id: string, jobsWaiting = false): FakeHold => ({
  id,
  tickets: [1],
  lost: false,
  release: vi.fn(async () => ({ jobsWaiting })),
});

function setup(options: Partial<GateOptions> = {}) {
  const results: Array<Attempt<FakeHold> | Promise<Attempt<FakeHold>>> = [];
  let notify = () => undefined as void;
  const ctx: GateContext<FakeHold> = {
    tryHold: vi.fn(async () => results.shift() ?? 'busy'),
    watch: vi.fn(async (_names: string[], onRelease: () => void) => {
      notify = onRelease;
      return async () => undefined;
    }),
    promote: vi.fn(async () => undefined),
    onIdle: vi.fn(),
  };
  const gate = new Gate<FakeHold>('k', { names: ['api'], counts: [1] }, { wakeOnRelease: true, maxHandoffs: 32, ...options }, ctx);
  const aborts: AbortController[] = [];
  /** A job waiting in the gate; `settled` is what its wait resolved to (or 'aborted'). */
  const waiter = (name: string) => {
    const abort = new AbortController();
    aborts.push(abort);
    const w = { name, settled: undefined as undefined | null | 'aborted' | { hold: FakeHold; handoff: boolean } };
    void gate.wait(name, abort.signal, 60_000).then(
      (r) => (w.settled = r),
      () => (w.settled = 'aborted'),
    );
    return w;
  };
  const stop = () => aborts.forEach((a) => a.abort());
  return { gate, ctx, results, waiter, notify: () => notify(), stop };
}

let cleanup: () => void = () => undefined;
afterEach(() => cleanup());

const tick = () => new Promise<void>((r) => setImmediate(r));

describe('Gate: the choice of the next waiter', () => {
  it('hands a freed hold to the oldest waiter, with no acquire call, and the hold stays counted', async () => {
    const t = setup();
    cleanup = t.stop;
    const a = hold('a');
    t.results.push(a);
    expect(await t.gate.arrive('job-0')).toBe(a);
    const [w1, w2, w3] = [t.waiter('w1'), t.waiter('w2'), t.waiter('w3')];
    expect(t.gate.waiting).toBe(3);
    expect(await t.gate.free(a, { commit: true, reusable: true })).toBe(true);
    await tick();
    expect(w1.settled).toEqual({ hold: a, handoff: true });
    expect([w2.settled, w3.settled]).toEqual([undefined, undefined]);
    expect(a.release).not.toHaveBeenCalled();
    expect([t.gate.holding, t.gate.waiting]).toEqual([1, 2]);
    expect(await t.gate.free(a, { commit: true, reusable: true })).toBe(true);
    await tick();
    expect(w2.settled).toEqual({ hold: a, handoff: true });
    expect(t.ctx.tryHold).toHaveBeenCalledTimes(1);
  });

  it('passes over a waiter whose acquire call is in flight', async () => {
    const t = setup();
    cleanup = t.stop;
    const [w1, w2] = [t.waiter('w1'), t.waiter('w2')];
    let answer!: (a: Attempt<FakeHold>) => void;
    t.results.push(new Promise((r) => (answer = r)));
    await vi.waitFor(() => expect(t.ctx.watch).toHaveBeenCalled());
    t.notify(); // a release elsewhere wakes the head, which tries
    await vi.waitFor(() => expect(t.ctx.tryHold).toHaveBeenCalledTimes(1));
    const b = hold('b');
    t.gate.enter();
    expect(await t.gate.free(b, { commit: true, reusable: true })).toBe(true);
    await tick();
    expect(w2.settled).toEqual({ hold: b, handoff: true });
    expect(w1.settled).toBeUndefined();
    answer('busy');
    await tick();
    // back to waiting: the next freed hold is its
    expect(await t.gate.free(b, { commit: true, reusable: true })).toBe(true);
    await tick();
    expect(w1.settled).toEqual({ hold: b, handoff: true });
  });

  it('a head that acquires wakes the next waiter, which tries too', async () => {
    const t = setup();
    cleanup = t.stop;
    const [w1, w2] = [t.waiter('w1'), t.waiter('w2')];
    const [a, b] = [hold('a'), hold('b')];
    t.results.push(a, b);
    await vi.waitFor(() => expect(t.ctx.watch).toHaveBeenCalled());
    t.notify();
    await vi.waitFor(() => expect(w2.settled).toEqual({ hold: b, handoff: false }));
    expect(w1.settled).toEqual({ hold: a, handoff: false });
    expect(t.gate.holding).toBe(2);
  });

  it('releases instead after maxHandoffs hand-offs, and wakes the head', async () => {
    const t = setup({ maxHandoffs: 1 });
    cleanup = t.stop;
    const a = hold('a');
    t.results.push(a);
    await t.gate.arrive('job-0');
    const [w1, w2] = [t.waiter('w1'), t.waiter('w2')];
    expect(await t.gate.free(a, { commit: true, reusable: true })).toBe(true);
    expect(await t.gate.free(a, { commit: true, reusable: true })).toBe(false);
    expect(a.release).toHaveBeenCalledWith({ commit: true });
    expect(t.gate.holding).toBe(0);
    await tick();
    expect(w1.settled).toEqual({ hold: a, handoff: true });
    // w2, now the head, was woken and tried (the fake says busy)
    await vi.waitFor(() => expect(t.ctx.tryHold).toHaveBeenCalledTimes(2));
    expect(w2.settled).toBeUndefined();
  });

  it('never hands on a transaction the job used, a lost hold, or one without tickets', async () => {
    const t = setup();
    cleanup = t.stop;
    t.waiter('w1');
    const used = hold('used');
    expect(await t.gate.free(used, { commit: false, reusable: false })).toBe(false);
    expect(used.release).toHaveBeenCalledWith({ commit: false });
    const lost = { ...hold('lost'), lost: true };
    expect(await t.gate.free(lost, { commit: true, reusable: true })).toBe(false);
    const empty = { ...hold('disabled'), tickets: [] };
    expect(await t.gate.free(empty, { commit: true, reusable: true })).toBe(false);
    expect(t.gate.waiting).toBe(1);
  });

  it('with nobody waiting, a release promotes put-back jobs only when some are recorded', async () => {
    const t = setup();
    const a = hold('a', true);
    expect(await t.gate.free(a, { commit: true, reusable: true })).toBe(false);
    expect(t.ctx.promote).toHaveBeenCalledWith(a);
    const b = hold('b', false);
    await t.gate.free(b, { commit: true, reusable: true });
    expect(t.ctx.promote).toHaveBeenCalledTimes(1);
  });

  it('without wakeOnRelease, always releases and never promotes', async () => {
    const t = setup({ wakeOnRelease: false });
    const a = hold('a', true);
    expect(await t.gate.free(a, { commit: true, reusable: true })).toBe(false);
    expect(a.release).toHaveBeenCalled();
    expect(t.ctx.promote).not.toHaveBeenCalled();
  });
});

describe('Gate: arrivals', () => {
  it('try in parallel while tickets are plentiful; once a try found none and jobs wait, arrivals queue behind them', async () => {
    const t = setup();
    cleanup = t.stop;
    const [a, b] = [hold('a'), hold('b')];
    t.results.push(a, b);
    expect(await Promise.all([t.gate.arrive('1'), t.gate.arrive('2')])).toEqual([a, b]);
    expect(await t.gate.arrive('3')).toBeNull(); // busy: saturated now
    expect(t.ctx.tryHold).toHaveBeenCalledTimes(3);
    t.waiter('w1');
    expect(await t.gate.arrive('4')).toBeNull();
    expect(t.ctx.tryHold).toHaveBeenCalledTimes(3);
  });

  it('while saturated and nobody waits, only one arriving try is in flight', async () => {
    const t = setup();
    t.results.push('busy');
    await t.gate.arrive('0');
    let answer!: (a: Attempt<FakeHold>) => void;
    t.results.push(new Promise((r) => (answer = r)));
    const first = t.gate.arrive('1');
    expect(await t.gate.arrive('2')).toBeNull();
    answer('busy');
    expect(await first).toBeNull();
    expect(t.ctx.tryHold).toHaveBeenCalledTimes(2);
  });

  it('counts Postgres unreachable as no ticket, without marking the set saturated', async () => {
    const t = setup();
    t.results.push('unavailable');
    expect(await t.gate.arrive('0')).toBeNull();
    let answer!: (a: Attempt<FakeHold>) => void;
    t.results.push(new Promise((r) => (answer = r)));
    const first = t.gate.arrive('1');
    // not saturated: a second arrival tries in parallel
    const second = t.gate.arrive('2');
    expect(t.ctx.tryHold).toHaveBeenCalledTimes(3);
    answer('busy');
    await Promise.all([first, second]);
  });

  it('is dropped from its set once nothing uses it', async () => {
    const ctx = { tryHold: vi.fn(async () => 'busy' as const), watch: vi.fn(), promote: vi.fn() };
    const set = new GateSet<FakeHold>({ wakeOnRelease: true, maxHandoffs: 32 }, ctx);
    const req = { names: ['api'], counts: [1] };
    const g = set.gateFor(req);
    expect(set.gateFor(req)).toBe(g);
    g.enter();
    expect(set.activeSets(set.gateFor({ names: ['other'], counts: [1] }))).toBe(1);
    g.leave();
    expect(set.gateFor(req)).not.toBe(g);
  });
});

describe('Waiter', () => {
  it('has one state, changed only by its methods, which check it', () => {
    const w = new Waiter<string>();
    expect(w.state).toBe('waiting');
    w.wake();
    expect(w.state).toBe('woken');
    w.startTrying();
    expect(w.state).toBe('trying');
    expect(() => w.handOver('h')).toThrow(/expected state "waiting" or "woken" to be handed a hold, got "trying"/);
    w.wake();
    expect(w.state).toBe('trying');
    w.stopTrying();
    w.handOver('h');
    expect([w.state, w.hold]).toEqual(['handed', 'h']);
    expect(() => w.startTrying()).toThrow(/got "handed"/);
  });
});
