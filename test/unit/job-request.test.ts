import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/index.js';
import { JobRequests, weighRequest } from '../../src/bullmq/job-request.js';

// The `semaphore` and `tickets` options of the wrapper, without any server.

describe('weighRequest: the `tickets` option', () => {
  it('weighs a request that names one semaphore', () => {
    expect(weighRequest('api', 3)).toEqual({ names: ['api'], counts: [3] });
    expect(weighRequest(['api'], 3)).toEqual({ names: ['api'], counts: [3] });
    expect(weighRequest({ name: 'api' }, 3)).toEqual({ names: ['api'], counts: [3] });
  });

  it('leaves an item that states its own tickets alone', () => {
    expect(weighRequest({ name: 'api', tickets: 2 }, 3)).toEqual({ names: ['api'], counts: [2] });
    expect(weighRequest({ name: 'api', tickets: 'all' }, 3)).toEqual({ names: ['api'], counts: [0] });
  });

  it('without `tickets`, a request is taken as it is, weights inside it included', () => {
    expect(weighRequest([{ name: 'api', tickets: 2 }, 'tenant:a'], undefined)).toEqual({ names: ['api', 'tenant:a'], counts: [2, 1] });
  });

  it('with several semaphores is a typed error pointing to { name, tickets } inside the request', () => {
    const request = ['api', 'tenant:a'];
    let err: unknown;
    try {
      weighRequest(request, 2);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as InvalidArgumentError).argument).toBe('tickets');
    expect((err as InvalidArgumentError).received).toBe(request);
    expect((err as Error).message).toMatch(/^tickets: expected a request naming one semaphore \(with several, give each its weight inside the request, e\.g\. \[\{ name: 'openai', tickets: 2 \}, 'tenant:a'\]\), got an array of 2$/);
  });

  it('checks the request first', () => {
    expect(() => weighRequest('', 2)).toThrow(/^semaphore: expected a string of 1 to 200/);
  });
});

describe('JobRequests', () => {
  type J = { data: { tenant: string; cost: number } };
  const job = (tenant: string, cost: number): J => ({ data: { tenant, cost } });

  it('checks a fixed request and weight at once', () => {
    expect(() => new JobRequests<J>(['api', 'tenant:a'], 2)).toThrow(InvalidArgumentError);
    expect(() => new JobRequests<J>('api', 0)).toThrow(/^tickets: expected a whole number from 1 to 10000, got 0$/);
    expect(() => new JobRequests<J>('api', 'two' as never)).toThrow(/^tickets: expected a whole number of tickets per job, or \(job\) => number/);
    expect(new JobRequests<J>('api', 2).of(job('a', 1))).toEqual({ names: ['api'], counts: [2] });
  });

  it('weighs per job with a function, and checks what it returns', () => {
    const requests = new JobRequests<J>('api', (j) => j.data.cost);
    expect(requests.of(job('a', 4))).toEqual({ names: ['api'], counts: [4] });
    expect(() => requests.of(job('a', 0))).toThrow(/^tickets\(job\): expected a whole number from 1/);
  });

  it('the common case: a weight on the global cap and one ticket of the tenant, inside the request', () => {
    const requests = new JobRequests<J>((j) => [{ name: 'api', tickets: j.data.cost }, `tenant:${j.data.tenant}`], undefined);
    expect(requests.of(job('a', 2))).toEqual({ names: ['api', 'tenant:a'], counts: [2, 1] });
  });

  it('a per-job request with `tickets` and several semaphores fails on the job, with the typed error', () => {
    const requests = new JobRequests<J>((j) => ['api', `tenant:${j.data.tenant}`], 2);
    expect(() => requests.of(job('a', 1))).toThrow(/^tickets: expected a request naming one semaphore/);
  });
});
