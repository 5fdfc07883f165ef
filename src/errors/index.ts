export { PgSemaphoreError } from './pg-semaphore-error.js';
export { InvalidArgumentError } from './invalid-argument-error.js';
export { UnknownSemaphoreError } from './unknown-semaphore-error.js';
export { SemaphoreTimeoutError } from './semaphore-timeout-error.js';
export { SemaphoreBusyError } from './semaphore-busy-error.js';
export { TicketLostError } from './ticket-lost-error.js';
export { NotInstalledError } from './not-installed-error.js';
export type { NotInstalledProblem } from './not-installed-error.js';
