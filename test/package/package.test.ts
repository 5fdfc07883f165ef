// The published package as a user gets it: a fresh build with the repo's tsup.config.ts,
// `npm pack`, the tarball unpacked into a consumer project, and `tsc` run there under every
// moduleResolution, ESM and CommonJS. Needs no database and no network: the peers are
// symlinked from this repo's node_modules.
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const exec = promisify(execFile);
const TSC = join(ROOT, 'node_modules/typescript/bin/tsc');

/** Every public export, by entry: runtime values, and names that exist only as types. */
const PUBLIC = {
  'pg-semaphore': {
    values: [
      'DEFAULT_SCHEMA',
      'DISABLE_ENV',
      'HoldingModeError',
      'InvalidArgumentError',
      'MAX_NAME_LENGTH',
      'MAX_TICKETS',
      'NotInstalledError',
      'PgSemaphore',
      'PgSemaphoreError',
      'SemaphoreBusyError',
      'SemaphoreTimeoutError',
      'TicketLostError',
      'UnknownSemaphoreError',
      'functionsSql',
      'installSql',
      'validateSchemaName',
    ],
    types: [
      'AcquireOptions',
      'AcquiredTickets',
      'Executor',
      'HeldTicket',
      'Hold',
      'HoldContext',
      'HoldTx',
      'HoldTxTypes',
      'HolderInfo',
      'HoldingMode',
      'InstallPart',
      'Logger',
      'NotInstalledProblem',
      'PgSemaphoreOptions',
      'SemaphoreInfo',
      'SemaphoreStatus',
      'TicketRequest',
      'TicketRequestItem',
      'TxWithoutDrizzleTypes',
      'WaitOptions',
    ],
  },
  'pg-semaphore/bullmq': {
    values: ['RescheduleBudgetError', 'WaitCancelledError', 'limitProcessor'],
    types: ['LimitOptions', 'LimitedContext', 'LimitedProcessor', 'LimitedProcessorFn', 'LimiterEventMap', 'LimiterStats'],
  },
  'pg-semaphore/drizzle': {
    values: ['installSql', 'semaphoreSchema', 'semaphoreTables', 'semaphores', 'tickets', 'waitingJobs'],
    types: ['HoldTx'],
  },
} as const;

/** Names that must not appear in any published declaration file. */
const INTERNAL = ['roundTrips', 'HoldHooks', 'HoldOptions', 'loadMigrations', 'enqueueJob', 'dequeueJobs', 'forgetJob', 'explainNotInstalled'];

let dir: string;
let pkg: string; // the package root: package.json, dist/ from a fresh build, ...
let consumer: string;
let packed: Array<{ path: string; size: number }>;

async function tsc(args: string[]): Promise<{ code: number; out: string }> {
  try {
    const { stdout } = await exec(process.execPath, [TSC, '--noEmit', '--strict', '--target', 'es2022', '--types', 'node', '--pretty', 'false', ...args], {
      cwd: consumer,
    });
    return { code: 0, out: stdout };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

/** Runs `limit` tasks at most at a time (the machine has two cores). */
async function pool<T>(tasks: Array<() => Promise<T>>, limit: number): Promise<T[]> {
  const results: T[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < tasks.length) {
        const i = next++;
        results[i] = await tasks[i]!();
      }
    }),
  );
  return results;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pg-semaphore-package-'));
  pkg = join(dir, 'pkg');
  consumer = join(dir, 'consumer');
  await mkdir(pkg);
  for (const f of ['package.json', 'README.md', 'CHANGELOG.md', 'LICENSE']) await cp(join(ROOT, f), join(pkg, f));
  await cp(join(ROOT, 'drizzle'), join(pkg, 'drizzle'), { recursive: true });
  // the real tsup.config.ts, only the output folder moved
  await exec(join(ROOT, 'node_modules/.bin/tsup'), ['--out-dir', join(pkg, 'dist'), '--silent'], { cwd: ROOT });
  // --ignore-scripts: prepack would build again, into the repo's dist/
  const { stdout } = await exec('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', dir], { cwd: pkg });
  const [info] = JSON.parse(stdout) as Array<{ filename: string; files: Array<{ path: string; size: number }> }>;
  packed = info!.files;

  // the consumer project: the tarball unpacked as npm would, the peers linked from this repo
  const installed = join(consumer, 'node_modules/pg-semaphore');
  await mkdir(installed, { recursive: true });
  await exec('tar', ['-xzf', join(dir, info!.filename), '-C', installed, '--strip-components=1']);
  for (const dep of ['pg', 'drizzle-orm', 'bullmq', 'ioredis', 'commander', '@opentelemetry', '@types']) {
    await symlink(join(ROOT, 'node_modules', dep), join(consumer, 'node_modules', dep), 'dir');
  }
  await writeFile(join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true }));
  await writeConsumerFiles();
}, 240_000);

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** `pg-semaphore/bullmq` + `limitProcessor` → `pg_semaphore_bullmq_limitProcessor`. */
const local = (entry: string, name: string) => `${entry.replace(/\W/g, '_')}_${name}`;

/** A file that uses every entry: every public name imported, `tx` typed as Drizzle's database. */
function everything(): string {
  const entries = Object.entries(PUBLIC);
  const imports = entries
    .map(([entry, { values, types }]) => {
      const names = [...values.map((v) => `${v} as ${local(entry, v)}`), ...types.map((t) => `type ${t} as ${local(entry, t)}`)];
      return `import { ${names.join(', ')} } from '${entry}';`;
    })
    .join('\n');
  return `${imports}
import { Queue, Worker } from 'bullmq';
import { sql } from 'drizzle-orm';

export type Uses = [${entries.flatMap(([entry, { types }]) => types.map((t) => local(entry, t))).join(', ')}];
export const values = [${entries.flatMap(([entry, { values }]) => values.map((v) => local(entry, v))).join(', ')}];

export async function main(): Promise<number> {
  const sem = new pg_semaphore_PgSemaphore({ connection: 'postgres://localhost/app' });
  const n = await sem.withTickets('openai', async ({ tx }) => {
    const { rows } = await tx.execute<{ n: number }>(sql\`SELECT 1 AS n\`);
    tx.select(); // Drizzle's query builder: typed because pg-semaphore/drizzle is imported
    return rows[0]!.n;
  });
  const processor = pg_semaphore_bullmq_limitProcessor<{ tenant: string }>(
    sem,
    async (_job, _token, _signal, ctx) => {
      await ctx.tx.execute(sql\`SELECT 1\`);
    },
    { semaphore: (job) => ['openai', \`tenant:\${job.data.tenant}\`] },
  );
  const worker = new Worker('q', processor, { connection: {} });
  await worker.close();
  await new Queue('q', { connection: {} }).close();
  const { semaphores } = pg_semaphore_drizzle_semaphoreTables('semaphore');
  return n + semaphores.id.name.length;
}
`;
}

/** A file that imports the main entry and the BullMQ entry, as a project without Drizzle code would. */
const WITHOUT_DRIZZLE = `import { PgSemaphore, type HoldContext } from 'pg-semaphore';
import { limitProcessor } from 'pg-semaphore/bullmq';

export async function main(): Promise<unknown> {
  const sem = new PgSemaphore({ connection: 'postgres://localhost/app' });
  const processor = limitProcessor(sem, async (_job, _token, _signal, ctx) => ctx.tx.execute('SELECT 1'), { semaphore: 'openai' });
  return sem.withTickets('openai', async (ctx: HoldContext) => {
    // without pg-semaphore/drizzle in the program, tx offers execute() only
    // @ts-expect-error -- select is Drizzle's, typed only through pg-semaphore/drizzle
    ctx.tx.select();
    return [processor, await ctx.tx.execute('SELECT 1')];
  });
}
`;

async function writeConsumerFiles(): Promise<void> {
  const all = everything();
  for (const ext of ['ts', 'mts', 'cts']) await writeFile(join(consumer, `all.${ext}`), all);
  for (const ext of ['mts', 'cts']) await writeFile(join(consumer, `core.${ext}`), WITHOUT_DRIZZLE);
  // names a user must not reach
  await writeFile(
    join(consumer, 'internals.mts'),
    `import { Hold, PgSemaphore } from 'pg-semaphore';
const sem = new PgSemaphore({ connection: 'postgres://localhost/app' });
// @ts-expect-error -- Hold is a type only
export const h = new Hold();
// @ts-expect-error -- test counter, internal
export const r: number = sem.roundTrips;
// @ts-expect-error -- not exported
export { loadMigrations } from 'pg-semaphore';
// @ts-expect-error -- on pg-semaphore/drizzle only
export { semaphoreTables } from 'pg-semaphore';
`,
  );
}

describe('npm pack', () => {
  it('ships LICENSE, the library in ESM and CommonJS with declarations, and the CLI as ESM only', () => {
    const paths = packed.map((f) => f.path).sort();
    expect(paths).toContain('LICENSE');
    expect(paths).toContain('package.json');
    expect(paths).toContain('README.md');
    for (const entry of ['index', 'bullmq', 'drizzle']) {
      for (const ext of ['js', 'cjs', 'd.ts', 'd.cts']) expect(paths).toContain(`dist/${entry}.${ext}`);
    }
    expect(paths).toContain('dist/cli.js');
    expect(paths.filter((p) => /^dist\/cli\./.test(p))).toEqual(['dist/cli.js', 'dist/cli.js.map']);
    expect(paths).toContain('drizzle/meta/_journal.json');
    expect(paths.filter((p) => !/^(dist|drizzle)\//.test(p)).sort()).toEqual(['CHANGELOG.md', 'LICENSE', 'README.md', 'package.json']);
  });

  it('the LICENSE is MIT, as package.json says', async () => {
    const license = await readFile(join(consumer, 'node_modules/pg-semaphore/LICENSE'), 'utf8');
    expect(license).toMatch(/^MIT License\n\nCopyright \(c\) 2026 pg-semaphore contributors\n/);
    const manifest = JSON.parse(await readFile(join(consumer, 'node_modules/pg-semaphore/package.json'), 'utf8'));
    expect(manifest.license).toBe('MIT');
  });

  it('the CLI runs from the installed package', async () => {
    const { stdout } = await exec(process.execPath, [join(consumer, 'node_modules/pg-semaphore/dist/cli.js'), 'sql', '--part', 'tables'], { cwd: consumer });
    expect(stdout).toContain('CREATE TABLE "semaphore"."semaphores"');
  });
});

describe('published declarations', () => {
  it('name no internals', async () => {
    const distDir = join(consumer, 'node_modules/pg-semaphore/dist');
    const files = (await readdir(distDir)).filter((f) => /\.d\.c?ts$/.test(f));
    expect(files.length).toBeGreaterThanOrEqual(6);
    for (const f of files) {
      const text = await readFile(join(distDir, f), 'utf8');
      // whole words: TryHoldOptions is public, HoldOptions is not
      for (const name of INTERNAL) expect({ file: f, name, found: new RegExp(`\\b${name}\\b`).test(text) }).toEqual({ file: f, name, found: false });
      // the Hold class keeps its constructor out of sight
      const hold = /declare class Hold \{[\s\S]*?\n\}/.exec(text)?.[0];
      if (hold) expect(hold).not.toContain('constructor');
      // the main entry and its chunks load nothing from drizzle-orm
      if (!f.startsWith('drizzle')) expect({ file: f, drizzle: /from 'drizzle-orm/.test(text) }).toEqual({ file: f, drizzle: false });
    }
  });

  it('export every public name, at run time in ESM and CommonJS', async () => {
    const script = `
      const out = {};
      for (const entry of ${JSON.stringify(Object.keys(PUBLIC))}) {
        out[entry] = { esm: Object.keys(await import(entry)).filter((k) => k !== 'default').sort(), cjs: Object.keys(require(entry)).sort() };
      }
      console.log(JSON.stringify(out));`;
    const { stdout } = await exec(process.execPath, ['--input-type=module', '-e', `import { createRequire } from 'node:module'; const require = createRequire(process.cwd() + '/x.js');${script}`], {
      cwd: consumer,
    });
    const exported = JSON.parse(stdout) as Record<string, { esm: string[]; cjs: string[] }>;
    for (const [entry, { values }] of Object.entries(PUBLIC)) {
      expect({ entry, ...exported[entry] }).toEqual({ entry, esm: [...values].sort(), cjs: [...values].sort() });
    }
  });

  it('share one copy of the core between entries: an error from pg-semaphore/bullmq is instanceof the main entry\'s class, in ESM and CommonJS', async () => {
    const script = `
      const out = {};
      const probe = (main, bullmq) => {
        try { bullmq.limitProcessor(null, null, {}); return 'no error'; }
        catch (e) { return e.name + ':' + (e instanceof main.InvalidArgumentError) + ':' + (e instanceof main.PgSemaphoreError); }
      };
      out.esm = probe(await import('pg-semaphore'), await import('pg-semaphore/bullmq'));
      out.cjs = probe(require('pg-semaphore'), require('pg-semaphore/bullmq'));
      console.log(JSON.stringify(out));`;
    const { stdout } = await exec(process.execPath, ['--input-type=module', '-e', `import { createRequire } from 'node:module'; const require = createRequire(process.cwd() + '/x.js');${script}`], {
      cwd: consumer,
    });
    expect(JSON.parse(stdout)).toEqual({ esm: 'InvalidArgumentError:true:true', cjs: 'InvalidArgumentError:true:true' });
  });
});

describe('a TypeScript consumer', () => {
  // one tsc run per line; .mts files are ESM and .cts files CommonJS under node16/nodenext;
  // typesVersions is what node10 needs for the subpaths
  const runs: Array<{ what: string; args: string[] }> = [
    { what: 'nodenext, no skipLibCheck, main and BullMQ entries', args: ['--module', 'nodenext', '--moduleResolution', 'nodenext', 'core.mts', 'core.cts', 'internals.mts'] },
    { what: 'node16, ESM and CommonJS, all entries', args: ['--module', 'node16', '--moduleResolution', 'node16', '--skipLibCheck', 'all.mts', 'all.cts'] },
    { what: 'node10, CommonJS, all entries', args: ['--module', 'commonjs', '--moduleResolution', 'node10', '--skipLibCheck', 'all.ts'] },
    { what: 'nodenext, ESM and CommonJS, all entries', args: ['--module', 'nodenext', '--moduleResolution', 'nodenext', '--skipLibCheck', 'all.mts', 'all.cts'] },
    { what: 'bundler, all entries', args: ['--module', 'esnext', '--moduleResolution', 'bundler', '--skipLibCheck', 'all.ts'] },
  ];

  it('compiles under node10, node16, nodenext and bundler resolution, ESM and CommonJS; the main and BullMQ entries without skipLibCheck', async () => {
    const results = await pool(
      runs.map((r) => async () => ({ what: r.what, ...(await tsc(r.args)) })),
      2,
    );
    for (const r of results) expect({ what: r.what, code: r.code, out: r.out }).toEqual({ what: r.what, code: 0, out: '' });
  }, 240_000);

  it('the check can fail: a name imported from the wrong entry is reported', async () => {
    await writeFile(join(consumer, 'wrong.mts'), `import { limitProcessor } from 'pg-semaphore';\nexport const x = limitProcessor;\n`);
    const wrong = await tsc(['--module', 'nodenext', '--moduleResolution', 'nodenext', '--skipLibCheck', 'wrong.mts']);
    expect(wrong.code).not.toBe(0);
    expect(wrong.out).toMatch(/has no exported member 'limitProcessor'/);
  }, 60_000);
});
