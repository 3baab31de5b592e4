/**
 * The LM steps against issue 11's baseline commit in the same hour (`deno task bench train baseline`).
 *
 * The host's speed drifts with other tenants: the same code's step time moves by up to 1.7x between
 * processes and 1.5x between hours, so an absolute target (115 ms, 3x the 340 ms measured when the issue
 * was filed) says as much about the hour as about the code. This checks out the baseline commit into a
 * temporary git worktree and runs it and this checkout alternately, one process each per pair, the same
 * training step (TransformerLM and MambaLM, B 8, T 256, AdamW, cross-entropy, the loss read every step),
 * and reports the per-pair speed-ups: the blocking loop (step, then `await loss.item()`) and `trainStep`.
 *
 * Needs git and the repository's history (a full clone). One pair process: `deno run -A bench/train_baseline.ts
 * pair ROOT KIND STEPS` prints one JSON line.
 * @module
 */

import { median, table } from "./util.ts";
import { makeLm, trainer } from "./lm_trainer.ts";

/** Issue 11's baseline commit (its LM steps: 367.5 and 381.0 ms in its own bench run, 340 / 329 filed). */
export const BASELINE_COMMIT = "8823ec6";

/** One process's measurement. */
export interface PairRun {
  root: string;
  kind: "transformer" | "mamba";
  /** Median step of the blocking loop, ms. */
  blocking: number;
  /** `trainStep`: the run's time over its steps, ms (absent in the baseline, which has no trainStep). */
  trainStep?: number;
}

/** The speed-ups of one model over the pairs. */
export interface BaselineRow {
  kind: "transformer" | "mamba";
  pairs: number;
  baselineMs: number[];
  blockingMs: number[];
  trainStepMs: number[];
  /** Per-pair baseline / ours, then their median. */
  blockingSpeedup: number;
  trainStepSpeedup: number;
  blockingSpeedupMin: number;
  trainStepSpeedupMin: number;
}

/** Runs in this process: `steps` blocking steps, then `steps` trainSteps, of the model in `root`. */
async function pair(root: string, kind: "transformer" | "mamba", steps: number): Promise<PairRun> {
  const mod = await import(new URL(`${root}/mod.ts`, "file:///").href);
  const { gpu } = await import(new URL(`${root}/runtime/device.ts`, "file:///").href);
  const lm = makeLm(mod, kind);
  const tr = trainer(mod, lm, 8, 256, 64);
  const step = async () => {
    const l = tr.step();
    await l.item();
    l.dispose();
  };
  for (let i = 0; i < 3; i++) await step();
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    await step();
    times.push(performance.now() - t0);
  }
  const out: PairRun = { root, kind, blocking: median(times) };
  if (tr.trainStep) {
    for (let i = 0; i < 2; i++) await tr.trainStep();
    await gpu().sync();
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) await tr.trainStep();
    await gpu().sync();
    out.trainStep = (performance.now() - t0) / steps;
  }
  return out;
}

async function git(args: string[], cwd: string): Promise<string> {
  const r = await new Deno.Command("git", { args, cwd, stdout: "piped", stderr: "piped" }).output();
  if (!r.success) throw new Error(`git ${args.join(" ")}: ${new TextDecoder().decode(r.stderr).trim()}`);
  return new TextDecoder().decode(r.stdout).trim();
}

async function runPair(root: string, kind: string, steps: number): Promise<PairRun> {
  const self = new URL(import.meta.url).pathname;
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-lock", self, "pair", root, kind, String(steps)],
    stdout: "piped",
    stderr: "null",
  }).output();
  const line = new TextDecoder().decode(r.stdout).trim().split("\n").at(-1) ?? "";
  if (!r.success || !line.startsWith("{")) throw new Error(`bench train baseline: the ${root} run failed`);
  return JSON.parse(line);
}

/**
 * Alternates the baseline commit and this checkout, `pairs` processes each per model (baseline first in
 * each pair), and returns the speed-ups. The worktree is removed afterwards.
 */
export async function baselineComparison(
  pairs = 4,
  steps = 8,
): Promise<{ rows: BaselineRow[]; text: string }> {
  const here = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
  const top = await git(["rev-parse", "--show-toplevel"], here);
  const wt = await Deno.makeTempDir({ prefix: "seqlab-baseline-" });
  await git(["worktree", "add", "--detach", "--force", wt, BASELINE_COMMIT], top);
  const rows: BaselineRow[] = [];
  try {
    for (const kind of ["transformer", "mamba"] as const) {
      const base: number[] = [], blocking: number[] = [], early: number[] = [];
      for (let i = 0; i < pairs; i++) {
        base.push((await runPair(wt, kind, steps)).blocking);
        const ours = await runPair(here, kind, steps + 4);
        blocking.push(ours.blocking);
        early.push(ours.trainStep!);
      }
      const sb = base.map((b, i) => b / blocking[i]), st = base.map((b, i) => b / early[i]);
      rows.push({
        kind,
        pairs,
        baselineMs: base,
        blockingMs: blocking,
        trainStepMs: early,
        blockingSpeedup: median(sb),
        trainStepSpeedup: median(st),
        blockingSpeedupMin: Math.min(...sb),
        trainStepSpeedupMin: Math.min(...st),
      });
    }
  } finally {
    await git(["worktree", "remove", "--force", wt], top).catch(() => Deno.remove(wt, { recursive: true }));
  }
  const ms = (xs: number[]) =>
    `${median(xs).toFixed(0)} (${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)})`;
  const text = [
    `issue 11's baseline (${BASELINE_COMMIT}) and this checkout alternately, one process each, ${pairs} pairs per model ` +
    "(median step ms, range; speed-up = median of the pairs' ratios, min)",
    table(
      ["model", "baseline", "now, blocking", "speed-up", "now, trainStep", "speed-up"],
      rows.map((r) => [
        r.kind === "transformer" ? "TransformerLM V64 d64 L2 H4, B8 T256" : "MambaLM V64 d64 L2, B8 T256",
        ms(r.baselineMs),
        ms(r.blockingMs),
        `${r.blockingSpeedup.toFixed(2)}x (min ${r.blockingSpeedupMin.toFixed(2)})`,
        ms(r.trainStepMs),
        `${r.trainStepSpeedup.toFixed(2)}x (min ${r.trainStepSpeedupMin.toFixed(2)})`,
      ]),
    ),
  ].join("\n");
  return { rows, text };
}

if (import.meta.main && Deno.args[0] === "pair") {
  const [, root, kind, steps] = Deno.args;
  console.log(JSON.stringify(await pair(root, kind as "transformer" | "mamba", Number(steps))));
}
