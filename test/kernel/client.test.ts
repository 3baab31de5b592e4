/**
 * kernel/client.ts, the TypeScript Jupyter client, against the real kernel: start and kernel_info, outputs
 * in order, errors, display updates, input, interrupt, per-request timeout, a kernel that dies, a kernel
 * that cannot start, and shutdown with its files removed. Then ipykernel, whose sockets are libzmq's,
 * through the same client (no interrupt there: ipykernel answers one by signalling its process group).
 */
import { afterAll, beforeAll, expect, test } from "vitest";
import { type ExecuteResult, KernelClient, KernelDiedError } from "../../kernel/client.ts";
import { kernelSpec } from "../../kernel/install.ts";
import { PYTHON } from "./harness.ts";

// No seqlab preload: these tests are about the protocol, and the kernel starts faster without it.
const ARGV = [...(kernelSpec().argv as string[]), "--no-preload"];
let kc: KernelClient;

beforeAll(async () => {
  kc = await KernelClient.start({ argv: ARGV });
}, 60_000);
afterAll(async () => {
  await kc?.shutdown();
});

const types = (r: ExecuteResult) => r.messages.map((m) => m.header.msg_type);
const outputs = (r: ExecuteResult) =>
  r.messages.filter((m) => !["status", "execute_input"].includes(m.header.msg_type));

test("kernel_info arrived before start resolved, and the heartbeat answers", async () => {
  expect(kc.kernelInfo.implementation).toBe("seqlab");
  expect((kc.kernelInfo.language_info as { name: string }).name).toBe("typescript");
  expect(await kc.ping()).toBe(true);
});

test("execute: busy, execute_input, every output in order, idle; the reply counts", async () => {
  const code = [
    "const x = 6",
    "console.log('one')",
    "console.error('two')",
    "display(html('<b>three</b>'))",
    "console.log('four')",
    "x * 7",
  ].join("\n");
  const r = await kc.execute(code, { timeoutMs: 30_000 });
  expect(r.timedOut).toBe(false);
  expect(r.failure).toBeUndefined();
  expect(r.reply?.content.status).toBe("ok");
  expect(types(r)).toEqual([
    "status",
    "execute_input",
    "stream",
    "stream",
    "display_data",
    "stream",
    "execute_result",
    "status",
  ]);
  expect(r.messages.map((m) => m.content.execution_state).filter(Boolean)).toEqual(["busy", "idle"]);
  const out = outputs(r).map((m) =>
    m.content.text ?? (m.content.data as Record<string, string>)["text/html"] ??
      (m.content.data as Record<string, string>)["text/plain"]
  );
  expect(out).toEqual(["one\n", "two\n", "<b>three</b>", "four\n", "42"]);
  expect(outputs(r)[1].content.name).toBe("stderr");
  for (const m of r.messages) expect(m.parent_header.msg_id).toBe(r.messages[0].parent_header.msg_id);
  const count = Number(r.reply?.content.execution_count);
  const next = await kc.execute("x", { timeoutMs: 30_000 });
  expect(next.reply?.content.execution_count).toBe(count + 1);
  expect(outputs(next)[0].content.execution_count).toBe(count + 1);
});

test("an error: reply status error with ename and evalue, an error output, and the kernel goes on", async () => {
  const r = await kc.execute("const y = 1;\nthrow new TypeError('bad ' + y)", { timeoutMs: 30_000 });
  expect(r.reply?.content).toMatchObject({ status: "error", ename: "TypeError", evalue: "bad 1" });
  const err = outputs(r);
  expect(err.map((m) => m.header.msg_type)).toEqual(["error"]);
  expect((err[0].content.traceback as string[]).join("\n")).toMatch(/cell\[\d+\]:2:/);
  const after = await kc.execute("y + 1", { timeoutMs: 30_000 });
  expect(after.reply?.content.status).toBe("ok");
  expect((outputs(after)[0].content.data as Record<string, string>)["text/plain"]).toBe("2");
});

test("display updates and clear_output arrive as their own messages, with the display id", async () => {
  const r = await kc.execute(
    "display('a', { id: 'd1' });\ndisplay('b', { id: 'd1', update: true });\nclearOutput(true);\nconsole.log('c')",
    { timeoutMs: 30_000 },
  );
  const out = outputs(r);
  expect(out.map((m) => m.header.msg_type)).toEqual([
    "display_data",
    "update_display_data",
    "clear_output",
    "stream",
  ]);
  expect(out[0].content.transient).toEqual({ display_id: "d1" });
  expect(out[1].content.transient).toEqual({ display_id: "d1" });
  expect((out[1].content.data as Record<string, string>)["text/plain"]).toBe('"b"');
  expect(out[2].content.wait).toBe(true);
});

test("prompt() is answered through onInput on the stdin channel", async () => {
  const asked: string[] = [];
  const r = await kc.execute("const name = prompt('who?'); name.toUpperCase()", {
    timeoutMs: 30_000,
    onInput: (p) => {
      asked.push(p);
      return "ada";
    },
  });
  expect(asked).toEqual(["who?"]);
  expect((outputs(r).at(-1)!.content.data as Record<string, string>)["text/plain"]).toBe('"ADA"');
});

test("interrupt stops a runaway loop within a second and keeps the variables", async () => {
  await kc.execute("const kept = 41; let spins = 0", { timeoutMs: 30_000 });
  const running = kc.execute("while (true) { spins++ }", { timeoutMs: 30_000 });
  await new Promise((r) => setTimeout(r, 500));
  const t0 = performance.now();
  await kc.interrupt();
  const r = await running;
  expect((performance.now() - t0) / 1000).toBeLessThan(1);
  expect(r.timedOut).toBe(false);
  expect(r.reply?.content).toMatchObject({ status: "error", ename: "InterruptError" });
  const after = await kc.execute("spins > 0 ? kept + 1 : -1", { timeoutMs: 30_000 });
  expect((outputs(after)[0].content.data as Record<string, string>)["text/plain"]).toBe("42");
});

test("a request past its timeout is interrupted: timedOut, its outputs kept, the kernel usable", async () => {
  const r = await kc.execute("console.log('before'); await new Promise(() => {})", { timeoutMs: 800 });
  expect(r.timedOut).toBe(true);
  expect(r.failure).toBeUndefined();
  expect(r.seconds).toBeGreaterThanOrEqual(0.8);
  expect(r.seconds).toBeLessThan(3);
  expect(outputs(r).map((m) => m.content.text ?? m.content.ename)).toEqual(["before\n", "InterruptError"]);
  expect(types(r).at(-1)).toBe("status");
  const after = await kc.execute("1 + 1", { timeoutMs: 30_000 });
  expect(after.reply?.content.status).toBe("ok");
});

test(
  "a kernel that dies mid-cell ends the request at once, saying how it died; its outputs are kept",
  async () => {
    const k = await KernelClient.start({ argv: ARGV });
    try {
      const r = await k.execute(
        "console.log('last words'); await new Promise((r) => setTimeout(r, 200)); " +
          "Deno.kill((await import('node:process')).ppid, 'SIGKILL')", // the kernel: cells run in its child
        { timeoutMs: 30_000 },
      );
      expect(r.reply).toBeNull();
      expect(r.failure).toMatch(/the kernel was killed by SIGKILL/);
      expect(r.seconds).toBeLessThan(5);
      expect(outputs(r).map((m) => m.content.text)).toEqual(["last words\n"]);
      await expect(k.interrupt()).rejects.toThrow(KernelDiedError);
      expect(await k.ping()).toBe(false);
    } finally {
      await k.shutdown();
    }
  },
  60_000,
);

test(
  "a kernel that cannot start: start rejects with its exit code and log, and leaves no files",
  async () => {
    const dir = Deno.makeTempDirSync({ prefix: "seqlab-client-test-" });
    const argv = [Deno.execPath(), "run", "-A", `${dir}/no_such_kernel.ts`, "{connection_file}"];
    await expect(KernelClient.start({ argv, runtimeDir: dir, startTimeoutMs: 30_000 })).rejects.toThrow(
      /kernel failed to start: the kernel exited with code 1; its last log lines:[\s\S]*no_such_kernel/,
    );
    expect([...Deno.readDirSync(dir)]).toEqual([]);
    Deno.removeSync(dir);
  },
  60_000,
);

test(
  "shutdown: the kernel exits 0, the connection file is removed, a second shutdown is harmless",
  async () => {
    const dir = Deno.makeTempDirSync({ prefix: "seqlab-client-test-" });
    const k = await KernelClient.start({ argv: ARGV, runtimeDir: dir });
    expect(Deno.statSync(k.connectionFile).isFile).toBe(true);
    await k.shutdown();
    expect(k.exitStatus?.code).toBe(0);
    expect([...Deno.readDirSync(dir)]).toEqual([]);
    await k.shutdown();
    Deno.removeSync(dir);
  },
  60_000,
);

test("interop: the same client drives ipykernel, whose sockets are libzmq's (ROUTER, PUB, REP)", async () => {
  const k = await KernelClient.start({
    argv: [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    env: { PYDEVD_DISABLE_FILE_VALIDATION: "1" },
    startTimeoutMs: 60_000,
  });
  try {
    expect(k.kernelInfo.implementation).toBe("ipython");
    const ok = await k.execute("import sys\nprint('hi')\nprint('err', file=sys.stderr)\n6 * 7", {
      timeoutMs: 30_000,
    });
    expect(types(ok)).toEqual(["status", "execute_input", "stream", "stream", "execute_result", "status"]);
    expect(outputs(ok).map((m) => m.content.text ?? (m.content.data as Record<string, string>)["text/plain"]))
      .toEqual(["hi\n", "err\n", "42"]);
    const bad = await k.execute("1 / 0", { timeoutMs: 30_000, stopOnError: false });
    expect(bad.reply?.content).toMatchObject({ status: "error", ename: "ZeroDivisionError" });
    expect(await k.ping()).toBe(true);
  } finally {
    await k.shutdown();
  }
  expect(k.exitStatus?.code).toBe(0);
}, 90_000);
