import { NotInstalledError } from './errors/not-installed-error.js';
import { SQLSTATE } from './sqlstate.js';

/**
 * One ticket held: which semaphore, and the ticket's number within it (1..capacity), the
 * same number {@link PgSemaphore.status} and the CLI show for its holder. Tickets are
 * listed in request order: for `['api', 'tenant:a']`, api's tickets come first.
 *
 * @example
 * ```ts
 * await sem.withTickets(['api', 'tenant:a'], ({ tickets }) => {
 *   console.log(tickets); // [{ name: 'api', ticket: 3 }, { name: 'tenant:a', ticket: 1 }]
 * });
 * ```
 */
export interface HeldTicket {
  /** The semaphore's name. */
  name: string;
  /** The ticket's number within its semaphore, 1 to its capacity. */
  ticket: number;
}

/**
 * The tickets of an `ok` row of the SQL function `acquire`: its `tickets` (numbers) paired
 * with `ticket_semaphores` (names). The rows' ids, which key the advisory locks, stay inside
 * Postgres. A row without `ticket_semaphores` comes from SQL functions older than this
 * library (an upgrade through install path 2 without new functions): a {@link NotInstalledError}.
 * @internal
 */
export function heldTickets(row: { tickets: number[] | null; ticket_semaphores?: string[] | null }, schema: string): HeldTicket[] {
  if (!('ticket_semaphores' in row)) {
    throw new NotInstalledError(
      schema,
      'functions-missing',
      SQLSTATE.undefinedFunction,
      'SQL functions older than this library (acquire returns no ticket_semaphores)',
    );
  }
  const numbers = row.tickets ?? [];
  const names = row.ticket_semaphores ?? [];
  return numbers.map((ticket, i) => ({ name: names[i]!, ticket }));
}
