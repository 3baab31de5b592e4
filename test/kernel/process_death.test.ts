/**
 * Cells run in a child process that the kernel supervises (kernel/host.ts, issue #16): a cell that exhausts
 * the heap or kills its own process takes down only that process. The cell gets an ExecutionProcessDied
 * error with a traceback naming the lost variables, then idle; the kernel keeps answering, queued cells run
 * in a fresh process, and no cell directory is left behind, not even by a kernel that was killed. An
 * interrupt the cell ignores restarts the process, and its error names the lost variables too (#15).
 * Driven with kernel/client.ts.
 */
import { afterAll, expect, test } from "vitest";
import { type ExecuteResult, KernelClient } from "../../kernel/client.ts";
import { kernelSpec } from "../../kernel/install.ts";

// No seqlab preload (faster starts); a small heap so the out-of-memory cell fails within seconds.
const ARGV = [...(kernelSpec().argv as string[]), "--no-preload"];
// SEQLAB_KERNEL_DEBUG: the start-up line that names the cell directory.
const ENV = { SEQLAB_KERNEL_HEAP_MB: "256", SEQLAB_KERNEL_DEBUG: "1" };
const clients: KernelClient[] = [];
afterAll(async () => {
  for (const kc of clients) await kc.shutdown();
});

async function start(): Promise<{ kc: KernelClient; dir: string }> {
  const kc = await KernelClient.start({ argv: ARGV, env: ENV, startTimeoutMs: 90_000 });
  clients.push(kc);
  // The kernel's stderr is read as it comes: its first line may arrive after kernel_info's reply.
  const cellDir = () => /cells in (\S+),/.exec(kc.stderr())?.[1];
  for (let i = 0; i < 100 && !cellDir(); i++) await new Promise((r) => setTimeout(r, 100));
  const dir = cellDir();
  expect(dir, `the kernel's log names its cell directory:\n${kc.stderr()}`).toBeTruthy();
  return { kc, dir: dir! };
}

const exists = (path: string) => {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
};
const result = (r: ExecuteResult) =>
  (r.messages.find((m) => m.header.msg_type === "execute_result")?.content.data as Record<string, string>)
    ?.["text/plain"];
const types = (r: ExecuteResult) =>
  r.messages.map((m) =>
    m.header.msg_type === "status" ? String(m.content.execution_state) : m.header.msg_type
  );

/** The error output, the reply, and the order busy, execute_input, error, idle. */
function expectDied(r: ExecuteResult, ename: string, evalue: RegExp, names: string[]): void {
  expect(r.failure, r.failure).toBeUndefined();
  expect(r.reply?.content.status).toBe("error");
  expect(r.reply?.content.ename).toBe(ename);
  expect(String(r.reply?.content.evalue)).toMatch(evalue);
  expect(types(r)).toEqual(["busy", "execute_input", "error", "idle"]);
  const err = r.messages.find((m) => m.header.msg_type === "error")!.content;
  expect(err.ename).toBe(ename);
  const tb = err.traceback as string[];
  expect(tb.length).toBeGreaterThan(0); // Notebook 6 shows nothing for an empty traceback
  for (const n of names) {
    expect(String(err.evalue)).toContain(n);
    expect(tb.join("\n")).toContain(n);
  }
}

test(
  "a cell that exhausts the heap: an error and idle, the kernel lives on, queued cells run, dirs go",
  async () => {
    // A cell directory of a kernel that is gone (the pid of a process that has exited).
    const gone = new Deno.Command("true").spawn();
    await gone.status;
    const stale = `/tmp/seqlab-kernel-${gone.pid}-stale`;
    Deno.mkdirSync(stale, { recursive: true });
    Deno.writeTextFileSync(`${stale}/cell-1.ts`, "1");

    const { kc, dir } = await start();
    expect(exists(stale)).toBe(false); // removed at start-up
    expect(exists(dir)).toBe(true);
    expect((await kc.execute("const keep = 41; function helper() { return 1 }")).reply?.content.status).toBe(
      "ok",
    );
    // The queued cell is sent while the first one runs: it must run in the fresh process.
    const oom = kc.execute("const junk = []; while (true) junk.push(new Array(100_000).fill(1))", {
      timeoutMs: 120_000,
    });
    const queued = kc.execute("`${typeof keep} ${40 + 2}`", { timeoutMs: 120_000 });
    const r = await oom;
    expectDied(r, "ExecutionProcessDied", /out of memory.*SEQLAB_KERNEL_HEAP_MB/, ["keep", "helper"]);
    expect(String(r.reply?.content.evalue)).toMatch(/variables were lost/);
    expect(result(await queued)).toBe('"undefined 42"');
    const info = await kc.request("shell", kc.message("kernel_info_request", {}));
    expect(info.content.status).toBe("ok");
    expect(await kc.ping()).toBe(true);
    expect(result(await kc.execute("const again = 2; again * 21"))).toBe("42");
    await kc.shutdown();
    expect(exists(dir)).toBe(false); // the kernel removes its own on exit
  },
  240_000,
);

test("a cell that SIGKILLs its own process: an error naming the signal, later cells run", async () => {
  const { kc } = await start();
  // Bytes that look like a frame of the kernel's channel, written to the process's stdout, change nothing.
  const noise = await kc.execute(
    "let z = 1; Deno.stdout.writeSync(new Uint8Array([0, 0, 0, 4, 123, 34, 0, 1])); z",
  );
  expect(result(noise)).toBe("1");
  const r = await kc.execute('Deno.kill(Deno.pid, "SIGKILL")', { timeoutMs: 60_000 });
  expectDied(r, "ExecutionProcessDied", /killed by SIGKILL/, ["z"]);
  expect(result(await kc.execute("typeof z"))).toBe('"undefined"');
  const info = await kc.request("shell", kc.message("kernel_info_request", {}));
  expect(info.content.status).toBe("ok");
  expect(result(await kc.execute("1 + 1"))).toBe("2");
}, 120_000);

test("an ignored interrupt restarts the process, and the error names the lost variables", async () => {
  const { kc } = await start();
  await kc.execute("const alpha = 1; let beta = 2; class Gamma {}");
  await kc.execute("var delta = 4");
  // Atomics.wait blocks in native code, where no interrupt check runs.
  const r = await kc.execute("Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60000)", {
    timeoutMs: 500,
  });
  expect(r.timedOut).toBe(true);
  expectDied(r, "InterruptError", /restarted/, ["alpha", "beta", "Gamma", "delta"]);
  expect(result(await kc.execute("typeof alpha"))).toBe('"undefined"');
  // The next loss names only what was defined since.
  await kc.execute("const epsilon = 5");
  const again = await kc.execute('Deno.kill(Deno.pid, "SIGKILL")', { timeoutMs: 60_000 });
  expectDied(again, "ExecutionProcessDied", /epsilon/, ["epsilon"]);
  expect(String(again.reply?.content.evalue)).not.toContain("alpha");
}, 120_000);

test(
  "a killed kernel's execution process exits, and the next kernel removes its cell directory",
  async () => {
    const first = await start();
    const sock = `${first.dir}/host.sock`;
    const hostAlive = () => {
      for (const e of Deno.readDirSync("/proc")) {
        if (!/^\d+$/.test(e.name)) continue;
        try {
          if (Deno.readTextFileSync(`/proc/${e.name}/cmdline`).includes(sock)) return true;
        } catch { /* exited meanwhile */ }
      }
      return false;
    };
    expect(hostAlive()).toBe(true);
    await first.kc.kill(); // SIGKILL: the kernel removes nothing
    expect(exists(first.dir)).toBe(true);
    const end = Date.now() + 10_000;
    while (hostAlive() && Date.now() < end) await new Promise((r) => setTimeout(r, 200));
    expect(hostAlive()).toBe(false); // it saw its channel close
    const second = await start();
    expect(exists(first.dir)).toBe(false);
    expect(result(await second.kc.execute("1 + 1"))).toBe("2");
  },
  120_000,
);
