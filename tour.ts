/**
 * The tour: what a newcomer runs first. Prints the adapter, multiplies two matrices on it, checks the
 * product against the float64 reference backend, and prints a small benchmark table.
 * Run: `npx -y deno@2.9.6 task tour`
 * @module
 */

import * as s from "./mod.ts";
import { matmulWith } from "./ops/core/matmul.ts";

console.log(`seqlab tour\nadapter: ${s.adapterInfo()}\ndefault device: ${s.getDevice()}\n`);

// 1. a matmul on the default device, checked against the cpu reference (float64 accumulation)
const N = 512;
const a = s.randn([N, N], { seed: 1 }), b = s.randn([N, N], { seed: 2 });
const c = a.matmul(b);
const [ca, cb] = [await a.to("cpu"), await b.to("cpu")];
const ref = ca.matmul(cb);
const got = await c.toArray(), want = await ref.toArray();
let maxErr = 0;
for (let i = 0; i < got.length; i++) maxErr = Math.max(maxErr, Math.abs(got[i] - want[i]));
console.log(`matmul ${N}x${N} on ${c.device}: max |error| vs the cpu reference = ${maxErr.toExponential(2)}`);
const corner = c.slice([[0, 2], [0, 4]]); // a view: shares c's storage
console.log(await corner.format());
corner.dispose();
if (!(maxErr < 1e-3)) throw new Error(`tour: matmul disagrees with the reference (max error ${maxErr})`);
for (const t of [a, b, c, ca, cb, ref]) t.dispose();

// 2. a benchmark table (the full one, with tfjs-backend-webgpu beside ours: `deno task bench`)
async function gflops(n: number, device: s.DeviceName, version: "auto" | "v1"): Promise<number> {
  const x = s.randn([n, n], { seed: 3, device }), y = s.randn([n, n], { seed: 4, device });
  const warm = matmulWith(x, y, version);
  await warm.toArray();
  warm.dispose();
  const reps = device === "cpu" ? 1 : 3;
  const t0 = performance.now();
  let z: s.Tensor | null = null;
  for (let i = 0; i < reps; i++) {
    z?.dispose();
    z = matmulWith(x, y, version);
  }
  await z!.toArray();
  const ms = (performance.now() - t0) / reps;
  for (const t of [x, y, z!]) t.dispose();
  return (2 * n ** 3) / (ms * 1e6);
}

if (s.hasWebGPU()) {
  console.log("\nmatmul GFLOP/s (a quick look; `deno task bench` for medians and tfjs)");
  console.log("   N   seqlab webgpu   naive webgpu   cpu reference");
  for (const n of [256, 512, 1024]) {
    const ours = await gflops(n, "webgpu", "auto");
    const naive = n <= 512 ? (await gflops(n, "webgpu", "v1")).toFixed(2) : "-";
    const cpu = n <= 512 ? (await gflops(n, "cpu", "auto")).toFixed(2) : "-";
    console.log(
      `${String(n).padStart(4)}   ${ours.toFixed(2).padStart(13)}   ${naive.padStart(12)}   ${
        cpu.padStart(13)
      }`,
    );
  }
}
console.log(`\nmemory on ${s.getDevice()}:`, s.memory(s.getDevice()));
