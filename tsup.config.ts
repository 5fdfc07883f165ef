import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { index: 'src/index.ts', drizzle: 'src/drizzle.ts', bullmq: 'src/bullmq/index.ts', cli: 'src/cli.ts' },
  format: ['esm', 'cjs'],
  dts: true,
  sourcemap: true,
  clean: true,
  shims: true,
  target: 'node20',
  splitting: false,
});
