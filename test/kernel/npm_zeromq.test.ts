/**
 * npm `zeromq` under Node as an independent peer: 300 execute round trips with every iopub message
 * (busy, execute_input, stream, execute_result, idle) accounted for.
 */
import { expect, test } from "vitest";
import { HERE, ROOT, run } from "./harness.ts";

const SPEC = "npm:zeromq@6.8.0";
const PKG = `${ROOT}/node_modules/.deno/zeromq@6.8.0/node_modules/zeromq`;

test("npm zeromq (Node) drives the kernel: 300 round trips, 1500 of 1500 iopub messages", async () => {
  const have = () => {
    try {
      return Deno.statSync(`${PKG}/package.json`).isFile;
    } catch {
      return false;
    }
  };
  // A test-only peer, so not in deno.json's imports (the plain `deno install` would fetch it, 34 MB, and
  // warn about its ignored build script): fetched here into node_modules by its pinned specifier. --no-lock
  // keeps it out of deno.lock, whose every entry `deno install` fetches too.
  if (!have()) {
    const r = await run(Deno.execPath(), ["cache", "--no-lock", SPEC], { timeoutMs: 120_000 });
    expect(r.code, r.stderr.slice(-2000)).toBe(0);
  }
  expect(have(), `npm zeromq missing at ${PKG}`).toBe(true);
  const r = await run("node", [`${HERE}/npm_zeromq_peer.mjs`, PKG, Deno.execPath(), ROOT, "300"], {
    timeoutMs: 150_000,
  });
  expect(r.code, r.stderr.slice(-2000)).toBe(0);
  const d = JSON.parse(r.stdout);
  expect(d).toMatchObject({
    subscribed: true,
    round_trips: 300,
    idles: 300,
    iopub: 1500,
    status: 600,
    execute_input: 300,
    stream: 300,
    execute_result: 300,
  });
}, 160_000);
