/**
 * Vision ops benchmark (issue 14): forward and forward + backward ms of the pooling ops, batchNorm2d and
 * patchify / unpatchify on WebGPU at ResNet-like shapes (N 8, C 64, 56x56 and 28x28). Each timed call ends
 * in one readback (on the software adapter a submit-and-wait costs ~11 ms of every number); the backward
 * call backpropagates sum(y * y0) and reads dx. Before timing, every op's WebGPU output is checked against
 * the cpu path (the float64 reference loops) on the same input; a mismatch stops the benchmark.
 *
 * Run: `deno task bench vision_ops` (about a minute on lavapipe). Prints the table, writes
 * bench/results/vision_ops.json.
 * @module
 */

import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { hasWebGPU } from "../runtime/device.ts";
import { loadAverage, prepareTimer, table, timeInterleaved, writeResult } from "./util.ts";

/** One benchmarked op: a label, the input shape, and the op itself. */
export interface VisionCase {
  label: string;
  shape: [number, number, number, number];
  op: (x: Tensor) => Tensor;
}

/** The cases timed by default. */
export const CASES: VisionCase[] = [
  {
    label: "maxPool2d 3x3 s2 p1, 56",
    shape: [8, 64, 56, 56],
    op: (x) => s.maxPool2d(x, 3, { stride: 2, padding: 1 }),
  },
  { label: "maxPool2d 2x2, 28", shape: [8, 64, 28, 28], op: (x) => s.maxPool2d(x, 2) },
  { label: "avgPool2d 2x2, 56", shape: [8, 64, 56, 56], op: (x) => s.avgPool2d(x, 2) },
  {
    label: "avgPool2d 3x3 s1 p1 excl. pad, 28",
    shape: [8, 64, 28, 28],
    op: (x) => s.avgPool2d(x, 3, { stride: 1, padding: 1, countIncludePad: false }),
  },
  { label: "adaptiveAvgPool2d -> 1, 56", shape: [8, 64, 56, 56], op: (x) => s.adaptiveAvgPool2d(x, 1) },
  { label: "adaptiveAvgPool2d -> 7, 28", shape: [8, 64, 28, 28], op: (x) => s.adaptiveAvgPool2d(x, 7) },
  { label: "batchNorm2d train, 56", shape: [8, 64, 56, 56], op: batchNorm(true) },
  { label: "batchNorm2d train, 28", shape: [8, 64, 28, 28], op: batchNorm(true) },
  { label: "batchNorm2d eval, 56", shape: [8, 64, 56, 56], op: batchNorm(false) },
  { label: "patchify 8x8, 56", shape: [8, 64, 56, 56], op: (x) => s.patchify(x, 8) },
  {
    label: "unpatchify(patchify) 4x4, 28",
    shape: [8, 64, 28, 28],
    op: (x) => s.unpatchify(s.patchify(x, 4), 4, [28, 28]),
  },
];

/** batchNorm2d with affine parameters and running statistics on x's device (made once per device). */
function batchNorm(training: boolean): (x: Tensor) => Tensor {
  const params = new Map<string, Tensor[]>();
  return (x) => {
    let p = params.get(x.device);
    if (!p) {
      const C = x.shape[1], o = { device: x.device };
      p = [s.randn([C], { seed: 3, ...o }), s.randn([C], { seed: 4, ...o }), s.zeros([C], o), s.ones([C], o)]
        .map((t) => s.keep(t));
      params.set(x.device, p);
    }
    const [weight, bias, runningMean, runningVar] = p;
    return s.batchNorm2d(x, { weight, bias, runningMean, runningVar, training });
  };
}

/** One measured case. */
export interface VisionRow {
  label: string;
  shape: number[];
  /** Forward, ms per call (one readback). */
  forwardMs: number;
  /** Forward + backward (dx), ms per call (one readback). */
  trainMs: number;
  /** max |webgpu - cpu reference| of the forward, relative to max |reference|. */
  maxRelDiff: number;
}

/** Runs the benchmark over `cases`; returns the rows and the printed text. Needs WebGPU. */
export async function visionBench(cases: VisionCase[] = CASES): Promise<{ rows: VisionRow[]; text: string }> {
  const rows: VisionRow[] = [];
  for (const c of cases) {
    const xc = s.randn(c.shape, { seed: 1, device: "cpu" });
    const x = await xc.to("webgpu");
    // check before timing: the WebGPU forward against the float64 reference loops (the cpu path)
    const want = await s.noGrad(() => c.op(xc)).toArray();
    const got = await s.noGrad(() => s.tidy(() => c.op(x))).toArray();
    let md = 0, mx = 0;
    for (let i = 0; i < want.length; i++) {
      md = Math.max(md, Math.abs(got[i] - want[i]));
      mx = Math.max(mx, Math.abs(want[i]));
    }
    const maxRelDiff = md / Math.max(mx, 1e-30);
    if (!(maxRelDiff < 1e-4) || got.length !== want.length) {
      throw new Error(
        `bench vision_ops: ${c.label}: webgpu and the reference differ (max relative ${maxRelDiff})`,
      );
    }
    xc.dispose();
    const fwd = await prepareTimer(() => s.noGrad(() => c.op(x)), (y) => y.toArray(), (y) => y.dispose(), {
      trials: 3,
      maxReps: 3,
      trialMs: 200,
    });
    const xg = x.detach();
    xg.requiresGrad = true;
    const train = await prepareTimer(
      () =>
        s.tidy(() => {
          xg.zeroGrad();
          const y = c.op(xg);
          y.mul(y.detach()).sum().backward();
          return s.keep(xg.grad!.add(0)); // one readback of the gradient ends the call
        }),
      (t) => t.toArray(),
      (t) => t.dispose(),
      { trials: 3, maxReps: 3, trialMs: 200 },
    );
    const [forwardMs, trainMs] = await timeInterleaved([fwd, train]);
    xg.zeroGrad();
    x.dispose();
    rows.push({ label: c.label, shape: [...c.shape], forwardMs, trainMs, maxRelDiff });
  }
  const text = table(
    ["op", "x (N, C, H, W)", "forward ms", "fwd + bwd ms", "max rel diff"],
    rows.map((r) => [
      r.label,
      r.shape.join("x"),
      r.forwardMs.toFixed(1),
      r.trainMs.toFixed(1),
      r.maxRelDiff.toExponential(1),
    ]),
  );
  return { rows, text };
}

/** Entry point: prints the adapter, the load average and the table; writes bench/results/vision_ops.json. */
export async function main(): Promise<void> {
  if (!hasWebGPU()) {
    console.log("bench vision_ops: no WebGPU adapter; skipped");
    return;
  }
  const load0 = loadAverage();
  console.log(`adapter: ${s.adapterInfo()}\nload average at start: ${load0 ?? "?"}`);
  const started = new Date().toISOString();
  const { rows, text } = await visionBench();
  const load1 = loadAverage();
  console.log(`\n${text}\nload average at end: ${load1 ?? "?"}`);
  const file = await writeResult("vision_ops", {
    bench: "vision_ops",
    started,
    adapter: s.adapterInfo(),
    deno: Deno.version.deno,
    loadAverage: { start: load0, end: load1 },
    unit: "ms",
    rows,
  });
  console.log(`wrote ${file}`);
}

if (import.meta.main) await main();
