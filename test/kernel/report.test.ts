/**
 * The run report (kernel/report.ts) after `deno task repro --quick` of two small notebooks, run one at a
 * time (the second run keeps the first's entry), opened in headless Chromium: no console errors, every
 * figure drawn, every closing table there with its cells escaped and its numbers rounded, the links reaching
 * the executed notebooks, the run's mode, adapter, runtimes and commit shown.
 */
import { expect, test } from "vitest";
import { dirname, resolve } from "node:path";
import { run } from "./harness.ts";
import { chromiumPath, launch } from "../browser/cdp.ts";
import { parseTable, roundForReading } from "../../kernel/report.ts";

const CHROMIUM = chromiumPath();
/** Said in the test's name when it is skipped. */
const NO_BROWSER = CHROMIUM ? "" : "[skipped: chromium not found; apt-get install chromium] ";

function notebook(cells: string[]): string {
  return JSON.stringify({
    cells: cells.map((src, i) => ({
      cell_type: "code",
      execution_count: null,
      id: `c${i}`,
      metadata: {},
      outputs: [],
      source: src,
    })),
    metadata: { kernelspec: { name: "seqlab", display_name: "seqlab (TypeScript)", language: "typescript" } },
    nbformat: 4,
    nbformat_minor: 5,
  });
}

/** A closing table as the research notebooks display it, with a hostile first cell and long numbers. */
const closing = (claim: string) =>
  `md(${
    JSON.stringify(
      `| claim | paper | ours | verdict |\n| --- | --- | --- | --- |\n` +
        `| ${claim} | 0.123456789 | 3.14159265 s, v1.2.3 | reproduced |\n| second \\| row | 2x | 1.9x | partly |`,
    )
  })`;

test("tables: pipe rows parsed (escaped pipes kept), long numbers rounded, versions left alone", () => {
  expect(parseTable("text\n| a | b |\n|---|:-:|\n| 1 \\| 2 | x |\nafter")).toEqual({
    header: ["a", "b"],
    rows: [["1 | 2", "x"]],
  });
  expect(roundForReading("0.123456789 and 3.14159 and 12345.678912 v1.2.3456 2.5 1e-12")).toBe(
    "0.1235 and 3.142 and 12346 v1.2.3456 2.5 1e-12",
  );
});

test.skipIf(!CHROMIUM)(
  // skipIf: the page is checked in a browser; CI installs Debian's chromium (.ci/run)
  `${NO_BROWSER}report of two notebooks run one at a time: tables, figures, run info, links; no console errors`,
  async () => {
    const dir = Deno.makeTempDirSync({ prefix: "seqlab-report-" });
    Deno.writeTextFileSync(
      `${dir}/a_one.ipynb`,
      notebook([
        `plot([{ type: "scatter", x: [1, 2, 3], y: [2, 1, 3] }], { title: { text: "a: <i>one</i>" } })`,
        closing(`<img src=x onerror="window.pwned=1"> & <script>window.pwned=2</script>`),
      ]),
    );
    Deno.writeTextFileSync(
      `${dir}/b_two.ipynb`,
      notebook([
        `await display(plot([{ type: "bar", x: ["p", "q"], y: [3, 4] }], { title: { text: "b1" } }));\n` +
        `plot([{ type: "histogram", x: [1, 1, 2, 3, 3, 3] }], { title: { text: "b2" }, height: 300 })`,
        closing("b's claim"),
      ]),
    );
    const out = `${dir}/out/notebooks`;
    for (const nb of ["a_one.ipynb", "b_two.ipynb"]) {
      const r = await run(Deno.execPath(), [
        "run",
        "-A",
        "kernel/repro.ts",
        "--quick",
        "--out",
        out,
        `${dir}/${nb}`,
      ], {
        timeoutMs: 90_000,
      });
      expect(r.code, r.stdout.slice(-2000) + r.stderr.slice(-2000)).toBe(0);
      expect(r.stdout).toMatch(/report: .*report\.html \(\d notebook\(s\), \d figure\(s\)\)/);
    }
    const report = `${dir}/out/report.html`;
    const summary = JSON.parse(Deno.readTextFileSync(`${out}/summary.json`));
    expect(summary.map((s: { notebook: string }) => s.notebook.split("/").pop())).toEqual([
      "a_one.ipynb",
      "b_two.ipynb",
    ]);
    expect(Deno.statSync(`${dir}/out/plotly.min.js`).size).toBeGreaterThan(1_000_000);
    for (const f of ["a_one.ipynb", "b_two.ipynb"]) {
      expect(Deno.statSync(`${out}/${f}`).size, `${f}: no plotly.js inside`).toBeLessThan(50_000);
    }

    const browser = await launch();
    try {
      const page = await browser.newPage();
      await page.goto(`file://${report}`);
      const drawn = await page.waitFor<number[]>(
        `(() => { const f = [...document.querySelectorAll(".figure")];
          return f.length === 3 && f.every((e) => e.querySelector(".main-svg")) && [f.length]; })()`,
        30_000,
      );
      expect(drawn).toEqual([3]);
      expect(
        await page.evaluate(`[...document.querySelectorAll(".figure .gtitle")].map((t) => t.textContent)`),
      )
        .toEqual(["a: one", "b1", "b2"]);
      const tables = await page.evaluate<string[][][]>(
        `[...document.querySelectorAll("table.closing")].map((t) =>
          [...t.rows].map((r) => [...r.cells].map((c) => c.textContent)))`,
      );
      expect(tables.length).toBe(2);
      expect(tables[0][0]).toEqual(["claim", "paper", "ours", "verdict"]);
      expect(tables[0][1]).toEqual([
        `<img src=x onerror="window.pwned=1"> & <script>window.pwned=2</script>`,
        "0.1235",
        "3.142 s, v1.2.3",
        "reproduced",
      ]);
      expect(tables[0][2]).toEqual(["second | row", "2x", "1.9x", "partly"]);
      expect(tables[1][1][0]).toBe("b's claim");
      expect(await page.evaluate("window.pwned ?? null")).toBeNull();

      const text = await page.evaluate<string>("document.body.innerText");
      expect(text).toMatch(/mode\s+quick/);
      expect(text).toMatch(/runtime\s+Deno \d+\.\d+\.\d+, V8 /);
      expect(text).toMatch(/commit\s+[0-9a-f]{7,}|commit\s+unknown/);
      expect(text).toMatch(/adapter\s+\S/);
      expect(text).toMatch(/load average \d+\.\d → \d+\.\d/);
      const links = await page.evaluate<string[]>(
        `[...new Set([...document.querySelectorAll("a[href$='.ipynb']")].map((a) => a.getAttribute("href")))]`,
      );
      expect(links.length).toBe(2);
      for (const l of links) expect(Deno.statSync(resolve(dirname(report), l)).isFile, l).toBe(true);
      expect(page.problems(), JSON.stringify(page.problems())).toEqual([]);
    } finally {
      await browser.close();
    }
    Deno.removeSync(dir, { recursive: true });
  },
  120_000,
);
