/**
 * The report's charts as SVG strings built by hand (axes, ticks, grid, legend), rasterised with sharp
 * (librsvg) by the report writer. Pure string builders: easy to test and no plotting dependency on the device.
 * Text uses DejaVu Sans when present (Debian's default), falling back to any sans-serif font.
 */
import type { RocCurve } from './metrics.js';

export const FONT = "DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif";

/** Colours chosen to stay distinguishable for the common colour-vision deficiencies (Okabe–Ito palette). */
export const COLORS = {
  primary: '#0072B2',
  secondary: '#E69F00',
  tertiary: '#009E73',
  defect: '#D55E00',
  good: '#0072B2',
  threshold: '#CC0000',
  axis: '#333333',
  grid: '#E3E3E3',
  chance: '#9A9A9A',
} as const;

export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}

/** Short human number: 3 significant digits, exponent notation for very small or large magnitudes. */
export function formatNumber(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(2).replace('e+', 'e');
  return String(Number(v.toPrecision(3)));
}

/** "Nice" tick values (1, 2, 5 × 10^k steps) covering [lo, hi] with about `count` ticks. */
export function niceTicks(lo: number, hi: number, count = 5): { ticks: number[]; min: number; max: number } {
  if (!(hi > lo)) {
    const pad = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  const step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
  const min = Math.floor(lo / step + 1e-9) * step;
  const max = Math.ceil(hi / step - 1e-9) * step;
  const ticks: number[] = [];
  for (let k = 0; min + k * step <= max + step * 1e-6; k++) ticks.push(Number((min + k * step).toPrecision(12)));
  return { ticks, min, max };
}

const text = (x: number, y: number, s: string, attrs = ''): string =>
  `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attrs}>${escapeXml(s)}</text>`;

function svgOpen(width: number, height: number): string {
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
    `font-family="${FONT}" font-size="12" fill="${COLORS.axis}">` +
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`
  );
}

interface Frame {
  left: number;
  top: number;
  width: number;
  height: number;
  x: (v: number) => number;
  y: (v: number) => number;
}

/** Grid, axes, tick labels and axis titles of a plot frame. */
function axes(f: Frame, xTicks: number[], yTicks: number[], xTitle: string, yTitle: string): string {
  const parts: string[] = [];
  for (const t of xTicks) {
    const x = f.x(t);
    parts.push(`<line x1="${x.toFixed(1)}" y1="${f.top}" x2="${x.toFixed(1)}" y2="${f.top + f.height}" stroke="${COLORS.grid}"/>`);
    parts.push(`<line x1="${x.toFixed(1)}" y1="${f.top + f.height}" x2="${x.toFixed(1)}" y2="${f.top + f.height + 5}" stroke="${COLORS.axis}"/>`);
    parts.push(text(x, f.top + f.height + 18, formatNumber(t), 'text-anchor="middle"'));
  }
  for (const t of yTicks) {
    const y = f.y(t);
    parts.push(`<line x1="${f.left}" y1="${y.toFixed(1)}" x2="${f.left + f.width}" y2="${y.toFixed(1)}" stroke="${COLORS.grid}"/>`);
    parts.push(`<line x1="${f.left - 5}" y1="${y.toFixed(1)}" x2="${f.left}" y2="${y.toFixed(1)}" stroke="${COLORS.axis}"/>`);
    parts.push(text(f.left - 8, y + 4, formatNumber(t), 'text-anchor="end"'));
  }
  parts.push(`<rect x="${f.left}" y="${f.top}" width="${f.width}" height="${f.height}" fill="none" stroke="${COLORS.axis}"/>`);
  parts.push(text(f.left + f.width / 2, f.top + f.height + 40, xTitle, 'text-anchor="middle" font-size="13"'));
  const cy = f.top + f.height / 2;
  parts.push(`<text x="0" y="0" transform="translate(${f.left - 46} ${cy.toFixed(1)}) rotate(-90)" text-anchor="middle" font-size="13">${escapeXml(yTitle)}</text>`);
  return parts.join('');
}

function polyline(xs: number[], ys: number[], stroke: string, extra = ''): string {
  const pts = xs.map((x, i) => `${x.toFixed(2)},${ys[i]!.toFixed(2)}`).join(' ');
  return `<polyline points="${pts}" fill="none" stroke="${stroke}" stroke-linejoin="round" ${extra}/>`;
}

interface LegendEntry {
  label: string;
  color: string;
  kind: 'line' | 'dashed' | 'box';
}

/** Legend box width from its longest label (≈ 6.6 px per character at 12 px). */
const legendWidth = (entries: LegendEntry[]): number => 28 + Math.max(...entries.map((e) => e.label.length)) * 6.6 + 12;

/** A boxed legend anchored at its top-right or bottom-right corner (x, y). */
function legend(entries: LegendEntry[], x: number, y: number, anchor: 'top' | 'bottom'): string {
  const rowH = 18;
  const width = legendWidth(entries);
  const height = entries.length * rowH + 10;
  const left = x - width;
  const top = anchor === 'top' ? y : y - height;
  const parts = [`<rect x="${left.toFixed(1)}" y="${top.toFixed(1)}" width="${width.toFixed(1)}" height="${height}" fill="#ffffff" fill-opacity="0.92" stroke="#BBBBBB" rx="3"/>`];
  entries.forEach((e, i) => {
    const cy = top + 5 + rowH * i + rowH / 2;
    if (e.kind === 'box') {
      parts.push(`<rect x="${(left + 8).toFixed(1)}" y="${(cy - 6).toFixed(1)}" width="16" height="12" fill="${e.color}" fill-opacity="0.55" stroke="${e.color}"/>`);
    } else {
      const dash = e.kind === 'dashed' ? 'stroke-dasharray="5 3"' : '';
      parts.push(`<line x1="${(left + 6).toFixed(1)}" y1="${cy.toFixed(1)}" x2="${(left + 26).toFixed(1)}" y2="${cy.toFixed(1)}" stroke="${e.color}" stroke-width="2.5" ${dash}/>`);
    }
    parts.push(text(left + 32, cy + 4, e.label));
  });
  return parts.join('');
}

/** A one-row legend centred at (cx, cy), drawn outside the plot so it can never hide data. */
function legendRow(entries: LegendEntry[], cx: number, cy: number): string {
  const widths = entries.map((e) => 28 + e.label.length * 6.6 + 16);
  let x = cx - widths.reduce((a, b) => a + b, 0) / 2;
  const parts: string[] = [];
  entries.forEach((e, i) => {
    if (e.kind === 'box') {
      parts.push(`<rect x="${(x + 4).toFixed(1)}" y="${(cy - 6).toFixed(1)}" width="16" height="12" fill="${e.color}" fill-opacity="0.55" stroke="${e.color}"/>`);
    } else {
      const dash = e.kind === 'dashed' ? 'stroke-dasharray="5 3"' : '';
      parts.push(`<line x1="${(x + 2).toFixed(1)}" y1="${cy.toFixed(1)}" x2="${(x + 22).toFixed(1)}" y2="${cy.toFixed(1)}" stroke="${e.color}" stroke-width="2.5" ${dash}/>`);
    }
    parts.push(text(x + 28, cy + 4, e.label));
    x += widths[i]!;
  });
  return parts.join('');
}

export interface RocSeries {
  label: string;
  curve: RocCurve;
  auroc: number;
  dashed?: boolean;
}

export interface RocChartOptions {
  title: string;
  series: RocSeries[];
  /** Operating point(s) to mark, e.g. the calibrated threshold on the primary curve. */
  points?: { fpr: number; tpr: number; label: string }[];
}

export const ROC_SIZE = { width: 520, height: 520 } as const;

/** ROC curves with the chance diagonal, AUROC in the legend, and optional operating points. */
export function rocChartSvg(o: RocChartOptions): string {
  const { width, height } = ROC_SIZE;
  const f: Frame = { left: 70, top: 44, width: 420, height: 400, x: () => 0, y: () => 0 };
  f.x = (v) => f.left + v * f.width;
  f.y = (v) => f.top + (1 - v) * f.height;
  const ticks = [0, 0.2, 0.4, 0.6, 0.8, 1];
  const colors = [COLORS.primary, COLORS.secondary, COLORS.tertiary];
  const parts = [svgOpen(width, height)];
  parts.push(text(width / 2, 26, o.title, 'text-anchor="middle" font-size="15" font-weight="bold"'));
  parts.push(axes(f, ticks, ticks, 'false-positive rate (goods rejected)', 'true-positive rate (defects caught)'));
  parts.push(`<line x1="${f.x(0)}" y1="${f.y(0)}" x2="${f.x(1)}" y2="${f.y(1)}" stroke="${COLORS.chance}" stroke-dasharray="4 4"/>`);
  const entries: LegendEntry[] = [];
  o.series.forEach((s, i) => {
    const color = colors[i % colors.length]!;
    const dash = s.dashed ? 'stroke-dasharray="6 3"' : '';
    parts.push(polyline(s.curve.fpr.map(f.x), s.curve.tpr.map(f.y), color, `stroke-width="2.5" ${dash}`));
    entries.push({ label: `${s.label} · AUROC ${s.auroc.toFixed(3)}`, color, kind: s.dashed ? 'dashed' : 'line' });
  });
  entries.push({ label: 'chance · AUROC 0.500', color: COLORS.chance, kind: 'dashed' });
  for (const p of o.points ?? []) {
    const cx = f.x(p.fpr);
    const cy = f.y(p.tpr);
    parts.push(`<circle cx="${cx.toFixed(1)}" cy="${cy.toFixed(1)}" r="5" fill="${COLORS.threshold}" stroke="#ffffff" stroke-width="1.5"/>`);
    const right = p.fpr > 0.6;
    parts.push(text(cx + (right ? -9 : 9), cy + (p.tpr > 0.9 ? 16 : -8), p.label, `text-anchor="${right ? 'end' : 'start'}" fill="${COLORS.threshold}"`));
  }
  parts.push(legend(entries, f.left + f.width - 8, f.top + f.height - 8, 'bottom'));
  parts.push('</svg>');
  return parts.join('');
}

export interface HistogramOptions {
  title: string;
  xTitle: string;
  good: ArrayLike<number>;
  defective: ArrayLike<number>;
  threshold?: number;
  bins?: number;
}

export const HISTOGRAM_SIZE = { width: 640, height: 400 } as const;

/**
 * Overlaid histograms of good and defective scores, each as a fraction of its own class (test sets often
 * hold many more defects than goods; raw counts would hide the smaller class), with the threshold as a
 * dashed vertical line. Bins are shared, `bins` equal bins over the data (default: twice the Rice rule, 20–60).
 */
export function histogramSvg(o: HistogramOptions): string {
  const { width, height } = HISTOGRAM_SIZE;
  const f: Frame = { left: 70, top: 62, width: 545, height: 272, x: () => 0, y: () => 0 };
  let lo = Infinity;
  let hi = -Infinity;
  let count = 0;
  for (const values of [o.good, o.defective]) {
    for (let i = 0; i < values.length; i++) {
      const v = values[i]!;
      if (!Number.isFinite(v)) continue;
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
      count++;
    }
  }
  if (count === 0) [lo, hi] = [0, 1];
  if (o.threshold !== undefined && Number.isFinite(o.threshold)) {
    lo = Math.min(lo, o.threshold);
    hi = Math.max(hi, o.threshold);
  }
  // A little room on both sides so a threshold or a score at the extreme does not sit on the frame.
  const margin = 0.03 * (hi - lo);
  const xs = niceTicks(lo >= 0 ? Math.max(0, lo - margin) : lo - margin, hi + margin, 6);
  const bins = o.bins ?? Math.min(60, Math.max(20, Math.ceil(4 * Math.cbrt(count))));
  const binWidth = (xs.max - xs.min) / bins;
  const hist = (values: ArrayLike<number>): number[] => {
    const h = new Array<number>(bins).fill(0);
    let n = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i]!;
      if (!Number.isFinite(v)) continue;
      h[Math.min(bins - 1, Math.max(0, Math.floor((v - xs.min) / binWidth)))]!++;
      n++;
    }
    return n > 0 ? h.map((c) => c / n) : h;
  };
  const hg = hist(o.good);
  const hd = hist(o.defective);
  const ys = niceTicks(0, Math.max(0.05, ...hg, ...hd), 5);
  f.x = (v) => f.left + ((v - xs.min) / (xs.max - xs.min)) * f.width;
  f.y = (v) => f.top + (1 - v / ys.max) * f.height;
  const parts = [svgOpen(width, height)];
  parts.push(text(width / 2, 26, o.title, 'text-anchor="middle" font-size="15" font-weight="bold"'));
  parts.push(axes(f, xs.ticks, ys.ticks, o.xTitle, 'fraction of class'));
  const bars = (h: number[], color: string): string =>
    h
      .map((v, b) => {
        if (v <= 0) return '';
        const x0 = f.x(xs.min + b * binWidth);
        const x1 = f.x(xs.min + (b + 1) * binWidth);
        const y = f.y(v);
        return `<rect x="${x0.toFixed(2)}" y="${y.toFixed(2)}" width="${Math.max(0.5, x1 - x0).toFixed(2)}" height="${(f.top + f.height - y).toFixed(2)}" fill="${color}" fill-opacity="0.5" stroke="${color}" stroke-width="0.8"/>`;
      })
      .join('');
  parts.push(bars(hg, COLORS.good));
  parts.push(bars(hd, COLORS.defect));
  const entries: LegendEntry[] = [
    { label: `good (n = ${o.good.length})`, color: COLORS.good, kind: 'box' },
    { label: `defective (n = ${o.defective.length})`, color: COLORS.defect, kind: 'box' },
  ];
  if (o.threshold !== undefined && Number.isFinite(o.threshold)) {
    const x = f.x(o.threshold);
    parts.push(`<line x1="${x.toFixed(1)}" y1="${f.top}" x2="${x.toFixed(1)}" y2="${f.top + f.height}" stroke="${COLORS.threshold}" stroke-width="2" stroke-dasharray="6 4"/>`);
    entries.push({ label: `threshold ${formatNumber(o.threshold)}`, color: COLORS.threshold, kind: 'dashed' });
  }
  parts.push(legendRow(entries, f.left + f.width / 2, 46));
  parts.push('</svg>');
  return parts.join('');
}
