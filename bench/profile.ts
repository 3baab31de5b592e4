/**
 * `deno task bench profile`: device time per op over a few training steps of the LMs and the MLP in
 * `deno task bench train`, from timestamp queries (each dispatch timed in its own pass). Shows where a
 * step's time goes: which ops to fuse or speed up. Needs an adapter with `timestamp-query`.
 *
 * Run alone: `deno run -A bench/profile.ts [steps]`.
 * @module
 */

import { gpu, hasWebGPU } from "../runtime/device.ts";
import { table } from "./util.ts";
import { mlpTrainer, stepTrainer } from "./train_lm.ts";

/** Profiles `steps` steps (after 3 warm-up steps) of each model and prints the per-op table. */
export async function main(args: string[] = []): Promise<void> {
  if (!(await hasWebGPU())) {
    console.log("profile: no WebGPU adapter; skipped");
    return;
  }
  const steps = Number(args.find((a) => !Number.isNaN(Number(a))) ?? 3);
  const models = [
    ["TransformerLM", () => stepTrainer("transformer")],
    ["MambaLM", () => stepTrainer("mamba")],
    ["MLP", () => mlpTrainer()],
  ] as const;
  for (const [name, make] of models) {
    const tr = make();
    for (let i = 0; i < 3; i++) {
      const l = tr.step();
      await l.item();
      l.dispose();
    }
    gpu().profileDetail = args.includes("detail");
    gpu().startProfile();
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) {
      const l = tr.step();
      await l.item();
      l.dispose();
    }
    const wall = (performance.now() - t0) / steps;
    const rows = await gpu().stopProfile();
    tr.dispose();
    const total = rows.reduce((a, r) => a + r.ms, 0) / steps;
    const n = rows.reduce((a, r) => a + r.dispatches, 0) / steps;
    console.log(
      `\n${name}: ${wall.toFixed(1)} ms/step profiled wall, ${total.toFixed(1)} ms in ${n} timed dispatches`,
    );
    console.log(table(
      ["op", "dispatches/step", "ms/step", "share"],
      rows.slice(0, args.includes("detail") ? 60 : 25).map((r) => [
        r.op,
        (r.dispatches / steps).toFixed(0),
        (r.ms / steps).toFixed(2),
        `${(100 * r.ms / steps / total).toFixed(1)}%`,
      ]),
    ));
  }
}

if (import.meta.main) await main(Deno.args);
