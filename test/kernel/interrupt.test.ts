/**
 * Interrupts arrive as interrupt_request on the control channel (interrupt_mode "message"): a runaway
 * loop stops within a second and earlier variables survive.
 */
import { expect, test } from "vitest";
import { drive, type ExecResult, resultOf, stdoutOf } from "./harness.ts";

test("interrupting while(true), an endless await, and a prompt keeps state", async () => {
  const r = (await drive([
    { execute: "const kept = 41; let counter = 0" },
    { execute: "while (true) { counter++ }", interrupt_after: 1.0, timeout: 20 },
    { execute: "kept + 1" },
    { execute: "for (;;) {}", interrupt_after: 0.5, timeout: 20 },
    { execute: "await new Promise(() => {})", interrupt_after: 0.5, timeout: 20 },
    { execute: "prompt('waiting')", allow_stdin: true, interrupt_after: 0.8, timeout: 20 },
    { execute: "counter > 0 && kept" },
  ], 150_000)) as ExecResult[];
  const [, loop, after, loop2, wait, ask, last] = r;
  for (const x of [loop, loop2, wait, ask]) {
    expect(x.timed_out).toBe(false);
    expect(x.reply.status).toBe("error");
    expect(x.reply.ename).toBe("InterruptError");
    expect(x.stop_seconds!).toBeLessThan(1);
    expect(x.order_ok).toBe(true);
  }
  // Tracebacks point at the cell's line: the loop's check, the await the cell was waiting on (not the
  // worker's message handler inside Deno).
  expect(loop.reply.traceback!.slice(1)).toEqual([expect.stringMatching(/^\s+at cell\[\d+\]:1:\d+$/)]);
  expect(wait.reply.traceback!.slice(1)).toEqual([expect.stringMatching(/^\s+at cell\[\d+\]:1:7$/)]);
  expect(ask.prompts).toEqual(["waiting"]);
  expect(resultOf(after)).toBe("42");
  expect(resultOf(last)).toBe("41");
}, 160_000);

test(
  "a cell stuck outside instrumented code is cut off by restarting the worker, the kernel lives",
  async () => {
    const r = (await drive([
      { execute: "const x = 1" },
      // Atomics.wait blocks in native code where no interrupt check runs.
      {
        execute: "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60000)",
        interrupt_after: 0.5,
        timeout: 20,
      },
      { execute: "typeof x" },
      { execute: "1 + 1" },
    ], 120_000)) as ExecResult[];
    const [, stuck, lost, fresh] = r;
    expect(stuck.timed_out).toBe(false);
    expect(stuck.reply.ename).toBe("InterruptError");
    expect(stuck.reply.evalue).toMatch(/restarted/);
    expect(stuck.stop_seconds!).toBeLessThan(5);
    expect(resultOf(lost)).toBe('"undefined"'); // the error said so: state is gone
    expect(resultOf(fresh)).toBe("2");
  },
  130_000,
);

test(
  "restart: the kernel exits on shutdown_request(restart), a fresh one answers, state is gone",
  async () => {
    const r = (await drive([
      { execute: "const before = 1; process.stdout.write('node-style write\\n')" },
      { restart: true },
      { execute: "typeof before" },
    ], 90_000)) as ExecResult[];
    expect(stdoutOf(r[0])).toBe("node-style write\n");
    expect(resultOf(r[2])).toBe('"undefined"');
  },
  100_000,
);
