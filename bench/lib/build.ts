// Builds the library the worker hosts load (as published: tsup, the package's own build
// config) into a folder of this run's own before anything is measured, so a build or a second
// benchmark meanwhile cannot change the code under test.
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/**
 * Runs tsup with the package's config into `bench/.lib/<pid>/` (inside the repository, so the
 * build finds its dependencies in node_modules) and returns that folder; throws with the
 * build's own output when it fails. `removeLibrary` deletes it.
 */
export function buildLibrary(log: (s: string) => void): string {
  const started = Date.now();
  const dir = join(ROOT, 'bench', '.lib', String(process.pid));
  rmSync(dir, { recursive: true, force: true });
  const out = spawnSync(join(ROOT, 'node_modules', '.bin', 'tsup'), ['--out-dir', dir], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (out.status !== 0) {
    const output = `${out.stdout ?? ''}${out.stderr ?? ''}`.trim().split('\n').slice(-20).join('\n');
    throw new Error(`building the library failed (${out.error?.message ?? `exit ${out.status}`}):\n${output}`);
  }
  log(`bench: built the library into ${dir} (${((Date.now() - started) / 1000).toFixed(0)} s); the worker hosts load it`);
  return dir;
}

/** Deletes a folder {@link buildLibrary} made. */
export function removeLibrary(dir: string | undefined): void {
  if (dir) rmSync(dir, { recursive: true, force: true });
}
