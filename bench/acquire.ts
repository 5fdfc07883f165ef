// pg-semaphore acquire microbenchmark (issue 11, target 5): a single client's acquire-and-release
// cycles against a bare advisory-lock cycle, on an empty 5-ticket semaphore and with 9,900
// of 10,000 tickets held. About 30 s.
//
//   npm run bench:acquire                  writes bench/results/acquire-latest.{json,md}
//   npx tsx bench/acquire.ts --out=/tmp/x  writes there instead
//
// Options: --out=<dir>, --rounds=<n, 3>, --round-ms=<ms per case per round, 1000>,
// --pg=own|url (default: own server unless DATABASE_URL is set).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { acquireLines, acquireMarkdown, runAcquireBench } from './lib/acquire-bench.js';
import { resolveTarget } from './lib/target.js';

const args = process.argv.slice(2);
for (const a of args) {
  if (!/^--(out=.+|rounds=\d+|round-ms=\d+|pg=(own|url))$/.test(a)) {
    console.error(`bench:acquire: unknown argument ${a}; expected --out=, --rounds=, --round-ms=, --pg=own|url`);
    process.exit(2);
  }
}
const opt = (name: string) => args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
const outDir = opt('out') ?? fileURLToPath(new URL('./results/', import.meta.url));
const log = (s: string) => process.stderr.write(`${s}\n`);

const { target, own } = await resolveTarget(opt('pg'), log);
let stopping = false;
const stop = async (code: number) => {
  if (stopping) return;
  stopping = true;
  await own?.stop().catch(() => undefined);
  process.exit(code);
};
process.on('SIGINT', () => void stop(130));
process.on('SIGTERM', () => void stop(143));

try {
  const result = await runAcquireBench({ url: target.semUrl, rounds: Number(opt('rounds') ?? 3), roundMs: Number(opt('round-ms') ?? 1_000), log });
  console.log('');
  for (const c of result.cases) console.log(`  ${c.cyclesPerSec.toFixed(0).padStart(6)} cycles/s  ${c.msPerCycle.toFixed(3)} ms/cycle  ${c.title}`);
  console.log('');
  for (const l of acquireLines(result)) console.log(`  ${l}`);
  const header = [`Date: ${result.date}`, `Postgres: ${target.description}`, `Took ${result.totalSeconds.toFixed(0)} s; ${result.settings.rounds} rounds of ${result.settings.roundMs} ms per case, interleaved; figure = median round`];
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'acquire-latest.json'), JSON.stringify({ postgres: target.description, ...result }, null, 2));
  writeFileSync(join(outDir, 'acquire-latest.md'), acquireMarkdown(result, header));
  log(`\nbench:acquire: wrote ${join(outDir, 'acquire-latest.json')}, ${join(outDir, 'acquire-latest.md')}`);
  await stop(0);
} catch (err) {
  if (!stopping) log(`bench:acquire: FAILED: ${(err as Error).stack ?? err}`);
  await stop(1);
}
