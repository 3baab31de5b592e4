/**
 * The kernel against real Jupyter clients: jupyter_kernel_test's KernelTests (every check has a
 * sample, none may skip), then execution semantics through jupyter_client.
 */
import { describe, expect, test } from "vitest";
import { drive, type ExecResult, HERE, PYTHON, resultOf, run, stdoutOf } from "./harness.ts";

describe("jupyter_kernel_test", () => {
  test("all KernelTests checks pass, none skipped", async () => {
    const r = await run(PYTHON, ["-m", "unittest", "-v", "jupyter_kernel_test_seqlab"], {
      cwd: HERE,
      timeoutMs: 180_000,
    });
    const report = r.stderr.split("\n").filter((l) => !l.startsWith("[seqlab kernel]")).join("\n");
    expect(report, report).toMatch(/\nOK\s*$/);
    expect(report).not.toMatch(/skipped/i);
    const ran = Number(/Ran (\d+) tests?/.exec(report)?.[1]);
    // 12 test methods in jupyter_kernel_test 0.4.5; test_history holds 3 subtests (tail, range, search).
    expect(ran).toBeGreaterThanOrEqual(12);
  }, 200_000);
});

describe("execution semantics", () => {
  let results: ExecResult[] = [];
  const cells = [
    /* 0 */ "const a: number = 20\nlet b = 1\nvar c = 'c'\nfunction twice(x: number): number { return 2 * x }\nclass P { v = 5 }\na + b",
    /* 1 */ "const a = 40; twice(a) + new P().v",
    /* 2 */ "const { p, q: [r] } = { p: 1, q: [2] }; p + r",
    /* 3 */ "import { table } from 'arquero'; table({ k: [1, 2] }).numRows()",
    /* 4 */ "const v = await new Promise<number>((res) => setTimeout(() => res(7), 50)); console.log('v', v); v",
    /* 5 */ "console.log('out 1'); console.error('err 1'); display(md('**md**')); console.log('out 2'); 'end'",
    /* 6 */ "function bad(n: number) {\n  if (n > 0) {\n    throw new TypeError('bad ' + n)\n  }\n}\nbad(3)",
    /* 7 */ "let s = ;",
    /* 8 */ "interface T { x: number }\nconst t: T = { x: 3 }\nt.x",
    /* 9 */ "enum Color { Red, Green }\nColor.Green",
    /* 10 */ "for (let i = 0; i < 3; i++) { console.log(i) }\nawait new Promise((r) => setTimeout(r, 30))\nconsole.log('timer done')",
    /* 11 */ "typeof seqlab === 'object' && typeof seqlab.tensor",
    /* 12 */ "import { matmul } from 'seqlab'; typeof matmul",
    /* 13 */ "const answer = prompt('your name?'); 'hello ' + answer",
    /* 14 */ "prompt('no stdin')",
    /* 15 */ "const h = await display(md('first'), { id: 'upd' }); await h.update(md('second')); 1",
    /* 16 */ "`ünïcødé 🎉`",
  ];
  test("cells run with REPL semantics", async () => {
    const steps: Record<string, unknown>[] = cells.map((c, i) => ({
      execute: c,
      allow_stdin: i === 13,
      answers: i === 13 ? ["Ada"] : [],
      stop_on_error: false,
    }));
    results = (await drive(steps, 150_000)) as ExecResult[];
    const [
      decl,
      redecl,
      destr,
      imp,
      tla,
      mixed,
      err,
      syn,
      types,
      en,
      loops,
      pre,
      preImport,
      input,
      noInput,
      upd,
      uni,
    ] = results;
    for (const r of results) expect(r.order_ok, JSON.stringify(r)).toBe(true);
    expect(resultOf(decl)).toBe("21");
    expect(resultOf(redecl)).toBe("85");
    expect(resultOf(destr)).toBe("3");
    expect(resultOf(imp)).toBe("2");
    expect(stdoutOf(tla)).toBe("v 7\n");
    expect(resultOf(tla)).toBe("7");
    expect(mixed.outputs.map((o) => o.type + (o.content.name ? `:${o.content.name}` : ""))).toEqual([
      "stream:stdout",
      "stream:stderr",
      "display_data",
      "stream:stdout",
      "execute_result",
    ]);
    expect(err.reply.status).toBe("error");
    expect(err.reply.ename).toBe("TypeError");
    expect(err.reply.evalue).toBe("bad 3");
    // Positions in the traceback are the cell's own lines: the throw is on line 3, the call on line 6.
    const tb = err.reply.traceback!.join("\n");
    expect(tb).toMatch(/at bad \(cell\[7\]:3:\d+\)/);
    expect(tb).toMatch(/cell\[7\]:6:1/);
    expect(syn.reply.status).toBe("error");
    expect(syn.reply.ename).toBe("SyntaxError");
    expect(syn.reply.traceback!.join("\n")).toMatch(/cell\[8\]:1:9/);
    expect(resultOf(types)).toBe("3");
    expect(resultOf(en)).toBe("1");
    expect(stdoutOf(loops)).toBe("0\n1\n2\ntimer done\n");
    expect(pre.reply.status).toBe("ok");
    expect(preImport.reply.status).toBe("ok");
    expect(resultOf(preImport)).toBe('"function"');
    expect(input.prompts).toEqual(["your name?"]);
    expect(resultOf(input)).toBe('"hello Ada"');
    expect(noInput.reply.status).toBe("error");
    expect(noInput.reply.evalue).toMatch(/allow_stdin/);
    expect(upd.outputs.map((o) => o.type)).toEqual(["display_data", "update_display_data", "execute_result"]);
    expect(resultOf(uni)).toBe('"ünïcødé 🎉"');
  }, 160_000);

  test("complete, inspect, is_complete", async () => {
    const r = (await drive([
      {
        execute:
          "/** Adds one. */\nfunction inc(x: number): number { return x + 1 }\nconst longNameHere = { alpha: 1, beta: 2 }",
      },
      { complete: "longNameHere.al" },
      { complete: "longName" },
      // Cursor positions count code points: the emoji is one.
      { complete: "'🎉'; longNameHere.be", cursor: 20 },
      { inspect: "inc(1)", cursor: 2 },
      { inspect: "nothingHere", cursor: 3 },
      { is_complete: "for (const x of xs) {" },
      { kernel_info: true },
    ])) as Record<string, unknown>[];
    // deno-lint-ignore no-explicit-any -- reply contents as JSON
    const [, c1, c2, c3, i1, i2, ic, ki] = r as Record<string, any>[];
    expect(c1.matches).toEqual(["alpha"]);
    expect([c1.cursor_start, c1.cursor_end]).toEqual([13, 15]);
    expect(c2.matches).toContain("longNameHere");
    expect(c3.matches).toEqual(["beta"]);
    expect([c3.cursor_start, c3.cursor_end]).toEqual([18, 20]);
    expect(i1.found).toBe(true);
    expect(i1.data["text/plain"]).toMatch(/function inc\(x: number\): number/);
    expect(i1.data["text/plain"]).toMatch(/Adds one\./);
    expect(i2.found).toBe(false);
    expect(ic.status).toBe("incomplete");
    expect(ki.language_info.name).toBe("typescript");
    expect(ki.language_info.file_extension).toBe(".ts");
    expect(ki.protocol_version).toBe("5.3");
  }, 120_000);
});
