// Builds the library the worker hosts load (dist/, as published) before anything is measured.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/**
 * Runs `npm run build` in the repository and throws with the build's own output when it fails,
 * so a run never measures a dist/ older than src/.
 */
export function buildLibrary(log: (s: string) => void): void {
  const started = Date.now();
  const out = spawnSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (out.status !== 0) {
    const output = `${out.stdout ?? ''}${out.stderr ?? ''}`.trim().split('\n').slice(-20).join('\n');
    throw new Error(`npm run build failed (${out.error?.message ?? `exit ${out.status}`}):\n${output}`);
  }
  log(`bench: built dist/ (${((Date.now() - started) / 1000).toFixed(0)} s); the worker hosts load it`);
}
