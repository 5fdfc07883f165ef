// Uses the semaphores that this app's own drizzle-kit migrations created.
//   DATABASE_URL=postgres://... npx drizzle-kit migrate   (once)
//   DATABASE_URL=postgres://... npx tsx run.ts
// No sem.migrate() here: the app's drizzle-kit history owns the schema.
// A real project writes: import { PgSemaphore } from 'pg-semaphore';
import { PgSemaphore } from '../../src/index.js';

const SCHEMA = 'semaphore';

const url = process.env.DATABASE_URL;
if (!url) {
  console.error('set DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres');
  process.exit(2);
}
const sem = new PgSemaphore({ connection: url, schema: SCHEMA });

try {
  await sem.withTickets(
    'openai',
    async ({ tickets }) => {
      // Call the rate-limited API here; at most 8 such calls run at once across every process.
      console.log(`holding ticket ${tickets.map((t) => t.ticket).join(', ')} of "openai"`);
      for (const { name, tickets: capacity, held } of await sem.list()) {
        console.log(`${name}: ${held} of ${capacity} tickets held`);
      }
    },
    { wait: 10_000, label: 'examples/drizzle-migrations' },
  );
} finally {
  await sem.close();
}
