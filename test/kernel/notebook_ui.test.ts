/**
 * The Notebook UI in a real browser: Debian's classic Notebook (6.4) serves a copy of the tour with the
 * seqlab kernelspec, headless Chromium opens it (driven over the DevTools protocol, test/browser/cdp.ts),
 * and the test does what a user does: Run All, read the outputs and figures, type a new TypeScript cell,
 * stop a runaway loop, save and reload. No JavaScript error may show on the page.
 *
 * Skipped, with the reason in its name, only where jupyter-notebook or chromium is not installed (.ci/run
 * installs both).
 */
import { expect, test } from "vitest";
import { chromiumPath, launch, type Page } from "../browser/cdp.ts";
import { jupyterEnv, ROOT } from "./harness.ts";

const NOTEBOOK = "/usr/bin/jupyter-notebook";

function missing(): string | null {
  try {
    Deno.statSync(NOTEBOOK);
  } catch {
    return `${NOTEBOOK} is not installed (Debian package jupyter-notebook)`;
  }
  return chromiumPath() ? null : "chromium is not installed (Debian package chromium)";
}

const why = missing();

/** A port nobody listens on now. */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Start the Notebook server on `dir`; resolves once its API answers. */
async function startNotebook(dir: string, port: number, token: string) {
  const env = jupyterEnv();
  const child = new Deno.Command(NOTEBOOK, {
    args: [
      "--no-browser",
      "--allow-root", // CI runs as root
      "--ip=127.0.0.1",
      `--port=${port}`,
      "--port-retries=0",
      `--NotebookApp.token=${token}`,
      `--notebook-dir=${dir}`,
    ],
    cwd: dir,
    env: { ...env, JUPYTER_CONFIG_DIR: `${dir}/.config`, JUPYTER_DATA_DIR: `${dir}/.data` },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const log: string[] = [];
  for (const s of [child.stdout, child.stderr]) {
    (async () => {
      for await (const t of s.pipeThrough(new TextDecoderStream())) log.push(t);
    })().catch(() => {});
  }
  const end = Date.now() + 60_000;
  for (;;) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/api/status?token=${token}`);
      await r.body?.cancel();
      if (r.ok) break;
    } catch { /* not listening yet */ }
    if (Date.now() > end) throw new Error(`jupyter-notebook did not answer within 60 s:\n${log.join("")}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return { child, log };
}

/** Every code cell's execution count, error outputs, and figures (plotly outputs vs drawn `.main-svg`). */
const CELLS = `Jupyter.notebook.get_cells().filter((c) => c.cell_type === "code").map((c) => ({
  count: c.input_prompt_number,
  tags: (c.metadata.tags || []),
  errors: c.output_area.outputs.filter((o) => o.output_type === "error").map((o) => o.ename + ": " + o.evalue),
  figures: c.output_area.outputs.filter((o) => o.data && o.data["application/vnd.plotly.v1+json"]).length,
  drawn: c.output_area.element[0].querySelectorAll(".js-plotly-plot .main-svg").length > 0 ?
    c.output_area.element[0].querySelectorAll(".js-plotly-plot").length : 0,
  text: c.output_area.outputs.map((o) => o.text || (o.data && o.data["text/plain"]) || "").join(""),
}))`;

interface Cell {
  count: number | string | null;
  tags: string[];
  errors: string[];
  figures: number;
  drawn: number;
  text: string;
}

/** Wait until the kernel is idle and every code cell has a number (no "*" left). */
function settled(page: Page, timeoutMs: number): Promise<Cell[]> {
  return page.waitFor<Cell[]>(
    `(() => { const k = Jupyter.notebook.kernel; const cells = ${CELLS};
      return k && !Jupyter.notebook.kernel_busy && cells.every((c) => typeof c.count === "number") && cells; })()`,
    timeoutMs,
  );
}

/**
 * A new code cell at the bottom, as the toolbar's "+" makes it, plus a cell id. Notebook 6.4 gives new cells
 * none, and nbformat 5.5 adds random ids when it reads the saved file, so the signature made at save never
 * matches on load: the reloaded notebook would be untrusted and its figures' scripts dropped (an upstream
 * Notebook/nbformat mismatch, not the kernel's).
 */
const NEW_CELL = `((c) => (c.id = crypto.randomUUID(), c))(nb.insert_cell_at_bottom("code"))`;

/** Wait until every plotly output is drawn; on timeout, fail with the cells and the page's problems. */
async function figuresDrawn(page: Page, timeoutMs = 30_000): Promise<void> {
  try {
    await page.waitFor(`${CELLS}.every((c) => c.drawn === c.figures)`, timeoutMs);
  } catch {
    const cells = await page.evaluate<Cell[]>(CELLS);
    const state = cells.map(({ figures, drawn }, i) => ({ cell: i, figures, drawn })).filter((c) =>
      c.figures
    );
    const trusted = await page.evaluate<boolean>(`Jupyter.notebook.trusted`);
    throw new Error(
      `figures not drawn within ${timeoutMs} ms: ${
        JSON.stringify(state)
      }; trusted ${trusted}; page problems: ${JSON.stringify(page.problems())}`,
    );
  }
}

/** Insert a code cell at the bottom, type `code` into it as keystrokes would, run it and wait. */
async function runNewCell(page: Page, code: string, timeoutMs = 30_000): Promise<Cell> {
  await page.evaluate(`(() => { const nb = Jupyter.notebook; const c = ${NEW_CELL};
    nb.select(nb.find_cell_index(c)); c.focus_editor(); return true; })()`);
  await page.send("Input.insertText", { text: code });
  await page.evaluate(`Jupyter.notebook.get_selected_cell().execute(), true`);
  const cells = await settled(page, timeoutMs);
  return cells[cells.length - 1];
}

test.skipIf(why !== null)(
  `Notebook 6 in Chromium: Run All on the tour, figures drawn, a typed cell highlighted as TypeScript, a runaway loop interrupted, save and reload${
    why ? ` (skipped: ${why})` : ""
  }`,
  async () => {
    const dir = Deno.makeTempDirSync({ prefix: "seqlab-nbui-" });
    Deno.copyFileSync(`${ROOT}/notebooks/00_tour.ipynb`, `${dir}/00_tour.ipynb`);
    const token = crypto.randomUUID().replaceAll("-", "");
    const port = freePort();
    const server = await startNotebook(dir, port, token);
    const browser = await launch({ args: ["--window-size=1280,2000"] });
    try {
      const page = await browser.newPage();
      const url = `http://127.0.0.1:${port}/notebooks/00_tour.ipynb?token=${token}`;
      await page.goto(url);
      // kernel_info_reply has arrived: the language is known and the editors have their mode.
      await page.waitFor(
        `window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel && Jupyter.notebook.kernel.info_reply &&
          Jupyter.notebook.kernel.info_reply.status === "ok"`,
        60_000,
      );

      // Run All: every cell numbered, no error but the one tagged raises-exception, every figure drawn.
      await page.evaluate(`Jupyter.notebook.execute_all_cells(), true`);
      let cells = await settled(page, 90_000);
      for (const [i, c] of cells.entries()) {
        if (c.tags.includes("raises-exception")) expect(c.errors, `code cell ${i}`).toHaveLength(1);
        else expect(c.errors, `code cell ${i}`).toEqual([]);
      }
      // The tour's progress bar ends at 100% (update_display_data reached the page).
      expect(cells.map((c) => c.text).join("\n")).toMatch(/\[#{30}\] (\d+)\/\1 100%/);
      const figures = cells.reduce((n, c) => n + c.figures, 0);
      expect(figures, "the tour draws a plotly figure").toBeGreaterThan(0);
      await figuresDrawn(page);

      // A new cell, typed: CodeMirror highlights it as TypeScript (cm-type only comes from the TS flavour).
      await page.evaluate(`(() => { const nb = Jupyter.notebook; const c = ${NEW_CELL};
        nb.select(nb.find_cell_index(c)); c.focus_editor(); return true; })()`);
      await page.send("Input.insertText", {
        text: "const typed: number = 42;\nfunction twice(s: string) { return s + s; }",
      });
      // Notebook 6 gives new cells language_info.codemirror_mode as is: it must be a CodeMirror 5 mode or MIME
      // ("application/typescript"); a bare "typescript" highlights only the cells loaded with the notebook.
      const mode = await page.evaluate(
        `JSON.stringify(Jupyter.notebook.get_selected_cell().code_mirror.getOption("mode"))`,
      );
      const tokens = await page.evaluate<Record<string, number>>(`(() => {
        const el = Jupyter.notebook.get_selected_cell().code_mirror.getWrapperElement();
        const n = {};
        for (const s of el.querySelectorAll(".CodeMirror-line span[class*='cm-']"))
          for (const k of s.className.split(" ")) if (k.startsWith("cm-")) n[k] = (n[k] || 0) + 1;
        return n;
      })()`);
      const seen = `new cell's mode ${mode}, tokens ${JSON.stringify(tokens)}`;
      expect(tokens["cm-keyword"] ?? 0, seen).toBeGreaterThanOrEqual(3); // const, function, return
      expect(tokens["cm-type"] ?? 0, seen).toBeGreaterThanOrEqual(2); // number, string
      await page.evaluate(`Jupyter.notebook.get_selected_cell().execute(), true`);
      cells = await settled(page, 30_000);
      expect(cells[cells.length - 1].errors).toEqual([]);

      // A runaway loop, interrupted from the toolbar's code path; the tour's variables survive it.
      await page.evaluate(`(() => { const nb = Jupyter.notebook; const c = ${NEW_CELL};
        c.set_text("let k = 1; while (true) {}"); c.execute(); return true; })()`);
      await page.waitFor(`Jupyter.notebook.kernel_busy`, 10_000);
      await new Promise((r) => setTimeout(r, 1000));
      await page.evaluate(`Jupyter.notebook.kernel.interrupt(), true`);
      cells = await settled(page, 30_000);
      expect(cells[cells.length - 1].errors.join(), "the loop ends with an interrupt").toMatch(/Interrupt/);
      const after = await runNewCell(page, "console.log(`${a.shape} ${typed} ${k}`)");
      expect(after.errors).toEqual([]);
      expect(after.text.trim()).toBe("64,32 42 1");

      // Save, reload: the saved figures draw again from the file (the notebook is trusted, signed on save).
      await page.evaluate(`Jupyter.notebook.save_notebook().then(() => true)`);
      await page.goto(url);
      await page.waitFor(`window.Jupyter && Jupyter.notebook && Jupyter.notebook._fully_loaded`, 60_000);
      cells = await page.evaluate<Cell[]>(CELLS);
      expect(cells.reduce((n, c) => n + c.figures, 0)).toBe(figures);
      await figuresDrawn(page);

      expect(page.problems(), "JavaScript errors on the page").toEqual([]);
    } catch (e) {
      (e as Error).message += `\n--- jupyter-notebook's log (tail):\n${server.log.join("").slice(-3000)}`;
      throw e;
    } finally {
      await browser.close();
      server.child.kill("SIGTERM");
      const done = await Promise.race([
        server.child.status.then(() => true),
        new Promise((r) => setTimeout(() => r(false), 10_000)),
      ]);
      if (!done) server.child.kill("SIGKILL");
      await server.child.status;
      Deno.removeSync(dir, { recursive: true });
    }
  },
  180_000,
);
