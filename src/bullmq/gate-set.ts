import type { NormalizedRequest } from '../request.js';
import type { Occupancy } from './fair-share.js';
import { Gate, type GateContext, type GateHold, type GateOptions } from './gate.js';

/**
 * The gates of one limited processor, one per semaphore set its jobs ask for, created on a
 * job's arrival and dropped once nothing uses them (so per-key sets such as `tenant:42` do
 * not pile up).
 * @internal
 */
export class GateSet<H extends GateHold> {
  /** Gates in use, by the set's key (names and counts). */
  private readonly gates = new Map<string, Gate<H>>();

  constructor(
    private readonly options: GateOptions,
    private readonly ctx: Omit<GateContext<H>, 'onIdle' | 'kick' | 'groupSaturated' | 'groupWaits' | 'leadsGroup'>,
  ) {}

  /** The last request {@link GateSet.gateFor} was given, and its key (a fixed request is the same object for every job). */
  private lastRequest: { req: NormalizedRequest; key: string } | undefined;

  /** The gate of this semaphore set, created when none is in use. */
  gateFor(req: NormalizedRequest): Gate<H> {
    let key: string;
    if (this.lastRequest?.req === req) key = this.lastRequest.key;
    else this.lastRequest = { req, key: (key = setKey(req)) };
    let gate = this.gates.get(key);
    if (!gate) {
      gate = new Gate(key, req, this.options, {
        ...this.ctx,
        onIdle: (idle) => this.drop(idle),
        kick: (from, relay) => this.kick(from, relay),
        groupSaturated: (of) => this.groupSaturated(of),
        groupWaits: (of) => this.groupWaits(of),
        leadsGroup: (of) => this.leadsGroup(of),
      });
      this.gates.set(key, gate);
    }
    return gate;
  }

  /**
   * The fair-share view of `gate` (see `fair-share.ts`): its group (itself and the active
   * gates sharing a semaphore with it) and how many groups are active, counting its own
   * (the other active gates joined by the semaphores they share).
   */
  groupOf(gate: Gate<H>): { group: Occupancy; activeGroups: number } {
    const names = new Set(gate.req.names);
    const group: Occupancy = { holding: gate.holding, waiting: gate.waiting };
    // the other active gates, joined into groups by the semaphores they share (union-find on names)
    const parent = new Map<string, string>();
    const root = (n: string): string => {
      let r = n;
      while (parent.get(r) !== r) r = parent.get(r)!;
      parent.set(n, r);
      return r;
    };
    const others: Array<Gate<H>> = [];
    for (const g of this.gates.values()) {
      if (g === gate || !g.active) continue;
      if (g.req.names.some((n) => names.has(n))) {
        group.holding += g.holding;
        group.waiting += g.waiting;
        continue;
      }
      others.push(g);
      for (const n of g.req.names) if (!parent.has(n)) parent.set(n, n);
      for (const n of g.req.names.slice(1)) parent.set(root(n), root(g.req.names[0]!));
    }
    const roots = new Set(others.map((g) => root(g.req.names[0]!)));
    return { group, activeGroups: 1 + roots.size };
  }

  /**
   * Tickets of `from`'s semaphores may have come free: wakes the oldest idle waiter (arrival
   * order) among `from` and the gates sharing a semaphore with it, so gates such as
   * `['api', 'tenant:1']` and `['api', 'tenant:2']` take turns in order instead of each
   * trying whenever `api` frees. (A NOTIFY for a semaphore one gate alone watches goes to that
   * gate's head first: `Gate.wakeOwn`.)
   */
  kick(from: Gate<H>, relay?: () => void): boolean {
    let first: Gate<H> | undefined;
    let order = Infinity;
    for (const g of this.related(from)) {
      // one try at a time: a release's NOTIFYs (one per semaphore) and a local kick coalesce
      // into one more try by the waiter in flight, made when its call comes back busy
      if (g.trying) {
        g.holdBackWakeUp(relay);
        return true;
      }
      const o = g.headOrder;
      if (o !== undefined && o < order) [first, order] = [g, o];
    }
    return first?.wakeHead(relay) ?? false;
  }

  /** `gate`'s head is the oldest idle waiter of its group and no gate of the group is trying (see `GateContext.leadsGroup`). */
  leadsGroup(gate: Gate<H>): boolean {
    const mine = gate.headOrder;
    if (mine === undefined) return false;
    for (const g of this.related(gate)) {
      if (g === gate) continue;
      if (g.trying) return false;
      const o = g.headOrder;
      if (o !== undefined && o < mine) return false;
    }
    return true;
  }

  /** Another gate sharing a semaphore with `gate` has waiters and found a semaphore of `gate`'s short on its last try. */
  groupSaturated(gate: Gate<H>): boolean {
    for (const g of this.related(gate)) if (g !== gate && g.blocks(gate.req.names)) return true;
    return false;
  }

  /** A job of this process waits at `gate` or at a gate sharing a semaphore with it. */
  groupWaits(gate: Gate<H>): boolean {
    for (const g of this.related(gate)) if (g.waiting > 0) return true;
    return false;
  }

  /** `gate` and the gates in use sharing a semaphore with it. */
  private *related(gate: Gate<H>): Generator<Gate<H>> {
    yield gate;
    if (gate.req.names.length === 1 && this.gates.size === 1) return;
    for (const g of this.gates.values()) if (g !== gate && g.req.names.some((n) => gate.req.names.includes(n))) yield g;
  }

  private drop(gate: Gate<H>): void {
    if (this.gates.get(gate.key) === gate) this.gates.delete(gate.key);
  }

  /** Releases every hold kept for a next job (`linger`), in every gate: a worker is closing. */
  releaseParked(): void {
    for (const gate of this.gates.values()) gate.releaseParked();
  }
}

/**
 * A set's key: each name with its count, length-prefixed (`count:length:name`), so no two
 * sets share one whatever their names hold. (JSON.stringify of the two arrays was about a
 * tenth of the wrapper's own CPU per hand-off.)
 */
function setKey(req: NormalizedRequest): string {
  let key = '';
  for (let i = 0; i < req.names.length; i++) key += `${req.counts[i]}:${req.names[i]!.length}:${req.names[i]}`;
  return key;
}
