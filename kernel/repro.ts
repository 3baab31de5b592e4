/**
 * Headless notebook runner: `deno task repro [--quick] [notebook...]`.
 *
 * Executes every notebook under notebooks/ (or those named), in name order, on the seqlab kernel, shows
 * progress per cell, writes the executed notebooks to out/notebooks/ with a summary (summary.json,
 * summary.md: runner, mode, cells, errors, seconds, load average, commit, adapter per notebook; a run of some
 * notebooks replaces their rows and keeps the others), builds the run report (out/report.html, by
 * kernel/report.ts), and exits 1 if any cell failed. A cell
 * tagged `raises-exception` may fail. The first other failure stops that notebook (later cells usually
 * depend on it); the executed notebook is written either way, with every output up to the failure.
 *
 * Two runners, with the same outputs:
 * - `seqlab` (default): kernel/client.ts drives the kernel from TypeScript; no Python. It writes nbformat 4
 *   as nbclient and nbformat do (the same outputs, execution counts, `metadata.execution` timings and
 *   `language_info`; the same JSON layout, keys sorted, one-space indent, multi-line strings as lists).
 * - `python` (`--python`, or SEQLAB_REPRO_RUNNER=python): kernel/nbrun.py with Debian's python3-nbclient,
 *   through this checkout's kernelspec installed into out/notebooks/.jupyter (so the run neither depends on
 *   nor changes the user's kernels). Kept as the conformance reference.
 *
 * Options: --out DIR (default out/notebooks), --report PATH (default report.html beside DIR, so
 *          out/report.html), --timeout SECONDS per cell (default 600; a cell past it is
 *          interrupted and fails), --quick (the same as SEQLAB_QUICK=1), --python [PATH] (the nbclient
 *          runner; PATH defaults to $SEQLAB_PYTHON, else /usr/bin/python3, else python3).
 *
 * Ctrl-C interrupts the running cell and stops: the outputs so far are written. A second Ctrl-C kills the
 * kernel.
 *
 * @module
 */
import { basename, dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { install } from "./install.ts";
import { KernelClient } from "./client.ts";
import type { Message } from "./wire.ts";
import { outputFromMsg, readNotebook, splitLines, timestamp, writeNotebookText } from "./nbformat.ts";
import { load1, readSummary, runContext, type SummaryRow, writeReport } from "./report.ts";

export { readNotebook, splitLines, writeNotebookText };

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));

/** Which client executes the notebooks. */
export type Runner = "seqlab" | "python";

/** One notebook's outcome; the run fields (kernel/report.ts's RunInfo) are filled in by the command line. */
export interface NotebookSummary extends SummaryRow {
  runner: Runner;
}

/** Command line options. */
export interface ReproOptions {
  out: string;
  report: string;
  timeout: number;
  runner: Runner;
  python: string;
  quick: boolean;
  notebooks: string[];
}

const USAGE =
  "usage: deno task repro [--out DIR] [--report PATH] [--timeout SECONDS] [--quick] [--python [PATH]] " +
  "[notebook.ipynb...]";

/** Parse the command line; throws with a message that names the bad argument. */
export function parseArgs(args: string[], env: Record<string, string | undefined> = Deno.env.toObject()) {
  const runnerEnv = env.SEQLAB_REPRO_RUNNER;
  if (runnerEnv && runnerEnv !== "python" && runnerEnv !== "seqlab") {
    throw new Error(`SEQLAB_REPRO_RUNNER must be "seqlab" or "python", not ${JSON.stringify(runnerEnv)}`);
  }
  const opts: ReproOptions = {
    out: join(ROOT, "out", "notebooks"),
    report: "",
    timeout: 600,
    runner: runnerEnv === "python" ? "python" : "seqlab",
    python: "",
    quick: env.SEQLAB_QUICK === "1",
    notebooks: [],
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const value = () => {
      if (i + 1 >= args.length) throw new Error(`${a} needs a value`);
      return args[++i];
    };
    if (a === "--out") opts.out = resolve(value());
    else if (a === "--report") opts.report = resolve(value());
    else if (a === "--timeout") {
      const v = value();
      opts.timeout = Number(v);
      if (!(opts.timeout > 0)) throw new Error(`--timeout must be a positive number of seconds, not ${v}`);
    } else if (a === "--quick") opts.quick = true;
    else if (a === "--python") {
      opts.runner = "python";
      const next = args[i + 1];
      if (next !== undefined && !next.startsWith("-") && !next.endsWith(".ipynb")) opts.python = args[++i];
    } else if (a === "-h" || a === "--help") {
      console.log(USAGE);
      Deno.exit(0);
    } else if (a.startsWith("-")) throw new Error(`unknown option ${a}\n${USAGE}`);
    else opts.notebooks.push(resolve(a));
  }
  opts.report ||= join(dirname(opts.out), "report.html");
  if (opts.runner === "python" && !opts.python) {
    opts.python = env.SEQLAB_PYTHON ?? (exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3");
  }
  if (opts.notebooks.length === 0) {
    const dir = join(ROOT, "notebooks");
    opts.notebooks = [...Deno.readDirSync(dir)].filter((e) => e.isFile && e.name.endsWith(".ipynb"))
      .map((e) => join(dir, e.name)).sort();
  }
  for (const nb of opts.notebooks) {
    if (!exists(nb)) throw new Error(`no such notebook: ${relative(Deno.cwd(), nb) || nb}`);
  }
  return opts;
}

function exists(p: string): boolean {
  try {
    Deno.statSync(p);
    return true;
  } catch {
    return false;
  }
}

// ------------------------------------------------------------------------------------------ progress

/** Progress events; kernel/nbrun.py prints the same ones as JSON lines. */
type RunEvent =
  | { event: "start"; cells: number }
  | { event: "cell"; index: number; seconds: number; error: string | null; expected_error: boolean }
  | { event: "end"; status: "ok" | "failed"; message?: string | null; seconds: number };

function bar(done: number, total: number, width = 24): string {
  const fill = total ? Math.round((done / total) * width) : width;
  return `[${"#".repeat(fill)}${".".repeat(width - fill)}] ${done}/${total}`;
}

/** Turns events into the summary row and one progress line per cell. */
class Progress {
  private tty = Deno.stdout.isTerminal();
  constructor(readonly s: NotebookSummary) {}

  show(line: string, final = false): void {
    if (this.tty) Deno.stdout.writeSync(new TextEncoder().encode(`\r\x1b[2K${line}${final ? "\n" : ""}`));
    else console.log(line);
  }

  on(ev: RunEvent): void {
    const s = this.s;
    if (ev.event === "start") s.cells = ev.cells;
    else if (ev.event === "cell") {
      s.executed++;
      if (ev.error && ev.expected_error) s.expectedErrors++;
      else if (ev.error) s.errors++;
      const note = ev.error
        ? (ev.expected_error ? ` (expected error: ${ev.error})` : ` FAILED: ${ev.error}`)
        : "";
      this.show(
        `${s.notebook} ${bar(s.executed, s.cells)} cell ${ev.index + 1} ${ev.seconds.toFixed(2)}s${note}`,
      );
    } else {
      s.status = ev.status;
      s.seconds = ev.seconds;
      if (ev.message) s.message = ev.message;
    }
  }

  finish(): void {
    const s = this.s;
    this.show(
      `${s.notebook}: ${s.status} — ${s.executed}/${s.cells} cells, ${s.errors} errors` +
        `${s.expectedErrors ? ` (+${s.expectedErrors} expected)` : ""}, ${s.seconds.toFixed(1)}s` +
        (s.status === "failed" && s.message ? `\n  ${s.message}` : ""),
      true,
    );
  }
}

function newSummary(nb: string, out: string, runner: Runner, quick: boolean): NotebookSummary {
  return {
    notebook: relative(ROOT, nb),
    output: relative(ROOT, join(out, basename(nb))),
    runner,
    mode: quick ? "quick" : "full",
    cells: 0,
    executed: 0,
    errors: 0,
    expectedErrors: 0,
    seconds: 0,
    status: "failed",
  };
}

// ------------------------------------------------------------------------------------------ nbformat

// deno-lint-ignore no-explicit-any -- nbformat JSON: checked where it is read, kept as it is otherwise
type Json = any;

/**
 * Outputs of a notebook's cells from iopub messages, as nbclient's process_message builds them: each output
 * message appends, clear_output (with wait: before the next output) empties the cell, and a display_id's
 * update replaces the data of every output with that id, in any cell of the notebook.
 */
class OutputCollector {
  private displays = new Map<string, Map<number, number[]>>();
  private clearBeforeNext = false;
  constructor(private nb: Json) {}

  begin(): void {
    this.clearBeforeNext = false;
  }

  process(m: Message, cell: Json, index: number): void {
    const type = m.header.msg_type;
    const c = m.content as Json;
    const displayId = c.transient?.display_id;
    if (displayId && ["execute_result", "display_data", "update_display_data"].includes(type)) {
      this.updateDisplay(displayId, type === "update_display_data" ? "display_data" : type, c);
    }
    if ("execution_count" in c) cell.execution_count = c.execution_count;
    const timing = cell.metadata.execution;
    if (type === "status") {
      if (c.execution_state === "idle") timing["iopub.status.idle"] = timestamp(m);
      else if (c.execution_state === "busy") timing["iopub.status.busy"] = timestamp(m);
    } else if (type === "execute_input") timing["iopub.execute_input"] = timestamp(m);

    if (type === "clear_output") {
      if (c.wait) this.clearBeforeNext = true;
      else this.clear(cell, index);
    } else if (type === "status" || type === "execute_input" || type === "update_display_data") return;
    else if (type.startsWith("comm")) return;
    else {
      const out = outputFromMsg(type, c);
      if (!out) return;
      if (this.clearBeforeNext) {
        this.clear(cell, index);
        this.clearBeforeNext = false;
      }
      if (displayId) {
        const cells = this.displays.get(displayId) ?? new Map<number, number[]>();
        this.displays.set(displayId, cells);
        const list = cells.get(index) ?? [];
        cells.set(index, list);
        list.push(cell.outputs.length);
      }
      cell.outputs.push(out);
    }
  }

  private clear(cell: Json, index: number): void {
    cell.outputs.length = 0;
    for (const cells of this.displays.values()) if (cells.has(index)) cells.set(index, []);
  }

  private updateDisplay(id: string, asType: string, c: Json): void {
    const out = outputFromMsg(asType, c);
    for (const [i, indices] of this.displays.get(id) ?? []) {
      for (const k of indices) {
        const o = this.nb.cells[i].outputs[k];
        o.data = out.data;
        o.metadata = out.metadata;
      }
    }
  }
}

/** Ctrl-C while the seqlab runner runs: the first interrupts the cell and stops, the second kills. */
const stopper = {
  requested: 0,
  current: null as KernelClient | null,
};

function firstError(cell: Json, reply: Message | null): string | null {
  const e = (cell.outputs as Json[]).find((o) => o.output_type === "error");
  if (e) return `${e.ename}: ${e.evalue}`;
  if (reply?.content.status === "error") return `${reply.content.ename}: ${reply.content.evalue}`;
  return null;
}

/** Execute one notebook with kernel/client.ts; writes it to `out` whatever happens. */
export async function runNotebookSeqlab(
  nbPath: string,
  out: string,
  opts: { timeout: number; env: Record<string, string>; quick: boolean },
): Promise<NotebookSummary> {
  const s = newSummary(nbPath, out, "seqlab", opts.quick);
  const progress = new Progress(s);
  const t0 = performance.now();
  const seconds = () => Math.round(performance.now() - t0) / 1000;
  let nb: Json;
  try {
    nb = readNotebook(await Deno.readTextFile(nbPath), s.notebook);
  } catch (e) {
    progress.on({ event: "end", status: "failed", message: (e as Error).message, seconds: seconds() });
    progress.finish();
    return s;
  }
  const codeCells = (nb.cells as Json[]).map((c, i) => (c.cell_type === "code" ? i : -1)).filter((i) =>
    i >= 0
  );
  progress.on({ event: "start", cells: codeCells.length });
  let status: "ok" | "failed" = "ok";
  let message: string | null = null;
  let kc: KernelClient | null = null;
  try {
    kc = await KernelClient.start({ cwd: dirname(nbPath), env: opts.env });
    stopper.current = kc;
    if (kc.kernelInfo.language_info) nb.metadata.language_info = kc.kernelInfo.language_info;
    const outputs = new OutputCollector(nb);
    let executedCount = 0;
    for (const index of codeCells) {
      if (stopper.requested) {
        [status, message] = ["failed", "stopped by Ctrl-C"];
        break;
      }
      const cell = nb.cells[index];
      if (!cell.source.trim()) continue; // nbclient skips empty cells: no count, no outputs
      const allowed = (cell.metadata.tags ?? []).includes("raises-exception");
      cell.metadata.execution = {};
      const r = await kc.execute(cell.source, { timeoutMs: opts.timeout * 1000, stopOnError: !allowed });
      executedCount++;
      cell.outputs = [];
      outputs.begin();
      for (const m of r.messages) {
        outputs.process(m, cell, index);
        if (m.header.msg_type === "status" && m.content.execution_state === "idle") break;
      }
      if (r.reply) cell.metadata.execution["shell.execute_reply"] = timestamp(r.reply);
      cell.execution_count = executedCount;
      const n = codeCells.indexOf(index) + 1;
      let error = firstError(cell, r.reply);
      let failed: string | null = null;
      if (r.timedOut) failed = `cell ${n} timed out after ${opts.timeout} s and was interrupted`;
      else if (r.failure) failed = `cell ${n}: ${r.failure}`;
      else if (stopper.requested && error) failed = `cell ${n} interrupted by Ctrl-C`;
      else if (error && !allowed) failed = `cell ${n}: ${error}`;
      if (failed && !error) error = failed;
      progress.on({
        event: "cell",
        index: codeCells.indexOf(index),
        seconds: Math.round(r.seconds * 1000) / 1000,
        error,
        expected_error: !!error && allowed && !failed,
      });
      if (failed) {
        [status, message] = ["failed", failed];
        break;
      }
    }
  } catch (e) {
    [status, message] = ["failed", (e as Error).message];
  } finally {
    stopper.current = null;
    await kc?.shutdown();
  }
  await Deno.mkdir(out, { recursive: true });
  await Deno.writeTextFile(join(out, basename(nbPath)), writeNotebookText(nb));
  progress.on({ event: "end", status, message, seconds: seconds() });
  progress.finish();
  return s;
}

/** Execute one notebook with kernel/nbrun.py (nbclient); progress lines go to stdout. */
export async function runNotebookPython(
  nb: string,
  out: string,
  opts: { python: string; timeout: number; env: Record<string, string>; quick: boolean },
): Promise<NotebookSummary> {
  const s = newSummary(nb, out, "python", opts.quick);
  const progress = new Progress(s);
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(opts.python, {
      args: [join(ROOT, "kernel", "nbrun.py"), nb, join(out, basename(nb)), String(opts.timeout)],
      env: opts.env,
      stdout: "piped",
      stderr: "piped",
      cwd: dirname(nb),
    }).spawn();
  } catch (e) {
    s.message = `cannot run ${opts.python} (the --python runner needs python3-nbclient): ${
      (e as Error).message
    }`;
    progress.finish();
    return s;
  }
  const stderr = new Response(child.stderr).text();
  let buf = "";
  const dec = new TextDecoder();
  for await (const chunk of child.stdout) {
    buf += dec.decode(chunk, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let ev: Json;
      try {
        ev = JSON.parse(line);
      } catch {
        continue;
      }
      if (ev.event === "start") progress.on({ event: "start", cells: Number(ev.cells) });
      else if (ev.event === "cell") {
        progress.on({
          event: "cell",
          index: Number(ev.index),
          seconds: Number(ev.seconds),
          error: ev.error ?? null,
          expected_error: !!ev.expected_error,
        });
      } else if (ev.event === "end") {
        progress.on({
          event: "end",
          status: ev.status === "ok" ? "ok" : "failed",
          message: ev.message,
          seconds: Number(ev.seconds),
        });
      }
    }
  }
  const { code } = await child.status;
  if (code !== 0 && s.status === "ok") s.status = "failed";
  if (s.status === "failed" && !s.message) {
    s.message = (await stderr).trim().split("\n").slice(-3).join(" | ");
  }
  progress.finish();
  return s;
}

const round2 = (x: number) => Math.round(x * 100) / 100;

/**
 * The summary after a run: the previous rows (summary.json in the same directory) with this run's notebooks
 * replaced or added, in notebook order.
 */
export function mergeSummary(previous: NotebookSummary[], rows: NotebookSummary[]): NotebookSummary[] {
  const ran = new Set(rows.map((r) => r.notebook));
  return [...previous.filter((r) => !ran.has(r.notebook)), ...rows]
    .sort((a, b) => a.notebook.localeCompare(b.notebook));
}

/** Summary as Markdown: the runner and mode, then one row per notebook. */
export function summaryMarkdown(rows: NotebookSummary[]): string {
  const runners = [...new Set(rows.map((r) => r.runner))].join(", ");
  const modes = [...new Set(rows.map((r) => r.mode))].join(", ");
  const lines = [
    `runner: ${runners || "-"}; mode: ${modes || "-"}`,
    "",
    "| notebook | status | cells | executed | errors | expected errors | seconds | load | started |",
    "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ...rows.map((r) =>
      `| ${r.notebook} | ${r.status} | ${r.cells} | ${r.executed} | ${r.errors} | ${r.expectedErrors} | ${
        r.seconds.toFixed(1)
      } | ${r.load?.every(Number.isFinite) ? r.load.map((x) => x.toFixed(1)).join(" → ") : "-"} | ${
        r.startedAt?.slice(0, 19).replace("T", " ") ?? "-"
      } |`
    ),
  ];
  return lines.join("\n") + "\n";
}

if (import.meta.main) {
  let opts: ReproOptions;
  try {
    opts = parseArgs(Deno.args);
  } catch (e) {
    console.error(`repro: ${(e as Error).message}`);
    Deno.exit(2);
  }
  Deno.mkdirSync(opts.out, { recursive: true });
  const env: Record<string, string> = opts.quick ? { SEQLAB_QUICK: "1" } : {};
  if (opts.runner === "python") {
    const prefix = join(opts.out, ".jupyter");
    install(prefix);
    const runtime = join(prefix, "runtime");
    Deno.mkdirSync(runtime, { recursive: true });
    Object.assign(env, {
      JUPYTER_PATH: join(prefix, "share", "jupyter"),
      JUPYTER_RUNTIME_DIR: runtime,
      JUPYTER_PLATFORM_DIRS: "1",
      PYDEVD_DISABLE_FILE_VALIDATION: "1",
    });
  }
  let reinterrupt: ReturnType<typeof setInterval> | undefined;
  const onSigint = () => {
    stopper.requested++;
    const kc = stopper.current;
    if (stopper.requested === 1) {
      console.error("\nrepro: interrupting the cell and stopping (Ctrl-C again kills the kernel)");
      kc?.interrupt().catch(() => {});
      // An interrupt that lands while the kernel is still preparing the cell finds nothing to stop: repeat it.
      reinterrupt = setInterval(() => stopper.current?.interrupt().catch(() => {}), 2000);
    } else if (kc) kc.kill();
    else Deno.exit(130);
  };
  // nbclient handles Ctrl-C itself (it gets the signal too); the seqlab runner interrupts, then stops.
  if (opts.runner === "seqlab") Deno.addSignalListener("SIGINT", onSigint);
  const mode = opts.quick ? "quick mode (SEQLAB_QUICK=1)" : "full mode";
  const how = opts.runner === "python" ? `nbclient (${opts.python})` : "seqlab's client (kernel/client.ts)";
  console.log(
    `running ${opts.notebooks.length} notebook(s) with ${how}, ${mode}; outputs in ${
      relative(ROOT, opts.out) || "."
    }`,
  );
  const context = await runContext();
  const rows: NotebookSummary[] = [];
  for (const nb of opts.notebooks) {
    if (stopper.requested) break;
    const startedAt = new Date().toISOString(), loadAtStart = round2(load1());
    const row = opts.runner === "python"
      ? await runNotebookPython(nb, opts.out, { ...opts, env })
      : await runNotebookSeqlab(nb, opts.out, { ...opts, env });
    rows.push(
      Object.assign(row, { startedAt, load: [loadAtStart, round2(load1())] as [number, number] }, context),
    );
  }
  if (opts.runner === "seqlab") Deno.removeSignalListener("SIGINT", onSigint);
  clearInterval(reinterrupt);
  const all = mergeSummary(readSummary(opts.out) as NotebookSummary[], rows);
  Deno.writeTextFileSync(join(opts.out, "summary.json"), JSON.stringify(all, null, 2) + "\n");
  Deno.writeTextFileSync(join(opts.out, "summary.md"), summaryMarkdown(all));
  console.log("\n" + summaryMarkdown(rows));
  try {
    const r = writeReport(opts.out, opts.report);
    console.log(
      `report: ${relative(Deno.cwd(), r.path)} (${r.notebooks} notebook(s), ${r.figures} figure(s))` +
        (r.plotly ? "" : "; plotly.js-dist-min is not installed (deno install): figures show as text"),
    );
  } catch (e) {
    console.error(`repro: the report could not be written: ${(e as Error).message}`);
  }
  if (stopper.requested) Deno.exit(130);
  const failed = rows.filter((r) => r.status !== "ok");
  if (failed.length) {
    console.error(`${failed.length} notebook(s) failed: ${failed.map((r) => r.notebook).join(", ")}`);
    Deno.exit(1);
  }
}
