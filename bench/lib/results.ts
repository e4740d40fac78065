/**
 * The shape of bench/results/latest.json, and the Markdown table and SVG
 * charts made from it.
 */
import { mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { formatValue, renderBarChart } from "./svg.ts";
import { ratio, summarize, type Summary } from "./stats.ts";

export interface Side {
  readonly samples: readonly number[];
  readonly summary: Summary | undefined;
}

export interface Metric {
  /** File-name safe: the SVG is `<id>.svg`. */
  readonly id: string;
  readonly group: string;
  readonly label: string;
  readonly unit: string;
  readonly volt: Side;
  /** QEMU's microvm machine, or the C KVM loop for the exit cost. */
  readonly baseline: Side;
  readonly baselineName: string;
  /** Volt median / baseline median. */
  readonly ratio: number | undefined;
  readonly how: string;
}

export interface Results {
  readonly schema: 1;
  readonly date: string;
  readonly kvm: { readonly mode: "native" | "nested"; readonly reason: string };
  readonly machine: {
    readonly host: { readonly nproc: number; readonly cpu: string; readonly memGiB: number };
    /** Where the VMs ran: the host itself (native) or the emulated L1 (nested). */
    readonly runner: { readonly nproc: number; readonly cpu: string; readonly memGiB: number; readonly kernel: string };
  };
  readonly versions: Record<string, string>;
  readonly rounds: number;
  readonly durationS: number;
  readonly metrics: readonly Metric[];
  /** What was not measured here, and why. */
  readonly unmeasured: readonly { readonly what: string; readonly why: string }[];
  readonly notes: readonly string[];
  /** Everything else measured (per-round detail, phases), for whoever digs deeper. */
  readonly detail: Record<string, unknown>;
}

export function metric(fields: Omit<Metric, "volt" | "baseline" | "ratio"> & { volt: readonly number[]; baseline: readonly number[] }): Metric {
  const volt = { samples: fields.volt, summary: summarize(fields.volt) };
  const baseline = { samples: fields.baseline, summary: summarize(fields.baseline) };
  return { ...fields, volt, baseline, ratio: ratio(volt.summary, baseline.summary) };
}

/** A table cell: a literal "|" would end the cell early in Markdown. */
const md = (text: string): string => text.replaceAll("|", "\\|");

function cell(side: Side): string {
  const s = side.summary;
  if (!s) return "n/a";
  return `${formatValue(s.median)} (${formatValue(s.min)}–${formatValue(s.max)})`;
}

export function renderMarkdown(results: Results): string {
  const lines: string[] = [];
  const kvm = results.kvm.mode === "nested"
    ? "**nested KVM** (L2 guests under KVM inside an L1 Linux that itself runs under QEMU's software emulator): absolute numbers are slow; the Volt/QEMU ratios are the point"
    : "native KVM";
  lines.push(`# Volt vs QEMU microvm: benchmark results`);
  lines.push("");
  lines.push(`- Date: ${results.date}`);
  lines.push(`- KVM: ${kvm} (${results.kvm.reason})`);
  lines.push(`- Host: ${results.machine.host.nproc} CPUs (${results.machine.host.cpu}), ${results.machine.host.memGiB} GiB`);
  if (results.kvm.mode === "nested") {
    lines.push(`- VMs ran in L1: ${results.machine.runner.nproc} vCPUs (${results.machine.runner.cpu}), ${results.machine.runner.memGiB} GiB, kernel ${results.machine.runner.kernel}`);
  }
  lines.push(`- Versions: ${Object.entries(results.versions).map(([k, v]) => `${k} ${v}`).join("; ")}`);
  lines.push(`- Every guest: 1 vCPU, 128 MiB, the same kernel, initramfs and command line for both VMMs; rounds interleaved (Volt, QEMU, Volt, QEMU, …) after one discarded warm-up each; run took ${results.durationS.toFixed(0)} s`);
  lines.push("");
  lines.push("| metric | Volt median (min–max) | baseline median (min–max) | Volt/baseline | rounds |");
  lines.push("| --- | --- | --- | --- | --- |");
  for (const m of results.metrics) {
    const rounds = `${m.volt.summary?.n ?? 0}/${m.baseline.summary?.n ?? 0}`;
    const r = m.ratio === undefined ? "n/a" : `${m.ratio.toFixed(2)}×`;
    lines.push(`| ${md(`${m.group}: ${m.label} [${m.unit}]`)} | ${cell(m.volt)} | ${md(m.baselineName)}: ${cell(m.baseline)} | ${r} | ${rounds} |`);
  }
  lines.push("");
  lines.push("Ratios below 1 favour Volt, except in the rows marked higher-is-better (the density count, block and network throughput), where ratios above 1 favour Volt.");
  if (results.unmeasured.length > 0) {
    lines.push("");
    lines.push("Not measured here:");
    lines.push("");
    for (const u of results.unmeasured) lines.push(`- ${u.what}: ${u.why}`);
  }
  if (results.notes.length > 0) {
    lines.push("");
    lines.push("Notes:");
    lines.push("");
    for (const n of results.notes) lines.push(`- ${n}`);
  }
  lines.push("");
  lines.push("How each metric is measured: see [bench/README.md](../README.md). Charts: one SVG per metric in this folder.");
  lines.push("");
  return lines.join("\n");
}

/** A plain-text table for the terminal. */
export function renderTable(results: Results): string {
  const rows = [["metric", "unit", "Volt median (min-max)", "baseline median (min-max)", "ratio", "n"]];
  for (const m of results.metrics) {
    rows.push([`${m.group}: ${m.label}`, m.unit, cell(m.volt), `${m.baselineName}: ${cell(m.baseline)}`, m.ratio === undefined ? "n/a" : m.ratio.toFixed(2), `${m.volt.summary?.n ?? 0}/${m.baseline.summary?.n ?? 0}`]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const text = rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd());
  text.splice(1, 0, widths.map((w) => "-".repeat(w)).join("  "));
  return text.join("\n");
}

/** Writes latest.json, latest.md and one SVG per metric (old SVGs removed first). */
export function writeResults(dir: string, results: Results): void {
  mkdirSync(dir, { recursive: true });
  for (const file of readdirSync(dir)) if (file.endsWith(".svg")) rmSync(join(dir, file));
  writeFileSync(join(dir, "latest.json"), `${JSON.stringify(results, null, 2)}\n`);
  writeFileSync(join(dir, "latest.md"), renderMarkdown(results));
  const nested = results.kvm.mode === "nested" ? "nested KVM (slow in absolute terms; compare the ratio)" : "native KVM";
  for (const m of results.metrics) {
    const series = [];
    if (m.volt.summary) series.push({ name: "Volt", summary: m.volt.summary, colour: "#e07b00" });
    if (m.baseline.summary) series.push({ name: m.baselineName, summary: m.baseline.summary, colour: "#3b6fb6" });
    if (series.length === 0) continue;
    const svg = renderBarChart({
      title: `${m.group}: ${m.label}`,
      subtitle: `${m.ratio === undefined ? "" : `Volt/${m.baselineName} = ${m.ratio.toFixed(2)}; `}${nested}; ${results.date.slice(0, 10)}`,
      unit: m.unit,
      series,
      footnote: m.how.length > 110 ? `${m.how.slice(0, 107)}...` : m.how,
    });
    writeFileSync(join(dir, `${m.id}.svg`), svg);
  }
}
