import { defineConfig } from 'drizzle-kit';

// Regenerates drizzle/ from the default-schema tables: `npm run generate`.
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/schema.ts',
  out: './drizzle',
  schemaFilter: ['semaphore'],
});
