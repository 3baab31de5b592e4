/**
 * WebGPU under Bun through `bun-webgpu`: the adapter it hands out is used only when it passes the self-test.
 * In one Bun process: imports seqlab (which loads bun-webgpu and tests its adapter), then runs the self-test
 * again on a device of its own from bun-webgpu, and checks that seqlab followed the verdict:
 *
 * - refused (Debian 12's Mesa: Dawn's null backend, whose results are silently wrong): the cpu backend is
 *   the default, `hasWebGPU()` is false, and exactly one notice line gave the reason;
 * - passed: webgpu is the default and a 64 x 64 matmul on it equals the cpu reference within 1e-3.
 *
 * Run: `NODE_PATH=<a node_modules holding bun-webgpu> bun test/bun_webgpu.ts` (test/bun.ts runs it when
 * bun-webgpu resolves). Exits 2 when bun-webgpu is not installed, 1 when a check fails.
 * @module
 */

import process from "node:process";
import { adapterSelfTest } from "../runtime/selftest.ts";

const fail = (why: string): never => {
  console.error(`bun_webgpu: FAILED: ${why}`);
  process.exit(1);
};

// deno-lint-ignore no-explicit-any
if (!(globalThis as any).Bun) fail("run this under Bun");
const name = "bun-webgpu";
try {
  await import(name);
} catch {
  console.error("bun_webgpu: bun-webgpu is not installed (put it on NODE_PATH); nothing checked");
  process.exit(2);
}

const notices: string[] = [];
const error = console.error;
console.error = (...a: unknown[]) => {
  if (typeof a[0] === "string" && a[0].startsWith("seqlab: ")) notices.push(a[0]);
  error(...a);
};
const s = await import("../mod.ts");
console.error = error;

const adapter = await navigator.gpu.requestAdapter();
if (!adapter) fail("bun-webgpu loaded but gave no adapter");
const device = await adapter!.requestDevice();
const verdict = await adapterSelfTest(device);
device.destroy();
const info = adapter!.info;
console.log(`bun-webgpu adapter: ${info.description || info.vendor || info.device || "?"}`);
console.log(`self-test: ${verdict ?? "passed"}`);
console.log(`seqlab: default device ${s.getDevice()}, ${s.adapterInfo()}`);

if (verdict) {
  if (s.hasWebGPU() || s.getDevice() !== "cpu") fail("the adapter failed the self-test but seqlab uses it");
  if (notices.length !== 1) fail(`expected one notice line, got ${notices.length}: ${notices.join(" | ")}`);
  if (!notices[0].includes("failed the WebGPU self-test")) fail(`the notice does not say why: ${notices[0]}`);
  console.log(`ok: refused with one notice: ${notices[0]}`);
} else {
  if (!s.hasWebGPU() || s.getDevice() !== "webgpu") {
    fail("the adapter passed the self-test but seqlab left it");
  }
  const a = s.randn([64, 64], { seed: 1 }), b = s.randn([64, 64], { seed: 2 });
  const got = Array.from(await a.matmul(b).toArray());
  const want = await (await a.to("cpu")).matmul(await b.to("cpu")).toArray();
  const err = got.reduce((m, v, i) => Math.max(m, Math.abs(v - want[i])), 0);
  if (!(err < 1e-3)) fail(`matmul on bun-webgpu's adapter is off by ${err}`);
  console.log(`ok: used, and a matmul agrees with the cpu reference (max error ${err.toExponential(2)})`);
}
