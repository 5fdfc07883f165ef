/**
 * `pg-semaphore/bullmq`: the BullMQ processor wrapper.
 * @packageDocumentation
 */
export { limitProcessor } from './limit-processor.js';
export type {
  LimitOptions,
  LimitedContext,
  LimitedProcessor,
  LimitedProcessorFn,
  LimiterEventMap,
  LimiterStats,
} from './limit-processor.js';
export { RescheduleBudgetError } from './reschedule-budget-error.js';
export { WaitCancelledError } from './wait-cancelled-error.js';
