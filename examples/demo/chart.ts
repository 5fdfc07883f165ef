import type { Sample } from './fake-api.js';

export interface ChartInput {
  /** Changes of calls in flight, [ms, calls], times on any clock. */
  series: readonly Sample[];
  /** Start and end of the window to draw, on the series' clock (ms). */
  from: number;
  to: number;
  cap: number;
  title: string;
  /** One or two short lines under the title. */
  subtitle: string[];
  /** Short facts shown under the chart. */
  footer: string;
}

const W = 960;
const H = 440;
const M = { left: 64, right: 28, top: 100, bottom: 82 };
const FONT = "-apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif";

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const r1 = (n: number) => Math.round(n * 10) / 10;

/** A tick step for about `target` ticks over `span`: 1, 2 or 5 times a power of ten. */
function niceStep(span: number, target: number): number {
  const raw = span / Math.max(1, target);
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

/**
 * A hand-written SVG step chart of calls in flight over time, with the cap as a dashed line.
 * No dependency; the output is small enough to commit and renders on GitHub.
 */
export function renderChart({ series, from, to, cap, title, subtitle, footer }: ChartInput): string {
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const seconds = Math.max(0.001, (to - from) / 1000);
  const yMax = cap + 2;
  const x = (ms: number) => M.left + (Math.min(Math.max(ms - from, 0), to - from) / (to - from || 1)) * pw;
  const y = (v: number) => M.top + ph - (v / yMax) * ph;

  // Step path of the samples inside the window (starting from the level in force at `from`).
  let level = 0;
  const inside: Sample[] = [];
  for (const [t, v] of series) {
    if (t <= from) level = v;
    else if (t <= to) inside.push([t, v]);
  }
  let d = `M${r1(x(from))},${r1(y(level))}`;
  let lastX = x(from);
  for (const [t, v] of inside) {
    const px = r1(x(t));
    if (px !== lastX) d += `H${px}`;
    d += `V${r1(y(v))}`;
    lastX = px;
  }
  d += `H${r1(x(to))}`;
  const area = `${d}V${r1(y(0))}H${r1(x(from))}Z`;

  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="${esc(FONT)}" role="img" aria-labelledby="title desc">`,
    `<title id="title">${esc(title)}</title>`,
    `<desc id="desc">${esc(`${subtitle.join('. ')}. ${footer}`)}</desc>`,
    `<rect width="${W}" height="${H}" rx="8" fill="#ffffff"/>`,
    `<text x="${M.left}" y="34" font-size="19" font-weight="600" fill="#111827">${esc(title)}</text>`,
    ...subtitle.map((line, i) => `<text x="${M.left}" y="${58 + i * 19}" font-size="13.5" fill="#4b5563">${esc(line)}</text>`),
  );

  // Grid and y axis (calls in flight).
  for (let v = 0; v <= yMax; v++) {
    const gy = r1(y(v));
    parts.push(`<line x1="${M.left}" x2="${W - M.right}" y1="${gy}" y2="${gy}" stroke="${v === 0 ? '#9ca3af' : '#eef0f3'}" stroke-width="1"/>`);
    parts.push(`<text x="${M.left - 10}" y="${gy + 4}" font-size="12" fill="#6b7280" text-anchor="end">${v}</text>`);
  }
  // x axis (seconds).
  const step = niceStep(seconds, 10);
  for (let s = 0; s <= seconds + 1e-9; s += step) {
    const gx = r1(x(from + s * 1000));
    parts.push(`<line x1="${gx}" x2="${gx}" y1="${r1(y(0))}" y2="${r1(y(0)) + 5}" stroke="#9ca3af"/>`);
    const label = step < 1 ? s.toFixed(step < 0.1 ? 2 : 1) : String(Math.round(s));
    parts.push(`<text x="${gx}" y="${r1(y(0)) + 20}" font-size="12" fill="#6b7280" text-anchor="middle">${label}</text>`);
  }
  parts.push(
    `<text x="${M.left + pw / 2}" y="${r1(y(0)) + 40}" font-size="12.5" fill="#374151" text-anchor="middle">seconds since the jobs were added</text>`,
    `<text transform="translate(20 ${M.top + ph / 2}) rotate(-90)" font-size="12.5" fill="#374151" text-anchor="middle">API calls in flight</text>`,
  );

  // The data: filled step area plus its outline.
  parts.push(
    `<path d="${area}" fill="#3b82f6" fill-opacity="0.16" stroke="none"/>`,
    `<path d="${d}" fill="none" stroke="#2563eb" stroke-width="1.2" stroke-linejoin="miter"/>`,
  );

  // The cap.
  const cy = r1(y(cap));
  parts.push(
    `<line class="cap" x1="${M.left}" x2="${W - M.right}" y1="${cy}" y2="${cy}" stroke="#dc2626" stroke-width="2" stroke-dasharray="8 5"/>`,
    `<rect x="${W - M.right - 126}" y="${cy - 25}" width="122" height="19" rx="4" fill="#ffffff" fill-opacity="0.9"/>`,
    `<text x="${W - M.right - 8}" y="${cy - 11}" font-size="13" font-weight="600" fill="#dc2626" text-anchor="end">cap = ${cap} tickets</text>`,
  );

  parts.push(`<text x="${M.left}" y="${H - 16}" font-size="12.5" fill="#4b5563">${esc(footer)}</text>`);
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
