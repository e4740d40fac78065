/**
 * Compares the Volt/baseline ratios of two benchmark runs:
 *
 *   bun bench/compare.ts bench/results/history/A.json bench/results/history/B.json [--markdown]
 *
 * For each metric in both: ratio of run A, ratio of run B, and how far apart
 * they are (|A − B| / mean of A and B); a mark when that exceeds 20%.
 */
import { readFileSync } from "node:fs";
import type { Results } from "./lib/results.ts";

const args = process.argv.slice(2);
const markdown = args.includes("--markdown");
const files = args.filter((a) => a !== "--markdown");
if (files.length !== 2) {
  console.error("usage: bun bench/compare.ts A.json B.json [--markdown]");
  process.exit(2);
}
const [a, b] = files.map((f) => JSON.parse(readFileSync(f, "utf8")) as Results) as [Results, Results];
const rows: string[][] = [];
for (const m of a.metrics) {
  const other = b.metrics.find((o) => o.id === m.id);
  if (!other || m.ratio === undefined || other.ratio === undefined) continue;
  const spread = Math.abs(m.ratio - other.ratio) / ((m.ratio + other.ratio) / 2);
  rows.push([`${m.group}: ${m.label}`, m.ratio.toFixed(2), other.ratio.toFixed(2), `${(spread * 100).toFixed(0)}%${spread > 0.2 ? " (>20%)" : ""}`]);
}
const header = ["metric", `ratio, run 1 (${a.date.slice(0, 16)})`, `ratio, run 2 (${b.date.slice(0, 16)})`, "difference"];
if (markdown) {
  console.log(`| ${header.join(" | ")} |`);
  console.log(`| ${header.map(() => "---").join(" | ")} |`);
  for (const r of rows) console.log(`| ${r.map((c) => c.replaceAll("|", "\\|")).join(" | ")} |`);
} else {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => r[i]!.length)));
  for (const r of all) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join("  "));
}
