/**
 * Cells run as scripts, not modules (issue #16; kernel/transform.ts's compileCell, kernel/worker.ts's
 * evalCell): the types are stripped by TypeScript and the script is evaluated, so tracebacks go back through
 * a source map to the cell's own lines; imports (relative, npm, "seqlab") resolve as they did for modules; and
 * the executor no longer keeps anything per cell: its heap is flat over hundreds of cells, where a module per
 * cell cost 2.46 KiB each.
 */
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { type ExecuteResult, KernelClient } from "../../kernel/client.ts";
import { kernelSpec } from "../../kernel/install.ts";
import { compileCell } from "../../kernel/transform.ts";

// No seqlab preload (faster start); "seqlab" is still importable.
const ARGV = [...(kernelSpec().argv as string[]), "--no-preload"];
let kc: KernelClient;
let dir: string;

beforeAll(async () => {
  // The kernel's cwd holds the local modules a cell imports with relative paths.
  dir = await Deno.makeTempDir({ prefix: "seqlab-scripts-test-" });
  await Deno.mkdir(`${dir}/lib`);
  await Deno.writeTextFile(`${dir}/local.ts`, "export const answer: number = 42;\nexport default 'local';\n");
  await Deno.writeTextFile(
    `${dir}/lib/nested.ts`,
    "import { answer } from '../local.ts';\nexport const twice = (): number => 2 * answer;\n",
  );
  kc = await KernelClient.start({ argv: ARGV, cwd: dir });
}, 60_000);
afterAll(async () => {
  await kc?.shutdown();
  if (dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
});

const exec = (code: string, storeHistory = true) => kc.execute(code, { timeoutMs: 60_000, storeHistory });
const result = (r: ExecuteResult) =>
  (r.messages.find((m) => m.header.msg_type === "execute_result")?.content.data as Record<string, string>)
    ?.["text/plain"];
const stdout = (r: ExecuteResult) =>
  r.messages.filter((m) => m.header.msg_type === "stream" && m.content.name === "stdout").map((m) =>
    m.content.text
  ).join("");
const traceback = (r: ExecuteResult) => {
  const e = r.messages.find((m) => m.header.msg_type === "error");
  return (e?.content.traceback as string[] | undefined) ?? [];
};
const label = (r: ExecuteResult) => `cell\\[${r.reply?.content.execution_count}\\]`;

describe("tracebacks after the types were stripped", () => {
  test("a throw on the cell's 3rd line, below an interface and annotations, is reported at line 3", async () => {
    const r = await exec(
      [
        "interface Shape { side: number; name: string }",
        "const sq: Shape = { side: 2, name: 'square' } as Shape, n: number = sq.side;",
        "throw new RangeError(`bad ${sq.name as string} ${n}`)",
      ].join("\n"),
    );
    expect(r.reply?.content).toMatchObject({ status: "error", ename: "RangeError", evalue: "bad square 2" });
    const tb = traceback(r);
    // `new RangeError` is at column 7 of line 3; nothing else of the wrapper shows.
    expect(tb.slice(1)).toEqual([expect.stringMatching(new RegExp(`^\\s+at ${label(r)}:3:7$`))]);
  });

  test("frames in typed functions and methods name their own lines, before and after an await", async () => {
    const r = await exec(
      [
        "type Id = number",
        "/** a multi-line",
        "    comment the emitted script keeps */",
        "class Store<T> {",
        "  private items: Map<Id, T> = new Map()",
        "  get(id: Id): T {",
        "    const v: T | undefined = this.items.get(id)",
        "    if (v === undefined) throw new Error(`no item ${id}`)",
        "    return v",
        "  }",
        "}",
        "await new Promise<void>((r) => setTimeout(r, 5))",
        "const s: Store<string> = new Store<string>()",
        "s.get(7 as Id)",
      ].join("\n"),
    );
    expect(r.reply?.content).toMatchObject({ status: "error", evalue: "no item 7" });
    const tb = traceback(r).join("\n");
    expect(tb).toMatch(new RegExp(`at Store\\.get \\(${label(r)}:8:32\\)`));
    expect(tb).toMatch(new RegExp(`at ${label(r)}:14:3`));
    expect(tb).not.toMatch(/cell-\d+\.js|<anonymous>:|worker\.ts/);
  });

  test("an early error TypeScript's parser lets through still names the cell's line and column", async () => {
    const r = await exec("const ok: number = 1\nfunction f(): void { await ok }");
    expect(r.reply?.content.status).toBe("error");
    expect(r.reply?.content.ename).toBe("SyntaxError");
    expect(r.reply?.content.evalue).toMatch(new RegExp(`${label(r)}:2:22`));
    expect(traceback(r).join("\n")).toMatch(new RegExp(`at ${label(r)}:2:22`));
  });

  test("compileCell maps script positions through the source map, the wrapper to null", () => {
    const c = compileCell("interface A {\n  x: number\n}\nconst a: A = { x: 1 }\nthrow new Error('x')");
    if (!c.ok) throw new Error(c.message);
    const lines = c.script.split("\n");
    const at = lines.findIndex((l) => l.includes("throw"));
    expect(c.mapPosition(at + 1, lines[at].indexOf("throw") + 1)).toEqual({ line: 5, column: 1 });
    expect(c.mapPosition(1, 1)).toBeNull(); // "use strict"
    expect(c.script).not.toMatch(/interface|: A|: number/);
  });
});

describe("imports from a script resolve as they did from a module", () => {
  test("relative imports (static and dynamic, nested), npm packages, and seqlab", async () => {
    const local = await exec("import def, { answer } from './local.ts'\n`${def} ${answer}`");
    expect(result(local)).toBe('"local 42"');
    const nested = await exec("const { twice } = await import('./lib/nested.ts'); twice()");
    expect(result(nested)).toBe("84");
    const star = await exec("import * as lib from './lib/nested.ts'; lib.twice() + answer");
    expect(result(star)).toBe("126");
    const npm = await exec("import { table } from 'arquero'; table({ k: [1, 2, 3] }).numRows()");
    expect(result(npm)).toBe("3");
    const npmDyn = await exec("(await import('npm:arquero@7.2.1')).table({ k: [1] }).numRows()");
    expect(result(npmDyn)).toBe("1");
    const sl = await exec("import { tensor } from 'seqlab'; typeof tensor");
    expect(result(sl)).toBe('"function"');
    const meta = await exec("new URL('./local.ts', import.meta.url).pathname.endsWith('/local.ts')");
    expect(result(meta)).toBe("true");
  }, 60_000);
});

describe("no module per cell", () => {
  test("a cell's frames are eval code, named after its script file", async () => {
    const r = await exec("new Error('where').stack");
    expect(result(r)).toMatch(/at eval \(file:\/\/\S*\/cell-\d+\.js, <anonymous>:\d+:\d+\)/);
  });

  test("500 cells: the executor's heap after a collection does not grow per cell", async () => {
    // The soak's sample cell (bench/soak.ts), outside history.
    const sample = async () => {
      const g = await exec(
        [
          `import v8 from "node:v8";`,
          `import vm from "node:vm";`,
          `v8.setFlagsFromString("--expose-gc");`,
          `vm.runInNewContext("gc")();`,
          `console.log(JSON.stringify(Deno.memoryUsage()));`,
        ].join("\n"),
        false,
      );
      return JSON.parse(stdout(g)).heapUsed as number;
    };
    const cells = 500, warm = 100;
    const heaps: [number, number][] = [];
    for (let i = 1; i <= cells; i++) {
      // typed, with a function, a class and a declaration each time: everything a module used to keep
      const r = await exec(
        `const v: number = ${i}\nfunction f(x: number): number { return x + 1 }\nclass C { n = f(v) }\nnew C().n`,
      );
      expect(result(r)).toBe(String(i + 1));
      if (i >= warm && i % 50 === 0) heaps.push([i, await sample()]);
    }
    // Least-squares slope, bytes per cell. A module per cell was 2,460 (bench/soak.ts's history); what is
    // left is the executor warming up (JIT code, feedback), about 350 bytes/cell over the first 500 cells and
    // nothing after 2,500.
    const n = heaps.length, mx = heaps.reduce((a, [x]) => a + x, 0) / n;
    const my = heaps.reduce((a, [, y]) => a + y, 0) / n;
    const slope = heaps.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0) /
      heaps.reduce((a, [x]) => a + (x - mx) ** 2, 0);
    console.log(
      `executor heap over ${cells} cells: ${heaps.map(([, y]) => (y / 1024).toFixed(0)).join(", ")} KiB; ${
        slope.toFixed(0)
      } bytes/cell`,
    );
    expect(slope).toBeLessThan(1024);
  }, 120_000);
});
