// Whole-machine CPU use from /proc/stat (Linux), for the report and for waiting out other load.
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';

export function cpuTimes(): { busy: number; total: number } | null {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    const idle = (v[3] ?? 0) + (v[4] ?? 0);
    return { busy: total - idle, total };
  } catch {
    return null;
  }
}

/** Share of CPU busy between two readings. */
export function busyBetween(a: ReturnType<typeof cpuTimes>, b: ReturnType<typeof cpuTimes>): number | null {
  return a && b && b.total > a.total ? (b.busy - a.busy) / (b.total - a.total) : null;
}

/**
 * The machine is shared: waits (at most `maxMs`) until less than `threshold` of the CPU
 * was busy over one second, so a run does not start in the middle of someone else's load.
 * Returns the share busy in the last second measured.
 */
export async function waitForQuiet(maxMs: number, threshold = 0.2): Promise<{ busy: number | null; waitedMs: number }> {
  const started = Date.now();
  for (;;) {
    const a = cpuTimes();
    await new Promise((r) => setTimeout(r, 1_000));
    const busy = busyBetween(a, cpuTimes());
    if (busy === null || busy < threshold || Date.now() - started >= maxMs) return { busy, waitedMs: Date.now() - started };
  }
}

let clockTicks: number | undefined;

/**
 * CPU time used so far by the Postgres and Redis servers on this machine, in ms: every
 * postgres / redis-server process's own time, plus what the postmaster collected from
 * backends that already exited. On a shared server this includes other users' load. With
 * `postmasterPid` (the benchmark's own server) only that server's processes count.
 */
export function serverCpuMs(postmasterPid?: number): { postgres: number; redis: number } | null {
  try {
    clockTicks ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    let postgres = 0;
    let redis = 0;
    for (const pid of readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      let stat: string;
      try {
        stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      } catch {
        continue; // gone
      }
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // fields 14-17 of stat (utime stime cutime cstime) are 11-14 after the comm
      const own = Number(f[11]) + Number(f[12]);
      const children = Number(f[13]) + Number(f[14]);
      const ppid = Number(f[1]);
      if (comm === 'postgres' && (postmasterPid === undefined || Number(pid) === postmasterPid || ppid === postmasterPid)) postgres += own + children;
      else if (comm.startsWith('redis-server')) redis += own + children;
    }
    return { postgres: (postgres * 1000) / clockTicks, redis: (redis * 1000) / clockTicks };
  } catch {
    return null;
  }
}
