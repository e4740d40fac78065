/**
 * A tiny SVG bar chart writer (no dependencies): one horizontal bar per
 * series at its median, a whisker from min to max and a box over the
 * interquartile range, the value printed beside it.
 */
import type { Summary } from "./stats.ts";

export interface BarSeries {
  readonly name: string;
  readonly summary: Summary;
  readonly colour: string;
}

export interface BarChart {
  readonly title: string;
  readonly subtitle?: string;
  readonly unit: string;
  readonly series: readonly BarSeries[];
  readonly footnote?: string;
}

const escapeXml = (text: string): string =>
  text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll('"', "&quot;");

export function formatValue(value: number): string {
  const magnitude = Math.abs(value);
  if (magnitude >= 1000) return value.toFixed(0);
  if (magnitude >= 100) return value.toFixed(1);
  if (magnitude >= 10) return value.toFixed(2);
  return value.toFixed(3);
}

/** A "nice" axis end at or above `max` (1, 2, 2.5 or 5 times a power of ten). */
function niceCeiling(max: number): number {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= max) return step * power;
  return 10 * power;
}

export function renderBarChart(chart: BarChart): string {
  // Wide enough for the title (about 8 px per character at 15 px bold).
  const width = Math.max(720, Math.ceil(chart.title.length * 8.2) + 24, Math.ceil((chart.subtitle ?? "").length * 6.4) + 24);
  const left = 150;
  const right = 150;
  const top = chart.subtitle ? 62 : 44;
  const barHeight = 30;
  const gap = 18;
  const plotWidth = width - left - right;
  const axisMax = niceCeiling(Math.max(...chart.series.map((s) => s.summary.max)));
  const x = (value: number) => left + (Math.max(0, value) / axisMax) * plotWidth;
  const plotHeight = chart.series.length * (barHeight + gap);
  const height = top + plotHeight + 44 + (chart.footnote ? 18 : 0);
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  parts.push(`<text x="12" y="22" font-size="15" font-weight="bold">${escapeXml(chart.title)}</text>`);
  if (chart.subtitle) parts.push(`<text x="12" y="42" fill="#555">${escapeXml(chart.subtitle)}</text>`);
  // Grid and axis labels.
  const ticks = 5;
  for (let i = 0; i <= ticks; i++) {
    const value = (axisMax * i) / ticks;
    const gx = x(value);
    parts.push(`<line x1="${gx.toFixed(1)}" y1="${top - 6}" x2="${gx.toFixed(1)}" y2="${top + plotHeight}" stroke="#e3e3e3"/>`);
    parts.push(`<text x="${gx.toFixed(1)}" y="${top + plotHeight + 16}" text-anchor="middle" fill="#555">${escapeXml(formatValue(value))}</text>`);
  }
  parts.push(`<text x="${left + plotWidth / 2}" y="${top + plotHeight + 34}" text-anchor="middle" fill="#333">${escapeXml(chart.unit)} (bar: median; box: interquartile range; whisker: min to max)</text>`);
  chart.series.forEach((series, index) => {
    const y = top + index * (barHeight + gap);
    const mid = y + barHeight / 2;
    const s = series.summary;
    parts.push(`<text x="${left - 8}" y="${mid + 4}" text-anchor="end">${escapeXml(series.name)}</text>`);
    parts.push(`<rect x="${left}" y="${y}" width="${Math.max(1, x(s.median) - left).toFixed(1)}" height="${barHeight}" fill="${series.colour}" fill-opacity="0.85"/>`);
    parts.push(`<rect x="${x(s.q1).toFixed(1)}" y="${y + 8}" width="${Math.max(1, x(s.q3) - x(s.q1)).toFixed(1)}" height="${barHeight - 16}" fill="none" stroke="#222"/>`);
    parts.push(`<line x1="${x(s.min).toFixed(1)}" y1="${mid}" x2="${x(s.max).toFixed(1)}" y2="${mid}" stroke="#222"/>`);
    for (const end of [s.min, s.max]) parts.push(`<line x1="${x(end).toFixed(1)}" y1="${y + 5}" x2="${x(end).toFixed(1)}" y2="${y + barHeight - 5}" stroke="#222"/>`);
    parts.push(`<text x="${(x(s.max) + 8).toFixed(1)}" y="${mid + 4}">${escapeXml(`${formatValue(s.median)} ${chart.unit} (n=${s.n})`)}</text>`);
  });
  if (chart.footnote) parts.push(`<text x="12" y="${height - 8}" fill="#777" font-size="11">${escapeXml(chart.footnote)}</text>`);
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}
