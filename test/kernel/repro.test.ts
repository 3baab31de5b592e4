/** `deno task repro`: executes notebooks, writes them and a summary, fails on an untagged error. */
import { expect, test } from "vitest";
import { run } from "./harness.ts";

function notebook(cells: { src: string; tags?: string[] }[]): string {
  return JSON.stringify({
    cells: cells.map((c, i) => ({
      cell_type: "code",
      execution_count: null,
      id: `c${i}`,
      metadata: c.tags ? { tags: c.tags } : {},
      outputs: [],
      source: c.src,
    })),
    metadata: { kernelspec: { name: "seqlab", display_name: "seqlab (TypeScript)", language: "typescript" } },
    nbformat: 4,
    nbformat_minor: 5,
  });
}

test("repro runs notebooks in order, accepts raises-exception, fails on other errors", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "seqlab-repro-" });
  Deno.writeTextFileSync(
    `${dir}/a_ok.ipynb`,
    notebook([
      { src: "const x = 2" },
      { src: "throw new Error('expected')", tags: ["raises-exception"] },
      { src: "console.log(x * 21)" },
    ]),
  );
  Deno.writeTextFileSync(`${dir}/b_bad.ipynb`, notebook([{ src: "undefinedThing.call()" }, { src: "1" }]));
  const out = `${dir}/out`;
  const ok = await run(Deno.execPath(), ["run", "-A", "kernel/repro.ts", "--out", out, `${dir}/a_ok.ipynb`], {
    timeoutMs: 90_000,
  });
  expect(ok.code, ok.stdout + ok.stderr).toBe(0);
  expect(ok.stdout).toMatch(/a_ok\.ipynb: ok — 3\/3 cells, 0 errors \(\+1 expected\)/);
  const executed = JSON.parse(Deno.readTextFileSync(`${out}/a_ok.ipynb`));
  expect(executed.cells[2].outputs[0].text).toEqual(["42\n"]);

  const bad = await run(Deno.execPath(), [
    "run",
    "-A",
    "kernel/repro.ts",
    "--out",
    out,
    `${dir}/a_ok.ipynb`,
    `${dir}/b_bad.ipynb`,
  ], {
    timeoutMs: 90_000,
  });
  expect(bad.code).toBe(1);
  const summary = JSON.parse(Deno.readTextFileSync(`${out}/summary.json`));
  expect(summary.map((s: { status: string }) => s.status)).toEqual(["ok", "failed"]);
  expect(summary[1].errors).toBe(1);
  expect(summary[1].executed).toBe(1); // stops at the first failing cell
  expect(summary[1].message).toMatch(/ReferenceError/);
  expect(Deno.readTextFileSync(`${out}/summary.md`)).toMatch(
    /\| .*b_bad\.ipynb \| failed \| 2 \| 1 \| 1 \| 0 \|/,
  );
  Deno.removeSync(dir, { recursive: true });
}, 120_000);
