// Writes drizzle/0001_functions.sql from src/functions-sql.ts (run by `npm run generate`).
import { writeFileSync } from 'node:fs';
import { functionsSql } from '../src/functions-sql.js';

writeFileSync(new URL('../drizzle/0001_functions.sql', import.meta.url), functionsSql('semaphore'));
