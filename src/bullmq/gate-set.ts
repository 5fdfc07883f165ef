import type { NormalizedRequest } from '../request.js';
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
    private readonly ctx: Omit<GateContext<H>, 'onIdle'>,
  ) {}

  /** The gate of this semaphore set, created when none is in use. */
  gateFor(req: NormalizedRequest): Gate<H> {
    const key = JSON.stringify([req.names, req.counts]);
    let gate = this.gates.get(key);
    if (!gate) {
      gate = new Gate(key, req, this.options, { ...this.ctx, onIdle: (idle) => this.drop(idle) });
      this.gates.set(key, gate);
    }
    return gate;
  }

  /** Semaphore sets active in this process (holding or waiting), counting `gate` itself. */
  activeSets(gate: Gate<H>): number {
    let active = 0;
    for (const g of this.gates.values()) if (g === gate || g.active) active++;
    return active;
  }

  private drop(gate: Gate<H>): void {
    if (this.gates.get(gate.key) === gate) this.gates.delete(gate.key);
  }
}
