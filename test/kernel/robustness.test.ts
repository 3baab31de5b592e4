/**
 * Robustness against a hostile or broken client, with raw pyzmq and raw TCP as the peer: junk bytes,
 * a wrong socket type, malformed frames, bad and missing signatures, a replayed message, an unknown
 * message type, a 50 MB message and a client that leaves mid-request. The kernel must drop what it
 * should (nothing forged runs), log it, and keep answering.
 */
import { expect, test } from "vitest";
import { HERE, PYTHON, ROOT, run } from "./harness.ts";

test("the kernel survives abuse and keeps answering", async () => {
  const r = await run(PYTHON, [`${HERE}/robust.py`, Deno.execPath(), ROOT, "50"], { timeoutMs: 170_000 });
  expect(r.code, r.stderr.slice(-3000)).toBe(0);
  const d = JSON.parse(r.stdout);
  const log: string = d.kernel_log;
  expect(d.started).toBe(true);
  expect(d.after_raw_tcp).toBe(true);
  expect(d.after_wrong_socket_type).toBe(true);
  expect(log).toMatch(/incompatible peer socket type SUB/);
  expect(d.after_malformed).toBe(true);
  for (
    const why of [
      "no <IDS|MSG> delimiter",
      "bad signature",
      "missing signature",
      "bad JSON",
      "replayed signature",
    ]
  ) {
    expect(log).toContain(`dropped a message on shell: ${why}`);
  }
  expect(log).toMatch(/unknown message type "frobnicate_request"/);
  expect(d.pwned_type).toBe('"undefined"'); // forged and unsigned requests never ran
  expect(d.replayed_count).toBe('"1"'); // the replay was dropped
  expect(d.big_status).toBe("ok");
  expect(d.big_length).toBe(`"${50 * 1024 * 1024}"`);
  expect(d.after_disconnect).toBe(true);
  expect(d.after_disconnect_execute).toBe("ok");
  expect(d.heartbeat).toBe(true);
  expect(d.kernel_exit).toBe(0);
}, 180_000);

test("a kernel whose parent dies exits instead of lingering", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "seqlab-orphan-" });
  const cf = `${dir}/conn.json`;
  Deno.writeTextFileSync(
    cf,
    JSON.stringify({
      ip: "127.0.0.1",
      transport: "tcp",
      key: "k",
      signature_scheme: "hmac-sha256",
      shell_port: 0,
      iopub_port: 0,
      stdin_port: 0,
      control_port: 0,
      hb_port: 0,
    }),
  );
  const deno = Deno.execPath();
  // The shell starts the kernel in the background, naming itself as the parent the way jupyter_client
  // does (JPY_PARENT_PID), and exits 2 s later: the kernel is orphaned.
  const sh = await run("sh", [
    "-c",
    `JPY_PARENT_PID=$$ "${deno}" run -A --quiet --config "${ROOT}/deno.json" "${ROOT}/kernel/main.ts" "${cf}" ` +
    `--no-preload > "${dir}/log" 2>&1 & echo $!; sleep 2`,
  ], {
    timeoutMs: 20_000,
  });
  const pid = Number(sh.stdout.trim());
  expect(pid).toBeGreaterThan(1);
  const alive = () => {
    try {
      return !/^State:\s*Z/m.test(Deno.readTextFileSync(`/proc/${pid}/status`));
    } catch {
      return false;
    }
  };
  const end = Date.now() + 15_000;
  while (alive() && Date.now() < end) await new Promise((r) => setTimeout(r, 200));
  const stillAlive = alive();
  let status = "";
  try {
    status = Deno.readTextFileSync(`/proc/${pid}/status`).split("\n").filter((l) => /^(State|PPid)/.test(l))
      .join(" ");
  } catch { /* gone */ }
  if (stillAlive) Deno.kill(pid, "SIGKILL");
  expect(stillAlive, `${status}\n${Deno.readTextFileSync(`${dir}/log`)}`).toBe(false);
  expect(Deno.readTextFileSync(`${dir}/log`)).toMatch(/parent process \d+ is gone: shutting down/);
  Deno.removeSync(dir, { recursive: true });
}, 30_000);
