/**
 * MoE benchmark: the grouped path (device-side dispatch table, gather, batched expert matmuls, weighted
 * scatter-add; exact block tables of 16 .. 128 rows, and fixed capacities that may drop choices) against
 * the dense one (every expert on every token) at E 16, K 2, FFN 4D, forward and forward + backward, plus
 * the router's share (router matmul, softmax, topk, moeRouteBlocks). Wall ms per call
 * on webgpu (batches of calls, one readback each), median of interleaved trials.
 *
 * Run: `deno task bench moe [T]` (default T 1024 tokens). Prints the table; writes bench/results/moe.json.
 * @module
 */

import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { hasWebGPU } from "../runtime/device.ts";
import { loadAverage, prepareTimer, table, timeInterleaved, type Timer, writeResult } from "./util.ts";

const E = 16, K = 2;

/** One timed case: a label, its forward and its training-step timers. */
interface Case {
  label: string;
  path: "grouped" | "dense";
  moe: s.MoE;
}

/** Times dense and grouped (exact capacity, then capacity factors 2 and 1.25) at width D over T tokens. */
async function benchWidth(T: number, D: number): Promise<string[][]> {
  const device = "webgpu" as const;
  const x = s.randn([T, D], { seed: 1, device });
  const mk = (o: s.MoEOptions = {}) => new s.MoE(D, 4 * D, E, K, { seed: 2, device, ...o });
  const cases: Case[] = [
    { label: "dense", path: "dense", moe: mk() },
    ...[16, 32, 64, 128].map((B) => ({
      label: `grouped, blocks of ${B}${B === 64 ? " (default)" : ""}`,
      path: "grouped" as const,
      moe: mk({ blockRows: B }),
    })),
    { label: "grouped, capacity 2 (may drop)", path: "grouped", moe: mk({ capacityFactor: 2 }) },
    { label: "grouped, capacity 1.25 (may drop)", path: "grouped", moe: mk({ capacityFactor: 1.25 }) },
  ];
  const timers: Timer[] = [];
  const dropped: number[] = [];
  const opts = { trials: 5, trialMs: 300, maxReps: 10 };
  for (const c of cases) {
    const out = c.moe.forwardAux(x, c.path);
    dropped.push(await out.dropped.item());
    for (const t of Object.values(out)) t.dispose();
    timers.push(
      await prepareTimer(() => s.noGrad(() => c.moe.forwardAux(x, c.path)), (o) => o.y.toArray(), (o) => {
        for (const t of Object.values(o)) t.dispose();
      }, opts),
    );
    timers.push(
      await prepareTimer(
        () => {
          for (const p of c.moe.parameters()) p.zeroGrad();
          return s.tidy(() => {
            const o = c.moe.forwardAux(x, c.path);
            const loss = o.y.sum().add(o.auxLoss);
            loss.backward();
            return loss;
          });
        },
        (l) => l.toArray(),
        (l) => l.dispose(),
        opts,
      ),
    );
  }
  // the router's share: logits, softmax, top-K and the default dispatch table
  const m0 = cases[3].moe;
  timers.push(
    await prepareTimer(
      () =>
        s.noGrad(() =>
          s.tidy(() => {
            const top = s.topk(s.softmax(m0.router.forward(x), -1), K);
            return s.moeRouteBlocks(top.indices, E, 64).counts;
          })
        ),
      (t: Tensor) => t.toArray(),
      (t: Tensor) => t.dispose(),
      opts,
    ),
  );
  const ms = await timeInterleaved(timers);
  const rows = cases.map((c, i) => [
    `D ${D}, F ${4 * D}`,
    c.label,
    ms[2 * i].toFixed(1),
    ms[2 * i + 1].toFixed(1),
    (ms[0] / ms[2 * i]).toFixed(2),
    (ms[1] / ms[2 * i + 1]).toFixed(2),
    String(dropped[i]),
  ]);
  rows.push([
    `D ${D}, F ${4 * D}`,
    "router + topk + moeRouteBlocks",
    ms[ms.length - 1].toFixed(1),
    "-",
    "-",
    "-",
    "-",
  ]);
  for (const c of cases) c.moe.dispose();
  x.dispose();
  return rows;
}

/** `deno task bench moe [T]`: prints the table and writes bench/results/moe.json. */
export async function main(args: string[] = []): Promise<void> {
  if (!hasWebGPU()) throw new Error("bench moe: needs a WebGPU adapter");
  const T = args.length ? Number(args[0]) : 1024;
  const load0 = loadAverage();
  console.log(`adapter: ${s.adapterInfo()}\nload average at start: ${load0 ?? "?"}`);
  const started = new Date().toISOString();
  const rows: string[][] = [];
  for (const D of [64, 128]) rows.push(...await benchWidth(T, D));
  const file = await writeResult("moe", {
    bench: "moe",
    started,
    adapter: s.adapterInfo(),
    loadAverage: { start: load0, end: loadAverage() },
    config: { E, K, T },
    columns: ["width", "path", "fwd ms", "fwd+bwd ms", "fwd x", "fwd+bwd x", "dropped"],
    rows,
  });
  console.log(`wrote ${file}`);
  console.log(
    `\nMoE, E ${E}, top ${K}, T ${T} tokens, f32 on webgpu: wall ms per call (median of interleaved trials)\n` +
      table(["width", "path", "fwd ms", "fwd+bwd ms", "fwd x", "fwd+bwd x", "dropped"], rows) +
      `\n(x: dense's time over this row's; dropped: choices past capacity, of ${T * K})` +
      `\nload average at end: ${loadAverage() ?? "?"}`,
  );
}

if (import.meta.main) await main(Deno.args);
