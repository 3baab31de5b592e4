/**
 * The research notebooks (notebooks/01..98) run end to end under `deno task repro` on the kernel.
 *
 * Default: quick mode (SEQLAB_QUICK=1: small sizes and few steps, every cell still runs), so CI checks
 * that each notebook executes, that no cell fails, and that it ends with its comparison table
 * (| claim | paper | ours | verdict |). SEQLAB_HEAVY=1 runs them in full mode, as `deno task repro` does.
 * Committed notebooks carry no outputs: their numbers come from running them.
 */
import { expect, test } from "vitest";
import { HEAVY, ROOT, run } from "./harness.ts";

const notebooks = [...Deno.readDirSync(`${ROOT}/notebooks`)]
  .map((e) => e.name)
  .filter((n) => /^(0[1-9]|[1-8]\d|9[0-8])_.*\.ipynb$/.test(n))
  .sort();

interface Cell {
  cell_type: string;
  source: string | string[];
  outputs?: { output_type: string; data?: Record<string, unknown>; text?: string | string[] }[];
  execution_count?: number | null;
}
const text = (s: unknown) => (Array.isArray(s) ? s.join("") : String(s ?? ""));

test("there are research notebooks to run", () => {
  expect(notebooks.length).toBeGreaterThan(0);
});

for (const name of notebooks) {
  test(`${name} is committed without outputs`, () => {
    const nb = JSON.parse(Deno.readTextFileSync(`${ROOT}/notebooks/${name}`));
    const withOutputs = (nb.cells as Cell[]).filter((c) =>
      c.cell_type === "code" && (c.outputs ?? []).length
    );
    expect(withOutputs.length, `${name}: clear outputs before committing`).toBe(0);
    expect(nb.metadata?.kernelspec?.name).toBe("seqlab");
  });

  test(
    `${name} runs under deno task repro (${HEAVY ? "full" : "quick"} mode) and ends with its table`,
    async () => {
      const out = Deno.makeTempDirSync({ prefix: "seqlab-nb-" });
      const r = await run(
        Deno.execPath(),
        ["run", "-A", "kernel/repro.ts", "--out", out, `notebooks/${name}`],
        { timeoutMs: HEAVY ? 1_800_000 : 240_000, env: HEAVY ? {} : { SEQLAB_QUICK: "1" } },
      );
      expect(r.timedOut, `${name} timed out\n${r.stdout.slice(-3000)}`).toBe(false);
      expect(r.code, r.stdout.slice(-4000) + r.stderr.slice(-2000)).toBe(0);
      const nb = JSON.parse(Deno.readTextFileSync(`${out}/${name}`));
      const code = (nb.cells as Cell[]).filter((c) => c.cell_type === "code");
      expect(code.every((c) => typeof c.execution_count === "number"), "every code cell ran").toBe(true);
      // the last code cell displays the comparison table as markdown
      const last = code[code.length - 1];
      const shown = (last.outputs ?? []).map((o) => text(o.data?.["text/markdown"] ?? o.text)).join("\n");
      expect(shown, `${name}: last cell should display | claim | paper | ours | verdict |`).toMatch(
        /\|\s*claim\s*\|\s*paper\s*\|\s*ours\s*\|\s*verdict\s*\|/i,
      );
      const rows = shown.split("\n").filter((l) => /^\s*\|/.test(l)).length - 2; // minus header and rule
      expect(rows, `${name}: comparison table has no rows`).toBeGreaterThan(0);
      Deno.removeSync(out, { recursive: true });
    },
    HEAVY ? 1_900_000 : 300_000,
  );
}
