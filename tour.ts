/**
 * The tour: what a newcomer runs first. Prints the adapter, multiplies two matrices on it, checks the
 * product against the float64 reference backend, and prints a small benchmark table.
 * Run: `npx -y deno@2.9.6 task tour`
 * @module
 */

import * as s from "./mod.ts";
import { matmulTable } from "./bench/matmul.ts";

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

// 2. the benchmark table (`deno task bench` runs every size and shader version)
if (s.hasWebGPU()) {
  const table = await matmulTable([256, 512, 1024], {
    versions: ["auto", "v1"],
    maxSeconds: 5,
    peerMaxSeconds: 5,
    trials: 3,
  });
  console.log(
    `\nmatmul GFLOP/s (auto = seqlab's pick, v1 = a naive one-thread-per-output shader)\n${table.text}`,
  );
}
console.log(`\nmemory on ${s.getDevice()}:`, s.memory(s.getDevice()));
