import { defineConfig } from 'tsup';

export default defineConfig([
  {
    // the library: ESM and CommonJS with declarations
    entry: { index: 'src/index.ts', drizzle: 'src/drizzle.ts', bullmq: 'src/bullmq/index.ts' },
    format: ['esm', 'cjs'],
    // stripInternal: members tagged @internal (test counters, constructors the library calls)
    // stay out of the published types
    dts: { compilerOptions: { stripInternal: true } },
    // src/drizzle.ts augments the main entry by its package name: keep that a reference
    external: ['pg-semaphore'],
    sourcemap: true,
    // the CLI build below writes into the same folder at the same time: leave its files alone
    clean: ['!cli.js', '!cli.js.map'],
    shims: true,
    target: 'node20',
    // shared chunks: the entries share one copy of the core (its error classes above all),
    // so an InvalidArgumentError thrown by pg-semaphore/bullmq is instanceof the one from
    // pg-semaphore, in ESM and in CommonJS
    splitting: true,
  },
  {
    // the command line: ESM only (package.json's bin), no declarations
    entry: { cli: 'src/cli.ts' },
    format: ['esm'],
    dts: false,
    sourcemap: true,
    clean: false,
    target: 'node20',
    splitting: false,
  },
]);
