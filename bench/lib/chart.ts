// A hand-written SVG bar chart of each contender's share of the ideal throughput.
import type { RunFigures } from './analyze.js';
import type { Environment } from './environment.js';
import { CONTENDERS, type ContenderId } from './types.js';

const COLORS: Record<ContenderId, string> = {
  'pgsem-redis': '#2563eb',
  'pgsem-pg': '#0891b2',
  'pgsem-redis-session': '#7c3aed',
  'pgsem-pg-session': '#a78bfa',
  'pgsem-nowake': '#93c5fd',
  'bullmq-global': '#ea580c',
  'redis-semaphore': '#dc2626',
  plain: '#9ca3af',
  'plain-pg': '#d1d5db',
};

const TITLES: Record<string, string> = {
  'saturated-10ms': 'Saturated: one semaphore, K = 5, 80 worker slots, 10 ms holds (ideal = K / mean hold)',
  'per-key': 'Per key: 100 tenants x cap 2, uneven (ideal = busiest tenant through its cap, or all jobs through 80 slots)',
  uncontended: 'Uncontended: K = 100 > 20 worker slots, 10 ms holds (ideal = slots / mean hold)',
  'large-cap': 'Large cap: K = 200, 240 worker slots (4 x 60), 500 ms holds (ideal = K / mean hold)',
  'global-tenant': 'Global cap 3 + 12 tenants x cap 1, some jobs weigh 2, 5-40 ms holds (ideal = weighted holds through 3 tickets)',
};

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function renderChart(figures: RunFigures[], env: Environment): string {
  const groups = ['saturated-10ms', 'per-key', 'global-tenant', 'large-cap', 'uncontended']
    .map((w) => ({ w, bars: figures.filter((f) => f.workload === w && f.shareOfIdeal !== null) }))
    .filter((g) => g.bars.length > 0);
  const width = 960;
  const left = 300;
  const right = 90;
  const barH = 18;
  const nomH = 7;
  const gapH = 9;
  const plotW = width - left - right;
  const maxShare = Math.max(1.05, ...groups.flatMap((g) => g.bars.flatMap((b) => [b.shareOfIdeal ?? 0, b.shareOfNominal ?? 0])));
  const scale = Math.ceil(maxShare * 10) / 10;
  const x = (share: number) => left + (share / scale) * plotW;

  const parts: string[] = [];
  let y = 64;
  for (const g of groups) {
    parts.push(`<text x="16" y="${y}" class="group">${esc(TITLES[g.w] ?? g.w)}</text>`);
    y += 12;
    const top = y;
    const at = parts.length; // the ideal and target lines go under the bars and labels
    for (const f of g.bars) {
      const share = f.shareOfIdeal ?? 0;
      const color = COLORS[f.contender as ContenderId] ?? '#666';
      const mark = f.capHeld === false ? ' CAP BROKEN' : f.deadlineHit ? ' (deadline)' : '';
      parts.push(`<text x="${left - 8}" y="${y + barH * 0.7}" class="label" text-anchor="end">${esc(CONTENDERS[f.contender as ContenderId]?.label ?? f.contender)}</text>`);
      parts.push(`<rect x="${left}" y="${y}" width="${Math.max(1, x(share) - left).toFixed(1)}" height="${barH}" fill="${color}" rx="2"/>`);
      parts.push(
        `<text x="${(x(share) + 6).toFixed(1)}" y="${y + barH * 0.75}" class="value">${(share * 100).toFixed(1)}%${mark} <tspan class="dim">${f.jobsPerSec.toFixed(0)}/s</tspan></text>`,
      );
      y += barH + 1;
      if (f.shareOfNominal !== null) {
        // thin bar: the same throughput against the ideal from the nominal hold (10 ms)
        const nominal = f.shareOfNominal;
        parts.push(`<rect x="${left}" y="${y}" width="${Math.max(1, x(nominal) - left).toFixed(1)}" height="${nomH}" fill="${color}" opacity="0.45"/>`);
        parts.push(`<text x="${(x(nominal) + 6).toFixed(1)}" y="${y + nomH}" class="nominal">${(nominal * 100).toFixed(1)}% of nominal</text>`);
      }
      y += nomH + gapH;
    }
    const lines = [`<line x1="${x(1).toFixed(1)}" y1="${top - 4}" x2="${x(1).toFixed(1)}" y2="${y - gapH + 4}" class="ideal"/>`];
    if (g.w === 'saturated-10ms') lines.push(`<line x1="${x(0.97).toFixed(1)}" y1="${top - 4}" x2="${x(0.97).toFixed(1)}" y2="${y - gapH + 4}" class="target"/>`);
    parts.splice(at, 0, ...lines);
    y += 30;
  }
  // axis
  const axisY = y - 16;
  parts.push(`<line x1="${left}" y1="${axisY}" x2="${left + plotW}" y2="${axisY}" class="axis"/>`);
  for (let t = 0; t <= scale + 1e-9; t += 0.2) {
    parts.push(`<line x1="${x(t).toFixed(1)}" y1="${axisY}" x2="${x(t).toFixed(1)}" y2="${axisY + 5}" class="axis"/>`);
    parts.push(`<text x="${x(t).toFixed(1)}" y="${axisY + 18}" class="tick" text-anchor="middle">${Math.round(t * 100)}%</text>`);
  }
  const height = axisY + 88;
  parts.push(
    `<text x="16" y="${height - 46}" class="foot">${esc(
      'Thick bars: jobs/s as a share of the ideal from the measured mean hold (how busy the tickets were kept), ending with jobs/s.',
    )}</text>`,
    `<text x="16" y="${height - 30}" class="foot">${esc(
      'Thin bars: the same jobs/s as a share of the ideal from the nominal 10 ms hold. Solid line: ideal (100%); dashed: the 97% target.',
    )}</text>`,
    `<text x="16" y="${height - 14}" class="foot">${esc(
      `${env.machine.cpus} CPUs (${env.machine.cpuModel}), ${env.machine.memoryGiB} GiB, everything on one machine; Node ${env.versions.node}, ${env.versions.postgres.replace(/ \(.*\)$/, '')}, Redis ${env.versions.redis}, BullMQ ${env.versions.bullmq}, redis-semaphore ${env.versions.redisSemaphore}; ${env.date.slice(0, 16).replace('T', ' ')} UTC.`,
    )}</text>`,
  );
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif">`,
    '<style>',
    '.title{font-size:18px;font-weight:bold;fill:#111}.group{font-size:13px;font-weight:bold;fill:#222}.label{font-size:12px;fill:#222}',
    '.value{font-size:12px;fill:#111;font-weight:bold}.nominal{font-size:9.5px;fill:#555}.value,.nominal{paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}.dim{fill:#666;font-weight:normal}.tick{font-size:11px;fill:#444}.foot{font-size:10.5px;fill:#555}',
    '.axis{stroke:#444;stroke-width:1}.ideal{stroke:#111;stroke-width:1.5}.target{stroke:#16a34a;stroke-width:1.5;stroke-dasharray:5 3}',
    '</style>',
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    `<text x="16" y="30" class="title">pg-semaphore vs. other fleet-wide caps for BullMQ: share of ideal throughput</text>`,
    ...parts,
    '</svg>',
    '',
  ].join('\n');
}
