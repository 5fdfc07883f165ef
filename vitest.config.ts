import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Fleet tests start OS processes; two cores, so keep file parallelism modest.
    maxWorkers: 2,
    // No global retry: a cap that breaks in one run of ten must fail the suite. A test that is
    // timing-sensitive by nature opts in with `{ retry: n }` and a comment saying why a retry
    // cannot hide an invariant break; the retry reporter names every test that needed one.
    reporters: ['default', './test/helpers/retry-reporter.ts'],
  },
});
