/**
 * Rich display for notebook cells: MIME bundles for values, display helpers, plotly figures, arquero
 * tables, and a progress bar.
 *
 * A value shows itself through `[Symbol.for("Jupyter.display")]()` returning a MIME bundle (the
 * protocol Deno's kernel uses), else by shape: plotly figure, arquero table, tensor-like, PNG bytes,
 * and `Deno.inspect` text as the fallback. The helpers here work outside the kernel too: with no
 * frontend attached, `display` prints text/plain and `progress` prints plain lines.
 *
 * @example
 * ```ts
 * import { html, progress } from "./display.ts";
 * const shown = html("<b>bold</b>"); // displays as HTML in a notebook
 * let total = 0;
 * for (const i of progress([1, 2, 3], { label: "sum" })) total += i;
 * ```
 *
 * @module
 */

import { PLOTLY_FILE, plotlyVersion } from "./assets/mod.ts";

/** The display protocol symbol, shared with Deno's kernel. */
export const $display: unique symbol = Symbol.for("Jupyter.display") as never;

/** A MIME bundle: MIME type → data. */
export type MimeBundle = Record<string, unknown>;

/** What the kernel worker does with display output; null when no frontend is attached. */
export interface DisplaySink {
  display(data: MimeBundle, metadata: Record<string, unknown>, displayId?: string, update?: boolean): void;
  clear(wait: boolean): void;
}

let sink: DisplaySink | null = null;
/** Attach (or detach, with null) the frontend that display output goes to. The kernel worker calls this. */
export function setDisplaySink(s: DisplaySink | null): void {
  sink = s;
}

/** Whether a frontend is attached (inside the kernel). */
export function hasFrontend(): boolean {
  return sink !== null;
}

function inspect(v: unknown): string {
  // deno-lint-ignore no-explicit-any
  const D = (globalThis as any).Deno;
  if (D?.inspect) {
    return D.inspect(v, { colors: false, depth: 4, iterableLimit: 100, strAbbreviateSize: 10000 });
  }
  try {
    return typeof v === "string" ? v : JSON.stringify(v);
  } catch {
    return String(v);
  }
}

/** Strip ANSI colour codes (text/plain must be plain). */
export function stripAnsi(s: string): string {
  // deno-lint-ignore no-control-regex
  return s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, "");
}

/** An object that displays as the given bundle. */
export function mime(bundle: MimeBundle): { [$display](): MimeBundle } {
  return { [$display]: () => bundle };
}

/** Display as HTML. */
export function html(s: string): { [$display](): MimeBundle } {
  return mime({ "text/html": s, "text/plain": stripTags(s) });
}

/** Display as Markdown. */
export function md(s: string): { [$display](): MimeBundle } {
  return mime({ "text/markdown": s, "text/plain": s });
}

/** Display an SVG document. */
export function svg(s: string): { [$display](): MimeBundle } {
  return mime({ "image/svg+xml": s, "text/plain": "<svg image>" });
}

/** Display JSON (with a collapsible tree in JupyterLab). */
export function json(v: unknown): { [$display](): MimeBundle } {
  return mime({ "application/json": v, "text/plain": JSON.stringify(v, null, 2) });
}

/** Display PNG or JPEG bytes. */
export function image(bytes: Uint8Array, type: "image/png" | "image/jpeg" = "image/png"): {
  [$display](): MimeBundle;
} {
  return mime({ [type]: base64(bytes), "text/plain": `<${type} image, ${bytes.length} bytes>` });
}

function stripTags(s: string): string {
  return s.replace(/<[^>]*>/g, "").replace(/\s+/g, " ").trim().slice(0, 500) || "<html>";
}

/** Base64 of bytes (chunked: no argument-count limit on large images). */
export function base64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

// ---------------------------------------------------------------- plotly

/** A plotly figure: traces, layout, config. */
export interface PlotlyFigure {
  data: Record<string, unknown>[];
  layout?: Record<string, unknown>;
  config?: Record<string, unknown>;
  frames?: Record<string, unknown>[];
}

let figureCount = 0;

/** Whether a value has the shape of a plotly figure ({data: [trace...], layout?}). */
export function isPlotlyFigure(v: unknown): v is PlotlyFigure {
  if (!v || typeof v !== "object" || Array.isArray(v)) return false;
  const f = v as Record<string, unknown>;
  const keys = Object.keys(f);
  if (!Array.isArray(f.data) || keys.some((k) => !["data", "layout", "config", "frames"].includes(k))) {
    return false;
  }
  return f.data.length > 0 &&
    f.data.every((t) => t && typeof t === "object" && ("type" in t || "x" in t || "y" in t || "z" in t));
}

/** Where a page finds plotly.js: the kernelspec's copy (kernel/assets/mod.ts), then the pinned CDN build. */
function plotlySources(): { kernel: string; file: string; cdn: string | null } {
  const v = plotlyVersion();
  return { kernel: "seqlab", file: PLOTLY_FILE, cdn: v ? `https://cdn.plot.ly/plotly-${v}.min.js` : null };
}

/**
 * The figure's script. Every figure carries the whole loader, so each output draws on its own whatever ran
 * before it; the loads share one promise on the page (`window.__seqlabPlotly`), so plotly.js is fetched
 * once however many figures the page has. The sources, in order: a `Plotly` the page already has (the run
 * report loads it), the kernelspec's copy under the Jupyter server's base URL (Notebook 6's
 * `data-base-url`, JupyterLab's `jupyter-config-data`; the notebook's kernelspec name where Notebook 6 says
 * it, then "seqlab"), the CDN. If none loads, the figure's text stays, with
 * the reason. The element is looked up when drawing: Notebook 6 runs output scripts before it attaches them.
 */
const PLOTLY_LOADER = `var w=window,me=document.currentScript;
function base(){
if(!/^https?:$/.test(location.protocol))return null;
var b=document.body&&document.body.getAttribute("data-base-url");
if(b)return b;
var c=document.getElementById("jupyter-config-data");
try{return c?JSON.parse(c.textContent).baseUrl||null:null}catch(e){return null}
}
function names(){
var n=[],J=w.Jupyter,m=J&&J.notebook&&J.notebook.metadata&&J.notebook.metadata.kernelspec;
if(m&&m.name&&m.name!==lib.kernel)n.push(m.name);
n.push(lib.kernel);return n;
}
function load(src,cb){
var s=document.createElement("script");s.src=src;s.async=true;
s.onload=function(){cb(w.Plotly&&w.Plotly.newPlot?w.Plotly:null)};
s.onerror=function(){cb(null)};
document.head.appendChild(s);
}
if(!w.__seqlabPlotly)w.__seqlabPlotly=new Promise(function(ok,fail){
var urls=[],tried=[],b=base();
if(b)names().forEach(function(k){urls.push(b.replace(/\\/?$/,"/")+"kernelspecs/"+encodeURIComponent(k)+"/"+lib.file)});
if(lib.cdn)urls.push(lib.cdn);
(function next(){
if(w.Plotly&&w.Plotly.newPlot)return ok(w.Plotly);
var u=urls.shift();
if(!u)return fail(new Error(tried.length?"could not load plotly.js from "+tried.join(", "):"no plotly.js source"));
tried.push(u);load(u,function(P){P?ok(P):next()});
})();
});
function el(n,cb){
var e=document.getElementById(id)||(me&&me.previousElementSibling);
if(e&&e.isConnected)return cb(e);
if(n>0)setTimeout(function(){el(n-1,cb)},50);
}
w.__seqlabPlotly.then(function(P){el(100,function(e){
e.textContent="";e.style.height=h;
P.newPlot(e,fig);
})},function(err){el(100,function(e){
e.textContent=e.textContent+" Not drawn: "+err.message+"; the figure is in this output's plotly JSON.";
})});`;

/** Significant digits a figure's numbers keep: float32's (seqlab's tensors are float32); far past what a plot shows. */
export const FIGURE_DIGITS = 7;

/**
 * Trace data as stored in the notebook: numbers to FIGURE_DIGITS significant digits (a double's 17 digits
 * doubled the size of figure-heavy notebooks), typed arrays as plain arrays (JSON.stringify would make them
 * objects keyed "0", "1", ...).
 */
function compactData(v: unknown): unknown {
  if (typeof v === "number") {
    return Number.isInteger(v) || !Number.isFinite(v) ? v : +v.toPrecision(FIGURE_DIGITS);
  }
  if (Array.isArray(v)) return v.map(compactData);
  if (ArrayBuffer.isView(v) && !(v instanceof DataView)) {
    return Array.from(v as unknown as ArrayLike<number>, compactData);
  }
  if (v && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, compactData(x)]));
  }
  return v;
}

/**
 * MIME bundle of a plotly figure: the plotly JSON (application/vnd.plotly.v1+json), which VS Code and
 * JupyterLab with plotly's extension render themselves; a small HTML output that draws it with plotly.js,
 * loaded once per page (see PLOTLY_LOADER), for Notebook 6, a plain JupyterLab and nbconvert's HTML export
 * (online: it has no Jupyter server to serve the kernelspec's copy); and text/plain. Trace numbers are kept
 * to FIGURE_DIGITS significant digits.
 */
export function plotlyBundle(figure: PlotlyFigure): MimeBundle {
  const fig = { ...figure, data: compactData(figure.data) as Record<string, unknown>[] };
  const id = `seqlab-plot-${Date.now().toString(36)}-${figureCount++}`;
  const layout = fig.layout ?? {};
  const config = { responsive: true, ...(fig.config ?? {}) };
  const jsonSafe = (v: unknown) => JSON.stringify(v).replace(/</g, "\\u003c");
  const traces = fig.data.map((t) => String((t as Record<string, unknown>).type ?? "scatter")).join(", ");
  const title = layout.title as { text?: string } | string | undefined;
  const titleText = typeof title === "string" ? title : title?.text;
  const plain = `<plotly figure${
    titleText ? ` "${titleText}"` : ""
  }: ${fig.data.length} trace(s): ${traces}>`;
  const height = typeof layout.height === "number" ? `${layout.height}px` : "450px";
  const drawn = { data: fig.data, layout, config, ...(fig.frames ? { frames: fig.frames } : {}) };
  const vars = `var id=${JSON.stringify(id)},h=${JSON.stringify(height)},lib=${jsonSafe(plotlySources())},` +
    `fig=${jsonSafe(drawn)};`;
  return {
    "application/vnd.plotly.v1+json": { data: fig.data, layout, config: fig.config ?? {} },
    "text/html": `<div id="${id}" class="seqlab-plot">${
      escapeHtml(plain)
    }</div>\n<script type="text/javascript">(function(){${vars}\n${PLOTLY_LOADER}\n})();</script>`,
    "text/plain": plain,
  };
}

/** A plotly figure that displays itself. */
export function plot(
  data: Record<string, unknown>[],
  layout: Record<string, unknown> = {},
  config: Record<string, unknown> = {},
): PlotlyFigure & { [$display](): MimeBundle } {
  const fig = { data, layout, config };
  return { ...fig, [$display]: () => plotlyBundle(fig) };
}

// ---------------------------------------------------------------- tables and tensors

interface ArqueroLike {
  numRows(): number;
  numCols(): number;
  toHTML(o?: { limit?: number }): string;
  toMarkdown(o?: { limit?: number }): string;
}

function isArqueroTable(v: unknown): v is ArqueroLike {
  const t = v as Record<string, unknown>;
  return !!t && typeof t === "object" && typeof t.toHTML === "function" &&
    typeof t.toMarkdown === "function" &&
    typeof t.numRows === "function" && typeof t.numCols === "function";
}

/** Rows shown for a table. */
export const TABLE_ROWS = 20;

function arqueroBundle(t: ArqueroLike): MimeBundle {
  const n = t.numRows();
  const more = n > TABLE_ROWS ? `\n\n(${TABLE_ROWS} of ${n} rows)` : "";
  const md = t.toMarkdown({ limit: TABLE_ROWS }) + more;
  return {
    "text/html": t.toHTML({ limit: TABLE_ROWS }) + (more ? `<p>${TABLE_ROWS} of ${n} rows</p>` : ""),
    "text/markdown": md,
    "text/plain": md,
  };
}

interface TensorLike {
  shape: readonly number[];
  dtype: string;
  device?: unknown;
  toArray(): Promise<unknown> | unknown;
}

function isTensorLike(v: unknown): v is TensorLike {
  const t = v as Record<string, unknown>;
  return !!t && typeof t === "object" && Array.isArray(t.shape) && typeof t.dtype === "string" &&
    typeof t.toArray === "function";
}

/** Summary table of a tensor (used when the tensor class brings no display method of its own). */
export async function tensorBundle(t: TensorLike): Promise<MimeBundle> {
  const shape = `[${t.shape.join(", ")}]`;
  const size = t.shape.reduce((a, b) => a * b, 1);
  const device = String((t.device as { name?: string })?.name ?? t.device ?? "?");
  let values: number[] = [];
  try {
    const arr = await t.toArray();
    values = flatten(arr).slice(0, 1_000_000);
  } catch { /* device read failed: show the metadata only */ }
  const finite = values.filter((x) => Number.isFinite(x));
  const stat = (f: (a: number[]) => number) => (finite.length ? fmt(f(finite)) : "–");
  const rows: [string, string][] = [
    ["shape", shape],
    ["dtype", t.dtype],
    ["device", device],
    ["size", String(size)],
    ["min", stat((a) => a.reduce((x, y) => Math.min(x, y)))],
    ["max", stat((a) => a.reduce((x, y) => Math.max(x, y)))],
    ["mean", stat((a) => a.reduce((x, y) => x + y, 0) / a.length)],
    ["head", values.slice(0, 8).map(fmt).join(", ") + (size > 8 ? ", …" : "")],
  ];
  return {
    "text/html": `<table class="seqlab-tensor"><caption>Tensor</caption>${
      rows.map(([k, v]) =>
        `<tr><th style="text-align:left">${k}</th><td style="text-align:left">${escapeHtml(v)}</td></tr>`
      )
        .join("")
    }</table>`,
    "text/markdown": `| Tensor | |\n|---|---|\n${rows.map(([k, v]) => `| ${k} | ${v} |`).join("\n")}`,
    "text/plain": `Tensor(shape=${shape}, dtype=${t.dtype}, device=${device}) [${rows[7][1]}]`,
  };
}

function flatten(a: unknown): number[] {
  if (typeof a === "number") return [a];
  if (ArrayBuffer.isView(a)) return Array.from(a as unknown as ArrayLike<number>, Number);
  if (Array.isArray(a)) return a.flatMap(flatten);
  return [];
}

function fmt(x: number): string {
  return Number.isInteger(x) ? String(x) : x.toPrecision(5);
}

function isPng(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array && v.length > 8 && v[0] === 0x89 && v[1] === 0x50 && v[2] === 0x4e &&
    v[3] === 0x47;
}

/** The MIME bundle for any value. Always has text/plain. */
export async function formatValue(
  v: unknown,
): Promise<{ data: MimeBundle; metadata: Record<string, unknown> }> {
  let data: MimeBundle | undefined;
  const metadata: Record<string, unknown> = {};
  // deno-lint-ignore no-explicit-any
  const d = v && (typeof v === "object" || typeof v === "function") ? (v as any)[$display] : undefined;
  if (typeof d === "function") {
    const b = await d.call(v);
    if (b && typeof b === "object") data = { ...b };
  } else if (isPlotlyFigure(v)) data = plotlyBundle(v);
  else if (isArqueroTable(v)) data = arqueroBundle(v);
  else if (isTensorLike(v)) data = await tensorBundle(v);
  else if (isPng(v)) data = { "image/png": base64(v), "text/plain": `<image/png, ${v.length} bytes>` };
  data ??= {};
  if (!("text/plain" in data)) data["text/plain"] = inspect(v);
  data["text/plain"] = stripAnsi(String(data["text/plain"]));
  return { data, metadata };
}

let displayCount = 0;

/** Handle returned by `display`: update the same output in place. */
export interface DisplayHandle {
  id: string;
  update(value: unknown): Promise<void>;
}

/**
 * Show a value now (not only as the cell's result). With `id`, the output can be replaced later by
 * `display(v, {id, update: true})` or the returned handle's `update`.
 */
export async function display(
  value: unknown,
  opts: { id?: string; update?: boolean; raw?: boolean } = {},
): Promise<DisplayHandle> {
  const id = opts.id ?? (opts.update ? undefined : `seqlab-display-${displayCount++}`);
  const bundle = opts.raw ? { data: value as MimeBundle, metadata: {} } : await formatValue(value);
  if (sink) sink.display(bundle.data, bundle.metadata, id, opts.update ?? false);
  else console.log(String(bundle.data["text/plain"] ?? ""));
  return { id: id ?? "", update: (v: unknown) => display(v, { id, update: true }).then(() => {}) };
}

/** Clear the cell's output (with wait, when the next output arrives). */
export function clearOutput(wait = false): void {
  if (sink) sink.clear(wait);
}

// ---------------------------------------------------------------- progress

/** Options for `progress`. */
export interface ProgressOptions {
  /** Number of items, when the iterable does not say (generators). */
  total?: number;
  /** Text before the bar. */
  label?: string;
  /** Least time between two updates, in ms (default 100). */
  intervalMs?: number;
}

class ProgressBar {
  private n = 0;
  private t0 = performance.now();
  private lastShown = -Infinity;
  private lastPlainPct = -1;
  private id = `seqlab-progress-${displayCount++}`;
  private shown = false;
  constructor(private total: number | undefined, private label: string, private interval: number) {}

  private text(): string {
    const secs = ((performance.now() - this.t0) / 1000).toFixed(1);
    if (!this.total) return `${this.label} ${this.n} it ${secs}s`.trim();
    const frac = Math.min(1, this.n / this.total);
    const w = 30;
    const fill = Math.round(frac * w);
    return `${this.label} [${"#".repeat(fill)}${".".repeat(w - fill)}] ${this.n}/${this.total} ${
      (frac * 100).toFixed(0)
    }% ${secs}s`.trim();
  }

  private bundle(): MimeBundle {
    const text = this.text();
    const bar = this.total
      ? `<progress value="${this.n}" max="${this.total}" style="width:30em"></progress>`
      : "";
    return {
      "text/plain": text,
      "text/html": `<div>${escapeHtml(this.label)} ${bar} <code>${
        escapeHtml(text.replace(this.label, "").trim())
      }</code></div>`,
    };
  }

  tick(done = false, start = false): void {
    if (!done) this.n++;
    const now = performance.now();
    if (sink) {
      // jupyter console prints a display_data's text/plain and ignores update_display_data, so it shows a
      // bar's first state only. That state waits for the first interval: a loop shorter than that shows
      // only its end.
      if (start) {
        this.lastShown = now;
        return;
      }
      if (!done && now - this.lastShown < this.interval) return;
      this.lastShown = now;
      if (done && this.shown) {
        // A bar shown before its end is blanked and shown anew, finished: a frontend that cannot update a
        // display still prints the end.
        sink.display({ "text/plain": "", "text/html": "" }, {}, this.id, true);
        this.id = `seqlab-progress-${displayCount++}`;
        this.shown = false;
      }
      sink.display(this.bundle(), {}, this.id, this.shown);
      this.shown = true;
      return;
    }
    // No frontend: a plain line at each 10% (or every 5 s without a total) and at the end.
    const pct = this.total ? Math.floor((this.n / this.total) * 10) : -1;
    const due = this.total ? pct > this.lastPlainPct : now - this.lastShown > 5000;
    if (due || done) {
      if (done && this.total && pct === this.lastPlainPct && this.shown) return;
      this.lastPlainPct = pct;
      this.lastShown = now;
      this.shown = true;
      console.log(this.text());
    }
  }
}

/**
 * Iterate with a progress bar that updates in place (update_display_data) in a notebook, and prints a
 * plain line every 10% elsewhere. Accepts an iterable, an async iterable, or a count (0..n-1).
 */
export function progress<T>(items: Iterable<T> | ArrayLike<T>, opts?: ProgressOptions): Iterable<T>;
export function progress(items: number, opts?: ProgressOptions): Iterable<number>;
export function progress<T>(items: AsyncIterable<T>, opts?: ProgressOptions): AsyncIterable<T>;
export function progress<T>(
  items: Iterable<T> | ArrayLike<T> | AsyncIterable<T> | number,
  opts: ProgressOptions = {},
): Iterable<T | number> | AsyncIterable<T> {
  const src = typeof items === "number" ? Array.from({ length: items }, (_, i) => i) : items;
  const lengthOf = (x: unknown) => {
    const o = x as { length?: unknown; size?: unknown };
    return typeof o.length === "number" ? o.length : typeof o.size === "number" ? o.size : undefined;
  };
  const total = opts.total ?? lengthOf(src);
  const make = () => new ProgressBar(total, opts.label ?? "", opts.intervalMs ?? 100);
  if (Symbol.asyncIterator in (src as object)) {
    return {
      async *[Symbol.asyncIterator]() {
        const bar = make();
        bar.tick(true, true);
        for await (const x of src as AsyncIterable<T>) {
          yield x;
          bar.tick();
        }
        bar.tick(true);
      },
    };
  }
  return {
    *[Symbol.iterator]() {
      const bar = make();
      bar.tick(true, true);
      const it = Symbol.iterator in (src as object) ? (src as Iterable<T>) : Array.from(src as ArrayLike<T>);
      for (const x of it) {
        yield x;
        bar.tick();
      }
      bar.tick(true);
    },
  };
}
