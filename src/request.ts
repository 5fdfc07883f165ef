import { InvalidArgumentError } from './errors/invalid-argument-error.js';
import { MAX_TICKETS, validateInt, validateName } from './validate.js';

/**
 * What to acquire: a semaphore name (one ticket), `{ name, tickets }`, or a list of those,
 * taken all together or not at all. `tickets: 'all'` takes every ticket (an exclusive hold).
 *
 * @example
 * ```ts
 * 'openai'                                        // one ticket of "openai"
 * { name: 'openai', tickets: 2 }                  // two tickets
 * ['openai', { name: 'tenant:42', tickets: 1 }]   // the API's cap AND the tenant's cap
 * ```
 */
export type TicketRequest = string | TicketRequestItem | ReadonlyArray<string | TicketRequestItem>;

/** One semaphore of a {@link TicketRequest}. */
export interface TicketRequestItem {
  /** The semaphore's name: 1 to 200 characters. */
  name: string;
  /**
   * How many tickets, or `'all'` for every ticket (exclusive).
   * @default 1
   */
  tickets?: number | 'all';
}

/** A request checked and flattened into the arrays the SQL function takes. */
export interface NormalizedRequest {
  names: string[];
  /** Ticket counts; 0 means "all". */
  counts: number[];
}

/** Checks a {@link TicketRequest} and flattens it. Throws {@link InvalidArgumentError}. */
export function normalizeRequest(request: unknown, argument = 'semaphore'): NormalizedRequest {
  const items = Array.isArray(request) ? request : [request];
  if (items.length < 1 || items.length > 100) {
    throw new InvalidArgumentError(argument, 'a name, { name, tickets }, or a list of 1 to 100 of those', request);
  }
  const names: string[] = [];
  const counts: number[] = [];
  for (const [i, item] of items.entries()) {
    const where = Array.isArray(request) ? `${argument}[${i}]` : argument;
    if (typeof item === 'string') {
      names.push(validateName(item, where));
      counts.push(1);
    } else if (item !== null && typeof item === 'object' && 'name' in item) {
      const { name, tickets = 1 } = item as TicketRequestItem;
      names.push(validateName(name, `${where}.name`));
      counts.push(tickets === 'all' ? 0 : validateInt(tickets, `${where}.tickets`, 1, MAX_TICKETS));
    } else {
      throw new InvalidArgumentError(where, 'a semaphore name or { name, tickets }', item);
    }
  }
  const seen = new Map<string, number>();
  for (const [i, name] of names.entries()) {
    const prev = seen.get(name);
    if (prev !== undefined && (counts[i] === 0 || counts[prev] === 0)) {
      throw new InvalidArgumentError(argument, `"${name}" once when asking for all its tickets`, request);
    }
    seen.set(name, i);
  }
  // counts of a name given twice add up: past MAX_TICKETS the SQL would refuse the whole
  // statement (in session holding, the batch other requests share)
  const totals = new Map<string, number>();
  for (const [i, name] of names.entries()) {
    const total = (totals.get(name) ?? 0) + counts[i]!;
    if (total > MAX_TICKETS) throw new InvalidArgumentError(argument, `at most ${MAX_TICKETS} tickets of "${name}" in all`, request);
    totals.set(name, total);
  }
  return { names, counts };
}
