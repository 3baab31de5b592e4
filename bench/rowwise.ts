/**
 * Row-wise ops benchmark: softmax and layerNorm throughput in GB/s (bytes read + written per second) on
 * both backends, over a few row counts and widths; layerNorm's backward v1 against v2 on webgpu.
 *
 * Run: `deno task bench rowwise` (prints the table, writes bench/results/rowwise.json).
 * @module
 */

import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { hasWebGPU } from "../runtime/device.ts";
import { normBackwardLimits } from "../ops/core/rowwise.ts";
import { loadAverage, prepareTimer, table, timeInterleaved, type Timer, writeResult } from "./util.ts";

/** [rows, D]: short and long rows, one large. */
const SHAPES = [[1024, 1024], [4096, 1024], [256, 8192], [16384, 256]];

/** One measurement. */
export interface RowwiseRow {
  op: "softmax" | "layerNorm";
  shape: number[];
  device: s.DeviceName;
  ms: number;
  gbps: number;
}

/** Times softmax (last axis) and layerNorm (with weight and bias) at each shape on each device. */
export async function rowwiseTable(shapes = SHAPES): Promise<{ rows: RowwiseRow[]; text: string }> {
  const devices: s.DeviceName[] = hasWebGPU() ? ["webgpu", "cpu"] : ["cpu"];
  const rows: RowwiseRow[] = [];
  for (const shape of shapes) {
    const [R, D] = shape;
    // every (op, device) of this shape is prepared, then timed in interleaved trials
    const cells: { op: RowwiseRow["op"]; device: s.DeviceName; bytes: number; timer: Timer }[] = [];
    const inputs: Tensor[] = [];
    for (const device of devices) {
      const x = s.randn(shape, { seed: 1, device }), w = s.randn([D], { seed: 2, device });
      const b = s.randn([D], { seed: 3, device });
      inputs.push(x, w, b);
      const ops: [RowwiseRow["op"], () => Tensor, number][] = [
        ["softmax", () => s.softmax(x, -1), 2 * R * D * 4],
        ["layerNorm", () => s.layerNorm(x, w, b), (2 * R * D + 2 * D) * 4],
      ];
      for (const [op, f, bytes] of ops) {
        const timer = await prepareTimer(f, (t) => t.toArray(), (t) => t.dispose(), {
          trials: device === "cpu" ? 3 : 5,
          trialMs: 200,
        });
        cells.push({ op, device, bytes, timer });
      }
    }
    const ms = await timeInterleaved(cells.map((c) => c.timer));
    cells.forEach(({ op, device, bytes }, i) =>
      rows.push({ op, shape, device, ms: ms[i], gbps: bytes / (ms[i] * 1e6) })
    );
    for (const t of inputs) t.dispose();
  }
  const cols = devices.flatMap((d) => [`softmax ${d}`, `layerNorm ${d}`]);
  const body = shapes.map((shape) => [
    `[${shape.join(", ")}]`,
    ...devices.flatMap((d) =>
      (["softmax", "layerNorm"] as const).map((op) => {
        const r = rows.find((r) => r.op === op && r.device === d && r.shape === shape);
        return r ? r.gbps.toFixed(2) : "-";
      })
    ),
  ]);
  const text = [
    "softmax / layerNorm throughput, GB/s (f32; bytes read + written per second; median of interleaved trials)",
    table(["shape", ...cols], body),
  ].join("\n");
  return { rows, text };
}

/** One layerNorm backward measurement: dx, dw and db of (rows, D) rows, v1 (three passes) or v2 (two). */
export interface NormBackwardRow {
  shape: number[];
  version: "v1" | "v2";
  ms: number;
}

/**
 * Times layerNorm's backward on webgpu (the forward it needs included, the same in both) with v1 (dx, then
 * the param grads' partials, then their sums) and v2 (dx and the partials in one pass, then the sums) at
 * shapes of rows up to 256 wide, where v2 applies. Interleaved trials, medians.
 */
export async function normBackwardTable(
  shapes = [[2048, 64], [16384, 64], [4096, 256]],
): Promise<{ rows: NormBackwardRow[]; text: string }> {
  const rows: NormBackwardRow[] = [];
  if (!hasWebGPU()) return { rows, text: "layerNorm backward: no WebGPU adapter; skipped" };
  const saved = normBackwardLimits.fusedMaxDV;
  try {
    for (const shape of shapes) {
      const D = shape[1];
      const x = s.param(s.randn(shape, { seed: 1, device: "webgpu" }));
      const w = s.param(s.randn([D], { seed: 2, device: "webgpu" }));
      const b = s.param(s.randn([D], { seed: 3, device: "webgpu" }));
      const cot = s.randn(shape, { seed: 4, device: "webgpu" });
      const timers: Timer[] = [];
      for (const v of ["v1", "v2"] as const) {
        const run = () => {
          normBackwardLimits.fusedMaxDV = v === "v1" ? 0 : saved;
          for (const p of [x, w, b]) p.zeroGrad();
          s.tidy(() => s.layerNorm(x, w, b).backward(cot));
          return s.add(w.grad!, b.grad!);
        };
        timers.push(
          await prepareTimer(run, (t) => t.toArray(), (t) => t.dispose(), { trials: 5, trialMs: 200 }),
        );
      }
      const ms = await timeInterleaved(timers);
      rows.push({ shape, version: "v1", ms: ms[0] }, { shape, version: "v2", ms: ms[1] });
      for (const p of [x, w, b]) p.zeroGrad(), p.dispose();
      cot.dispose();
    }
  } finally {
    normBackwardLimits.fusedMaxDV = saved;
  }
  const body = shapes.map((shape) => {
    const [a, c] = ["v1", "v2"].map((v) => rows.find((r) => r.shape === shape && r.version === v)!.ms);
    return [`[${shape.join(", ")}]`, a.toFixed(2), c.toFixed(2), `${(a / c).toFixed(2)}x`];
  });
  return {
    rows,
    text: [
      "layerNorm forward + backward (dx, dw, db) on webgpu, ms (median of interleaved trials)",
      table(["shape", "v1 (3 passes)", "v2 (dx + partials in one)", "v1 / v2"], body),
    ].join("\n"),
  };
}

/** `deno task bench rowwise`: prints the table and writes bench/results/rowwise.json. */
export async function main(): Promise<void> {
  const load0 = loadAverage();
  console.log(`adapter: ${s.adapterInfo()}\nload average at start: ${load0 ?? "?"}`);
  const started = new Date().toISOString();
  const t = await rowwiseTable();
  console.log(`\n${t.text}`);
  const nb = await normBackwardTable();
  const load1 = loadAverage();
  console.log(`\n${nb.text}\nload average at end: ${load1 ?? "?"}`);
  const file = await writeResult("rowwise", {
    bench: "rowwise",
    started,
    adapter: s.adapterInfo(),
    deno: Deno.version.deno,
    loadAverage: { start: load0, end: load1 },
    unit: "GB/s",
    rows: t.rows,
    normBackward: nb.rows,
  });
  console.log(`wrote ${file}`);
}
