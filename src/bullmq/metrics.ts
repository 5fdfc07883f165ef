import { metrics, type Attributes, type Meter } from '@opentelemetry/api';

/**
 * The wrapper's OpenTelemetry instruments. Without a registered SDK `@opentelemetry/api`
 * hands out no-op instruments, so this costs nothing unless you opt in.
 * @internal
 */
export class LimiterMetrics {
  readonly held;
  readonly attempts;
  readonly waitTime;
  readonly holdTime;
  readonly reschedules;

  constructor(meter: Meter = metrics.getMeter('pg-semaphore')) {
    this.held = meter.createUpDownCounter('pg_semaphore.tickets.held', {
      description: 'Tickets held by jobs of this process right now',
      unit: '{ticket}',
    });
    this.attempts = meter.createCounter('pg_semaphore.acquire.attempts', {
      description: 'Acquire calls made for jobs, by result (acquired, busy, handoff)',
      unit: '{attempt}',
    });
    this.waitTime = meter.createHistogram('pg_semaphore.wait.duration', {
      description: 'Time from a job being added until it got its tickets',
      unit: 's',
    });
    this.holdTime = meter.createHistogram('pg_semaphore.hold.duration', {
      description: 'Time a job held its tickets',
      unit: 's',
    });
    this.reschedules = meter.createCounter('pg_semaphore.reschedules', {
      description: 'Jobs put back to wait for a ticket',
      unit: '{job}',
    });
  }

  static attrs(names: readonly string[], queue: string): Attributes {
    return { 'pg_semaphore.semaphore': names.join(','), 'messaging.destination.name': queue };
  }
}
