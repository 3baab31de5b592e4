/** `jupyter console --kernel seqlab` answers a scripted session (simple prompt, stdin piped). */
import { expect, test } from "vitest";
import { PYTHON, run } from "./harness.ts";

test("jupyter console runs a scripted session", async () => {
  const script = [
    "const a = 20",
    "a * 2 + 2",
    'console.log("hi from console")',
    "function sq(x: number) { return x * x }",
    "sq(a)",
    'throw new Error("bad thing")',
    "a",
    // a bar that outlives its first interval: the console prints display_data only, never an update
    'for (const i of progress(12, { label: "long" })) { const t = Date.now(); while (Date.now() - t < 30) {} }',
    "exit",
  ].join("\n") + "\n";
  const r = await run(PYTHON, ["-m", "jupyter_console", "--kernel", "seqlab", "--simple-prompt"], {
    stdin: script,
    timeoutMs: 90_000,
  });
  const out = r.stdout + "\n" + r.stderr; // tracebacks go to stderr
  expect(r.timedOut).toBe(false);
  expect(r.code, out + r.stderr.slice(-2000)).toBe(0);
  expect(out).toMatch(/Out\[2\]: 42/);
  expect(out).toMatch(/hi from console/);
  expect(out).toMatch(/Out\[5\]: 400/);
  expect(out).toMatch(/Error: bad thing\s+at cell\[6\]:1:7/);
  expect(out).toMatch(/Out\[7\]: 20/); // state survives an error
  expect(out).toMatch(/long .*12\/12 100%/); // the bar's end, not its first state
  expect(out).toMatch(/Shutting down kernel/);
}, 100_000);
