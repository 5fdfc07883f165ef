/** Where pg-semaphore writes its few warnings. `console` fits; so do pino and winston loggers. */
export interface Logger {
  warn(message: string): void;
}
