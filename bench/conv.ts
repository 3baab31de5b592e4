/**
 * Convolution benchmark (issue 14): seqlab's `conv2d` (im2col v2 + texture matmul) against
 * tfjs-backend-webgpu's `conv2d` in the same process, on ResNet-like shapes at batch 8: 3x3 convolutions at
 * 56, 28 and 14 pixels, a stride-2 downsampling, a 1x1 expansion, a depthwise 3x3 and a 7x7 stride-2 stem.
 * Forward GFLOP/s (2 N O OH OW C/groups KH KW useful FLOPs per call; each call ends in a readback of its
 * output, both libraries alike), median of interleaved trials; seqlab's forward + backward beside it.
 * Before timing, both outputs are checked against each other (tfjs in NHWC with HWIO weights, seqlab in
 * NCHW with OIHW weights: the same numbers transposed). Target: seqlab at least 2x tfjs's GFLOP/s on
 * every shape.
 *
 * Run: `deno task bench conv`. Prints the table, writes bench/results/conv.json. tfjs comes from npm
 * (`@tensorflow/tfjs-core`, `@tensorflow/tfjs-backend-webgpu`, fetched when the bench runs, as bench/matmul.ts
 * does; `deno install` does not install them).
 * @module
 */

import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { hasWebGPU } from "../runtime/device.ts";
import { loadAverage, median, prepareTimer, table, timeInterleaved, verdict, writeResult } from "./util.ts";

/** One shape: x (N, C, H, W), O outputs, a K x K kernel. */
export interface ConvShape {
  label: string;
  N: number;
  C: number;
  H: number;
  O: number;
  K: number;
  stride: number;
  groups: number;
}

/** The shapes timed by default. */
export const SHAPES: ConvShape[] = [
  { label: "3x3 at 56", N: 8, C: 64, H: 56, O: 64, K: 3, stride: 1, groups: 1 },
  { label: "3x3 at 28", N: 8, C: 128, H: 28, O: 128, K: 3, stride: 1, groups: 1 },
  { label: "3x3 at 14", N: 8, C: 256, H: 14, O: 256, K: 3, stride: 1, groups: 1 },
  { label: "3x3 stride 2", N: 8, C: 64, H: 56, O: 128, K: 3, stride: 2, groups: 1 },
  { label: "1x1 expand", N: 8, C: 64, H: 28, O: 256, K: 1, stride: 1, groups: 1 },
  { label: "depthwise 3x3", N: 8, C: 128, H: 28, O: 128, K: 3, stride: 1, groups: 128 },
  { label: "7x7 stem, stride 2", N: 8, C: 3, H: 112, O: 64, K: 7, stride: 2, groups: 1 },
];

/** One measured shape. */
export interface ConvRow extends ConvShape {
  gflop: number;
  seqlabMs: number;
  tfjsMs: number | null;
  seqlabGflops: number;
  tfjsGflops: number | null;
  /** seqlab forward + backward (dx, dw), ms. */
  seqlabTrainMs: number;
  /** max |seqlab - tfjs| over the output, relative to max |output|. */
  maxRelDiff: number | null;
}

// deno-lint-ignore no-explicit-any
type Tf = any;

/** tfjs with its WebGPU backend, or the reason it could not load. */
async function loadTf(): Promise<Tf | string> {
  try {
    // a bench-only peer: pinned npm: specifiers, not deno.json imports (deno install does not fetch it)
    // deno-lint-ignore no-import-prefix
    const tf = await import("npm:@tensorflow/tfjs-core@4.22.0");
    // deno-lint-ignore no-import-prefix
    await import("npm:@tensorflow/tfjs-backend-webgpu@4.22.0");
    if (!(await tf.setBackend("webgpu"))) return "tfjs: the webgpu backend did not initialise";
    await tf.ready();
    return tf;
  } catch (e) {
    return `tfjs could not load: ${(e as Error).message}`;
  }
}

/** Runs the benchmark over `shapes`; returns the rows and the printed text. Needs WebGPU. */
export async function convBench(shapes: ConvShape[] = SHAPES): Promise<{ rows: ConvRow[]; text: string }> {
  const tf = await loadTf();
  const notes: string[] = [];
  if (typeof tf === "string") notes.push(tf);
  const rows: ConvRow[] = [];
  for (const sh of shapes) {
    const { N, C, H, O, K, stride, groups } = sh;
    const pad = Math.floor(K / 2);
    const x = s.randn([N, C, H, H], { seed: 1, device: "webgpu" });
    const w = s.randn([O, C / groups, K, K], { seed: 2, device: "webgpu", std: 0.1 });
    const g = s.conv2dGeometry(x.shape, w.shape, { stride, padding: pad, groups });
    const gflop = (2 * N * O * g.OH * g.OW * (C / groups) * K * K) / 1e9;
    const ours = () => s.conv2d(x, w, { stride, padding: pad, groups });
    const timers = [
      await prepareTimer(ours, (y) => y.toArray(), (y) => y.dispose(), { trials: 5, maxReps: 5 }),
    ];
    // forward + backward of sum(y * y0): dx and dw
    const xg = x.detach(), wg = w.detach();
    xg.requiresGrad = true;
    wg.requiresGrad = true;
    timers.push(
      await prepareTimer(
        () =>
          s.tidy(() => {
            xg.zeroGrad();
            wg.zeroGrad();
            const y = s.conv2d(xg, wg, { stride, padding: pad, groups });
            y.mul(y).sum().backward();
            return s.keep(xg.grad!.add(0)); // one readback of a gradient ends the call
          }),
        (t) => t.toArray(),
        (t) => t.dispose(),
        { trials: 5, maxReps: 3 },
      ),
    );
    let maxRelDiff: number | null = null;
    let tfTensors: Tf[] = [];
    if (typeof tf !== "string") {
      const xh = await x.toArray(), wh = await w.toArray();
      // NCHW -> NHWC; OIHW -> HWIO (depthwise: HW C 1)
      const tx = tf.transpose(tf.tensor4d(Float32Array.from(xh), [N, C, H, H]), [0, 2, 3, 1]);
      const tw = groups === 1
        ? tf.transpose(tf.tensor4d(Float32Array.from(wh), [O, C, K, K]), [2, 3, 1, 0])
        : tf.transpose(tf.tensor4d(Float32Array.from(wh), [C, 1, K, K]), [2, 3, 0, 1]);
      tfTensors = [tx, tw];
      const theirs = () =>
        groups === 1
          ? tf.conv2d(tx, tw, stride, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
          : tf.depthwiseConv2d(tx, tw, stride, [[0, 0], [pad, pad], [pad, pad], [0, 0]]);
      const yt = theirs();
      const a = await tf.transpose(yt, [0, 3, 1, 2]).data();
      yt.dispose();
      const y = ours();
      const b = await y.toArray();
      y.dispose();
      let md = 0, mx = 0;
      for (let i = 0; i < b.length; i++) {
        md = Math.max(md, Math.abs(a[i] - b[i]));
        mx = Math.max(mx, Math.abs(b[i]));
      }
      maxRelDiff = md / Math.max(mx, 1e-30);
      if (!(maxRelDiff < 1e-4)) {
        throw new Error(
          `bench conv: ${sh.label}: seqlab and tfjs differ (max relative difference ${maxRelDiff})`,
        );
      }
      timers.push(
        await prepareTimer(theirs, (t: Tf) => t.data(), (t: Tf) => t.dispose(), { trials: 5, maxReps: 5 }),
      );
    }
    const [ms, trainMs, tfMs] = await timeInterleaved(timers);
    for (const t of [x, w, xg, wg] as Tensor[]) t.dispose();
    for (const t of tfTensors) t.dispose();
    const row: ConvRow = {
      ...sh,
      gflop,
      seqlabMs: ms,
      tfjsMs: tfMs ?? null,
      seqlabGflops: gflop / (ms / 1000),
      tfjsGflops: tfMs ? gflop / (tfMs / 1000) : null,
      seqlabTrainMs: trainMs,
      maxRelDiff,
    };
    rows.push(row);
    console.log(
      `  ${sh.label}: seqlab ${row.seqlabGflops.toFixed(1)} GFLOP/s` +
        (row.tfjsGflops ? `, tfjs ${row.tfjsGflops.toFixed(1)} GFLOP/s` : ""),
    );
  }
  const ratios = rows.filter((r) => r.tfjsGflops).map((r) => r.seqlabGflops / r.tfjsGflops!);
  const text = [
    `conv2d forward, seqlab (im2col + texture matmul, NCHW) vs tfjs-backend-webgpu (NHWC), same process; ` +
    `GFLOP/s = useful FLOPs / wall time per call including one readback; median of interleaved trials`,
    table(
      [
        "shape",
        "x (N, C, H, W)",
        "w (O, C/g, K, K)",
        "stride",
        "GFLOP",
        "seqlab ms",
        "tfjs ms",
        "seqlab GFLOP/s",
        "tfjs GFLOP/s",
        "ratio",
        "seqlab fwd+bwd ms",
      ],
      rows.map((r) => [
        r.label,
        `${r.N}, ${r.C}, ${r.H}, ${r.H}`,
        `${r.O}, ${r.C / r.groups}, ${r.K}, ${r.K}`,
        `${r.stride}`,
        r.gflop.toFixed(3),
        r.seqlabMs.toFixed(1),
        r.tfjsMs?.toFixed(1) ?? "-",
        r.seqlabGflops.toFixed(2),
        r.tfjsGflops?.toFixed(2) ?? "-",
        r.tfjsGflops ? `${(r.seqlabGflops / r.tfjsGflops).toFixed(2)}x` : "-",
        r.seqlabTrainMs.toFixed(1),
      ]),
    ),
    ...notes,
    `\ntarget: seqlab >= 2x tfjs's GFLOP/s on every shape: ${
      ratios.length === rows.length
        ? `${Math.min(...ratios).toFixed(2)}x at worst, median ${median(ratios).toFixed(2)}x, ${
          verdict(Math.min(...ratios) >= 2)
        }`
        : verdict(null)
    }`,
  ].join("\n");
  return { rows, text };
}

/** `deno task bench conv`. */
export async function main(_args: string[] = []): Promise<void> {
  if (!hasWebGPU()) {
    console.log("bench conv: no WebGPU adapter; skipped");
    return;
  }
  const load0 = loadAverage();
  console.log(`adapter: ${s.adapterInfo()}\nload average at start: ${load0 ?? "?"}`);
  const started = new Date().toISOString();
  const r = await convBench();
  const load1 = loadAverage();
  console.log(`\n${r.text}\nload average at end: ${load1 ?? "?"}`);
  const file = await writeResult("conv", {
    bench: "conv",
    started,
    adapter: s.adapterInfo(),
    deno: Deno.version.deno,
    loadAverage: { start: load0, end: load1 },
    unit: "GFLOP/s",
    rows: r.rows,
  });
  console.log(`wrote ${file}`);
}

if (import.meta.main) await main(Deno.args);
