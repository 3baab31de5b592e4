/**
 * Headless notebook runner: `deno task repro [notebook...]`.
 *
 * Executes every notebook under notebooks/ (or those named), in name order, through the seqlab kernel
 * with nbclient (Debian's python3-nbclient), shows progress per cell, writes the executed notebooks to
 * out/notebooks/ with a summary (summary.json, summary.md: cells, errors, seconds per notebook), and
 * exits 1 if any cell failed. A cell tagged `raises-exception` may fail.
 *
 * The kernelspec used is this checkout's, installed into out/notebooks/.jupyter, so the run does not
 * depend on (or change) the user's installed kernels.
 *
 * Options: --out DIR (default out/notebooks), --timeout SECONDS per cell (default 600),
 *          --python PATH (default $SEQLAB_PYTHON, else /usr/bin/python3, else python3).
 *
 * @module
 */
import { basename, dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { install } from "./install.ts";

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));

/** One notebook's outcome. */
export interface NotebookSummary {
  notebook: string;
  output: string;
  cells: number;
  executed: number;
  errors: number;
  expectedErrors: number;
  seconds: number;
  status: "ok" | "failed";
  message?: string;
}

function parseArgs(args: string[]) {
  const opts = { out: join(ROOT, "out", "notebooks"), timeout: 600, python: "", notebooks: [] as string[] };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--out") opts.out = resolve(args[++i]);
    else if (a === "--timeout") opts.timeout = Number(args[++i]);
    else if (a === "--python") opts.python = args[++i];
    else if (a === "-h" || a === "--help") {
      console.log("usage: deno task repro [--out DIR] [--timeout S] [--python PATH] [notebook.ipynb...]");
      Deno.exit(0);
    } else opts.notebooks.push(resolve(a));
  }
  if (!opts.python) {
    opts.python = Deno.env.get("SEQLAB_PYTHON") ??
      (exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3");
  }
  if (opts.notebooks.length === 0) {
    const dir = join(ROOT, "notebooks");
    opts.notebooks = [...Deno.readDirSync(dir)].filter((e) => e.isFile && e.name.endsWith(".ipynb"))
      .map((e) => join(dir, e.name)).sort();
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

function bar(done: number, total: number, width = 24): string {
  const fill = total ? Math.round((done / total) * width) : width;
  return `[${"#".repeat(fill)}${".".repeat(width - fill)}] ${done}/${total}`;
}

/** Execute one notebook; progress lines go to stdout. */
export async function runNotebook(
  nb: string,
  out: string,
  opts: { python: string; timeout: number; env: Record<string, string> },
): Promise<NotebookSummary> {
  const name = relative(ROOT, nb);
  const dst = join(out, basename(nb));
  const s: NotebookSummary = {
    notebook: name,
    output: relative(ROOT, dst),
    cells: 0,
    executed: 0,
    errors: 0,
    expectedErrors: 0,
    seconds: 0,
    status: "failed",
  };
  const tty = Deno.stdout.isTerminal();
  const child = new Deno.Command(opts.python, {
    args: [join(ROOT, "kernel", "nbrun.py"), nb, dst, String(opts.timeout)],
    env: opts.env,
    stdout: "piped",
    stderr: "piped",
    cwd: dirname(nb),
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let buf = "";
  const dec = new TextDecoder();
  const show = (line: string, final = false) => {
    if (tty) Deno.stdout.writeSync(new TextEncoder().encode(`\r\x1b[2K${line}${final ? "\n" : ""}`));
    else console.log(line);
  };
  for await (const chunk of child.stdout) {
    buf += dec.decode(chunk, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      let ev: Record<string, unknown>;
      try {
        ev = JSON.parse(line);
      } catch {
        continue;
      }
      if (ev.event === "start") s.cells = Number(ev.cells);
      else if (ev.event === "cell") {
        s.executed++;
        if (ev.error && ev.expected_error) s.expectedErrors++;
        else if (ev.error) s.errors++;
        const note = ev.error
          ? (ev.expected_error ? ` (expected error: ${ev.error})` : ` FAILED: ${ev.error}`)
          : "";
        show(
          `${name} ${bar(s.executed, s.cells)} cell ${Number(ev.index) + 1} ${
            Number(ev.seconds).toFixed(2)
          }s${note}`,
        );
      } else if (ev.event === "end") {
        s.status = ev.status === "ok" ? "ok" : "failed";
        s.seconds = Number(ev.seconds);
        if (ev.message) s.message = String(ev.message);
      }
    }
  }
  const { code } = await child.status;
  if (code !== 0 && s.status === "ok") s.status = "failed";
  if (s.status === "failed" && !s.message) {
    s.message = (await stderr).trim().split("\n").slice(-3).join(" | ");
  }
  show(
    `${name}: ${s.status} — ${s.executed}/${s.cells} cells, ${s.errors} errors` +
      `${s.expectedErrors ? ` (+${s.expectedErrors} expected)` : ""}, ${s.seconds.toFixed(1)}s` +
      (s.status === "failed" && s.message ? `\n  ${s.message}` : ""),
    true,
  );
  return s;
}

/** Summary as a Markdown table. */
export function summaryMarkdown(rows: NotebookSummary[]): string {
  const lines = [
    "| notebook | status | cells | executed | errors | expected errors | seconds |",
    "|---|---|--:|--:|--:|--:|--:|",
    ...rows.map((r) =>
      `| ${r.notebook} | ${r.status} | ${r.cells} | ${r.executed} | ${r.errors} | ${r.expectedErrors} | ${
        r.seconds.toFixed(1)
      } |`
    ),
  ];
  return lines.join("\n") + "\n";
}

if (import.meta.main) {
  const opts = parseArgs(Deno.args);
  Deno.mkdirSync(opts.out, { recursive: true });
  const prefix = join(opts.out, ".jupyter");
  install(prefix);
  const runtime = join(prefix, "runtime");
  Deno.mkdirSync(runtime, { recursive: true });
  const env = {
    JUPYTER_PATH: join(prefix, "share", "jupyter"),
    JUPYTER_RUNTIME_DIR: runtime,
    JUPYTER_PLATFORM_DIRS: "1",
    PYDEVD_DISABLE_FILE_VALIDATION: "1",
  };
  console.log(
    `running ${opts.notebooks.length} notebook(s) with ${opts.python}; outputs in ${
      relative(ROOT, opts.out) || "."
    }`,
  );
  const rows: NotebookSummary[] = [];
  for (const nb of opts.notebooks) rows.push(await runNotebook(nb, opts.out, { ...opts, env }));
  Deno.writeTextFileSync(join(opts.out, "summary.json"), JSON.stringify(rows, null, 2) + "\n");
  const md = summaryMarkdown(rows);
  Deno.writeTextFileSync(join(opts.out, "summary.md"), md);
  console.log("\n" + md);
  const failed = rows.filter((r) => r.status !== "ok");
  if (failed.length) {
    console.error(`${failed.length} notebook(s) failed: ${failed.map((r) => r.notebook).join(", ")}`);
    Deno.exit(1);
  }
}
