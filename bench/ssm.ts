/**
 * Selective scan benchmark: time vs L of the sequential WebGPU scan (fwd v1, the baseline) and the chunked
 * parallel scan (fwd v2) at B = 1, D = 512, N = 16, input-dependent B and C; the speed-up, and the
 * target of issue 6: v2 at least 5x faster than v1 at L = 16K. Two side tables: the carry pass
 * (sequential fold vs Hillis-Steele in workgroup memory) and a narrow model (D = 16), where the
 * sequential scan has too few invocations to keep the adapter busy; and the backward at a training size.
 * Every version is checked against the float64 reference before anything is timed.
 *
 * Run: `deno task bench ssm` (L = 1K ... 64K), or `deno task bench ssm 1024 16384` for chosen lengths.
 * Prints the tables, writes bench/results/ssm.json.
 * @module
 */

import * as s from "../mod.ts";
import type { SelectiveScanGpuOptions, Tensor } from "../mod.ts";
import { gpu, hasWebGPU } from "../runtime/device.ts";
import { loadAverage, prepareTimer, table, timeInterleaved, writeResult } from "./util.ts";

/** One measured cell. */
export interface ScanBenchRow {
  /** Which table: "L" (time vs L), "carry", "narrow". */
  table: string;
  version: string;
  B: number;
  D: number;
  N: number;
  L: number;
  /** Median ms per scan (synchronised). */
  ms: number;
  /** Useful GFLOP/s by {@link s.scanCost}. */
  gflops: number;
}

const VERSIONS: [string, SelectiveScanGpuOptions][] = [
  ["v1 sequential", { version: "v1" }],
  ["v2 parallel", { version: "v2" }],
];

/** Checks v1 and v2 (both carries, several chunk sizes) against the float64 reference; throws on a mismatch. */
export async function checkScans(): Promise<void> {
  await s.tidy(async () => {
    const [Bn, D, L, N] = [1, 8, 300, 16];
    const o = { device: "cpu" as const, dtype: "f64" as const };
    const x = [
      s.randn([Bn, D, L], { seed: 1, ...o }),
      s.rand([Bn, D, L], { seed: 2, low: 0.001, high: 0.1, ...o }),
      s.rand([D, N], { seed: 3, low: -2, high: -0.5, ...o }),
      s.randn([Bn, N, L], { seed: 4, ...o }),
      s.randn([Bn, N, L], { seed: 5, ...o }),
    ];
    const ref = await s.selectiveScanRef(x[0], x[1], x[2], x[3], x[4]).toArray();
    const g = await Promise.all(x.map(async (t) => await s.cast(t, "f32").to("webgpu")));
    const runs: SelectiveScanGpuOptions[] = [
      { version: "v1" },
      { version: "v2" },
      { version: "v2", chunkSize: 12 },
      { version: "v2", chunkSize: 64, carry: "hillis-steele" },
    ];
    for (const o of runs) {
      const y = await s.selectiveScan(g[0], g[1], g[2], g[3], g[4], o).toArray();
      for (let i = 0; i < y.length; i++) {
        if (!(Math.abs(y[i] - ref[i]) <= 2e-3 + 6e-4 * Math.abs(ref[i]))) {
          throw new Error(
            `bench/ssm: ${JSON.stringify(o)} differs from the reference at ${i}: ${y[i]} vs ${ref[i]}`,
          );
        }
      }
    }
  });
}

/** Times the given versions at (B, D, N, L), interleaved; returns one row per version. */
async function measure(
  name: string,
  versions: [string, SelectiveScanGpuOptions][],
  Bn: number,
  D: number,
  N: number,
  L: number,
  timing: { trials: number; slowMs: number } = { trials: 3, slowMs: 1500 },
): Promise<ScanBenchRow[]> {
  const x: Tensor[] = [
    s.randn([Bn, D, L], { seed: 1 }),
    s.rand([Bn, D, L], { seed: 2, low: 0.001, high: 0.1 }),
    s.rand([D, N], { seed: 3, low: -2, high: -0.5 }),
    s.randn([Bn, N, L], { seed: 4 }),
    s.randn([Bn, N, L], { seed: 5 }),
  ];
  try {
    const timers = [];
    for (const [, o] of versions) {
      timers.push(
        await prepareTimer(
          () => s.selectiveScan(x[0], x[1], x[2], x[3], x[4], o),
          async () => await gpu().sync(),
          (t) => t.dispose(),
          { trials: timing.trials, trialMs: 400, maxReps: 10, slowMs: timing.slowMs },
        ),
      );
    }
    const ms = await timeInterleaved(timers);
    const flops = s.scanCost({ Bn, D, N, L }).flops;
    return versions.map(([v], i) => ({
      table: name,
      version: v,
      B: Bn,
      D,
      N,
      L,
      ms: ms[i],
      gflops: flops / ms[i] / 1e6,
    }));
  } finally {
    x.forEach((t) => t.dispose());
    s.releaseScanTextures();
  }
}

const fmtL = (L: number) => (L >= 1024 ? `${L / 1024}K` : `${L}`);

/** Runs the three tables; returns the rows and the printed text. */
export async function ssmTables(
  Ls: number[],
): Promise<{ rows: ScanBenchRow[]; text: string; target: unknown }> {
  const rows: ScanBenchRow[] = [];
  const out: string[] = [];
  const [Bn, D, N] = [1, 512, 16];
  for (const L of Ls) {
    const r = await measure("L", VERSIONS, Bn, D, N, L);
    rows.push(...r);
    console.log(`  L = ${fmtL(L)}: ${r.map((x) => `${x.version} ${x.ms.toFixed(1)} ms`).join(", ")}`);
  }
  const cell = (t: string, v: string, L: number) =>
    rows.find((r) => r.table === t && r.version === v && r.L === L)!;
  out.push(
    `Selective scan, B = ${Bn}, D = ${D}, N = ${N}, input-dependent B and C (ms, median; GFLOP/s by scanCost)`,
    table(
      ["L", "v1 sequential ms", "v2 parallel ms", "speed-up", "v1 GFLOP/s", "v2 GFLOP/s"],
      Ls.map((L) => {
        const a = cell("L", "v1 sequential", L), b = cell("L", "v2 parallel", L);
        return [
          fmtL(L),
          a.ms.toFixed(1),
          b.ms.toFixed(1),
          `${(a.ms / b.ms).toFixed(1)}x`,
          a.gflops.toFixed(2),
          b.gflops.toFixed(2),
        ];
      }),
    ),
  );
  // the target, L = 16K, measured again with 7 interleaved trials each (the sweep gives slow cells 2)
  const T = 16384;
  const tg = await measure("target", VERSIONS, Bn, D, N, T, { trials: 7, slowMs: 60000 });
  rows.push(...tg);
  const speedup = tg[0].ms / tg[1].ms;
  const target = { L: T, B: Bn, D, N, v1ms: tg[0].ms, v2ms: tg[1].ms, speedup, goal: 5, met: speedup >= 5 };
  out.push(
    `\ntarget: parallel >= 5x faster than sequential at L = 16K, B = 1, D = 512, N = 16 (medians of 7): ` +
      `v1 ${tg[0].ms.toFixed(0)} ms, v2 ${tg[1].ms.toFixed(0)} ms, ${speedup.toFixed(1)}x, ` +
      `${target.met ? "met" : "NOT met"}`,
  );

  const carry = await measure(
    "carry",
    [
      ["v2 chunk 256, sequential carry", { version: "v2", chunkSize: 256 }],
      ["v2 chunk 256, Hillis-Steele carry", { version: "v2", chunkSize: 256, carry: "hillis-steele" }],
      ["v2 default chunk (2 chunks), sequential carry", { version: "v2" }],
      ["v2 one chunk (no carry)", { version: "v2", chunkSize: 4 * Math.ceil(4096 / 4) }],
    ],
    Bn,
    D,
    N,
    4096,
  );
  rows.push(...carry);
  out.push(
    `\nv2's carry pass and chunk length, L = 4K, D = ${D}`,
    table(["variant", "ms"], carry.map((r) => [r.version, r.ms.toFixed(1)])),
  );

  const narrow = await measure("narrow", VERSIONS, 1, 16, N, T);
  rows.push(...narrow);
  out.push(
    `\nnarrow model, B = 1, D = 16, L = 16K: 16 sequential invocations cannot fill the adapter`,
    table(["version", "ms", "GFLOP/s"], narrow.map((r) => [r.version, r.ms.toFixed(1), r.gflops.toFixed(2)])),
  );
  const bwd = await measureBackward(8, 128, N, 256);
  rows.push(...bwd);
  out.push(
    `\ntraining size, B = 8, D = 128, L = 256, N = 16 (a Mamba block with D = 64): forward and backward`,
    table(["pass", "ms"], bwd.map((r) => [r.version, r.ms.toFixed(1)])),
  );
  return { rows, text: out.join("\n"), target };
}

/** Times the forward (v1, v2) and the backward (bwd v1, input-dependent and shared B and C) at (B, D, N, L). */
async function measureBackward(Bn: number, D: number, N: number, L: number): Promise<ScanBenchRow[]> {
  const rows: ScanBenchRow[] = [];
  for (const shared of [false, true]) {
    const bshape = shared ? [D, N] : [Bn, N, L];
    const x: Tensor[] = [
      s.randn([Bn, D, L], { seed: 1 }),
      s.rand([Bn, D, L], { seed: 2, low: -3, high: 0 }),
      s.rand([D, N], { seed: 3, low: -2, high: -0.5 }),
      s.randn(bshape, { seed: 4 }),
      s.randn(bshape, { seed: 5 }),
    ];
    x.forEach((t) => (t.requiresGrad = true));
    const o = { deltaSoftplus: true };
    const passes: [string, () => Tensor, boolean][] = [
      [
        "forward v1",
        () => s.noGrad(() => s.selectiveScan(x[0], x[1], x[2], x[3], x[4], { ...o, version: "v1" })),
        false,
      ],
      [
        "forward v2",
        () => s.noGrad(() => s.selectiveScan(x[0], x[1], x[2], x[3], x[4], { ...o, version: "v2" })),
        false,
      ],
      ["backward v1", () => s.selectiveScan(x[0], x[1], x[2], x[3], x[4], o), true],
    ];
    try {
      for (const [name, fwd, backward] of passes) {
        if (shared && !backward) continue;
        const timer = await prepareTimer(
          () => {
            const y = fwd();
            if (!backward) return y;
            const l = y.sum();
            y.dispose();
            l.backward();
            x.forEach((t) => t.zeroGrad());
            return l;
          },
          async () => await gpu().sync(),
          (t) => t.dispose(),
          { trials: 3, trialMs: 400, maxReps: 10 },
        );
        const [ms] = await timeInterleaved([timer]);
        rows.push({
          table: "training",
          version: `${name}${backward ? " (incl. forward)" : ""}, ${
            shared ? "shared" : "input-dependent"
          } B, C`,
          B: Bn,
          D,
          N,
          L,
          ms,
          gflops: s.scanCost({ Bn, D, N, L }).flops / ms / 1e6,
        });
      }
    } finally {
      x.forEach((t) => {
        t.zeroGrad();
        t.dispose();
      });
    }
  }
  return rows;
}

/** `deno task bench ssm [L...]`. */
export async function main(args: string[] = []): Promise<void> {
  if (!hasWebGPU()) {
    console.log("bench ssm: no WebGPU adapter; the scan versions compared here are WebGPU shaders");
    return;
  }
  const Ls = args.length ? args.map(Number) : [1024, 2048, 4096, 8192, 16384, 32768, 65536];
  const load0 = loadAverage();
  console.log(`adapter: ${s.adapterInfo()}\nload average at start: ${load0 ?? "?"}`);
  await checkScans();
  console.log("every version matches the float64 reference (fp32 rtol 6e-4, atol 2e-3)");
  const started = new Date().toISOString();
  const t = await ssmTables(Ls);
  const load1 = loadAverage();
  console.log(`\n${t.text}\nload average at end: ${load1 ?? "?"}`);
  const file = await writeResult("ssm", {
    bench: "ssm",
    started,
    adapter: s.adapterInfo(),
    deno: Deno.version.deno,
    loadAverage: { start: load0, end: load1 },
    unit: "ms",
    target: t.target,
    rows: t.rows,
  });
  console.log(`wrote ${file}`);
}

if (import.meta.main) await main(Deno.args);
