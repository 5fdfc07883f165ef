-- Custom SQL migration file, put your code below! --
-- The app's semaphores, defined like any other data the schema needs.
-- make() creates a semaphore or resizes it; it is idempotent.
SELECT semaphore.make('openai', 5);
