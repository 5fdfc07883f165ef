import type { Reporter, TestModule } from 'vitest/node';

/**
 * Names every test that passed only after a retry, so a retried test is never silent, and
 * closes the run with a plain `N passed, N failed, N skipped` line.
 *
 * The suite has no global retry: only tests that are timing-sensitive by nature opt in with
 * `{ retry: n }` and a comment on why a retry cannot hide an invariant break.
 */
export default class RetryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    const retried: string[] = [];
    const out = process.stdout;
    const broken: string[] = [];
    for (const module of testModules) {
      // a file that fails outside any test (a setup hook, an import) counts as one failure
      if (module.errors().length > 0) {
        failed++;
        broken.push(module.moduleId.replace(process.cwd() + '/', ''));
      }
      for (const test of module.children.allTests()) {
        const state = test.result().state;
        if (state === 'passed') passed++;
        else if (state === 'failed') failed++;
        else skipped++;
        const retries = test.diagnostic()?.retryCount ?? 0;
        if (retries > 0) retried.push(`RETRIED ${retries}x (${state}): ${module.moduleId.replace(process.cwd() + '/', '')} > ${test.fullName}`);
      }
    }
    if (broken.length > 0) out.write(`\n${broken.length} file(s) failed outside their tests:\n${broken.map((l) => `  ${l}`).join('\n')}\n`);
    if (retried.length > 0) out.write(`\n${retried.length} test(s) needed a retry:\n${retried.map((l) => `  ${l}`).join('\n')}\n`);
    out.write(`\ntests: ${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  }
}
