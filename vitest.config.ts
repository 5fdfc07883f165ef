import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Fleet tests start OS processes; two cores, so keep file parallelism modest.
    maxWorkers: 2,
    reporters: ['default'],
  },
});
