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
    // Fleet and fault tests run several OS processes against shared servers on 2 cores; a
    // test that fails once under load gets one more run (both runs are reported).
    retry: 1,
  },
});
