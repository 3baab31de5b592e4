/**
 * Notebooks through `jupyter nbconvert --to notebook --execute` with the installed kernelspec: the tour
 * (every output where it belongs, the HTML export self-contained), and the 50-cell stress notebook
 * executed 20 times (two at a time) with zero lost or misplaced outputs.
 */
import { expect, test } from "vitest";
import { HEAVY, HERE, PYTHON, ROOT, run } from "./harness.ts";
import { chromiumPath, launch } from "../browser/cdp.ts";

const STRESS_RUNS = Number(Deno.env.get("SEQLAB_STRESS_RUNS") ?? (HEAVY ? 40 : 20));

function nbconvert(nb: string, outDir: string, name: string, extra: string[] = []) {
  return run(PYTHON, [
    "-m",
    "nbconvert",
    "--to",
    "notebook",
    "--execute",
    "--ExecutePreprocessor.kernel_name=seqlab",
    "--ExecutePreprocessor.timeout=120",
    ...extra,
    `--output-dir=${outDir}`,
    `--output=${name}`,
    nb,
  ], { timeoutMs: 170_000 });
}

/** nbformat stores multi-line strings as lists of lines. */
const txt = (v: string | string[]) => (Array.isArray(v) ? v.join("") : v);

// deno-lint-ignore no-explicit-any -- executed nbformat JSON, checked field by field below
type Cell = { cell_type: string; id: string; metadata: { tags?: string[] }; outputs: Record<string, any>[] };

test(
  "the tour executes under nbconvert, its HTML export has the figure, drawn when plotly's CDN answers",
  async () => {
    const out = Deno.makeTempDirSync({ prefix: "seqlab-nb-" });
    // allow-errors: the tour has one cell tagged raises-exception; every other cell must still succeed.
    const r = await nbconvert(`${ROOT}/notebooks/00_tour.ipynb`, out, "tour", ["--allow-errors"]);
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    const nb = JSON.parse(Deno.readTextFileSync(`${out}/tour.ipynb`));
    const cells = (nb.cells as Cell[]).filter((c) => c.cell_type === "code");
    const byId = Object.fromEntries(cells.map((c) => [c.id, c]));
    for (const c of cells) {
      const errors = c.outputs.filter((o) => o.output_type === "error");
      if (c.metadata.tags?.includes("raises-exception")) expect(errors.length, c.id).toBe(1);
      else expect(errors, `${c.id}: ${JSON.stringify(errors)}`).toEqual([]);
    }
    const types = (id: string) => byId[id].outputs.map((o) => o.output_type);
    expect(types("adapter")).toEqual(["stream", "execute_result"]);
    expect(types("tensors")).toEqual(["execute_result"]);
    expect(Object.keys(byId.tensors.outputs[0].data)).toContain("text/html");
    expect(types("matmul")).toEqual(["stream", "execute_result"]);
    expect(txt(byId.matmul.outputs[0].text)).toMatch(/max \|error\| vs cpu/);
    expect(byId.error.outputs[0].ename).toBe("Error");
    expect(byId.error.outputs[0].traceback.join("\n")).toMatch(/cell\[\d+\]:2:1/);
    const fig = byId.plot.outputs[0].data;
    expect(Object.keys(fig)).toEqual(
      expect.arrayContaining(["application/vnd.plotly.v1+json", "text/html", "text/plain"]),
    );
    expect(fig["application/vnd.plotly.v1+json"].data[0].type).toBe("histogram");
    // A progress bar still on screen at its end is blanked and shown anew, finished (for jupyter console);
    // a loop shorter than the bar's interval has one display.
    const table = byId.table.outputs.filter((o) => txt(o.data?.["text/plain"] ?? "-") !== "");
    expect(table.map((o) => o.output_type)).toEqual(["display_data", "execute_result"]);
    expect(txt(table[0].data["text/plain"])).toMatch(/4\/4 100%/);
    expect(Object.keys(table[1].data)).toEqual(
      expect.arrayContaining(["text/html", "text/markdown"]),
    );

    const html = await run(PYTHON, [
      "-m",
      "nbconvert",
      "--to",
      "html",
      `--output-dir=${out}`,
      `${out}/tour.ipynb`,
    ], {
      timeoutMs: 120_000,
    });
    expect(html.code, html.stderr.slice(-2000)).toBe(0);
    const page = Deno.readTextFileSync(`${out}/tour.html`);
    // The figure's loader (it fetches plotly.js once per page: here, with no Jupyter server, from the CDN) and
    // its data; plotly.js itself is in no output (test/browser/plotly_figure.test.ts draws such outputs).
    expect(page.match(/w\.__seqlabPlotly=new Promise/g)?.length).toBe(1);
    expect(page).toMatch(/fig=\{"data":\[\{"type":"histogram"/);
    expect(page).not.toMatch(/plotly\.js v\d/);
    if (chromiumPath()) await exportInChromium(`${out}/tour.html`);
    else console.warn("notebooks.test.ts: chromium not found: the HTML export was not opened in a browser");
    Deno.removeSync(out, { recursive: true });
  },
  180_000,
);

/**
 * The export in headless Chromium: offline (plotly's CDN blocked) the figure's text says why it is not drawn;
 * online (the CDN answered from node_modules, as this host has no network) it is drawn.
 */
async function exportInChromium(file: string) {
  const lib = Deno.readFileSync(`${ROOT}/node_modules/plotly.js-dist-min/plotly.min.js`);
  let bin = "";
  for (let i = 0; i < lib.length; i += 0x8000) bin += String.fromCharCode(...lib.subarray(i, i + 0x8000));
  const body = btoa(bin);
  const browser = await launch();
  try {
    const offline = await browser.newPage();
    await offline.send("Network.enable");
    await offline.send("Network.setBlockedURLs", { urls: ["*cdn.plot.ly*"] });
    await offline.goto(`file://${file}`);
    expect(
      await offline.waitFor<string>(
        `document.querySelector(".seqlab-plot").textContent.match(/Not drawn.*/)?.[0]`,
      ),
    )
      .toMatch(/could not load plotly\.js from https:\/\/cdn\.plot\.ly\//);

    const online = await browser.newPage();
    await online.send("Fetch.enable", { patterns: [{ urlPattern: "https://cdn.plot.ly/*" }] });
    online.on("Fetch.requestPaused", (e) =>
      online.send("Fetch.fulfillRequest", {
        requestId: e.requestId,
        responseCode: 200,
        responseHeaders: [{ name: "content-type", value: "text/javascript" }],
        body,
      }));
    await online.goto(`file://${file}`);
    expect(await online.waitFor(`document.querySelectorAll(".seqlab-plot .main-svg").length`))
      .toBeGreaterThan(0);
    expect(online.problems()).toEqual([]);
  } finally {
    await browser.close();
  }
}

test(`the 50-cell stress notebook, ${STRESS_RUNS} runs: zero lost or misplaced outputs`, async () => {
  const out = Deno.makeTempDirSync({ prefix: "seqlab-stress-" });
  const lanes = 2;
  const failures: string[] = [];
  await Promise.all(Array.from({ length: lanes }, async (_, lane) => {
    for (let i = lane; i < STRESS_RUNS; i += lanes) {
      const r = await nbconvert(`${ROOT}/notebooks/99_stress.ipynb`, out, `stress-${i}`);
      if (r.code !== 0) failures.push(`run ${i}: exit ${r.code}\n${r.stderr.slice(-1500)}`);
    }
  }));
  expect(failures).toEqual([]);
  const files = Array.from({ length: STRESS_RUNS }, (_, i) => `${out}/stress-${i}.ipynb`);
  const check = await run(PYTHON, [`${HERE}/check_outputs.py`, ...files], { timeoutMs: 60_000 });
  expect(check.code, check.stderr).toBe(0);
  const report = JSON.parse(check.stdout);
  console.log(
    `stress: ${report.notebooks} runs x 50 cells = ${report.cells} cells, ${report.bad_cells} wrong, ` +
      `${report.lost} outputs lost, ${report.extra} extra`,
  );
  expect(report.notebooks).toBe(STRESS_RUNS);
  expect(report.cells).toBe(STRESS_RUNS * 50);
  expect(report.examples).toEqual([]);
  expect(report.bad_cells).toBe(0);
  Deno.removeSync(out, { recursive: true });
}, 400_000);
