/** How many of the latest gaps {@link LingerClock} reads. */
const SAMPLES = 16;
/** It follows the gaps only once it has this many. */
const MIN_SAMPLES = 8;
/** The kept time is this many times the 90th percentile of the gaps. */
const MARGIN = 1.5;

/**
 * How long a hold is kept for the slot's next job (`linger`), following how long that job
 * has been taking to come: the gaps from a hold kept to the next arriving job of its set.
 * Between `base` and `max`: 1.5 x the 90th percentile of the last 16 gaps, once there are
 * 8. BullMQ hands a slot its next job a moment after the last one, but how long a moment
 * depends on the backend and the load: on its Postgres backend under load, uncontended, half
 * the gaps were over 10 ms and a fifth over 20 ms (the fixed default), so those holds went
 * back and the next job acquired again (two round trips for nothing).
 *
 * A gap is measured when a kept hold is taken, and when a hold went back unused, at the next
 * arrival that found nothing kept (from the oldest such hold; a taken hold drops the unused
 * ones kept before it, whose next job has come). A gap longer than `max` counts as `base`: no
 * keeping allowed would have caught it (a slow stream, or a pause in the work), so keeping
 * longer would only idle the ticket.
 * @internal
 */
export class LingerClock {
  private readonly gaps: number[] = [];
  private next = 0;
  /** When the holds that went back unused had been kept, oldest first. */
  private readonly missed: number[] = [];
  private current: number;

  constructor(
    private readonly base: number,
    private readonly max: number,
  ) {
    this.current = base;
  }

  /** How long to keep a hold now, in ms. */
  get ms(): number {
    return this.current;
  }

  /** A hold kept at `keptAt` was taken by an arriving job. */
  taken(keptAt: number, now = Date.now()): void {
    while (this.missed.length > 0 && this.missed[0]! <= keptAt) this.missed.shift();
    this.record(now - keptAt);
  }

  /** A hold kept at `keptAt` went back unused. */
  expired(keptAt: number): void {
    if (this.missed.length >= SAMPLES) this.missed.shift();
    this.missed.push(keptAt);
  }

  /** A job arrived and found no hold kept: the gap since the oldest unused one, if any. */
  arrived(now = Date.now()): void {
    const keptAt = this.missed.shift();
    if (keptAt !== undefined) this.record(now - keptAt);
  }

  private record(gap: number): void {
    this.gaps[this.next] = gap > this.max ? this.base : Math.max(0, gap);
    this.next = (this.next + 1) % SAMPLES;
    if (this.gaps.length < MIN_SAMPLES) return;
    // the 90th percentile (nearest rank) of 8 to 16 gaps is their largest (up to 9 gaps) or
    // their second largest: one pass, no sorted copy (this runs on every hand-off)
    const fromTop = this.gaps.length - Math.ceil(0.9 * this.gaps.length);
    let largest = 0;
    let second = 0;
    for (const gap of this.gaps) {
      if (gap > largest) {
        second = largest;
        largest = gap;
      } else if (gap > second) {
        second = gap;
      }
    }
    const p90 = fromTop === 0 ? largest : second;
    this.current = Math.min(this.max, Math.max(this.base, Math.ceil(MARGIN * p90)));
  }
}
