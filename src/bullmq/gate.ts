import type { NormalizedRequest } from '../request.js';
import { backoff, sleep } from '../timing.js';
import type { LingerClock } from './linger.js';

/**
 * A hold is handed on for at most this long after it was acquired (besides `maxHandoffs`
 * hand-offs), then released so that the next waiting process gets its turn: with long jobs
 * or short runs, a count alone leaves so few chain ends that which host held the tickets
 * first decides how the work spreads (the demo's 400 jobs of ~35 ms: 5.27 → 1.4-2.8 with
 * chains of 33). 250 ms keeps a chain of 10 ms jobs about 25 long.
 */
const MAX_CHAIN_MS = 250;
/**
 * The time limit of a chain while tickets are plentiful (see `Gate.plentiful`): nobody else
 * needs a turn then, and a chain that ended would only be acquired again by the same worker
 * (uncontended, 10 ms jobs: a release and an acquire every ~12 jobs with 250 ms; with 1 s,
 * `maxHandoffs` ends most chains first). It stays short because "plentiful" is only as fresh as
 * this set's last try and last release, neither of which a kept chain makes: a process that
 * starts waiting meanwhile (another's try took the last ticket) waits for the first of these
 * chains to end, at most this long, instead of `MAX_CHAIN_MS`; that release finds it waiting
 * and every chain of the set ends within `MAX_CHAIN_MS` again.
 */
const MAX_PLENTIFUL_CHAIN_MS = 1_000;
/**
 * Only jobs shorter than this (the set's mean hold here) get the plentiful chain limit: with
 * longer ones the 250 ms limit already ends a chain after a job or two, each release tells the
 * process whether others wait, and a longer chain would save little against news that ages by
 * a whole job at each step (large cap, 500 ms jobs: host spreads of 1.6 in a full run with the
 * longer limit, against 1.02-1.14 without).
 */
const PLENTIFUL_MAX_HOLD_MS = MAX_CHAIN_MS / 8;
/**
 * After a release of the set named another waiting process, arriving jobs here make no try for
 * this long (see `Gate.yieldsToNamed`): about what that process needs to hear the NOTIFY and
 * try. Large cap (240 slots, 200 tickets, 500 ms jobs): acquire calls per job 1.09-1.22 → 1.02-1.08
 * at the same jobs/s; 250 ms instead cost 3-16 % of the jobs/s there (see docs/DESIGN-NOTES.md,
 * eighth round).
 */
const YIELD_MS = 5;
/** The most arriving tries of one gate in flight at once while tickets seem plentiful (see `Gate.arrive`). */
const MAX_ARRIVAL_WINDOW = 1024;

/**
 * A gate is the shared scheduling state of one semaphore set (one normalized request) in one
 * limited processor: the jobs of this process waiting for it, how many hold it, and how long
 * they hold it. It decides who gets a ticket:
 *
 * - an arriving job tries at once while tickets are plentiful ({@link Gate.arrive}); once a
 *   try found none, arriving jobs queue behind the waiters and only one try per set is in
 *   flight at a time, so a burst of arrivals does not stampede Postgres; and for `YIELD_MS`
 *   after a release of the set named another waiting process, none tries (that ticket is its);
 * - a waiting job ({@link Gate.wait}) sleeps until it is handed a hold, woken (a local
 *   release, or a NOTIFY from another process), or its fallback poll comes round; only the
 *   head of the queue tries;
 * - a job that is done with its hold gives it to {@link Gate.free}, the one place that
 *   decides what happens to it: hand it to the next waiter, or release it and wake the next
 *   waiter (or promote put-back jobs when nobody here waits on its semaphores).
 *
 * Nothing outside this class changes its counters. It talks to Postgres and BullMQ only
 * through {@link GateContext}, so it is unit-tested with fakes (`test/unit/gate.test.ts`).
 * @internal
 */

/** What a gate needs of a hold (a {@link Hold} in production, a fake in unit tests). @internal */
export interface GateHold {
  /** The tickets held (only their number matters here; none when limiting is disabled). */
  readonly tickets: readonly unknown[];
  readonly lost: boolean;
  /** The hold is over (released, rolled back, closed): never handed on. Undefined: not known. */
  readonly released?: boolean;
  /** `checkJobsWaiting`: also say whether put-back jobs are recorded as waiting (else `jobsWaiting` may be false). */
  release(options?: { commit?: boolean; checkJobsWaiting?: boolean }): Promise<{ jobsWaiting: boolean; notified?: boolean }>;
}

/** The outcome of one acquire call: a hold, no ticket free, or Postgres unreachable. @internal */
export type Attempt<H> = H | 'busy' | 'unavailable';

/** The gate's only ways out: acquire, watch for releases elsewhere, promote put-back jobs. @internal */
export interface GateContext<H extends GateHold> {
  /** One acquire call for the set, without waiting; `onShort` hears which semaphores were short when it is busy (empty: unknown). */
  tryHold(req: NormalizedRequest, label: string, onShort?: (names: readonly string[]) => void): Promise<Attempt<H>>;
  /**
   * Calls `onRelease` when another process releases tickets of these semaphores; resolves to a
   * function that stops it. `onRelease` returns false when nobody here took the wake-up, and
   * may call `relay` later to pass a wake-up that named this process on to the next one.
   * `own`: the freed semaphore is one only this watch waits on in the process (see `OnRelease`).
   */
  watch(names: string[], onRelease: (relay: () => void, own?: boolean) => boolean | void): Promise<() => Promise<void>>;
  /** NOTIFYs from other processes' releases reach this process (the LISTEN connection is confirmed). */
  hearsReleases(): boolean;
  /** After a release that found no local waiter on its semaphores while jobs are recorded as waiting. */
  promote(hold: H): Promise<void>;
  /** Whether anything here could promote put-back jobs (so a release should ask whether some are recorded). */
  mayPromote(): boolean;
  /**
   * Tickets of this gate's semaphores may have come free (a NOTIFY, or a release here that
   * no waiter of this gate takes): wake the oldest idle waiter among the gates sharing a
   * semaphore with it (`GateSet.kick`; a gate alone wakes its own head).
   */
  kick(gate: Gate<H>, relay?: () => void): boolean;
  /** Another gate sharing a semaphore with this one has waiters and found no ticket last: queue behind them. */
  groupSaturated(gate: Gate<H>): boolean;
  /** A job of this process waits at this gate or at one sharing a semaphore with it. */
  groupWaits(gate: Gate<H>): boolean;
  /**
   * This gate's head is the oldest idle waiter among the gates sharing a semaphore with it and
   * none of them is trying: the one whose fallback poll may try (one poller per group).
   */
  leadsGroup(gate: Gate<H>): boolean;
  /** The gate is not used any more (no job, no waiter, no hold, not watching). */
  onIdle(gate: Gate<H>): void;
}

/** The options a gate obeys. @internal */
export interface GateOptions {
  /** Hand holds on, wake waiters and promote (`wakeOnRelease`); off, every job just tries once. */
  wakeOnRelease: boolean;
  /** A hold is handed on at most this many times, then released so other processes get a turn. */
  maxHandoffs: number;
  /**
   * How long a hold nobody here waits for is kept for the next arriving job of the set, in ms
   * (see {@link Gate.free}); 0 or absent: released at once.
   */
  linger?: number;
  /**
   * When given (and `linger` above 0), how long a hold is kept follows how long the set's next
   * jobs have been taking to come (see {@link LingerClock}) instead of `linger` as it is.
   */
  lingerClock?: LingerClock;
}

/** How a job ended with its hold. @internal */
export interface HoldEnd {
  /** Commit the holding transaction (false: roll it back). */
  commit: boolean;
  /** The transaction carries nothing of the job (it never touched `tx`), so the hold may be handed on. */
  reusable: boolean;
  /** False when no next job will come for it (the job's worker is stopping): never kept (`linger`). */
  mayKeep?: boolean;
}

/**
 * Where a waiting job stands:
 * - `waiting`: queued, asleep until woken, handed a hold, or its poll comes round;
 * - `woken`: told a ticket may be free; tries as soon as it is the head;
 * - `trying`: its acquire call is in flight (never handed a hold meanwhile; the next idle
 *   waiter is the head);
 * - `handed`: it received a hold from a finished job, and left the queue.
 * @internal
 */
export type WaiterState = 'waiting' | 'woken' | 'trying' | 'handed';

/** One job waiting in a gate. Its state changes only through these methods. @internal */
export class Waiter<H> {
  /** Waiters of every gate in arrival order: who is woken first across gates sharing a semaphore. */
  private static arrivals = 0;
  /** This waiter's place in that order. */
  readonly order = ++Waiter.arrivals;
  /** See {@link WaiterState}; read it through `state`. */
  private current: WaiterState = 'waiting';
  /** The hold handed over; set exactly when the state is `handed`. */
  private handed: H | undefined;
  /**
   * Cuts the current pause short; set only while the waiter pauses. A plain function, not an
   * AbortController: aborting one creates a DOMException, two per hand-off at saturation.
   */
  private cut: (() => void) | undefined;
  /** Its pause was cut short because it became the head (not a wake-up): poll on, do not try at once. */
  private nudged = false;
  /** Passes the wake-up that woke it on to the next waiting process, if it named this one. */
  private relayFn: (() => void) | undefined;
  /** A wake-up it holds was for a semaphore only its gate watches here (see `Gate.wakeOwn`). */
  private own = false;
  /**
   * The relays of further wake-ups by releases elsewhere (NOTIFYs naming this process, or
   * passed on from one) that came before it tried, one per wake-up (see `Gate.passOnAll`).
   */
  private moreRelays: Array<() => void> = [];

  /** Where the waiter stands (see {@link WaiterState}). */
  get state(): WaiterState {
    return this.current;
  }

  /** The hold handed over, once the state is `handed`. */
  get hold(): H | undefined {
    return this.handed;
  }

  /** Whether a hand-off may go to this waiter, and whether it counts as the head. */
  get idle(): boolean {
    return this.current === 'waiting' || this.current === 'woken';
  }

  /**
   * A ticket may be free: try as soon as you are the head. A second wake-up before the try
   * keeps both relays, apart (each passes on a wake-up of its own; the same relay twice, as
   * wake-ups passed on by another process share one, counts twice); `own`: see `Gate.wakeOwn`.
   */
  wake(relay?: () => void, own = false): void {
    if (this.current === 'waiting') this.current = 'woken';
    if (relay) {
      if (this.relayFn) this.moreRelays.push(relay);
      else this.relayFn = relay;
    }
    if (own) this.own = true;
    this.cut?.();
  }

  /** Whether a wake-up it holds was an own one (see `Gate.wakeOwn`); read before {@link Waiter.takeRelay}. */
  get wokenOwn(): boolean {
    return this.own;
  }

  /**
   * Whether it holds a wake-up that came from a release elsewhere by NOTIFY (one naming this
   * process, or passed on from one): one release's ticket. Read before {@link Waiter.takeRelay}.
   */
  get wokenByRelease(): boolean {
    return this.relayFn !== undefined || this.own;
  }

  /** The relay of the first wake-up it holds (and forgets it, and whether it was own). */
  takeRelay(): (() => void) | undefined {
    const r = this.relayFn;
    this.relayFn = undefined;
    this.own = false;
    return r;
  }

  /** The relays of the further wake-ups it holds (and forgets them); see `moreRelays`. */
  takeMoreRelays(): Array<() => void> {
    const r = this.moreRelays;
    this.moreRelays = [];
    return r;
  }

  /**
   * It became the head while asleep (until its deadline, as waiters behind the head sleep):
   * cut the pause short so that it re-enters the head's backoff poll, without marking it woken.
   */
  nudge(): void {
    if (!this.cut) return;
    this.nudged = true;
    this.cut();
  }

  /** Whether the last pause ended by {@link Waiter.nudge} (and forgets it). */
  takeNudge(): boolean {
    const n = this.nudged;
    this.nudged = false;
    return n;
  }

  /** A wake-up it could not use (it was not the head) was taken back by the head: waiting again. */
  sleepAgain(): void {
    if (this.current === 'woken') this.current = 'waiting';
  }

  /** Gives this waiter a hold (it must be idle). */
  handOver(hold: H): void {
    this.expectIdle('be handed a hold');
    this.current = 'handed';
    this.handed = hold;
    this.cut?.();
  }

  /** Starts an acquire call (it must be idle). */
  startTrying(): void {
    this.expectIdle('try');
    this.current = 'trying';
  }

  /** The acquire call found nothing: back to waiting. */
  stopTrying(): void {
    if (this.state !== 'trying') throw new Error(`waiter: expected state "trying" to stop trying, got "${this.state}"`);
    this.current = 'waiting';
  }

  /**
   * Sleeps `ms`, or less when woken, handed a hold or `signal` aborts; not at all when
   * already handed a hold or aborted. A waiter woken while it was not the head sleeps on
   * (the wake-up stays in its state until it is the head); returning at once would spin.
   */
  async pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
    if (this.state === 'handed' || signal?.aborted) return;
    try {
      await sleep(ms, signal, (cut) => (this.cut = cut));
    } finally {
      this.cut = undefined;
    }
  }

  private expectIdle(what: string): void {
    if (!this.idle) throw new Error(`waiter: expected state "waiting" or "woken" to ${what}, got "${this.state}"`);
  }
}

/** One function that calls each of `fns`. */
function all(fns: ReadonlyArray<() => void>): () => void {
  return fns.length === 1 ? fns[0]! : () => fns.forEach((f) => f());
}

/** The shared scheduling state of one semaphore set in one limited processor (see the file's comment). @internal */
export class Gate<H extends GateHold> {
  /** Jobs of this process waiting for the set, oldest first; a waiter leaves when handed a hold or done waiting. */
  private readonly waiters: Array<Waiter<H>> = [];
  /** Holds of this process on the set, in use by running jobs (a hold handed on counts once). */
  private holdCount = 0;
  /** Jobs of this process using the gate, from arrival until they are done with it. */
  private jobCount = 0;
  /** Acquire calls in flight from jobs that just arrived (not from waiters). */
  private arriving = 0;
  /**
   * How many arriving tries may be in flight at once while the set is not known to be
   * saturated: 1 at first and after a try that found no ticket, doubled by each arriving try
   * that finds one (a slow start, see `arrive`), at most {@link MAX_ARRIVAL_WINDOW}.
   */
  private arrivalWindow = 1;
  /** Jobs that arrived while the window was full, resumed when an arriving try ends. */
  private readonly arrivalQueue: Array<() => void> = [];
  /** The last acquire call that reached Postgres found no ticket (cleared by the next success). */
  private saturated = false;
  /** The last acquire call could not reach Postgres (no arrival window then: every arrival finds out at once). */
  private unreachable = false;
  /**
   * Wake-ups that came while a waiter of this gate was trying and were held back (one try at a
   * time per group); the trying waiter takes them when its call comes back (see `passOnAll`).
   */
  private heldBackWakeUps = 0;
  /** The relays of the held-back wake-ups that named this process (or were passed on from one). */
  private heldBackRelays: Array<() => void> = [];
  /** The semaphores that last busy try found short; undefined: not known (any of the set's). */
  private short: readonly string[] | undefined;
  /** Mean time a job held its tickets, in ms: an exponential average (weight 0.1), 0 until the first job ends. */
  private meanHold = 0;
  /** Times each hold in use was handed on; a hold enters when acquired and leaves when released. */
  private readonly handoffs = new Map<H, { count: number; since: number }>();
  /** The watch on releases by other processes, while anyone waits (its stop function once it resolves). */
  private watching: Promise<() => Promise<void>> | undefined;
  /** Holds kept after their job for the next arriving one (see {@link Gate.free}), newest last, each with when it was kept and the timer that releases it. */
  private readonly parked: Array<{ hold: H; at: number; timer: NodeJS.Timeout }> = [];
  /** The last release of this set woke another process waiting on one of its semaphores: tickets are not plentiful. */
  private othersWaited = false;
  /** When a release of this set last found nobody waiting anywhere (no NOTIFY sent, no put-back jobs); 0: never. */
  private quietReleaseAt = 0;
  /** When a release of this set last named a waiting process by NOTIFY (this process hearing them); 0: never, or not since. */
  private namedAt = 0;

  constructor(
    /** The set's identity within its processor. */
    readonly key: string,
    /** The semaphores and tickets each job of this gate takes. */
    readonly req: NormalizedRequest,
    private readonly options: GateOptions,
    private readonly ctx: GateContext<H>,
  ) {}

  /** Holds of this process on the set right now. */
  get holding(): number {
    return this.holdCount;
  }

  /** Jobs waiting in this process right now. */
  get waiting(): number {
    return this.waiters.length;
  }

  /** Mean hold time in ms (0: unknown yet). */
  get meanHoldMs(): number {
    return this.meanHold;
  }

  /**
   * Jobs wait here after a try that found a semaphore of `names` short (or did not say which
   * was): arrivals of a set with those names queue behind them instead of trying.
   */
  blocks(names: readonly string[]): boolean {
    if (!this.saturated || this.waiters.length === 0) return false;
    return (this.short ?? this.req.names).some((n) => names.includes(n));
  }

  /** A waiter's acquire call is in flight (a woken or polling head). */
  get trying(): boolean {
    return this.waiters.some((w) => w.state === 'trying');
  }

  /** The oldest idle waiter's place in the arrival order (undefined: none idle). */
  get headOrder(): number | undefined {
    return this.head()?.order;
  }

  /** Holding or waiting: the set takes part in the fair share of worker slots. */
  get active(): boolean {
    return this.holdCount > 0 || this.waiters.length > 0;
  }

  /** A job starts using the gate. */
  enter(): void {
    this.jobCount++;
  }

  /** A job is done with the gate. */
  leave(): void {
    this.jobCount--;
    this.dropIfIdle();
  }

  /**
   * An arriving job may try at once: always without wake-ups; otherwise only when nobody
   * waits, and while the set is saturated only one arriving try at a time.
   */
  private get mayTryOnArrival(): boolean {
    if (!this.options.wakeOnRelease) return true;
    return this.waiters.length === 0 && (!this.saturated || this.arriving === 0) && !this.ctx.groupSaturated(this) && !this.yieldsToNamed();
  }

  /**
   * A release of this set named a waiting process within the last `YIELD_MS`: the ticket it
   * freed is that process's turn, and an arriving job here would mostly take it first (it needs
   * no NOTIFY), so that process's try would come back busy. The arriving job takes the usual
   * way instead (it waits here, or is put back); jobs arriving after the window try as before.
   */
  private yieldsToNamed(): boolean {
    return this.namedAt !== 0 && Date.now() - this.namedAt < YIELD_MS;
  }

  /**
   * An arriving job's try; null when it may not try now, or found no ticket, or a hold was kept
   * while it queued behind the arrival window (see {@link Gate.arriveOrTakeParked}).
   *
   * While the set is not known to be saturated, arriving jobs try side by side, but no more
   * at once than the arrival window: one at first, twice as many after each arriving try that
   * found a ticket. A job beyond it waits for the next arriving try to end (one round trip)
   * and then tries, or finds the set saturated and takes the usual way. So a burst of arrivals
   * (every slot of a fleet that just started) no longer sends one try per slot, each on a
   * connection of its own, at a semaphore of a few tickets: measured at the start of the
   * saturated benchmark, 20 tries in flight per process and all 8 pool connections opened.
   */
  async arrive(label: string): Promise<H | null> {
    while (this.options.wakeOnRelease && !this.saturated && !this.unreachable && this.arriving >= this.arrivalWindow && this.mayTryOnArrival) {
      await new Promise<void>((resume) => this.arrivalQueue.push(resume));
      // a hold kept while it queued is this job's, without a try (`arriveOrTakeParked` takes it)
      if (this.parked.length > 0) return null;
    }
    if (!this.mayTryOnArrival) {
      // whatever turned this job away (the set or its group saturated, a job waiting) turns the
      // queued ones away too: they must not stay queued with no arriving try left to resume them
      this.resumeArrivals(this.arrivalQueue.length);
      return null;
    }
    this.arriving++;
    let got: { hold: H | null; more: boolean } | undefined;
    try {
      got = await this.attempt(label);
    } finally {
      this.arriving--;
      if (got?.hold) this.arrivalWindow = Math.min(this.arrivalWindow * 2, MAX_ARRIVAL_WINDOW);
      else if (this.saturated) this.arrivalWindow = 1;
      // Saturated now: all of them, to find that out (one tries, the others wait or go back).
      // Postgres unreachable, or the try threw: all of them, each to find out for itself at once
      // as before the window (not one connect timeout after another).
      this.resumeArrivals(got?.hold ? this.arrivalWindow - this.arriving : this.arrivalQueue.length);
    }
    if (got.more && this.options.wakeOnRelease) this.wakeHead();
    return got.hold;
  }

  /** Lets up to `n` queued arrivals go on (each checks again whether it may try). */
  private resumeArrivals(n: number): void {
    for (const resume of this.arrivalQueue.splice(0, Math.max(0, n))) resume();
  }

  /**
   * Waits in this process for a hold, at most `budgetMs`: handed over by a finished job, or
   * acquired by this waiter when it is the head and was woken or its poll came round.
   * @returns the hold and whether it was handed over; null when the budget ran out.
   * @throws the signal's reason when it aborts.
   */
  async wait(label: string, signal: AbortSignal | undefined, budgetMs: number): Promise<{ hold: H; handoff: boolean } | null> {
    // a hold kept for the next job since this one arrived is its at once
    const kept = this.takeParked();
    if (kept) return { hold: kept, handoff: true };
    const me = new Waiter<H>();
    this.waiters.push(me);
    this.startWatching();
    const deadline = Date.now() + budgetMs;
    let polls = 0;
    try {
      for (;;) {
        if (me.state === 'handed') return { hold: me.hold!, handoff: true };
        signal?.throwIfAborted();
        const now = Date.now();
        if (now >= deadline) return null;
        const isHead = this.head() === me;
        // a head that was nudged (it just became the head) polls after its backoff, not at once
        const nudged = me.takeNudge();
        // the poll is the fallback for a lost wake-up: one per group of gates sharing a
        // semaphore (the waiter a kick would wake), not one per gate
        if (isHead && (me.state === 'woken' || (polls > 0 && !nudged && this.ctx.leadsGroup(this)))) {
          // The (first) wake-up that named this process is used up by this try, whatever it
          // finds: a try that comes back busy because another semaphore of the request was short
          // does not pass it on (in global + per tenant that relay cost a third more acquire
          // calls, mostly busy ones elsewhere, for no more jobs/s; see docs/DESIGN-NOTES.md,
          // fifth round). With one ticket per job (`ticketPerWakeUp`), a wake-up from a release
          // elsewhere announces that release's ticket: a success uses it and says nothing of more.
          const oneTicket = this.ticketPerWakeUp && me.state === 'woken' && me.wokenByRelease;
          me.takeRelay();
          // further wake-ups that came while it slept: each announces a ticket this try does not
          // need, passed on after a success (with one ticket per job; otherwise dropped, as the
          // first one's relay is: see `passOnAll`)
          const taken = me.takeMoreRelays();
          const more = this.ticketPerWakeUp ? taken : [];
          me.startTrying();
          let got: { hold: H | null; more: boolean } | undefined;
          let heldBack = 0;
          let heldBackRelays: Array<() => void> = [];
          try {
            got = await this.attempt(label);
          } finally {
            // no await between this and the return below: nothing can hand this waiter a hold meanwhile
            me.stopTrying();
            // A wake-up held back by the group while this call was in flight announces a ticket
            // this call may not have used (another release's): pass it on after any outcome.
            heldBack = this.heldBackWakeUps;
            heldBackRelays = this.heldBackRelays;
            this.heldBackWakeUps = 0;
            this.heldBackRelays = [];
            // the call threw: this waiter leaves, the next one of the group takes the wake-ups
            if (got === undefined && heldBack > 0) queueMicrotask(() => this.passOnAll(heldBackRelays, heldBackRelays.at(-1)));
          }
          if (got.hold) {
            if (got.more && !oneTicket) queueMicrotask(() => this.wakeHead());
            // after this waiter left the queue (the finally below): the wake-ups this try did not
            // use go to the group's next waiter (one try at a time) or on to the next process
            if (heldBack > 0 || more.length > 0) queueMicrotask(() => this.passOnAll([...heldBackRelays, ...more], heldBackRelays.at(-1)));
            return { hold: got.hold, handoff: false };
          }
          // A wake-up that came while this call was in flight may announce a ticket the call
          // did not see: one held back by the group (one try at a time; the group's oldest
          // idle waiter takes it, possibly of another gate), or one that went to the waiter
          // behind us and is of no use to it while we are the head again. Take it and try once
          // more at once, instead of leaving the ticket to the next poll.
          if (heldBack > 0) {
            this.takeMissedWakeUp(me);
            this.passOnAll(heldBackRelays, heldBackRelays.at(-1));
            if (me.state === 'woken') continue;
          } else if (this.takeMissedWakeUp(me)) {
            me.wake();
            continue;
          }
        }
        // Wake-ups come from local releases and NOTIFY; the head's poll is only the fallback
        // for a lost one, so it starts slow. The others sleep until woken. A watch that failed
        // is tried again by the head each time round this loop (a poll or a wake-up), one watch
        // at a time (see `startWatching`).
        if (isHead) this.startWatching();
        const pause = isHead ? backoff(polls, { min: 250, max: 2_000 }) : deadline - now;
        polls++;
        await me.pause(Math.max(1, Math.min(pause, deadline - now)), signal);
      }
    } finally {
      const wasHead = this.head() === me;
      const i = this.waiters.indexOf(me);
      if (i >= 0) this.waiters.splice(i, 1);
      if (me.state === 'woken') {
        // it leaves (deadline, abort) with a wake-up it did not use: the next waiter of the
        // group takes it, or the next process when nobody here waits
        this.passOnFrom(me);
      } else if (wasHead) {
        // the new head sleeps until its deadline (waiters behind the head do): make it poll
        this.head()?.nudge();
      }
      if (this.waiters.length === 0) void this.stopWatching();
    }
  }

  /** Adds one job's hold time to the mean. */
  recordHoldTime(ms: number): void {
    this.meanHold = this.meanHold === 0 ? ms : this.meanHold * 0.9 + ms * 0.1;
  }

  /**
   * The one dispatcher: a job is done with `hold`. Hands it to the next waiter when it may
   * ({@link Gate.mayHandOn}); with nobody waiting and tickets plentiful, keeps it `linger` ms
   * for the next arriving job ({@link Gate.takeParked}); otherwise releases it, then wakes the
   * next waiter, or, when nobody here waits on its semaphores (at this gate or one sharing a
   * semaphore with it) and jobs are recorded as waiting, promotes them.
   * @returns true when the hold was handed on or kept.
   */
  async free(hold: H, end: HoldEnd): Promise<boolean> {
    const mayHandOn = this.mayHandOn(hold, end);
    const next = mayHandOn ? this.head() : undefined;
    if (next) {
      this.countHandoff(hold);
      const wasWoken = next.state === 'woken';
      this.waiters.splice(this.waiters.indexOf(next), 1);
      next.handOver(hold);
      // it was told that a ticket came free (a NOTIFY, a kick) and takes a hold instead: the
      // wake-up goes to the next waiter (of the group), or nobody would use that ticket
      if (wasWoken) this.passOnFrom(next);
      // the new head was asleep until its deadline: make it poll
      else this.head()?.nudge();
      return true;
    }
    this.holdCount--;
    if (mayHandOn && end.mayKeep !== false && this.mayLinger()) {
      this.park(hold);
      return true;
    }
    return this.release(hold, end);
  }

  /**
   * Nobody here waits for the set and tickets are plentiful: nothing of this worker or, as
   * far as the last release could tell, of another process waits on its semaphores, and the
   * last try found a ticket. BullMQ hands the slot its next job a moment after this one, so
   * the hold is kept for it (a hand-off, no round trip) rather than released and acquired
   * again (two). An arrival's try in flight does not stop it: if that try comes back busy,
   * its job takes the kept hold ({@link Gate.arriveOrTakeParked}, {@link Gate.wait}) instead
   * of waiting or going back beside it. (Not keeping it then cost short jobs half their
   * hand-offs: uncontended with jobs of about 0 ms, 5 slots, a try for 47-54 % of the jobs.)
   */
  private mayLinger(): boolean {
    return (this.options.linger ?? 0) > 0 && this.plentiful();
  }

  /**
   * Tickets are plentiful as far as this process can tell: nobody here waits for the set, the
   * last try found a ticket, the last release woke nobody elsewhere, and no set sharing a
   * semaphore with this one found its tickets taken.
   */
  private plentiful(): boolean {
    return this.waiters.length === 0 && !this.saturated && !this.othersWaited && !this.ctx.groupSaturated(this);
  }

  /** Keeps `hold` for the next arriving job, at most `linger` ms (or the clock's); then it is released. */
  private park(hold: H): void {
    const clock = this.options.lingerClock;
    const entry = {
      hold,
      at: Date.now(),
      timer: setTimeout(() => {
        const i = this.parked.indexOf(entry);
        if (i < 0) return;
        this.parked.splice(i, 1);
        clock?.expired(entry.at);
        this.releaseKept(hold);
      }, clock?.ms ?? this.options.linger),
    };
    entry.timer.unref?.();
    this.parked.push(entry);
    // an arrival queued behind the arrival window takes it rather than waiting for a try to end
    this.resumeArrivals(1);
  }

  /** Releases the holds kept for a next job (its worker is closing: no next job comes). */
  releaseParked(): void {
    for (let entry = this.parked.pop(); entry; entry = this.parked.pop()) {
      clearTimeout(entry.timer);
      this.releaseKept(entry.hold);
    }
  }

  /** Releases a kept hold that no job took; the gate may be dropped afterwards. */
  private releaseKept(hold: H): void {
    void this.release(hold, { commit: true, reusable: true })
      .catch(() => undefined)
      .finally(() => this.dropIfIdle());
  }

  /**
   * An arriving job's hold: one kept for the next job (a hand-off, see {@link Gate.takeParked}),
   * else its own try's ({@link Gate.arrive}); and when that try comes back without a ticket,
   * a hold kept while it was in flight (a hand-off too), so that job neither waits nor goes
   * back while that hold idles beside it.
   * @returns null when it may not try now or found no ticket, and nothing was kept meanwhile.
   */
  async arriveOrTakeParked(label: string): Promise<{ hold: H; handoff: boolean } | null> {
    const kept = this.takeParked();
    if (kept) return { hold: kept, handoff: true };
    this.options.lingerClock?.arrived();
    const hold = await this.arrive(label);
    if (hold) return { hold, handoff: false };
    // (no gap for the clock: this job arrived before that hold was kept, and was counted above)
    const keptMeanwhile = this.takeParked(false);
    return keptMeanwhile ? { hold: keptMeanwhile, handoff: true } : null;
  }

  /**
   * A hold kept for the next arriving job (see {@link Gate.free}), as a hand-off: the job
   * runs on it without a round trip. Undefined when none is kept. `measured` false: the job
   * arrived before the hold was kept, so the wait says nothing of BullMQ's pace (`lingerClock`).
   */
  takeParked(measured = true): H | undefined {
    for (let entry = this.parked.pop(); entry; entry = this.parked.pop()) {
      clearTimeout(entry.timer);
      const { hold } = entry;
      if (hold.lost || hold.released === true) {
        // lost while kept: its release only discards the broken connection
        void this.release(hold, { commit: false, reusable: false }).catch(() => undefined);
        continue;
      }
      this.holdCount++;
      this.countHandoff(hold);
      if (measured) this.options.lingerClock?.taken(entry.at);
      return hold;
    }
    return undefined;
  }

  /**
   * Releases a hold nobody here takes (its count already left {@link Gate.holding}), then
   * wakes the next waiter, or, when nobody here waits on its semaphores (`groupWaits`) and
   * jobs are recorded as waiting, promotes them.
   */
  private async release(hold: H, end: HoldEnd): Promise<false> {
    this.handoffs.delete(hold);
    // a lost or already released hold says nothing of who waits: it asks Postgres nothing
    const informs = !hold.lost && hold.released !== true;
    // Only a release that finds nobody waiting here promotes, so only then is it worth asking.
    // Here is the group: a job waiting at a gate sharing a semaphore with this one (global +
    // per tenant: every gate shares the global cap) is woken for what came free, and a put-back
    // job promoted as well would mostly find it taken and be put back again (see DESIGN-NOTES,
    // fifth round). Put-back jobs come back by their delay all the same.
    const checkJobsWaiting = this.options.wakeOnRelease && !this.ctx.groupWaits(this) && this.ctx.mayPromote();
    let released: { jobsWaiting: boolean; notified?: boolean } = { jobsWaiting: false, notified: false };
    try {
      released = await hold.release({ commit: end.commit, checkJobsWaiting });
    } finally {
      // also when the release rejects (statements on tx whose commit went unconfirmed): the
      // tickets are gone either way, so the next waiter must hear of it.
      // A release that found processes waiting sent one NOTIFY per semaphore to the next of
      // them after this one (this one only when no other waits), so the processes take turns
      // and only one tries per freed semaphore: the local waiters wait for their turn. A
      // release that sent none (nobody listens: `listen: false`), or one from a process whose
      // LISTEN gets no NOTIFYs (PgBouncer in transaction mode drops them) wakes them here, or
      // nobody would.
      if (this.options.wakeOnRelease && (released.notified !== true || !this.ctx.hearsReleases())) {
        if (this.waiters.length > 0) this.wakeHead();
        // nobody here waits for this set: a waiter of a set sharing a semaphore may use what came free
        else this.ctx.kick(this);
      }
    }
    // jobs put back by other workers (when asked) count as waiting too
    if (informs) {
      this.othersWaited = released.notified === true || released.jobsWaiting;
      if (!this.othersWaited) this.quietReleaseAt = Date.now();
      this.namedAt = released.notified === true && this.ctx.hearsReleases() ? Date.now() : 0;
    }
    const { jobsWaiting } = released;
    if (!this.options.wakeOnRelease || this.ctx.groupWaits(this)) return false;
    if (jobsWaiting) await this.ctx.promote(hold).catch(() => undefined);
    return false;
  }

  /** One more hand-off in `hold`'s chain (the chain starts now if it had none). */
  private countHandoff(hold: H): void {
    const chain = this.handoffs.get(hold) ?? { count: 0, since: Date.now() };
    this.handoffs.set(hold, { count: chain.count + 1, since: chain.since });
  }

  /**
   * A hold may pass to another job: wake-ups on, the transaction reusable and alive, real
   * tickets, hand-offs and time left (`MAX_CHAIN_MS`; `MAX_PLENTIFUL_CHAIN_MS` for short jobs
   * while tickets are plentiful and a release of the set found nobody waiting within the last
   * `MAX_CHAIN_MS`, so what "plentiful" says is never older than that: chains that all started
   * together release at the old limit and so find out whether anyone waits).
   */
  private mayHandOn(hold: H, end: HoldEnd): boolean {
    const chain = this.handoffs.get(hold);
    if (
      !this.options.wakeOnRelease ||
      !end.reusable ||
      hold.lost ||
      hold.released === true ||
      hold.tickets.length === 0 ||
      (chain?.count ?? 0) >= this.options.maxHandoffs
    ) {
      return false;
    }
    if (chain === undefined) return true;
    const now = Date.now();
    const age = now - chain.since;
    if (age < MAX_CHAIN_MS) return true;
    return (
      age < MAX_PLENTIFUL_CHAIN_MS &&
      this.meanHold < PLENTIFUL_MAX_HOLD_MS &&
      now - this.quietReleaseAt < MAX_CHAIN_MS &&
      this.plentiful()
    );
  }

  /** The oldest idle waiter: the one that tries, and the one a freed hold goes to. */
  private head(): Waiter<H> | undefined {
    return this.waiters.find((w) => w.idle);
  }

  /**
   * Wakes the oldest idle waiter: it tries as soon as it is the head (see `Waiter.wake`).
   * @returns whether there was one.
   */
  wakeHead(relay?: () => void, own = false): boolean {
    const head = this.head();
    head?.wake(relay, own);
    return head !== undefined;
  }

  /**
   * A NOTIFY for a semaphore no other gate here waits on (`tenant:7` of `['api', 'tenant:7']`)
   * goes to this gate's own head, not to the oldest waiter of the group: another gate's waiter
   * needs a tenant of its own, which did not come free. It is the one exception to the group's
   * "one try at a time" (a NOTIFY for the shared `api` may be trying elsewhere in the group:
   * that costs a busy try now and then, and keeps a freed tenant from waiting behind it). While
   * one of this gate's own waiters tries, the group's rule applies (the wake-up is held back).
   * @returns whether a waiter of this gate was woken.
   */
  private wakeOwn(relay: () => void, own: boolean | undefined): boolean {
    if (!own || this.trying) return false;
    return this.wakeHead(relay, true);
  }

  /** A wake-up for this gate was held back because one of its waiters was trying (see GateSet.kick). */
  holdBackWakeUp(relay?: () => void): void {
    this.heldBackWakeUps++;
    if (relay) this.heldBackRelays.push(relay);
  }

  /** A wake-up nobody here used goes to the group's next waiter, or on to the next process. */
  private passOn(relay: (() => void) | undefined): void {
    if (!this.ctx.kick(this, relay)) relay?.();
  }

  /**
   * The wake-ups `w` holds and did not use (it was handed a hold, or left): an own one goes to
   * this gate's next waiter (nobody else here waits on that semaphore), else {@link Gate.passOn};
   * with one ticket per job each further one goes on by itself (see {@link Gate.passOnAll}),
   * otherwise all go on as one wake-up whose relay is all of theirs, as before.
   */
  private passOnFrom(w: Waiter<H>): void {
    const own = w.wokenOwn;
    const first = w.takeRelay();
    const relays = first ? [first, ...w.takeMoreRelays()] : w.takeMoreRelays();
    const [lead, ...rest] = this.ticketPerWakeUp || relays.length <= 1 ? relays : [all(relays)];
    if (!(own && !this.trying && this.wakeHead(lead, true))) this.passOn(lead);
    for (const r of rest) this.passOn(r);
  }

  /**
   * Each job of the set takes one ticket of one semaphore, so each wake-up by a release
   * elsewhere announces what one job can use: wake-ups are counted one by one. With weights or
   * several semaphores (`['api', 'tenant:7']`, where one release sends a NOTIFY per semaphore
   * for what one job can use) they are not, and behave as before they were counted.
   */
  private get ticketPerWakeUp(): boolean {
    return this.req.names.length === 1 && this.req.counts[0] === 1;
  }

  /**
   * Passes on wake-ups nobody here used. With one ticket per job (`ticketPerWakeUp`) each goes
   * on by itself: to the group's oldest idle waiter (which takes them one try at a time and
   * passes on what it does not use) or, with nobody waiting here, by its relay to the next
   * waiting process. Otherwise they go on as one wake-up with relay `asOne`, as before.
   */
  private passOnAll(each: ReadonlyArray<() => void>, asOne: (() => void) | undefined): void {
    if (!this.ticketPerWakeUp || each.length === 0) {
      this.passOn(asOne);
      return;
    }
    for (const r of each) this.passOn(r);
  }

  /**
   * After `head`'s busy try: takes a wake-up that arrived meanwhile and went to a waiter behind
   * `head` (which then waits again; the ones held back for this gate the caller took already).
   * @returns whether there was one.
   */
  private takeMissedWakeUp(head: Waiter<H>): boolean {
    let missed = false;
    for (const w of this.waiters) {
      if (w !== head && w.state === 'woken') {
        w.sleepAgain();
        missed = true;
      }
    }
    return missed;
  }

  /**
   * One acquire call; a hold found is counted here. Postgres unreachable counts as no ticket.
   * `more`: it found a ticket while the set was not saturated, so more may be free and the
   * next waiter should try too. After a busy try, a success used the ticket one release
   * freed; waking the next waiter then only makes a busy call (each release wakes one waiter
   * by itself: locally, or by its NOTIFY).
   */
  private async attempt(label: string): Promise<{ hold: H | null; more: boolean }> {
    const plenty = !this.saturated;
    let short: readonly string[] | undefined;
    const got = await this.ctx.tryHold(this.req, label, (names) => (short = names.length > 0 ? names : undefined));
    this.unreachable = got === 'unavailable';
    if (got === 'unavailable') return { hold: null, more: false };
    this.saturated = got === 'busy';
    this.short = short;
    if (got === 'busy') return { hold: null, more: false };
    this.holdCount++;
    this.handoffs.set(got, { count: 0, since: Date.now() });
    return { hold: got, more: plenty };
  }

  private startWatching(): void {
    if (this.watching) return;
    const watching: Promise<() => Promise<void>> = this.ctx
      .watch(this.req.names, (relay, own) => this.wakeOwn(relay, own) || this.ctx.kick(this, relay))
      .then((stop) => {
        // A release between this gate's busy try and its waiter marker being granted found no
        // marker and sent no NOTIFY: one try now covers it (only after a busy try: otherwise
        // the gate's waiters came without trying, behind others whose markers were held).
        if (this.saturated) this.ctx.kick(this);
        return stop;
      })
      .catch(() => {
        // No watch (the LISTEN connection was lost while it ran, Postgres unreachable): no
        // NOTIFY reaches these waiters. Forget it, so that the next waiter, or the head when it
        // next wakes or polls, watches again; kept, it left the gate deaf for as long as anyone waited
        // here. The head polls meanwhile (no kick here: with Postgres down, watch, kick and
        // try would follow each other without a pause).
        if (this.watching === watching) this.watching = undefined;
        return async () => undefined;
      });
    this.watching = watching;
  }

  private async stopWatching(): Promise<void> {
    const pending = this.watching;
    if (!pending || this.waiters.length > 0) return;
    this.watching = undefined;
    const unwatch = await pending;
    await unwatch().catch(() => undefined);
    this.dropIfIdle();
  }

  private dropIfIdle(): void {
    if (this.jobCount === 0 && this.waiters.length === 0 && this.holdCount === 0 && this.parked.length === 0 && !this.watching) this.ctx.onIdle(this);
  }
}
