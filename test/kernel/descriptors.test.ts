/**
 * A burst of connections past the open-file limit (issue #16: the shell listener stopped for good on
 * "accept failed: Too many open files", and new clients timed out even after the burst closed). The kernel
 * runs under `ulimit -n 128`; 200 idle TCP connections to its shell port exhaust its descriptors. After
 * they close, the listener accepts again: a new client executes a cell. The parent watchdog must not have
 * taken the full descriptor table for a dead parent (the kernel is still alive).
 */
import { expect, test } from "vitest";
import { KernelClient } from "../../kernel/client.ts";
import { kernelSpec } from "../../kernel/install.ts";

test("the shell listener recovers after a burst of connections past the descriptor limit", async () => {
  const argv = kernelSpec().argv as string[];
  const k = await KernelClient.start({
    argv: ["sh", "-c", `ulimit -n 128 && exec "$0" "$@"`, ...argv],
    env: { JPY_PARENT_PID: String(Deno.pid) },
  });
  const conns: Deno.Conn[] = [];
  try {
    expect((await k.execute("1 + 1")).reply?.content.status).toBe("ok");
    const info = JSON.parse(Deno.readTextFileSync(k.connectionFile));
    for (let i = 0; i < 200; i++) {
      try {
        conns.push(await Deno.connect({ hostname: info.ip, port: info.shell_port }));
      } catch { /* the backlog may refuse some */ }
    }
    await new Promise((r) => setTimeout(r, 1500)); // the kernel hits its limit accepting them
    for (const c of conns.splice(0)) c.close();
    await new Promise((r) => setTimeout(r, 2500)); // and frees the descriptors
    const r = await k.execute("'still here'", { timeoutMs: 30_000 });
    expect(r.reply?.content.status).toBe("ok");
    const probe = await Deno.connect({ hostname: info.ip, port: info.shell_port });
    const greet = new Uint8Array(64);
    const n = await probe.read(greet); // the kernel's ZMTP greeting: the listener accepts again
    probe.close();
    expect(n).toBeGreaterThan(0);
    expect(greet[0]).toBe(0xff);
  } finally {
    for (const c of conns) c.close();
    await k.shutdown();
  }
}, 120_000);
