-- Custom SQL migration file, put your code below! --
-- A later resize: growing is immediate. (Shrinking waits, up to make()'s third argument,
-- 30 s by default, for the removed tickets to be returned, and fails the migration if they
-- are not: pass a timeout you can afford, e.g. semaphore.make('openai', 3, 5000).)
SELECT semaphore.make('openai', 8);
