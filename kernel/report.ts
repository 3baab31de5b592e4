/**
 * The run report: one HTML page (out/report.html by default) with every notebook of out/notebooks/'s
 * summary.json: its status, timings and run (mode, adapter, runtimes, commit, load average), its closing
 * table (paper / ours / verdict), its figures, and a link to the executed notebook. `deno task repro` writes it
 * after each run; `deno run -A kernel/report.ts [--out DIR] [--report PATH]` rebuilds it from what is there.
 *
 * The page needs no network: plotly.js is copied from the npm package next to it (plotly.min.js) and
 * loaded once; figures are drawn from their plotly JSON. Every text from a notebook is escaped.
 *
 * @example
 * ```ts
 * import { closingTable } from "./report.ts";
 * const nb = { cells: [{ cell_type: "code", outputs: [{ output_type: "display_data",
 *   data: { "text/markdown": "| claim | paper | ours | verdict |\n|---|---|---|---|\n| a | 1 | 1.0 | yes |" } }] }] };
 * if (closingTable(nb)?.rows.length !== 1) throw new Error("example failed");
 * ```
 *
 * @module
 */
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { copyPlotly, PLOTLY_FILE, plotlyVersion } from "./assets/mod.ts";
import { readNotebook } from "./nbformat.ts";

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));

// deno-lint-ignore no-explicit-any -- nbformat JSON, read field by field
type Json = any;

/** Where and on what a notebook ran; every summary row carries it (rows of several runs can be merged). */
export interface RunInfo {
  /** ISO time the notebook started. */
  startedAt: string;
  /** 1-minute load average when it started and when it ended. */
  load: [number, number];
  /** `git rev-parse --short HEAD`, with "+changes" when tracked files differ from it. */
  commit: string;
  /** The WebGPU adapter the runner's process gets (the kernel picks the same), or why none. */
  adapter: string;
  /** Deno, V8 and TypeScript versions (the kernel runs on the same Deno), and plotly.js. */
  runtime: { deno: string; v8: string; typescript: string; plotly: string | null };
}

/** One row of summary.json, as kernel/repro.ts writes it (run fields absent in older summaries). */
export interface SummaryRow extends Partial<RunInfo> {
  notebook: string;
  output: string;
  runner: string;
  mode: "quick" | "full";
  cells: number;
  executed: number;
  errors: number;
  expectedErrors: number;
  seconds: number;
  status: "ok" | "failed";
  message?: string;
}

// ------------------------------------------------------------------------------------------ run info

function git(args: string[]): string | null {
  try {
    const r = new Deno.Command("git", { args, cwd: ROOT, stdout: "piped", stderr: "null" }).outputSync();
    return r.success ? new TextDecoder().decode(r.stdout).trim() : null;
  } catch {
    return null;
  }
}

/** This checkout's commit, "+changes" when tracked files were edited, "unknown" outside git. */
export function gitCommit(): string {
  const head = git(["rev-parse", "--short=10", "HEAD"]);
  if (!head) return "unknown";
  const dirty = git(["status", "--porcelain", "--untracked-files=no"]);
  return dirty ? `${head}+changes` : head;
}

/** Prints the adapter's info as JSON, or null; run in a child so the runner holds no GPU instance. */
const ADAPTER_PROBE = `const a = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
const i = a?.info;
console.log(JSON.stringify(i ? { vendor: i.vendor, architecture: i.architecture, description: i.description } : null));`;

/**
 * The WebGPU adapter this Deno gets, as runtime/device.ts asks for it (SEQLAB_DEVICE=cpu: none asked). Asked
 * in a child process (the drivers' stderr chatter goes nowhere; the runner keeps no GPU instance while the
 * kernel works), at most `timeoutMs`; never throws.
 */
export async function adapterName(timeoutMs = 20_000): Promise<string> {
  if (Deno.env.get("SEQLAB_DEVICE") === "cpu") return "cpu (SEQLAB_DEVICE=cpu)";
  try {
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--quiet", "--no-config", ADAPTER_PROBE],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
      signal: AbortSignal.timeout(timeoutMs),
    }).output();
    const lines = new TextDecoder().decode(r.stdout).trim().split("\n");
    const i = JSON.parse(lines[lines.length - 1] || "null");
    if (!i) return "no WebGPU adapter (cpu backend only)";
    return [i.description || i.vendor || "unknown adapter", i.architecture, i.vendor && `vendor ${i.vendor}`]
      .filter(Boolean).join(", ");
  } catch (e) {
    return `unknown (the adapter probe failed: ${(e as Error).message})`;
  }
}

/** 1-minute load average, or NaN where the OS does not say. */
export function load1(): number {
  try {
    return Deno.loadavg()[0];
  } catch {
    return NaN;
  }
}

/** What stays the same for every notebook of one run. */
export async function runContext(): Promise<Omit<RunInfo, "startedAt" | "load">> {
  return {
    commit: gitCommit(),
    adapter: await adapterName(),
    runtime: { ...Deno.version, plotly: plotlyVersion() },
  };
}

// ------------------------------------------------------------------------------------------ notebooks

/** A Markdown pipe table: header cells and rows of cells, as written (not yet escaped). */
export interface Table {
  header: string[];
  rows: string[][];
}

/** Split one pipe-table line into cells (a `\|` stays in its cell). */
function cellsOf(line: string): string[] {
  const t = line.trim().replace(/^\|/, "").replace(/\|$/, "");
  return t.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

/**
 * The first pipe table in Markdown text, or null.
 *
 * @example
 * ```ts
 * import { parseTable } from "./report.ts";
 * const t = parseTable("| a | b |\n|---|---|\n| 1 \\| 2 | x |");
 * if (JSON.stringify(t?.rows) !== '[["1 | 2","x"]]') throw new Error("example failed");
 * ```
 */
export function parseTable(md: string): Table | null {
  const lines = md.split("\n");
  for (let i = 0; i + 1 < lines.length; i++) {
    if (
      !/^\s*\|.*\|\s*$/.test(lines[i]) ||
      !/^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/.test(lines[i + 1])
    ) {
      continue;
    }
    const header = cellsOf(lines[i]);
    const rows: string[][] = [];
    for (let j = i + 2; j < lines.length && /^\s*\|/.test(lines[j]); j++) rows.push(cellsOf(lines[j]));
    return { header, rows };
  }
  return null;
}

/**
 * A notebook's closing table: the table among its last code cell's Markdown outputs whose header names a
 * verdict (the research notebooks' `| claim | paper | ours | verdict |`), or null.
 */
export function closingTable(nb: Json): Table | null {
  const code = (nb.cells ?? []).filter((c: Json) => c.cell_type === "code");
  const last = code[code.length - 1];
  for (const o of [...(last?.outputs ?? [])].reverse()) {
    const md = o.data?.["text/markdown"];
    if (md === undefined) continue;
    const t = parseTable(Array.isArray(md) ? md.join("") : String(md));
    if (t && t.header.some((h) => /verdict/i.test(h))) return t;
  }
  return null;
}

/** A figure in a notebook: the code cell's number (1-based), its title, its plotly JSON. */
export interface Figure {
  cell: number;
  title: string;
  figure: { data: unknown[]; layout?: Record<string, unknown>; config?: Record<string, unknown> };
}

/** Every plotly figure in a notebook's outputs, in order (display updates included, as saved). */
export function figures(nb: Json): Figure[] {
  const out: Figure[] = [];
  const code = (nb.cells ?? []).filter((c: Json) => c.cell_type === "code");
  code.forEach((c: Json, i: number) => {
    for (const o of c.outputs ?? []) {
      const f = o.data?.["application/vnd.plotly.v1+json"];
      if (!f || !Array.isArray(f.data)) continue;
      const t = f.layout?.title;
      out.push({ cell: i + 1, title: String((typeof t === "string" ? t : t?.text) ?? ""), figure: f });
    }
  });
  return out;
}

/** Seconds per executed code cell, from nbclient's `metadata.execution` timestamps. */
export function cellSeconds(nb: Json): { cell: number; seconds: number }[] {
  const code = (nb.cells ?? []).filter((c: Json) => c.cell_type === "code");
  const out: { cell: number; seconds: number }[] = [];
  code.forEach((c: Json, i: number) => {
    const e = c.metadata?.execution ?? {};
    const t0 = Date.parse(e["iopub.execute_input"] ?? e["iopub.status.busy"]);
    const t1 = Date.parse(e["shell.execute_reply"] ?? e["iopub.status.idle"]);
    if (Number.isFinite(t0) && Number.isFinite(t1)) out.push({ cell: i + 1, seconds: (t1 - t0) / 1000 });
  });
  return out;
}

// ------------------------------------------------------------------------------------------ HTML

/**
 * Escape text for HTML content and attribute values.
 *
 * @example
 * ```ts
 * import { escapeHtml } from "./report.ts";
 * if (escapeHtml(`<a href="x">&</a>`) !== "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;") throw new Error("example failed");
 * ```
 */
export function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

/**
 * Numbers with four or more decimals rounded for reading: to four significant digits (0.123456 → 0.1235),
 * whole numbers from 1000 on (12345.678 → 12346). Versions (1.2.3456) and exponents are left alone.
 *
 * @example
 * ```ts
 * import { roundForReading } from "./report.ts";
 * if (roundForReading("0.123456 s, v1.2.3456") !== "0.1235 s, v1.2.3456") throw new Error("example failed");
 * ```
 */
export function roundForReading(s: string): string {
  return s.replace(/(?<![\w.])(-?\d+\.\d{4,})(?![\w.]|\.\d)/g, (m) => {
    const x = Number(m);
    if (!Number.isFinite(x)) return m;
    return Math.abs(x) >= 1000 ? Math.round(x).toString() : String(Number(x.toPrecision(4)));
  });
}

/** A table cell's text as HTML: rounded, escaped, then `code` spans and **bold** kept. */
function cellHtml(s: string): string {
  return escapeHtml(roundForReading(s))
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<b>$1</b>");
}

function tableHtml(t: Table, cls: string): string {
  const head = t.header.map((h) => `<th>${cellHtml(h)}</th>`).join("");
  const rows = t.rows.map((r) => `<tr>${r.map((c) => `<td>${cellHtml(c)}</td>`).join("")}</tr>`).join("\n");
  return `<table class="${cls}"><thead><tr>${head}</tr></thead><tbody>\n${rows}\n</tbody></table>`;
}

const fmtS = (x: number) => (x >= 100 ? x.toFixed(0) : x.toFixed(1));
const fmtLoad = (l?: [number, number]) =>
  l && l.every(Number.isFinite) ? `${l[0].toFixed(1)} → ${l[1].toFixed(1)}` : "–";
const anchor = (nb: string) => "nb-" + nb.replace(/[^A-Za-z0-9_-]/g, "_");
/** JSON inside a <script> element: no `</script>` or `<!--` can end it early. */
const scriptJson = (v: unknown) => JSON.stringify(v).replace(/</g, "\\u003c");

/** One notebook's row and its executed notebook (null when it could not be read). */
export interface Entry {
  row: SummaryRow;
  nb: Json | null;
  /** Link to the executed notebook, relative to the report. */
  href: string;
}

const STYLE = `
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #176117; } .failed { color: #a31515; font-weight: bold; }
.note { color: #666; } .message { white-space: pre-wrap; color: #a31515; }
.figure { width: 100%; height: 420px; margin: 0 0 1.5em; }
.figure-label { margin: 1em 0 0; }
.figure-fallback { color: #a31515; }
code { background: #f3f3f3; padding: 0 .2em; }
`;

/** The report page for these entries. */
export function renderReport(entries: Entry[], generated = new Date()): string {
  const distinct = (
    f: (r: SummaryRow) => string | undefined,
  ) => [...new Set(entries.map((e) => f(e.row)).filter((v): v is string => !!v))];
  const runLines: [string, string[]][] = [
    ["mode", distinct((r) => r.mode)],
    ["runner", distinct((r) => r.runner)],
    ["adapter", distinct((r) => r.adapter)],
    [
      "runtime",
      distinct((r) =>
        r.runtime && `Deno ${r.runtime.deno}, V8 ${r.runtime.v8}, TypeScript ${r.runtime.typescript}`
      ),
    ],
    ["plotly.js", distinct((r) => r.runtime?.plotly ?? undefined)],
    ["commit", distinct((r) => r.commit)],
  ];
  const run = runLines.map(([k, vs]) =>
    `<tr><th>${k}</th><td>${vs.length ? vs.map(escapeHtml).join("<br>") : "–"}${
      vs.length > 1 ? ' <span class="note">(differs between notebooks: see each)</span>' : ""
    }</td></tr>`
  ).join("\n");
  const summary = entries.map(({ row: r, href }) =>
    `<tr><td><a href="#${anchor(r.notebook)}">${escapeHtml(r.notebook)}</a></td>` +
    `<td class="${r.status === "ok" ? "ok" : "failed"}">${escapeHtml(r.status)}</td>` +
    `<td>${escapeHtml(r.mode)}</td><td class="num">${r.executed}/${r.cells}</td>` +
    `<td class="num">${r.errors}${r.expectedErrors ? ` (+${r.expectedErrors} expected)` : ""}</td>` +
    `<td class="num">${fmtS(r.seconds)}</td><td class="num">${fmtLoad(r.load)}</td>` +
    `<td>${escapeHtml(r.startedAt ? r.startedAt.replace("T", " ").replace(/\.\d+Z$/, "Z") : "–")}</td>` +
    `<td><a href="${escapeHtml(href)}">executed notebook</a></td></tr>`
  ).join("\n");

  const figs: { id: string; fig: Figure["figure"] }[] = [];
  const sections = entries.map(({ row: r, nb, href }) => {
    const parts: string[] = [];
    parts.push(`<h2 id="${anchor(r.notebook)}">${escapeHtml(r.notebook)}</h2>`);
    parts.push(
      `<p><span class="${r.status === "ok" ? "ok" : "failed"}">${escapeHtml(r.status)}</span>, ` +
        `${escapeHtml(r.mode)} mode, ${r.executed}/${r.cells} cells in ${fmtS(r.seconds)} s` +
        `${r.load ? `, load average ${fmtLoad(r.load)}` : ""}` +
        `${r.adapter ? `, on ${escapeHtml(r.adapter)}` : ""}${
          r.commit ? `, commit ${escapeHtml(r.commit)}` : ""
        }` +
        ` — <a href="${escapeHtml(href)}">executed notebook</a></p>`,
    );
    if (r.message) parts.push(`<p class="message">${escapeHtml(r.message)}</p>`);
    if (!nb) {
      parts.push(`<p class="failed">The executed notebook could not be read.</p>`);
      return parts.join("\n");
    }
    const t = closingTable(nb);
    parts.push(
      t
        ? tableHtml(t, "closing")
        : `<p class="note">No closing table (paper / ours / verdict) in its last cell.</p>`,
    );
    const slow = cellSeconds(nb).sort((a, b) => b.seconds - a.seconds).slice(0, 5);
    if (slow.length) {
      parts.push(
        `<p class="note">Slowest cells: ${
          slow.map((c) => `${c.cell} (${fmtS(c.seconds)} s)`).join(", ")
        }.</p>`,
      );
    }
    for (const f of figures(nb)) {
      const id = `fig-${figs.length}`;
      figs.push({ id, fig: f.figure });
      const label = `cell ${f.cell}${f.title ? `: ${f.title}` : ""}`;
      parts.push(`<p class="note figure-label">${escapeHtml(label)}</p>`);
      parts.push(`<div class="figure" id="${id}" data-label="${escapeHtml(label)}"></div>`);
    }
    return parts.join("\n");
  });

  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>seqlab notebooks: report</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
<script src="${PLOTLY_FILE}"></script>
</head><body>
<h1>seqlab notebooks</h1>
<p class="note">Report of <code>deno task repro</code>, generated ${escapeHtml(generated.toISOString())}. Each
notebook's entry is from its latest run; numbers are rounded for reading (the executed notebooks have them
all).</p>
<table class="run">${run}</table>
<table class="summary"><thead><tr><th>notebook</th><th>status</th><th>mode</th><th class="num">cells</th>
<th class="num">errors</th><th class="num">seconds</th><th class="num">load avg</th><th>started (UTC)</th>
<th>output</th></tr></thead><tbody>
${summary}
</tbody></table>
${sections.join("\n")}
<script type="application/json" id="figures">${scriptJson(figs)}</script>
<script>
(function () {
  var figs = JSON.parse(document.getElementById("figures").textContent);
  figs.forEach(function (f) {
    var el = document.getElementById(f.id);
    if (!window.Plotly) {
      el.className = "figure-fallback";
      el.textContent = el.dataset.label + ": not drawn (${PLOTLY_FILE} is missing next to this page)";
      return;
    }
    var config = Object.assign({ responsive: true }, f.fig.config || {});
    var layout = Object.assign({}, f.fig.layout || {});
    if (typeof layout.height === "number") el.style.height = layout.height + "px";
    window.Plotly.newPlot(el, f.fig.data, layout, config);
  });
})();
</script>
</body></html>
`;
}

/** Read summary.json in `outDir` (an empty list when there is none or it is not a list). */
export function readSummary(outDir: string): SummaryRow[] {
  try {
    const rows = JSON.parse(Deno.readTextFileSync(join(outDir, "summary.json")));
    return Array.isArray(rows) ? rows : [];
  } catch {
    return [];
  }
}

/**
 * Build the report for `outDir`'s summary.json at `reportPath` (default: beside `outDir`, report.html), and
 * copy plotly.min.js next to it. Returns what it wrote.
 */
export function writeReport(outDir: string, reportPath = join(dirname(outDir), "report.html")): {
  path: string;
  notebooks: number;
  figures: number;
  plotly: string | null;
} {
  const rows = readSummary(outDir).sort((a, b) => a.notebook.localeCompare(b.notebook));
  const entries: Entry[] = rows.map((row) => {
    const executed = resolve(ROOT, row.output);
    let nb: Json | null = null;
    try {
      nb = readNotebook(Deno.readTextFileSync(executed), row.notebook);
    } catch { /* shown as unreadable */ }
    return { row, nb, href: relative(dirname(resolve(reportPath)), executed) };
  });
  const html = renderReport(entries);
  Deno.mkdirSync(dirname(resolve(reportPath)), { recursive: true });
  Deno.writeTextFileSync(reportPath, html);
  const plotly = copyPlotly(dirname(resolve(reportPath)));
  const nFigures = entries.reduce((n, e) => n + (e.nb ? figures(e.nb).length : 0), 0);
  return { path: reportPath, notebooks: entries.length, figures: nFigures, plotly };
}

if (import.meta.main) {
  const args = [...Deno.args];
  const opt = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  if (args.includes("-h") || args.includes("--help")) {
    console.log("usage: deno run -A kernel/report.ts [--out DIR] [--report PATH]");
    Deno.exit(0);
  }
  const out = resolve(opt("--out") ?? join(ROOT, "out", "notebooks"));
  const r = writeReport(out, opt("--report") ? resolve(opt("--report")!) : undefined);
  console.log(`report: ${relative(Deno.cwd(), r.path)} (${r.notebooks} notebooks, ${r.figures} figures)`);
  if (!r.plotly) {
    console.error("report: plotly.js-dist-min is not installed (deno install): figures show as text");
  }
}
