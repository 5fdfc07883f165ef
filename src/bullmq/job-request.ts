import { InvalidArgumentError } from '../errors/invalid-argument-error.js';
import { normalizeRequest, type NormalizedRequest, type TicketRequest } from '../request.js';
import { MAX_TICKETS, validateInt } from '../validate.js';

/**
 * What each job asks for: the `semaphore` option (a request, or a function of the job), with
 * the `tickets` option (the job's weight) applied.
 *
 * `tickets` weighs a request that names ONE semaphore. A request naming several (the API's
 * cap and the tenant's cap) gives each its own weight inside it, because a weight meant for
 * the API's cap almost never belongs on the tenant's too (with `createWith: 1` it can never
 * fit): `[{ name: 'openai', tickets: 2 }, 'tenant:a']`. So `tickets` with several semaphores
 * is an {@link InvalidArgumentError} that says so, instead of applying to all of them.
 * Unit-tested in `test/unit/job-request.test.ts`.
 * @internal
 */

const SEVERAL =
  "a request naming one semaphore (with several, give each its weight inside the request, e.g. [{ name: 'openai', tickets: 2 }, 'tenant:a'])";

/**
 * Checks and flattens a request, with `tickets` applied when given: the weight of a request
 * that names one semaphore, unless that item states its own `tickets`.
 * @throws InvalidArgumentError for a bad request, a bad weight, or a weight with several semaphores.
 * @internal
 */
export function weighRequest(request: unknown, tickets: number | undefined, argument = 'semaphore'): NormalizedRequest {
  const req = normalizeRequest(request, argument);
  if (tickets === undefined) return req;
  if (req.names.length > 1) throw new InvalidArgumentError('tickets', SEVERAL, request);
  const item: unknown = Array.isArray(request) ? request[0] : request;
  const own = typeof item === 'object' && item !== null && (item as { tickets?: unknown }).tickets !== undefined;
  return own ? req : { names: req.names, counts: [tickets] };
}

/** The `semaphore` and `tickets` options, checked once; {@link JobRequests.of} gives each job's request. @internal */
export class JobRequests<J> {
  /** The request when neither option depends on the job, checked at construction. */
  private readonly fixed: NormalizedRequest | undefined;

  constructor(
    private readonly semaphore: TicketRequest | ((job: J) => TicketRequest),
    private readonly tickets: number | ((job: J) => number) | undefined,
  ) {
    if (typeof tickets === 'number' || tickets === undefined) {
      if (tickets !== undefined) validateInt(tickets, 'tickets', 1, MAX_TICKETS);
    } else if (typeof tickets !== 'function') {
      throw new InvalidArgumentError('tickets', 'a whole number of tickets per job, or (job) => number', tickets);
    }
    this.fixed = typeof semaphore === 'function' || typeof tickets === 'function' ? undefined : weighRequest(semaphore, tickets);
  }

  /** Every job asks for the same set (neither option is a function). */
  get oneSet(): boolean {
    return this.fixed !== undefined;
  }

  /** The request of one job. @throws InvalidArgumentError when the options' functions return something wrong. */
  of(job: J): NormalizedRequest {
    if (this.fixed) return this.fixed;
    const request = typeof this.semaphore === 'function' ? this.semaphore(job) : this.semaphore;
    const tickets = typeof this.tickets === 'function' ? validateInt(this.tickets(job), 'tickets(job)', 1, MAX_TICKETS) : this.tickets;
    return weighRequest(request, tickets, typeof this.semaphore === 'function' ? 'semaphore(job)' : 'semaphore');
  }
}
