import { InvalidArgumentError } from './errors/invalid-argument-error.js';

/** Longest semaphore name, in characters. */
export const MAX_NAME_LENGTH = 200;
/** Most tickets one semaphore can have (each ticket is one row). */
export const MAX_TICKETS = 10_000;
/** The schema the library uses unless told otherwise. */
export const DEFAULT_SCHEMA = 'semaphore';

const SCHEMA_RE = /^[a-z_][a-z0-9_]*$/;

/**
 * Checks a Postgres schema name: a plain lower-case identifier of at most 63 bytes that
 * does not start with `pg_` (reserved by Postgres) and is not `public`.
 * Schema names are the only identifiers that reach SQL as text, so this is strict.
 */
export function validateSchemaName(schema: unknown): string {
  const expected = 'a plain lower-case identifier ([a-z_][a-z0-9_]*, at most 63 characters, not starting with "pg_", not "public")';
  if (typeof schema !== 'string' || !SCHEMA_RE.test(schema) || schema.length > 63 || schema.startsWith('pg_') || schema === 'public') {
    throw new InvalidArgumentError('schema', expected, schema);
  }
  return schema;
}

/** Double-quotes a validated schema name for use in SQL text. */
export function quoteSchema(schema: string): string {
  return `"${validateSchemaName(schema)}"`;
}

/** Checks a semaphore name: a string of 1 to 200 characters with no NUL. */
export function validateName(name: unknown, argument = 'name'): string {
  // Lone surrogates are rejected: Postgres would store each as U+FFFD, so two names would collide.
  if (typeof name !== 'string' || name.length < 1 || [...name].length > MAX_NAME_LENGTH || name.includes('\u0000') || /\p{Cs}/u.test(name)) {
    throw new InvalidArgumentError(argument, `a string of 1 to ${MAX_NAME_LENGTH} characters, without NUL or lone surrogates`, name);
  }
  return name;
}

/** Checks a whole number in [min, max]. */
export function validateInt(value: unknown, argument: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(argument, `a whole number from ${min} to ${max}`, value);
  }
  return value;
}

/** Checks an optional timeout in milliseconds: a whole number from 0 to 2^31-1, or undefined. */
export function validateTimeout(value: unknown, argument: string): number | undefined {
  if (value === undefined) return undefined;
  if (value === Infinity) return undefined;
  return validateInt(value, argument, 0, 2_147_483_647);
}
