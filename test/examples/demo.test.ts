import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

// `npm run demo` on a fresh clone: no DATABASE_URL, no REDIS_URL, so the demo starts its own
// embedded Postgres in a temporary folder and runs BullMQ on its Postgres backend.

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgsem-demo-test-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
}

/** Runs the demo as `npm run demo` would, without any service configured. */
function runDemo(env: Record<string, string>, onOutput?: (out: string, child: ReturnType<typeof spawn>) => void): Promise<Run> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
  delete childEnv.DATABASE_URL;
  delete childEnv.REDIS_URL;
  const child = spawn(process.execPath, ['--import', 'tsx', 'examples/demo/demo.ts'], { cwd: repoRoot, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (chunk: Buffer) => {
    out += chunk.toString();
    onOutput?.(out, child);
  });
  child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
  return new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal, out, err })));
}

const dataDirOf = (out: string) => /data dir:\s+(\S+)/.exec(out)?.[1];

describe('npm run demo', () => {
  it('runs end to end on an embedded Postgres: cap held, every job done, SVG written, data folder removed', async () => {
    const svg = path.join(tmp, 'demo.svg');
    const run = await runDemo({ DEMO_JOBS: '120', DEMO_HOSTS: '3', DEMO_SVG: svg });
    const context = `stdout:\n${run.out}\nstderr:\n${run.err}`;
    expect(run.code, context).toBe(0);

    const max = /API max in flight: (\d+) \/ cap (\d+)/.exec(run.out);
    expect(max, context).not.toBeNull();
    expect(Number(max![1])).toBeGreaterThan(0);
    expect(Number(max![1])).toBeLessThanOrEqual(Number(max![2]));
    expect(run.out).toMatch(/jobs: 120\/120 completed, 0 failed, 0 left over/);
    expect(run.out).toMatch(/tickets held after the run: 0/);
    expect(run.out).toMatch(/Postgres backend/);

    const text = fs.readFileSync(svg, 'utf8');
    expect(text.startsWith('<svg')).toBe(true);
    expect(text).toMatch(/<line class="cap"[^>]*stroke-dasharray/);
    expect(text).toContain(`cap = ${max![2]} tickets`);

    const dir = dataDirOf(run.out);
    expect(dir, context).toBeDefined();
    expect(fs.existsSync(dir!)).toBe(false);
  }, 120_000);

  it('on Ctrl-C (SIGINT) mid-run stops the fleet and the embedded Postgres and removes the data folder', async () => {
    let sent = false;
    const run = await runDemo({ DEMO_JOBS: '5000', DEMO_HOSTS: '2', DEMO_SVG: path.join(tmp, 'interrupted.svg') }, (out, child) => {
      // Interrupt once jobs are being processed.
      if (!sent && /\]\s+\d+\/5000 done/.test(out)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    const context = `stdout:\n${run.out}\nstderr:\n${run.err}`;
    expect(sent, context).toBe(true);
    expect(run.code, context).toBe(130);
    expect(run.err).toMatch(/interrupted \(SIGINT\)/);
    const dir = dataDirOf(run.out);
    expect(dir, context).toBeDefined();
    expect(fs.existsSync(dir!)).toBe(false);
    expect(fs.existsSync(path.join(tmp, 'interrupted.svg'))).toBe(false);
  }, 120_000);
});
