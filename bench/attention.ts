/**
 * Attention benchmark (issue 5): FlashAttention against standard attention (S and P in device memory) on
 * the WebGPU adapter, B = 1 (the software adapter is saturated by one sequence's heads), H = 8, D = 64.
 * - time and peak device memory vs T, forward and forward + backward, causal and not: flash up to 16K,
 *   standard until one head's T x T scores pass maxStorageBufferBindingSize (T = 4096 here); backward up
 *   to 4096 (the paper's Tables 20 and 21 range);
 * - a block-size sweep with the modelled device-memory traffic beside the runtime (the paper's Figure 2);
 * - block-sparse time vs the fraction of non-zero blocks.
 * Every implementation is checked against the float64 reference before anything is timed. The same-run
 * peers of the issue (tfjs-backend-webgpu, onnxruntime-web) are not run here (not installed in this tree).
 *
 * Run: `deno task bench attention` (full), `deno task bench attention 1024 4096` (chosen T values for the
 * main table; the sweeps use the first). Prints tables, writes bench/results/attention.json.
 * @module
 */

import * as s from "../mod.ts";
import type { AttentionOptions, AttentionResult, Tensor } from "../mod.ts";
import { adapterInfo, hasWebGPU } from "../runtime/device.ts";
import { loadAverage, prepareTimer, table, timeInterleaved, type Timer, writeResult } from "./util.ts";

const H = 8, D = 64;

/** One measured cell of the main table. */
export interface AttentionBenchRow {
  impl: "flash" | "standard";
  T: number;
  causal: boolean;
  /** Median ms per forward call; null where it could not run (see `note`). */
  fwdMs: number | null;
  /** Median ms per forward + backward; null where not measured. */
  fwdBwdMs: number | null;
  /** Peak device bytes above the inputs during the forward (memory ledger). */
  fwdPeakBytes: number | null;
  /** Peak device bytes above the inputs during forward + backward. */
  fwdBwdPeakBytes: number | null;
  /** Modelled device-memory traffic of the forward (bytes) and its FLOPs. */
  bytes: number | null;
  flops: number | null;
  note?: string;
}

const impls = { flash: s.flashAttention, standard: s.standardAttention };

/** Checks flash v1-v3 and standard against the float64 reference (causal, GQA, padding); throws on a mismatch. */
export async function checkAttention(): Promise<void> {
  await s.tidy(async () => {
    const c = { device: "cpu" as const, dtype: "f64" as const };
    const q = s.randn([1, 4, 77, D], { seed: 1, ...c }), k = s.randn([1, 2, 77, D], { seed: 2, ...c });
    const v = s.randn([1, 2, 77, D], { seed: 3, ...c });
    const o: AttentionOptions = { causal: true, keyPadding: [70] };
    const ref = await s.attentionRef(q, k, v, o).o.toArray();
    const [qg, kg, vg] = await Promise.all([q, k, v].map(async (t) => await s.cast(t, "f32").to("webgpu")));
    const runs: [string, () => AttentionResult][] = [
      ["flash v1", () => s.flashAttention(qg, kg, vg, { ...o, version: 1 })],
      ["flash v2", () => s.flashAttention(qg, kg, vg, { ...o, version: 2 })],
      ["flash v3", () => s.flashAttention(qg, kg, vg, o)],
      ["standard", () => s.standardAttention(qg, kg, vg, o)],
    ];
    for (const [name, fn] of runs) {
      const y = await fn().o.toArray();
      for (let i = 0; i < y.length; i++) {
        if (!(Math.abs(y[i] - ref[i]) <= 1e-5)) {
          throw new Error(
            `bench/attention: ${name} differs from the reference at ${i}: ${y[i]} vs ${ref[i]}`,
          );
        }
      }
    }
  });
}

interface Inputs {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  g: Tensor;
  /** Views made for timers, freed with the inputs. */
  views: Tensor[];
  dispose(): void;
}

function inputs(T: number): Inputs {
  const q = s.randn([1, H, T, D], { seed: 1 }), k = s.randn([1, H, T, D], { seed: 2 });
  const v = s.randn([1, H, T, D], { seed: 3 }), g = s.randn([1, H, T, D], { seed: 4 });
  const views: Tensor[] = [];
  return { q, k, v, g, views, dispose: () => [q, k, v, g, ...views].forEach((t) => t.dispose()) };
}

const drop = (r: AttentionResult) => {
  r.o.dispose();
  r.lse.dispose();
};

/** A forward timer. */
function fwdTimer(
  impl: keyof typeof impls,
  x: Inputs,
  o: AttentionOptions,
  slowMs: number,
  trials = 3,
): Promise<Timer> {
  return prepareTimer(() => impls[impl](x.q, x.k, x.v, o), (r) => r.lse.toArray(), drop, { trials, slowMs });
}

/** A forward + backward timer (fresh leaves per call: gradients accumulate otherwise). */
function fwdBwdTimer(
  impl: keyof typeof impls,
  x: Inputs,
  o: AttentionOptions,
  slowMs: number,
): Promise<Timer> {
  const leaves = [x.q, x.k, x.v].map((t) => t.detach());
  x.views.push(...leaves);
  for (const t of leaves) t.requiresGrad = true;
  return prepareTimer(
    () => {
      const r = impls[impl](leaves[0], leaves[1], leaves[2], o);
      r.o.backward(x.g);
      return r;
    },
    () => leaves[0].grad!.slice([0, 0, [0, 1]]).toArray(),
    (r) => {
      drop(r);
      for (const t of leaves) t.zeroGrad();
    },
    { trials: 3, slowMs },
  );
}

/** Peak device bytes above what is in use before the call (forward, or forward + backward), and its stats. */
async function peakOf(
  impl: keyof typeof impls,
  x: Inputs,
  o: AttentionOptions,
  backward: boolean,
): Promise<{ peak: number; stats: AttentionResult["stats"] }> {
  const leaves = [x.q, x.k, x.v].map((t) => t.detach());
  if (backward) { for (const t of leaves) t.requiresGrad = true; }
  await x.q.slice([0, 0, [0, 1]]).toArray();
  const base = s.memory().bytesInUse;
  s.resetPeak();
  const r = impls[impl](leaves[0], leaves[1], leaves[2], o);
  if (backward) r.o.backward(x.g);
  await r.lse.toArray();
  const peak = s.memory().peakBytes - base;
  drop(r);
  for (const t of leaves) {
    t.zeroGrad();
    t.dispose();
  }
  return { peak, stats: r.stats };
}

const MiB = (b: number | null) => (b === null ? "-" : (b / 2 ** 20).toFixed(1));
const ms = (x: number | null) => (x === null ? "-" : x < 10 ? x.toFixed(2) : x.toFixed(0));

/** Runs the benchmark; `args` may list T values for the main table. */
export async function main(args: string[] = []): Promise<void> {
  if (!hasWebGPU()) {
    console.log("bench attention: no WebGPU adapter; skipped");
    return;
  }
  const load0 = loadAverage();
  console.log(`adapter: ${adapterInfo()}; load average ${load0}`);
  await checkAttention();
  console.log("checked: flash v1, v2, v3 and standard match the float64 reference");

  const Ts = args.length ? args.map(Number) : [128, 256, 512, 1024, 2048, 4096, 8192, 16384];
  const BWD_MAX = 4096;
  const rows: AttentionBenchRow[] = [];
  for (const T of Ts) {
    for (const causal of [false, true]) {
      const x = inputs(T);
      const o = { causal };
      const slowMs = T >= 4096 ? 500 : 2000;
      const trials = T >= 8192 ? 1 : 3;
      const cells: { impl: "flash" | "standard"; fwd: Timer | null; fb: Timer | null; note?: string }[] = [];
      for (const impl of ["flash", "standard"] as const) {
        try {
          const fwd = await fwdTimer(impl, x, o, slowMs, trials);
          const fb = T <= BWD_MAX ? await fwdBwdTimer(impl, x, o, slowMs) : null;
          cells.push({ impl, fwd, fb });
        } catch (e) {
          cells.push({ impl, fwd: null, fb: null, note: (e as Error).message.replace(/;.*$/, "") });
        }
      }
      const timers = cells.flatMap((c) => [c.fwd, c.fb].filter((t): t is Timer => t !== null));
      const times = await timeInterleaved(timers);
      let n = 0;
      for (const c of cells) {
        const fwdMs = c.fwd ? times[n++] : null;
        const fwdBwdMs = c.fb ? times[n++] : null;
        let stats = null, fp = null, fbp = null;
        if (c.fwd) {
          const p = await peakOf(c.impl, x, o, false);
          stats = p.stats;
          fp = p.peak;
          if (c.fb) fbp = (await peakOf(c.impl, x, o, true)).peak;
        }
        const row: AttentionBenchRow = {
          impl: c.impl,
          T,
          causal,
          fwdMs,
          fwdBwdMs,
          fwdPeakBytes: fp,
          fwdBwdPeakBytes: fbp,
          bytes: stats ? stats.bytesRead + stats.bytesWritten : null,
          flops: stats ? stats.flops : null,
          ...(c.note ? { note: c.note } : {}),
        };
        rows.push(row);
        console.log(
          `T ${T} ${causal ? "causal" : "full"} ${c.impl}: fwd ${ms(fwdMs)} ms, fwd+bwd ${
            ms(fwdBwdMs)
          } ms, peak ${MiB(fp)} / ${MiB(fbp)} MiB${c.note ? ` (${c.note})` : ""}`,
        );
      }
      x.dispose();
    }
  }
  const head = [
    "T",
    "mask",
    "flash fwd ms",
    "std fwd ms",
    "speed-up",
    "flash f+b ms",
    "std f+b ms",
    "flash MiB",
    "std MiB",
    "mem ratio",
  ];
  const mainRows: string[][] = [];
  for (const T of Ts) {
    for (const causal of [false, true]) {
      const f = rows.find((r) => r.T === T && r.causal === causal && r.impl === "flash")!;
      const st = rows.find((r) => r.T === T && r.causal === causal && r.impl === "standard")!;
      mainRows.push([
        String(T),
        causal ? "causal" : "full",
        ms(f.fwdMs),
        st.fwdMs === null ? "limit" : ms(st.fwdMs),
        f.fwdMs && st.fwdMs ? (st.fwdMs / f.fwdMs).toFixed(1) + "x" : "-",
        ms(f.fwdBwdMs),
        ms(st.fwdBwdMs),
        MiB(f.fwdPeakBytes),
        MiB(st.fwdPeakBytes),
        f.fwdPeakBytes && st.fwdPeakBytes ? (st.fwdPeakBytes / f.fwdPeakBytes).toFixed(1) + "x" : "-",
      ]);
    }
  }
  console.log(`\nflash vs standard, B 1, H ${H}, D ${D} (peak: forward, above the inputs)`);
  console.log(table(head, mainRows));

  // block-size sweep: runtime and the modelled traffic (paper Figure 2)
  const Tsweep = Ts.includes(1024) ? 1024 : Ts[0];
  const sweep: { blockQ: number; blockK: number; ms: number; bytes: number; flops: number }[] = [];
  {
    const x = inputs(Tsweep);
    const configs: [number, number][] = [];
    for (const bq of [8, 16, 32, 64]) for (const bk of [16, 64, 256]) configs.push([bq, bk]);
    const timers: Timer[] = [];
    for (const [blockQ, blockK] of configs) timers.push(await fwdTimer("flash", x, { blockQ, blockK }, 2000));
    const times = await timeInterleaved(timers);
    configs.forEach(([blockQ, blockK], i) => {
      const r = s.flashAttention(x.q, x.k, x.v, { blockQ, blockK });
      sweep.push({
        blockQ,
        blockK,
        ms: times[i],
        bytes: r.stats.bytesRead + r.stats.bytesWritten,
        flops: r.stats.flops,
      });
      drop(r);
    });
    x.dispose();
    console.log(`\nblock sizes, T ${Tsweep}, non-causal (modelled device-memory traffic beside the runtime)`);
    console.log(table(
      ["blockQ x blockK", "ms", "traffic MiB", "GFLOP/s"],
      sweep.map((
        w,
      ) => [`${w.blockQ} x ${w.blockK}`, ms(w.ms), MiB(w.bytes), (w.flops / w.ms / 1e6).toFixed(2)]),
    ));
  }

  // block-sparse: time vs the fraction of non-zero 64 x 64 blocks
  const Tsp = Ts.includes(2048) ? 2048 : Tsweep;
  const sparse: { density: number; ms: number; tilesVisited: number; tilesSkipped: number }[] = [];
  {
    const x = inputs(Tsp);
    const nb = Math.ceil(Tsp / 64);
    const dens = [1, 0.5, 0.25, 0.125, 0.0625];
    const masks = dens.map((d, n) => {
      let seed = 7 + n;
      const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
      // the diagonal block always, so no row is empty; the rest at random up to the density
      return Array.from({ length: nb * nb }, (_, i) => (i % (nb + 1) === 0 || rand() < d ? 1 : 0));
    });
    const opts = masks.map((mask) => ({
      blockMask: { mask, shape: [1, nb, nb] as [number, number, number], blockSize: 64 },
    }));
    const timers: Timer[] = [];
    for (const o of opts) timers.push(await fwdTimer("flash", x, o, 2000));
    const times = await timeInterleaved(timers);
    opts.forEach((o, i) => {
      const r = s.flashAttention(x.q, x.k, x.v, o);
      sparse.push({
        density: dens[i],
        ms: times[i],
        tilesVisited: r.stats.tilesVisited,
        tilesSkipped: r.stats.tilesSkipped,
      });
      drop(r);
    });
    x.dispose();
    console.log(`\nblock-sparse (64 x 64 blocks), T ${Tsp}, non-causal`);
    console.log(table(
      ["target density", "non-zero tiles", "ms", "time / dense"],
      sparse.map((w) => [
        w.density.toString(),
        (w.tilesVisited / (w.tilesVisited + w.tilesSkipped)).toFixed(3),
        ms(w.ms),
        (w.ms / sparse[0].ms).toFixed(3),
      ]),
    ));
  }

  // targets
  const at = (impl: string, T: number, causal: boolean) =>
    rows.find((r) => r.impl === impl && r.T === T && r.causal === causal);
  const f4 = at("flash", 4096, true), s4 = at("standard", 4096, true);
  const f16 = at("flash", 16384, false) ?? at("flash", 16384, true), s16 = at("standard", 16384, false);
  const targets = {
    "flash forward >= 3x faster than standard at T = 4096 causal": f4?.fwdMs && s4?.fwdMs
      ? { ratio: s4.fwdMs / f4.fwdMs, met: s4.fwdMs / f4.fwdMs >= 3 }
      : { met: null },
    "peak memory >= 10x lower at T = 4096 (causal, forward)": f4?.fwdPeakBytes && s4?.fwdPeakBytes
      ? { ratio: s4.fwdPeakBytes / f4.fwdPeakBytes, met: s4.fwdPeakBytes / f4.fwdPeakBytes >= 10 }
      : { met: null },
    "flash runs at T = 16K where standard hits the buffer limit": f16
      ? { flashMs: f16.fwdMs, standard: s16?.note ?? null, met: f16.fwdMs !== null && s16?.fwdMs === null }
      : { met: null },
  };
  console.log("\ntargets:");
  for (const [k, v] of Object.entries(targets)) {
    const r = v as { met: boolean | null; ratio?: number };
    console.log(
      `  ${k}: ${r.met === null ? "not measured" : r.met ? "met" : "NOT met"}${
        r.ratio ? ` (${r.ratio.toFixed(1)}x)` : ""
      }`,
    );
  }
  const file = await writeResult("attention", {
    adapter: adapterInfo(),
    setup: {
      B: 1,
      H,
      D,
      note: "B = 1: one sequence's 8 heads already occupy both CPU threads of the software adapter",
    },
    loadAverage: { start: load0, end: loadAverage() },
    rows,
    blockSweep: { T: Tsweep, rows: sweep },
    blockSparse: { T: Tsp, block: 64, rows: sparse },
    targets,
    peers: "tfjs-backend-webgpu and onnxruntime-web not run (not dependencies of this tree)",
  });
  console.log(`wrote ${file}`);
}

if (import.meta.main) await main(Deno.args);
