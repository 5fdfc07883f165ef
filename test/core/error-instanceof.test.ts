// `instanceof PgSemaphoreError` catches every error the library throws, including
// RescheduleBudgetError (which must extend BullMQ's UnrecoverableError so BullMQ does not
// retry it) and errors from another copy of the library (ESM and CJS builds, bundled entries).
import { UnrecoverableError } from 'bullmq';
import { describe, expect, it, vi } from 'vitest';
import { RescheduleBudgetError, WaitCancelledError } from '../../src/bullmq/index.js';
import {
  HoldingModeError,
  InvalidArgumentError,
  PgSemaphoreError,
  SemaphoreBusyError,
  SemaphoreTimeoutError,
  TicketLostError,
  UnknownSemaphoreError,
} from '../../src/index.js';

describe('instanceof PgSemaphoreError', () => {
  it('is true for RescheduleBudgetError, which stays an UnrecoverableError', () => {
    const err = new RescheduleBudgetError('waited too long', 3, 1_000);
    expect(err instanceof PgSemaphoreError).toBe(true);
    expect(err instanceof UnrecoverableError).toBe(true);
    expect(err instanceof Error).toBe(true);
    expect(err.name).toBe('RescheduleBudgetError');
    expect(err instanceof InvalidArgumentError).toBe(false);
  });

  it('is true for WaitCancelledError, an UnrecoverableError whose message carries the reason', () => {
    const err = new WaitCancelledError(['openai'], 'user asked');
    expect(err instanceof PgSemaphoreError).toBe(true);
    expect(err instanceof UnrecoverableError).toBe(true);
    expect(err.name).toBe('WaitCancelledError');
    expect(err.reason).toBe('user asked');
    expect(err.message).toBe('cancelled while waiting for a ticket of "openai": user asked');
    expect(new WaitCancelledError(['a', 'b'], new Error('why')).message).toMatch(/"a", "b": why$/);
    expect(new WaitCancelledError(['a'], undefined).message).toMatch(/: no reason given$/);
  });

  it('is true for every core error, whose own classes still check the prototype chain', () => {
    const errors = [
      new InvalidArgumentError('tickets', 'a whole number', 1.5),
      new UnknownSemaphoreError(['openai']),
      new SemaphoreBusyError(['openai']),
      new SemaphoreTimeoutError('acquire', ['openai'], 100),
      new TicketLostError(['openai'], 'connection lost'),
      new HoldingModeError('session', 'a transaction', 'a session hold'),
    ];
    for (const err of errors) expect(err instanceof PgSemaphoreError, err.name).toBe(true);
    expect(errors[0] instanceof InvalidArgumentError).toBe(true);
    expect(errors[0] instanceof TicketLostError).toBe(false);
    expect(errors[4] instanceof InvalidArgumentError).toBe(false);
    expect(new PgSemaphoreError('base') instanceof TicketLostError).toBe(false);
    expect(errors[5]!.name).toBe('HoldingModeError');
    expect((errors[5] as HoldingModeError).holding).toBe('session');
    expect(errors[5]!.message).toBe('expected a transaction, got a session hold');
  });

  it('is false for errors that are not the library’s, and for non-objects', () => {
    for (const value of [new Error('x'), new UnrecoverableError('x'), { name: 'PgSemaphoreError' }, 'PgSemaphoreError', null, undefined, 42]) {
      expect(value instanceof PgSemaphoreError).toBe(false);
    }
  });

  it('holds across two copies of the library loaded in one process', async () => {
    vi.resetModules();
    const copy = (await import('../../src/index.js')) as typeof import('../../src/index.js');
    expect(copy.PgSemaphoreError).not.toBe(PgSemaphoreError); // really a second copy
    const fromCopy = new copy.TicketLostError(['openai'], 'lost');
    expect(fromCopy instanceof PgSemaphoreError).toBe(true);
    expect(new TicketLostError(['openai'], 'lost') instanceof copy.PgSemaphoreError).toBe(true);
    expect(new RescheduleBudgetError('x', 1, 1) instanceof copy.PgSemaphoreError).toBe(true);
  });
});
