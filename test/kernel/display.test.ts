/** MIME bundles and the progress bar (kernel/display.ts), in process, and the cell rewriter's edge cases. */
import { describe, expect, test } from "vitest";
import * as aq from "arquero";
import {
  $display,
  formatValue,
  isPlotlyFigure,
  plot,
  progress,
  setDisplaySink,
  stripAnsi,
} from "../../kernel/display.ts";
import { isComplete, rewriteCell } from "../../kernel/transform.ts";

describe("formatValue", () => {
  test("the display symbol wins, text/plain is always there and never coloured", async () => {
    const v = { [$display]: () => ({ "text/html": "<i>x</i>" }) };
    expect((await formatValue(v)).data).toEqual({
      "text/html": "<i>x</i>",
      "text/plain": expect.any(String),
    });
    expect((await formatValue("s")).data["text/plain"]).toBe('"s"');
    expect(stripAnsi("\x1b[33m42\x1b[39m")).toBe("42");
  });

  test("plotly figures: plotly JSON, a small HTML that loads plotly.js (never embeds it), text", async () => {
    const fig = {
      data: [{ type: "scatter", x: [1, 2], y: [3, 4] }],
      layout: { title: { text: "t</script>" } },
    };
    expect(isPlotlyFigure(fig)).toBe(true);
    expect(isPlotlyFigure({ data: [1, 2] })).toBe(false);
    const first = (await formatValue(fig)).data;
    expect(first["application/vnd.plotly.v1+json"]).toMatchObject({ data: fig.data, layout: fig.layout });
    const second = (await formatValue(plot([{ type: "bar", x: [1], y: [2] }]))).data;
    for (const b of [first, second]) {
      const h = String(b["text/html"]);
      expect(h.length).toBeLessThan(4000); // the loader and the figure, no plotly.js: every figure alike
      expect(h).toMatch(/__seqlabPlotly/); // one shared load per page
      expect(h).toMatch(/"kernelspecs\/"\+encodeURIComponent\(k\)/);
      expect(h.match(/<\/script/gi)?.length).toBe(1); // the title's </script> is escaped
    }
    expect(second["text/plain"]).toBe("<plotly figure: 1 trace(s): bar>");
    // stored to float32's 7 significant digits, typed arrays as lists
    const f32 = (await formatValue(plot([{ x: new Float32Array([0.1, 2]), y: [1 / 3, 2, 1e-9 / 3] }]))).data;
    expect(f32["application/vnd.plotly.v1+json"]).toMatchObject({
      data: [{ x: [0.1, 2], y: [0.3333333, 2, 3.333333e-10] }],
    });
    // without script, the div shows the figure's text, not a blank box
    expect(String(second["text/html"])).toMatch(
      /^<div id="seqlab-plot-[a-z0-9]+-\d+" class="seqlab-plot">&lt;plotly figure: 1 trace\(s\): bar&gt;<\/div>/,
    );
  });

  test("arquero tables show as HTML and Markdown, tensors without a display method as a summary", async () => {
    const t = (await formatValue(aq.table({ a: [1, 2, 3], b: ["x", "y", "z"] }))).data;
    expect(t["text/html"]).toMatch(/<table/);
    expect(t["text/markdown"]).toBe("|a|b|\n|-:|:-|\n|1|x|\n|2|y|\n|3|z|\n");
    const fake = {
      shape: [2, 2],
      dtype: "f32",
      device: "cpu",
      toArray: () => Promise.resolve(new Float32Array([1, 2, 3, 4])),
    };
    const s = (await formatValue(fake)).data;
    expect(s["text/plain"]).toBe("Tensor(shape=[2, 2], dtype=f32, device=cpu) [1, 2, 3, 4]");
    expect(s["text/html"]).toMatch(/<th[^>]*>mean<\/th><td[^>]*>2\.5000<\/td>/);
    const png = (await formatValue(new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10, 1]))).data;
    expect(png["image/png"]).toBe("iVBORw0KGgoB");
  });
});

describe("progress", () => {
  const record = (items: number[], intervalMs: number) => {
    const calls: { text: string; id?: string; update: boolean }[] = [];
    setDisplaySink({
      display: (d, _m, id, update) => calls.push({ text: String(d["text/plain"]), id, update: !!update }),
      clear: () => {},
    });
    let n = 0;
    for (const x of progress(items, { label: "p", intervalMs })) n += x;
    setDisplaySink(null);
    expect(n).toBe(items.reduce((a, b) => a + b, 0));
    return calls;
  };

  test("with a frontend: in-place updates, then the bar blanked and shown anew, finished (jupyter console)", () => {
    const calls = record([1, 2, 3, 4], 0);
    const [first, blank, last] = [calls[0], calls.at(-2)!, calls.at(-1)!];
    expect(first.update).toBe(false);
    expect(calls.slice(1, -1).every((c) => c.update && c.id === first.id)).toBe(true);
    expect(blank.text).toBe("");
    expect(last.update).toBe(false);
    expect(last.id).not.toBe(first.id);
    expect(last.text).toMatch(/^p \[#{30}\] 4\/4 100%/);
  });

  test("with a frontend: a loop shorter than the interval shows one display, its end", () => {
    const calls = record([1, 2, 3, 4], 60_000);
    expect(calls).toHaveLength(1);
    expect(calls[0].update).toBe(false);
    expect(calls[0].text).toMatch(/^p \[#{30}\] 4\/4 100%/);
  });

  test("without a frontend: plain lines, at most one per 10%", async () => {
    const lines: string[] = [];
    const log = console.log;
    console.log = (s: string) => lines.push(s);
    try {
      let total = 0;
      for await (
        const x of progress(
          (async function* () {
            for (let i = 0; i < 100; i++) yield i;
          })(),
          { total: 100 },
        )
      ) total += x;
      expect(total).toBe(4950);
    } finally {
      console.log = log;
    }
    expect(lines.length).toBe(11); // 0%, 10%, ..., 100%
    expect(lines.at(-1)).toMatch(/100\/100 100%/);
  });
});

describe("rewriteCell", () => {
  test("REPL rewrites keep every line in place", () => {
    const src = "const { a, b: [c] }: any = o\nlet d\nfor (const x of xs) y(x)\nexport function f() {}\nd";
    const r = rewriteCell(src);
    if (!r.ok) throw new Error(r.message);
    expect(r.code.split("\n").length).toBe(src.split("\n").length);
    expect(r.declared).toEqual(["a", "c", "d", "f"]);
    expect(r.code).toContain(";(    { a, b: [c] }      = o);"); // `const` and `: any` blanked
    expect(r.code).toContain("{__sl_ck();y(x)}");
    expect(r.hasResult).toBe(true);
    // Column 1 of line 5 in the rewritten text (inside `__sl_r((`) maps back to the cell's `d`.
    expect(r.mapPosition(5, r.code.split("\n")[4].indexOf("d") + 1)).toEqual({ line: 5, column: 1 });
  });

  test("imports become awaited dynamic imports; type-only imports vanish", () => {
    const r = rewriteCell(
      'import type { T } from "./t.ts";\nimport x, { y as z } from "./m.ts";',
      (s) => `file:///p/${s}`,
    );
    if (!r.ok) throw new Error(r.message);
    expect(r.code).toMatch(/^\s+\nconst __sl_m0 = await __sl_import\("file:\/\/\/p\/.\/m.ts"\);/);
    expect(r.declared).toEqual(["x", "z"]);
  });

  test("syntax errors carry the cell's line and column; is_complete", () => {
    expect(rewriteCell("let a = 1\nlet b = ;")).toMatchObject({ ok: false, line: 2, column: 9 });
    expect(isComplete("const a = {").status).toBe("incomplete");
    expect(isComplete("const a = {}").status).toBe("complete");
    expect(isComplete("const a = }").status).toBe("invalid");
  });
});
