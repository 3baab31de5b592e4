/**
 * `deno task repro`: executes notebooks, writes them and a summary, fails on an untagged error, stops a cell
 * at its timeout and on Ctrl-C without losing outputs. The default runner (kernel/client.ts) runs with no
 * Python reachable; its executed notebooks are valid nbformat, byte for byte what nbformat itself writes,
 * and carry the same outputs as the nbclient runner's (`--python`) for the tour.
 */
import { expect, test } from "vitest";
import { PYTHON, ROOT, run } from "./harness.ts";

/** No python3 on PATH and SEQLAB_PYTHON pointing nowhere: a run that used Python would fail. */
const NO_PYTHON = { PATH: "/nonexistent", SEQLAB_PYTHON: "/nonexistent/python3" };

function notebook(cells: { src: string; tags?: string[] }[], ids = true): string {
  return JSON.stringify({
    cells: cells.map((c, i) => ({
      cell_type: "code",
      execution_count: null,
      id: ids ? `c${i}` : undefined,
      metadata: c.tags ? { tags: c.tags } : {},
      outputs: [],
      source: c.src,
    })),
    metadata: { kernelspec: { name: "seqlab", display_name: "seqlab (TypeScript)", language: "typescript" } },
    nbformat: 4,
    nbformat_minor: 5,
  });
}

const repro = (args: string[], env: Record<string, string> = NO_PYTHON, timeoutMs = 90_000) =>
  run(Deno.execPath(), ["run", "-A", "kernel/repro.ts", ...args], { timeoutMs, env });

// deno-lint-ignore no-explicit-any -- executed nbformat JSON, checked field by field below
type Nb = { metadata: Record<string, any>; cells: Record<string, any>[] };
/** Each output's first text line, or its ename. */
// deno-lint-ignore no-explicit-any -- as above
const shortOutputs = (c: Record<string, any>): string[] => c.outputs.map((o: any) => o.text?.[0] ?? o.ename);
const readNb = (p: string): Nb => JSON.parse(Deno.readTextFileSync(p));

test("repro without Python: runs in order, accepts raises-exception, fails on other errors", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "seqlab-repro-" });
  Deno.writeTextFileSync(
    `${dir}/a_ok.ipynb`,
    notebook([
      { src: "const x = 2" },
      { src: "throw new Error('expected')", tags: ["raises-exception"] },
      { src: "console.log(x * 21)" },
    ]),
  );
  // without cell ids, which nbformat 4.5 requires: nbformat's reader (so nbclient) adds random ones, as repro does
  Deno.writeTextFileSync(
    `${dir}/b_bad.ipynb`,
    notebook([{ src: "undefinedThing.call()" }, { src: "1" }], false),
  );
  const out = `${dir}/out`;
  const ok = await repro(["--out", out, "--quick", `${dir}/a_ok.ipynb`]);
  expect(ok.code, ok.stdout + ok.stderr).toBe(0);
  expect(ok.stdout).toMatch(/a_ok\.ipynb: ok — 3\/3 cells, 0 errors \(\+1 expected\)/);
  const executed = readNb(`${out}/a_ok.ipynb`);
  expect(executed.cells[2].outputs[0].text).toEqual(["42\n"]);
  expect(executed.cells.map((c) => c.execution_count)).toEqual([1, 2, 3]);
  expect(executed.cells[1].outputs[0]).toMatchObject({
    output_type: "error",
    ename: "Error",
    evalue: "expected",
  });
  const okSummary = JSON.parse(Deno.readTextFileSync(`${out}/summary.json`));
  expect(okSummary[0]).toMatchObject({ runner: "seqlab", mode: "quick", status: "ok" });
  expect(Deno.readTextFileSync(`${out}/summary.md`)).toMatch(/^runner: seqlab; mode: quick\n/);

  const bad = await repro(["--out", out, `${dir}/a_ok.ipynb`, `${dir}/b_bad.ipynb`]);
  expect(bad.code, bad.stdout + bad.stderr).toBe(1);
  const summary = JSON.parse(Deno.readTextFileSync(`${out}/summary.json`));
  expect(summary.map((s: { status: string }) => s.status)).toEqual(["ok", "failed"]);
  expect(summary[1].mode).toBe("full");
  expect(summary[1].errors).toBe(1);
  expect(summary[1].executed).toBe(1); // stops at the first failing cell
  expect(summary[1].message).toMatch(/^cell 1: ReferenceError: undefinedThing is not defined/);
  expect(Deno.readTextFileSync(`${out}/summary.md`)).toMatch(
    /\| .*b_bad\.ipynb \| failed \| 2 \| 1 \| 1 \| 0 \|/,
  );
  const badNb = readNb(`${out}/b_bad.ipynb`);
  expect(badNb.cells[0].outputs[0].ename).toBe("ReferenceError");
  expect(badNb.cells[1].execution_count).toBeNull(); // not run, left as it was
  expect(badNb.cells.map((c) => /^[0-9a-f]{8}$/.test(c.id))).toEqual([true, true]);
  expect(bad.stderr).toMatch(/b_bad\.ipynb: cell\(s\) 1, 2 had no id or a duplicate one/);

  // The same environment really has no Python: the nbclient runner cannot start in it.
  const py = await repro(["--python", "--out", `${dir}/py`, `${dir}/a_ok.ipynb`]);
  expect(py.code).toBe(1);
  expect(py.stdout).toMatch(/cannot run \/nonexistent\/python3/);

  const usage = await repro(["--timeout", "soon", `${dir}/a_ok.ipynb`]);
  expect(usage.code).toBe(2);
  expect(usage.stderr).toMatch(/--timeout must be a positive number of seconds, not soon/);
  const missing = await repro([`${dir}/nope.ipynb`]);
  expect(missing.code).toBe(2);
  expect(missing.stderr).toMatch(/no such notebook: .*nope\.ipynb/);
  Deno.removeSync(dir, { recursive: true });
}, 180_000);

test("a cell past --timeout is interrupted and fails; Ctrl-C stops the run; outputs are kept", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "seqlab-repro-" });
  const cells = [{ src: "console.log('kept')" }, { src: "console.log('looping'); while (true) {}" }, {
    src: "1",
  }];
  Deno.writeTextFileSync(`${dir}/slow.ipynb`, notebook(cells));
  const r = await repro(["--out", `${dir}/out`, "--timeout", "2", `${dir}/slow.ipynb`]);
  expect(r.code, r.stdout + r.stderr).toBe(1);
  const summary = JSON.parse(Deno.readTextFileSync(`${dir}/out/summary.json`));
  expect(summary[0].message).toBe("cell 2 timed out after 2 s and was interrupted");
  const nb = readNb(`${dir}/out/slow.ipynb`);
  expect(nb.cells[0].outputs[0].text).toEqual(["kept\n"]);
  expect(shortOutputs(nb.cells[1])).toEqual(["looping\n", "InterruptError"]);
  expect(nb.cells[2].execution_count).toBeNull();

  // Ctrl-C (SIGINT to repro alone): the cell is interrupted, the notebook and summary are written, exit 130.
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "kernel/repro.ts", "--out", `${dir}/int`, `${dir}/slow.ipynb`],
    cwd: ROOT,
    env: NO_PYTHON,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!/cell 1 /.test(seen)) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += value;
  }
  await new Promise((res) => setTimeout(res, 1000)); // cell 2 is looping now
  child.kill("SIGINT");
  const killer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  for (;;) if ((await reader.read()).done) break;
  const status = await child.status;
  clearTimeout(killer);
  await child.stderr.cancel();
  expect(status.code).toBe(130);
  const stopped = readNb(`${dir}/int/slow.ipynb`);
  expect(stopped.cells[0].outputs[0].text).toEqual(["kept\n"]);
  expect(shortOutputs(stopped.cells[1])).toEqual([
    "looping\n",
    "InterruptError",
  ]);
  expect(JSON.parse(Deno.readTextFileSync(`${dir}/int/summary.json`))[0].message).toBe(
    "cell 2 interrupted by Ctrl-C",
  );
  Deno.removeSync(dir, { recursive: true });
}, 120_000);

/** Checks with nbformat itself: valid, and nbformat's own writer gives the same bytes. Prints JSON. */
const CONFORMANCE = `
import json, sys, nbformat
report = {}
for p in sys.argv[1:]:
    text = open(p, encoding="utf-8").read()
    nb = nbformat.read(p, as_version=4)
    nbformat.validate(nb)
    report[p] = {"valid": True, "same_bytes": nbformat.writes(nb) + "\\n" == text}
print(json.dumps(report))
`;

/** A cell's outputs with what varies between runs masked: plot element ids, and numbers in timing cells. */
function comparable(nb: Nb) {
  return nb.cells.filter((c) => c.cell_type === "code").map((c) => {
    let outs = JSON.stringify(c.outputs).replace(/seqlab-plot-[a-z0-9]+-\d+/g, "seqlab-plot-ID");
    if (c.id === "table") outs = outs.replace(/\d+(\.\d+)?/g, "N"); // matmul timings and GFLOP/s
    return { id: c.id, count: c.execution_count, timing: Object.keys(c.metadata.execution).sort(), outs };
  });
}

test(
  "the tour and a research notebook in quick mode without Python: valid nbformat, as nbclient writes",
  async () => {
    const out = Deno.makeTempDirSync({ prefix: "seqlab-repro-" });
    const nbs = ["notebooks/00_tour.ipynb", "notebooks/01_long_context_survey.ipynb"];
    const r = await repro(["--quick", "--out", `${out}/ts`, ...nbs], NO_PYTHON, 240_000);
    expect(r.code, r.stdout.slice(-3000) + r.stderr.slice(-2000)).toBe(0);
    const summary = JSON.parse(Deno.readTextFileSync(`${out}/ts/summary.json`));
    expect(summary.map((s: { runner: string; mode: string }) => `${s.runner} ${s.mode}`)).toEqual([
      "seqlab quick",
      "seqlab quick",
    ]);
    const files = nbs.map((n) => `${out}/ts/${n.split("/")[1]}`);
    const check = await run(PYTHON, ["-c", CONFORMANCE, ...files], { timeoutMs: 60_000 });
    expect(check.code, check.stderr).toBe(0);
    const report = JSON.parse(check.stdout);
    for (const f of files) expect(report[f], f).toEqual({ valid: true, same_bytes: true });
    const survey = readNb(files[1]);
    const code = survey.cells.filter((c) => c.cell_type === "code");
    expect(code.every((c, i) => c.execution_count === i + 1)).toBe(true);
    expect(survey.metadata.kernelspec.name).toBe("seqlab"); // the notebook's metadata is kept
    expect(survey.metadata.language_info.name).toBe("typescript");

    // The reference: the same tour through nbclient.
    const py = await repro(["--python", "--quick", "--out", `${out}/py`, nbs[0]], {}, 120_000);
    expect(py.code, py.stdout.slice(-3000) + py.stderr.slice(-2000)).toBe(0);
    const ours = readNb(files[0]), theirs = readNb(`${out}/py/00_tour.ipynb`);
    expect(comparable(ours)).toEqual(comparable(theirs));
    expect(ours.metadata).toEqual(theirs.metadata);
    expect(ours.cells.filter((c) => c.cell_type !== "code")).toEqual(
      theirs.cells.filter((c) => c.cell_type !== "code"),
    );
    Deno.removeSync(out, { recursive: true });
  },
  300_000,
);
