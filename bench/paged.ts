/**
 * Paged attention benchmark (issue 12), the kernel section: paged decode (`pagedAttention` v1, v2 and
 * "auto") against contiguous `attentionDecode` on the same keys, at contexts 1K and 4K and batches 1 and 8,
 * with a small model's heads (H 8, Hkv 2: GQA, D 64) and block size 16; then block sizes 8..128 at 1K,
 * batch 8, ragged lengths (time and the slots wasted in each sequence's last block). Pages are handed out
 * in a shuffled order, as an allocator does after a while. Before anything is timed every paged version is
 * checked against attentionDecode.
 *
 * Times: device time from the timestamp profiler (the sum of the call's dispatches, median of 5 trials;
 * this is what the 1.25x target compares: the paper's kernel is 20-26% slower than contiguous) and wall
 * time per call in batches of calls with one readback (interleaved trials, median).
 *
 * Run: `deno task bench paged` (contexts 1024 and 4096) or `deno task bench paged 2048`. Prints tables and
 * writes bench/results/paged.json: the `kernel` section, then the `engine` section (bench/paged_engine.ts:
 * engine throughput, paged vs static-max reservation at one KV budget).
 * `deno run -A bench/paged.ts dry [contexts]` prints without writing.
 * @module
 */

import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { gpu, hasWebGPU } from "../runtime/device.ts";
import { engineSection } from "./paged_engine.ts";
import { loadAverage, median, prepareTimer, table, timeInterleaved, verdict, writeResult } from "./util.ts";

const H = 8, Hkv = 2, D = 64;
const TARGET = 1.25;

/** One measured cell of the main table. */
export interface PagedKernelRow {
  context: number;
  B: number;
  blockSize: number;
  /** Device ms per call (timestamp profiler, median): contiguous attentionDecode. */
  contiguousMs: number;
  /** Device ms per call of each paged version, and of "auto" (the version it chose in `auto`). */
  v1Ms: number;
  v2Ms: number;
  auto: string;
  /** Wall ms per call in batches with one readback (median of interleaved trials). */
  contiguousWallMs: number;
  autoWallMs: number;
  /** Paged auto device time / contiguous device time. */
  ratio: number;
}

/** One cell of the block-size sweep. */
export interface BlockSizeRow {
  blockSize: number;
  context: number;
  B: number;
  /** Device ms per call of paged decode ("auto"). */
  ms: number;
  /** Token slots allocated (whole blocks) and wasted (past each sequence's length in its last block). */
  slots: number;
  wasted: number;
  wastedPct: number;
}

/** Deterministic values in [-1, 1). */
function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let x = seed * 2654435761 >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = x / 2 ** 31 - 1;
  }
  return out;
}

/** Contiguous caches (B, Hkv, Smax, D) and the same keys in shuffled pages of `bs`, plus q (B, H, D). */
function setup(lens: number[], bs: number) {
  const B = lens.length, Smax = Math.max(...lens);
  const kc = values(B * Hkv * Smax * D, 1), vc = values(B * Hkv * Smax * D, 2);
  const need = lens.map((l) => Math.ceil(l / bs)), maxBlocks = Math.max(...need);
  const numBlocks = need.reduce((a, b) => a + b, 0);
  const order = Array.from({ length: numBlocks }, (_, i) => i);
  for (let i = numBlocks - 1; i > 0; i--) {
    const j = (i * 48271 + 11) % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  const tab = new Int32Array(B * maxBlocks).fill(-1);
  const kp = new Float32Array(numBlocks * Hkv * bs * D), vp = new Float32Array(kp.length);
  let next = 0;
  for (let b = 0; b < B; b++) {
    for (let blk = 0; blk < need[b]; blk++) tab[b * maxBlocks + blk] = order[next++];
    for (let p = 0; p < lens[b]; p++) {
      const page = tab[b * maxBlocks + Math.floor(p / bs)];
      for (let h = 0; h < Hkv; h++) {
        const src = ((b * Hkv + h) * Smax + p) * D, dst = ((page * Hkv + h) * bs + (p % bs)) * D;
        kp.set(kc.subarray(src, src + D), dst);
        vp.set(vc.subarray(src, src + D), dst);
      }
    }
  }
  const dev = { device: "webgpu" as const };
  const qv = values(B * H * D, 3);
  return {
    raw: { q: qv, kp, vp, tab },
    q: s.tensor(qv, { shape: [B, H, D], ...dev }),
    K: s.tensor(kc, { shape: [B, Hkv, Smax, D], ...dev }),
    V: s.tensor(vc, { shape: [B, Hkv, Smax, D], ...dev }),
    kPool: s.tensor(kp, { shape: [numBlocks, Hkv, bs, D], ...dev }),
    vPool: s.tensor(vp, { shape: [numBlocks, Hkv, bs, D], ...dev }),
    tables: s.tensor(tab, { shape: [B, maxBlocks], dtype: "i32", ...dev }),
    lens: s.tensor(lens, { dtype: "i32", ...dev }),
    slots: numBlocks * bs,
    wasted: numBlocks * bs - lens.reduce((a, b) => a + b, 0),
  };
}

type Setup = ReturnType<typeof setup>;
type Impl = "contiguous" | "v1" | "v2" | "auto";

function call(x: Setup, impl: Impl, lens: number[]): { o: Tensor; lse: Tensor } {
  if (impl === "contiguous") {
    const B = lens.length;
    const q4 = x.q.reshape([B, H, 1, D]);
    const r = s.attentionDecode(q4, x.K, x.V, { length: lens });
    q4.dispose();
    return r;
  }
  return s.pagedAttention(x.q, x.kPool, x.vPool, x.tables, x.lens, { version: impl });
}

const drop = (r: { o: Tensor; lse: Tensor }) => {
  r.o.dispose();
  r.lse.dispose();
};

/** Device ms per call: the median over `trials` profiled calls (after one warm-up). */
async function deviceMs(x: Setup, impl: Impl, lens: number[], trials = 5): Promise<number> {
  const ms: number[] = [];
  for (let t = 0; t <= trials; t++) {
    gpu().startProfile();
    const r = call(x, impl, lens);
    await r.lse.toArray();
    const prof = await gpu().stopProfile();
    drop(r);
    if (t > 0) ms.push(prof.reduce((a, p) => a + p.ms, 0));
  }
  return median(ms);
}

/** Every paged version against attentionDecode on the same keys; throws on a mismatch. */
async function check(x: Setup, lens: number[]): Promise<void> {
  const want = call(x, "contiguous", lens);
  const wo = await want.o.toArray();
  drop(want);
  for (const impl of ["v1", "v2", "auto"] as const) {
    const r = call(x, impl, lens);
    const got = await r.o.toArray();
    drop(r);
    let err = 0;
    for (let i = 0; i < got.length; i++) err = Math.max(err, Math.abs(got[i] - wo[i]));
    if (!(err < 1e-4)) throw new Error(`bench paged: ${impl} differs from attentionDecode by ${err}`);
  }
}

/** One version's errors in {@link pagedExactness}. */
export interface ExactnessRow {
  version: "v1" | "v2";
  /** Max |O - reference| over every row, head and column. */
  maxError: number;
  /** Max |lse - reference lse|. */
  lseError: number;
}

/**
 * Paged decode on WebGPU (float32) against the float64 reference (the cpu path of `pagedAttention`, which
 * accumulates in float64) on the same float32 inputs: one sequence per entry of `lens` (odd lengths leave
 * last pages partly filled), pages shuffled, H 8 / Hkv 2 (GQA), D 64. Returns the max errors per version.
 */
export async function pagedExactness(lens: number[], blockSize = 16): Promise<ExactnessRow[]> {
  const x = setup(lens, blockSize);
  const B = lens.length, [numBlocks] = x.kPool.shape, maxBlocks = x.raw.tab.length / B;
  const cpu = { device: "cpu" as const, dtype: "f64" as const };
  const f64 = (a: Float32Array) => Float64Array.from(a);
  const ref = s.pagedAttention(
    s.tensor(f64(x.raw.q), { shape: [B, H, D], ...cpu }),
    s.tensor(f64(x.raw.kp), { shape: [numBlocks, Hkv, blockSize, D], ...cpu }),
    s.tensor(f64(x.raw.vp), { shape: [numBlocks, Hkv, blockSize, D], ...cpu }),
    s.tensor(x.raw.tab, { shape: [B, maxBlocks], dtype: "i32", device: "cpu" }),
    s.tensor(lens, { dtype: "i32", device: "cpu" }),
  );
  const [ro, rl] = [await ref.o.toArray(), await ref.lse.toArray()];
  drop(ref);
  const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
    let m = 0;
    for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
    return m;
  };
  const rows: ExactnessRow[] = [];
  try {
    for (const version of ["v1", "v2"] as const) {
      const r = s.pagedAttention(x.q, x.kPool, x.vPool, x.tables, x.lens, { version });
      rows.push({
        version,
        maxError: maxDiff(await r.o.toArray(), ro),
        lseError: maxDiff(await r.lse.toArray(), rl),
      });
      drop(r);
    }
  } finally {
    for (const t of [x.q, x.K, x.V, x.kPool, x.vPool, x.tables, x.lens]) t.dispose();
  }
  return rows;
}

/**
 * The kernel section: the main table (`contexts` x `batches`), the block-size sweep (at the first context,
 * `sweepTrials` interleaved rounds, median), and the target's verdict.
 */
export async function kernelSection(contexts = [1024, 4096], batches = [1, 8], sweepTrials = 7) {
  const rows: PagedKernelRow[] = [];
  for (const context of contexts) {
    for (const B of batches) {
      const lens = new Array(B).fill(context);
      const x = setup(lens, 16);
      try {
        await check(x, lens);
        const dev: Record<Impl, number> = { contiguous: 0, v1: 0, v2: 0, auto: 0 };
        for (const impl of ["contiguous", "v1", "v2", "auto"] as const) {
          dev[impl] = await deviceMs(x, impl, lens);
        }
        const timers = await Promise.all(
          (["contiguous", "auto"] as const).map((impl) =>
            prepareTimer(() => call(x, impl, lens), (r) => r.lse.toArray(), drop, { trials: 5 })
          ),
        );
        const [cw, aw] = await timeInterleaved(timers);
        const probe = s.pagedAttention(x.q, x.kPool, x.vPool, x.tables, x.lens);
        drop(probe);
        rows.push({
          context,
          B,
          blockSize: 16,
          contiguousMs: dev.contiguous,
          v1Ms: dev.v1,
          v2Ms: dev.v2,
          auto: probe.version,
          contiguousWallMs: cw,
          autoWallMs: aw,
          ratio: dev.auto / dev.contiguous,
        });
      } finally {
        for (const t of [x.q, x.K, x.V, x.kPool, x.vPool, x.tables, x.lens]) t.dispose();
      }
    }
  }
  const sweep: BlockSizeRow[] = [];
  const context = contexts[0], B = 8;
  // ragged lengths between context / 2 and context, so last blocks are partly filled
  const lens = Array.from(
    { length: B },
    (_, i) => Math.round(context / 2 + ((i * 0.37) % 1) * context / 2) + i,
  );
  // all block sizes set up at once and their trials interleaved, so a burst of load hits each alike
  const sizes = [8, 16, 32, 64, 128];
  const xs: Setup[] = [];
  try {
    for (const bs of sizes) xs.push(setup(lens, bs));
    for (const x of xs) await check(x, lens);
    const ms: number[][] = xs.map(() => []);
    for (let t = 0; t <= sweepTrials; t++) {
      for (const [i, x] of xs.entries()) {
        const one = await deviceMs(x, "auto", lens, 1);
        if (t > 0) ms[i].push(one);
      }
    }
    xs.forEach((x, i) =>
      sweep.push({
        blockSize: sizes[i],
        context,
        B,
        ms: median(ms[i]),
        slots: x.slots,
        wasted: x.wasted,
        wastedPct: (100 * x.wasted) / x.slots,
      })
    );
  } finally {
    for (const x of xs) for (const t of [x.q, x.K, x.V, x.kPool, x.vPool, x.tables, x.lens]) t.dispose();
  }
  const worst = Math.max(...rows.map((r) => r.ratio));
  const met = rows.length ? worst <= TARGET : null;
  const text = [
    `paged decode vs contiguous attentionDecode: H ${H}, Hkv ${Hkv}, D ${D}, block size 16, device ms per call`,
    table(
      ["context", "B", "contiguous", "paged v1", "paged v2", "auto", "ratio", "wall contig", "wall auto"],
      rows.map((r) => [
        String(r.context),
        String(r.B),
        r.contiguousMs.toFixed(3),
        r.v1Ms.toFixed(3),
        r.v2Ms.toFixed(3),
        r.auto,
        r.ratio.toFixed(2),
        r.contiguousWallMs.toFixed(2),
        r.autoWallMs.toFixed(2),
      ]),
    ),
    `target: paged within ${TARGET}x of contiguous at every cell (worst ${worst.toFixed(2)}x): ${
      verdict(met)
    }`,
    "",
    `block size sweep: context ${context} (ragged lengths ${lens.join(", ")}), B ${B}`,
    table(
      ["block size", "device ms", "slots", "wasted", "wasted %"],
      sweep.map((r) => [
        String(r.blockSize),
        r.ms.toFixed(3),
        String(r.slots),
        String(r.wasted),
        r.wastedPct.toFixed(2),
      ]),
    ),
  ].join("\n");
  return {
    config: { H, Hkv, D, blockSize: 16, contexts, batches, target: TARGET },
    rows,
    blockSizes: sweep,
    target: { ratio: TARGET, worst, verdict: verdict(met) },
    text,
  };
}

/** `deno task bench paged [contexts]`: the kernel section (printed, and written unless `dry`). */
export async function main(args: string[] = []): Promise<void> {
  if (!hasWebGPU()) {
    console.log("bench paged: no WebGPU adapter; the kernels are measured on the WebGPU backend");
    return;
  }
  const dry = args.includes("dry");
  const nums = args.filter((a) => a !== "dry").map(Number).filter((n) => Number.isInteger(n) && n > 0);
  const load0 = loadAverage();
  console.log(`adapter: ${s.adapterInfo()}`);
  const started = new Date().toISOString();
  const k = await kernelSection(nums.length ? nums : undefined);
  const load1 = loadAverage();
  console.log(`\n${k.text}\nload average: ${load1 ?? "?"}`);
  const e = await engineSection();
  const load2 = loadAverage();
  console.log(`\n${e.text}\nload average at end: ${load2 ?? "?"}`);
  if (dry) return;
  // keep other sections (an engine's) of an existing file
  let prev: Record<string, unknown> = {};
  try {
    prev = JSON.parse(await Deno.readTextFile(new URL("./results/paged.json", import.meta.url)));
  } catch { /* none yet */ }
  const file = await writeResult("paged", {
    ...prev,
    bench: "paged",
    adapter: s.adapterInfo(),
    deno: Deno.version.deno,
    kernel: {
      started,
      loadAverage: { start: load0, end: load1 },
      config: k.config,
      unit: "device ms per call",
      rows: k.rows,
      blockSizes: k.blockSizes,
      target: k.target,
    },
    engine: { loadAverage: { start: load1, end: load2 }, ...e.result },
  });
  console.log(`wrote ${file}`);
}

if (import.meta.main) await main(Deno.args);
