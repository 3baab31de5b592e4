/**
 * Language-model training steps and native memory over long runs (part of `deno task bench train`).
 *
 * - `lmSteps`: one AdamW step (cross-entropy, one loss readback per step) of a TransformerLM (vocab 64,
 *   d 64, 2 layers, 4 heads) and a MambaLM (d 64, 2 layers), B 8, T 256: the median step time over
 *   timed steps, dispatches and submits per step (target: 1 submit, the loss readback); then the same
 *   steps through `trainStep` (the loss read back while backward runs).
 * - `rssRun`: process RSS sampled every 100 steps over a long run (a small TransformerLM, an MLP) beside
 *   the memory ledger: native memory the ledger does not see (bind groups, encoders) shows up here.
 *
 * Run alone: `deno run -A bench/train_lm.ts [lm|rss] [steps]`.
 * @module
 */

import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { gpu, hasWebGPU } from "../runtime/device.ts";
import { loadAverage, median, table } from "./util.ts";
import { makeLm, trainer } from "./lm_trainer.ts";

/** One model's step measurement. */
export interface LmRow {
  model: string;
  params: number;
  steps: number;
  msPerStepMedian: number;
  msPerStepMin: number;
  /**
   * The same steps through `trainStep`, which starts the loss readback as soon as the forward pass has
   * computed it (Deno's mapAsync resolves 10 ms after the work it waits for, a timer sleep after its
   * device poll; the backward pass and the update are recorded and run meanwhile). Each step has its loss
   * in hand before the next starts, but its backward may still be running, so single steps alternate
   * short and long: this is the whole run's time (to the last step's work done) over its steps.
   */
  msPerStepTrainStep: number;
  dispatchesPerStep: number;
  submitsPerStep: number;
  readbacksPerStep: number;
  finalLoss: number;
}

/** A long run's RSS samples. */
export interface RssRow {
  model: string;
  steps: number;
  /** [step, rss MiB, ledger bytesInUse MiB, pooled MiB] every 100 steps. */
  samples: [number, number, number, number][];
  /** RSS growth from step 100 to the end, MiB. */
  growthMiB: number;
}

const B = 8, T = 256, V = 64;

/** A trainer for the bench's TransformerLM or MambaLM (B 8, T 256, vocab 64); dispose frees the model too. */
export function stepTrainer(kind: "transformer" | "mamba"): { step: () => Tensor; dispose: () => void } {
  const lm = makeLm(s, kind);
  const tr = trainer(s, lm, B, T, V);
  return { step: tr.step, dispose: () => (tr.dispose(), lm.dispose()) };
}

/** The MNIST-sized MLP trainer (784-128-10, Adam, batch 128) on fixed random input. */
export function mlpTrainer(): { step: () => Tensor; dispose: () => void } {
  const net = new s.Sequential(
    new s.Linear(784, 128, { seed: 1, device: "webgpu" }),
    new s.ReLU(),
    new s.Linear(128, 10, { seed: 2, device: "webgpu" }),
  );
  const opt = new s.Adam(net.parameters(), { lr: 1e-3 });
  const x = s.randn([128, 784], { seed: 3, device: "webgpu" });
  const y = s.tensor(Int32Array.from({ length: 128 }, (_, i) => i % 10), { dtype: "i32", device: "webgpu" });
  return {
    step: () =>
      s.tidy(() => {
        opt.zeroGrad();
        const l = s.crossEntropy(net.forward(x), y);
        l.backward();
        opt.step();
        return l;
      }),
    dispose: () => (opt.dispose(), net.dispose(), x.dispose(), y.dispose()),
  };
}

/** Times `steps` AdamW steps of each LM (after 3 warm-up steps), reading the loss every step. */
export async function lmSteps(steps = 10): Promise<LmRow[]> {
  const rows: LmRow[] = [];
  for (const kind of ["transformer", "mamba"] as const) {
    const lm = makeLm(s, kind);
    const tr = trainer(s, lm, B, T, V);
    for (let i = 0; i < 3; i++) {
      const l = tr.step();
      await l.item();
      l.dispose();
    }
    await gpu().sync();
    const c0 = { ...gpu().counters };
    const times: number[] = [];
    let finalLoss = NaN;
    for (let i = 0; i < steps; i++) {
      const t0 = performance.now();
      const l = tr.step();
      finalLoss = await l.item();
      times.push(performance.now() - t0);
      l.dispose();
    }
    const c1 = { ...gpu().counters };
    await gpu().sync();
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) await tr.trainStep!();
    await gpu().sync();
    const early = (performance.now() - t0) / steps;
    rows.push({
      model: kind === "transformer"
        ? `TransformerLM V${V} d64 L2 H4, B${B} T${T}`
        : `MambaLM V${V} d64 L2, B${B} T${T}`,
      params: lm.parameters().reduce((a, p) => a + p.size, 0),
      steps,
      msPerStepMedian: median(times),
      msPerStepMin: Math.min(...times),
      msPerStepTrainStep: early,
      dispatchesPerStep: (c1.dispatches - c0.dispatches) / steps,
      submitsPerStep: (c1.submits - c0.submits) / steps,
      readbacksPerStep: (c1.readbacks - c0.readbacks) / steps,
      finalLoss,
    });
    tr.dispose();
    lm.dispose();
  }
  return rows;
}

const MiB = 2 ** 20;

/** RSS every 100 steps over `steps` steps of a small TransformerLM and an MLP (loss read every step). */
export async function rssRun(steps = 2000): Promise<RssRow[]> {
  const rows: RssRow[] = [];
  const models: [string, () => { step: () => Tensor; dispose: () => void }][] = [
    ["TransformerLM V32 d32 L2 H4, B4 T64", () => {
      const lm = makeLm(s, "transformer", 32, 32);
      const tr = trainer(s, lm, 4, 64, 32);
      return { step: tr.step, dispose: () => (tr.dispose(), lm.dispose()) };
    }],
    ["MLP 784-128-10, Adam, B128", mlpTrainer],
  ];
  for (const [name, make] of models) {
    const m = make();
    const samples: [number, number, number, number][] = [];
    for (let i = 1; i <= steps; i++) {
      const l = m.step();
      await l.item();
      l.dispose();
      if (i % 100 === 0) {
        const mem = s.memory("webgpu");
        samples.push([i, Deno.memoryUsage().rss / MiB, mem.bytesInUse / MiB, mem.pooledBytes / MiB]);
      }
    }
    m.dispose();
    const first = samples[0]?.[1] ?? 0, last = samples.at(-1)?.[1] ?? 0;
    rows.push({ model: name, steps, samples, growthMiB: last - first });
  }
  return rows;
}

/** Prints the LM step table. */
export function lmTable(rows: LmRow[]): string {
  return table(
    [
      "model",
      "params",
      "ms/step (median)",
      "min",
      "trainStep (run / steps)",
      "dispatches/step",
      "submits/step",
      "final loss",
    ],
    rows.map((r) => [
      r.model,
      String(r.params),
      r.msPerStepMedian.toFixed(1),
      r.msPerStepMin.toFixed(1),
      r.msPerStepTrainStep.toFixed(1),
      r.dispatchesPerStep.toFixed(0),
      r.submitsPerStep.toFixed(2),
      r.finalLoss.toFixed(3),
    ]),
  );
}

/** Prints the RSS table. */
export function rssTable(rows: RssRow[]): string {
  return table(
    ["model", "steps", "RSS at 100 (MiB)", "RSS at end", "growth", "ledger in use", "pooled"],
    rows.map((r) => {
      const a = r.samples[0], z = r.samples.at(-1)!;
      return [
        r.model,
        String(r.steps),
        a[1].toFixed(0),
        z[1].toFixed(0),
        r.growthMiB.toFixed(0),
        z[2].toFixed(2),
        z[3].toFixed(2),
      ];
    }),
  );
}

if (import.meta.main) {
  if (!hasWebGPU()) throw new Error("bench train_lm: needs a WebGPU adapter");
  const mode = Deno.args[0] ?? "lm";
  const n = Deno.args[1] ? Number(Deno.args[1]) : undefined;
  console.log(`load average at start: ${loadAverage()}`);
  if (mode === "lm") console.log(lmTable(await lmSteps(n)));
  else if (mode === "rss") console.log(rssTable(await rssRun(n)));
  else throw new Error(`bench train_lm: unknown mode ${mode}; lm or rss`);
  console.log(`load average at end: ${loadAverage()}`);
}
