// An independent client for the kernel on npm `zeromq` (libzmq through Node-API), run under Node:
// the package's event integration does not work under Deno (see kernel/zmtp.ts). Starts a kernel with
// DENO, does N execute round trips, counts replies and iopub messages, prints JSON.
//
// Usage: node test/kernel/npm_zeromq_peer.mjs ZEROMQ_PACKAGE_DIR DENO ROOT N
import { createRequire } from "node:module";
import { createHmac, randomUUID } from "node:crypto";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [zmqDir, deno, root, nArg] = process.argv.slice(2);
const zmq = createRequire(join(zmqDir, "package.json"))(zmqDir);
const N = Number(nArg ?? 100);
const dir = mkdtempSync(join(tmpdir(), "seqlab-npmzmq-"));
const key = randomUUID();
const cf = join(dir, "conn.json");
writeFileSync(
  cf,
  JSON.stringify({
    ip: "127.0.0.1",
    transport: "tcp",
    key,
    signature_scheme: "hmac-sha256",
    shell_port: 0,
    iopub_port: 0,
    stdin_port: 0,
    control_port: 0,
    hb_port: 0,
  }),
);
const kernel = spawn(deno, [
  "run",
  "-A",
  "--quiet",
  "--config",
  join(root, "deno.json"),
  join(root, "kernel/main.ts"),
  cf,
  "--no-preload",
], { stdio: "ignore" });
const guard = setTimeout(() => {
  kernel.kill();
  console.error("timed out");
  process.exit(2);
}, 120_000);
let conn = {};
for (let i = 0; i < 300 && !conn.shell_port; i++) {
  await new Promise((r) => setTimeout(r, 50));
  try {
    conn = JSON.parse(readFileSync(cf, "utf8"));
  } catch { /* being written */ }
}
const session = randomUUID();
const sign = (parts) => {
  const h = createHmac("sha256", key);
  for (const p of parts) h.update(p);
  return h.digest("hex");
};
const dealer = new zmq.Dealer();
dealer.connect(`tcp://127.0.0.1:${conn.shell_port}`);
const sub = new zmq.Subscriber();
sub.subscribe();
sub.connect(`tcp://127.0.0.1:${conn.iopub_port}`);

const request = async (msg_type, content) => {
  const header = {
    msg_id: randomUUID(),
    session,
    username: "npm",
    date: new Date().toISOString(),
    msg_type,
    version: "5.3",
  };
  const parts = [JSON.stringify(header), "{}", "{}", JSON.stringify(content)];
  await dealer.send(["<IDS|MSG>", sign(parts), ...parts]);
  for (;;) {
    const frames = (await dealer.receive()).map(String);
    const d = frames.indexOf("<IDS|MSG>");
    if (sign(frames.slice(d + 2, d + 6)) !== frames[d + 1]) throw new Error("bad reply signature");
    if (JSON.parse(frames[d + 3]).msg_id === header.msg_id) {
      return { id: header.msg_id, content: JSON.parse(frames[d + 5]) };
    }
  }
};

// One iopub receive stays pending across calls and is raced against a timer.
const iopub = [];
let pending = null;
const readIopubUntilIdle = async (msgId, timeoutMs) => {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    pending ??= sub.receive();
    let timer;
    const got = await Promise.race([
      pending,
      new Promise((r) => (timer = setTimeout(() => r(null), end - Date.now()))),
    ]);
    clearTimeout(timer);
    if (!got) break;
    pending = null;
    const f = got.map(String);
    const d = f.indexOf("<IDS|MSG>");
    const m = {
      type: JSON.parse(f[d + 2]).msg_type,
      parent: JSON.parse(f[d + 3]).msg_id,
      c: JSON.parse(f[d + 5]),
    };
    iopub.push(m);
    if (m.parent === msgId && m.type === "status" && m.c.execution_state === "idle") return true;
  }
  return false;
};
// The subscription reaches the kernel asynchronously: repeat kernel_info until its idle arrives.
let subscribed = false;
for (let i = 0; i < 50 && !subscribed; i++) {
  subscribed = await readIopubUntilIdle((await request("kernel_info_request", {})).id, 300);
}
const ids = new Set();
let ok = 0, idles = 0;
const t0 = performance.now();
for (let i = 0; i < N; i++) {
  const r = await request("execute_request", {
    code: `console.log(${i}); ${i} * 2`,
    silent: false,
    store_history: true,
    user_expressions: {},
    allow_stdin: false,
    stop_on_error: true,
  });
  ids.add(r.id);
  if (r.content.status === "ok") ok++;
  if (await readIopubUntilIdle(r.id, 10_000)) idles++;
}
const seconds = (performance.now() - t0) / 1000;
const mine = iopub.filter((m) => ids.has(m.parent));
const count = (t) => mine.filter((m) => m.type === t).length;
console.log(
  JSON.stringify({
    subscribed,
    round_trips: ok,
    idles,
    iopub: mine.length,
    status: count("status"),
    execute_input: count("execute_input"),
    stream: count("stream"),
    execute_result: count("execute_result"),
    seconds,
  }),
);
clearTimeout(guard);
kernel.kill("SIGTERM");
dealer.close();
sub.close();
rmSync(dir, { recursive: true, force: true });
process.exit(0);
