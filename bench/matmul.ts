/**
 * matmul benchmark: GFLOP/s of every shader version, the cpu reference backend, and tfjs-backend-webgpu
 * on the same adapter in the same run (a bench-only peer, loaded here through npm: specifiers; the
 * library never imports it). Every version is checked against the cpu reference before anything is
 * timed; sizes whose estimated time per call is over the limit are skipped and say so.
 *
 * Run: `deno task bench matmul` (prints the table, writes bench/results/matmul.json).
 * @module
 */

import * as s from "../mod.ts";
import { hasWebGPU } from "../runtime/device.ts";
import { type MatmulVersion, matmulWith } from "../ops/core/matmul.ts";
import {
  loadAverage,
  prepareTimer,
  table,
  timeInterleaved,
  timeOp,
  type Timer,
  verdict,
  writeResult,
} from "./util.ts";

/** The target of the issue, checked here and only here: at N = 1024, ours >= 10 GFLOP/s and >= 2x tfjs. */
export const TARGET = { N: 1024, gflops: 10, vsTfjs: 2 };

/** Columns of the table, in order: ours (auto), each version, the cpu backend, tfjs. */
const VERSIONS: MatmulVersion[] = ["auto", "v1", "v2", "v3", "v4", "v5"];
const LABEL: Record<string, string> = {
  auto: "ours (auto)",
  v1: "v1 naive",
  v2: "v2",
  v3: "v3",
  v4: "v4",
  v5: "v5",
  cpu: "cpu ref",
  tfjs: "tfjs-webgpu",
};

/** One row of the table: GFLOP/s per column (null: not measured, see `notes`). */
export interface MatmulRow {
  N: number;
  gflops: Record<string, number | null>;
  /** Why a cell is empty (skipped as too slow, failed its check, tfjs missing). */
  notes: Record<string, string>;
}

/** Options of {@link matmulTable}. */
export interface MatmulTableOptions {
  /** Shader versions to time (default all, "auto" first). */
  versions?: MatmulVersion[];
  /** Time the cpu reference backend (default true). */
  cpu?: boolean;
  /** Time tfjs-backend-webgpu (default true). */
  tfjs?: boolean;
  /** Skip a cell whose estimated time per call is over this many seconds (default 20). */
  maxSeconds?: number;
  /** The same limit for the tfjs column (default 60: the comparison is the point of the table). */
  peerMaxSeconds?: number;
  /** Trials per cell; the median is reported (default 5). */
  trials?: number;
  /** Progress lines go here (default none). */
  log?: (line: string) => void;
}

/** What {@link matmulTable} returns. */
export interface MatmulTable {
  rows: MatmulRow[];
  /** The printed table with its notes and the target line. */
  text: string;
  /** Whether the target was met (null when N = 1024 or tfjs was not measured). */
  target: { met: boolean | null; gflops: number | null; vsTfjs: number | null };
  /** Why tfjs is missing, if it is. */
  tfjsError: string | null;
  adapter: string;
}

const flops = (n: number) => 2 * n ** 3;

// deno-lint-ignore no-explicit-any
type Tf = any;

/** Loads tfjs-core and its WebGPU backend (on this process's WebGPU adapter). */
async function loadTfjs(): Promise<{ tf: Tf | null; error: string | null }> {
  try {
    // Pinned npm: specifiers here rather than entries in deno.json's import map: the peer is for this
    // benchmark only, and nothing in the library can then import it by a bare name.
    // deno-lint-ignore no-import-prefix
    const tf = await import("npm:@tensorflow/tfjs-core@4.22.0");
    // deno-lint-ignore no-import-prefix
    await import("npm:@tensorflow/tfjs-backend-webgpu@4.22.0");
    if (!(await tf.setBackend("webgpu"))) throw new Error("tf.setBackend('webgpu') returned false");
    await tf.ready();
    return { tf, error: null };
  } catch (e) {
    return { tf: null, error: (e as Error).message ?? String(e) };
  }
}

/** Max |error| of `got` against a float64 product of `a` and `b` (row-major n x n) at sampled entries. */
function sampledError(a: Float32Array, b: Float32Array, got: ArrayLike<number>, n: number): number {
  let worst = 0;
  for (let t = 0; t < 16; t++) {
    const i = (t * 7919) % n, j = (t * 104729 + 13) % n;
    let ref = 0;
    for (let k = 0; k < n; k++) ref += a[i * n + k] * b[k * n + j];
    worst = Math.max(worst, Math.abs(got[i * n + j] - ref) / (1 + Math.abs(ref)));
  }
  return worst;
}

/** Checks every version against the cpu reference on odd and aligned shapes; returns failures by version. */
async function checkVersions(versions: MatmulVersion[]): Promise<Record<string, string>> {
  const bad: Record<string, string> = {};
  for (const [M, K, N] of [[67, 129, 65], [64, 128, 96]]) {
    const a = s.randn([M, K], { seed: 11, device: "cpu" }), b = s.randn([K, N], { seed: 12, device: "cpu" });
    const ref = await s.matmul(a, b).toArray();
    const ga = await a.to("webgpu"), gb = await b.to("webgpu");
    for (const v of versions) {
      if (v === "v3" && K % 4 !== 0) continue; // v3 refuses unaligned K (the tests show it)
      const c = matmulWith(ga, gb, v);
      const got = await c.toArray();
      c.dispose();
      let worst = 0;
      for (let i = 0; i < ref.length; i++) {
        worst = Math.max(worst, Math.abs(got[i] - ref[i]) / (1 + Math.abs(ref[i])));
      }
      if (!(worst < 1e-4)) bad[v] = `failed its check against the cpu reference (max rel. error ${worst})`;
    }
    for (const t of [a, b, ga, gb]) t.dispose();
  }
  return bad;
}

/**
 * Times matmul at each N (square, f32): our auto choice and each shader version on webgpu, the cpu
 * reference backend, and tfjs-backend-webgpu. Cells whose estimated time per call is over
 * `maxSeconds` are skipped with a note. Returns the rows and the formatted table.
 *
 * @example
 * ```ts ignore
 * import { matmulTable } from "./bench/matmul.ts";
 * console.log((await matmulTable([256, 512], { tfjs: false, versions: ["auto", "v1"] })).text);
 * ```
 */
export async function matmulTable(
  sizes: number[] = [256, 512, 1024, 2048],
  opts: MatmulTableOptions = {},
): Promise<MatmulTable> {
  const { versions = VERSIONS, cpu = true, tfjs = true, maxSeconds = 20, peerMaxSeconds = 60 } = opts;
  const { trials = 5, log = () => {} } = opts;
  const gpu = hasWebGPU();
  const cols = [...(gpu ? versions : []), ...(cpu ? ["cpu"] : []), ...(gpu && tfjs ? ["tfjs"] : [])];
  const bad = gpu ? await checkVersions(versions) : {};
  let tf: Tf | null = null, tfjsError: string | null = null;
  if (gpu && tfjs) ({ tf, error: tfjsError } = await loadTfjs());
  const last: Record<string, { n: number; ms: number }> = {};
  const rows: MatmulRow[] = [];
  for (const n of sizes) {
    const row: MatmulRow = { N: n, gflops: {}, notes: {} };
    const ha = s.randn([n, n], { seed: 1, device: "cpu" }), hb = s.randn([n, n], { seed: 2, device: "cpu" });
    const [fa, fb] = [await ha.toArray() as Float32Array, await hb.toArray() as Float32Array];
    // Prepare every column (warm-up, check, batch size), then time them in interleaved trials.
    const timed: { col: string; timer: Timer }[] = [];
    const cleanup: (() => void)[] = [];
    for (const col of cols) {
      row.gflops[col] = null;
      if (bad[col]) {
        row.notes[col] = bad[col];
        continue;
      }
      if (col === "tfjs" && !tf) {
        row.notes[col] = `tfjs did not load: ${tfjsError}`;
        continue;
      }
      const prev = last[col];
      const estMs = prev ? prev.ms * (n / prev.n) ** 3 : 0;
      const limit = col === "tfjs" ? peerMaxSeconds : maxSeconds;
      if (estMs > limit * 1000) {
        row.notes[col] = `skipped: ~${(estMs / 1000).toFixed(0)} s per call (limit ${limit} s)`;
        continue;
      }
      if (col === "cpu" && !prev && n > 256) {
        // size the first cpu cell from a small one rather than risk a minute
        const sa = ha.slice([[0, 128], [0, 128]]), sb = hb.slice([[0, 128], [0, 128]]);
        const small = await timeOp(() => s.matmul(sa, sb), (t) => t.toArray(), (t) => t.dispose(), {
          trials: 1,
        });
        sa.dispose();
        sb.dispose();
        const est = small.ms * (n / 128) ** 3;
        if (est > maxSeconds * 1000) {
          last[col] = { n: 128, ms: small.ms };
          row.notes[col] = `skipped: ~${(est / 1000).toFixed(0)} s per call (limit ${maxSeconds} s)`;
          continue;
        }
      }
      log(`  N=${n} ${col}: warm-up and check`);
      let err = 0, timer: Timer;
      if (col === "tfjs") {
        const a = tf.tensor2d(fa, [n, n]), b = tf.tensor2d(fb, [n, n]);
        timer = await prepareTimer(() => tf.matMul(a, b), (t: Tf) => t.data(), (t: Tf) => t.dispose(), {
          trials,
          check: async (t: Tf) => void (err = sampledError(fa, fb, await t.data(), n)),
        });
        cleanup.push(() => (a.dispose(), b.dispose()));
      } else {
        const device = col === "cpu" ? "cpu" : "webgpu";
        const a = await ha.to(device), b = await hb.to(device);
        const v = (col === "cpu" ? "auto" : col) as MatmulVersion;
        timer = await prepareTimer(() => matmulWith(a, b, v), (t) => t.toArray(), (t) => t.dispose(), {
          trials,
          check: async (t) => void (err = sampledError(fa, fb, await t.toArray(), n)),
        });
        cleanup.push(() => (a.dispose(), b.dispose()));
      }
      if (!(err < 1e-3)) {
        row.notes[col] = `wrong result at N=${n} (sampled rel. error ${err}); not timed`;
        continue;
      }
      timed.push({ col, timer });
    }
    log(`  N=${n}: ${Math.max(0, ...timed.map((t) => t.timer.trials))} interleaved trials`);
    const ms = await timeInterleaved(timed.map((t) => t.timer));
    timed.forEach(({ col }, i) => {
      last[col] = { n, ms: ms[i] };
      row.gflops[col] = flops(n) / (ms[i] * 1e6);
    });
    for (const f of cleanup) f();
    ha.dispose();
    hb.dispose();
    rows.push(row);
  }
  const t = rows.find((r) => r.N === TARGET.N);
  const ours = t?.gflops.auto ?? null, theirs = t?.gflops.tfjs ?? null;
  const vsTfjs = ours !== null && theirs ? ours / theirs : null;
  const met = ours === null || vsTfjs === null ? null : ours >= TARGET.gflops && vsTfjs >= TARGET.vsTfjs;
  const head = ["N", ...cols.map((c) => LABEL[c]), ...(cols.includes("tfjs") ? ["ours/tfjs"] : [])];
  const cell = (x: number | null | undefined) => (x === null || x === undefined ? "-" : x.toFixed(2));
  const body = rows.map((r) => {
    const ratio = r.gflops.auto && r.gflops.tfjs ? `${(r.gflops.auto / r.gflops.tfjs).toFixed(1)}x` : "-";
    return [String(r.N), ...cols.map((c) => cell(r.gflops[c])), ...(cols.includes("tfjs") ? [ratio] : [])];
  });
  const notes = rows.flatMap((r) => Object.entries(r.notes).map(([c, n]) => `  N=${r.N} ${LABEL[c]}: ${n}`));
  const targetLine = met === null
    ? `target (N=${TARGET.N}: >= ${TARGET.gflops} GFLOP/s and >= ${TARGET.vsTfjs}x tfjs): not measured`
    : `target (N=${TARGET.N}: >= ${TARGET.gflops} GFLOP/s and >= ${TARGET.vsTfjs}x tfjs): ${verdict(met)} ` +
      `(ours ${ours!.toFixed(2)} GFLOP/s, ${vsTfjs!.toFixed(1)}x tfjs)`;
  const text = [
    "matmul GFLOP/s (f32, N x N @ N x N; median of trials interleaved across columns, each trial a batch of\n" +
    "calls waiting only on the last readback)",
    table(head, body),
    ...(notes.length ? ["notes:", ...notes] : []),
    targetLine,
  ].join("\n");
  return { rows, text, target: { met, gflops: ours, vsTfjs }, tfjsError, adapter: s.adapterInfo() };
}

/** `deno task bench matmul`: prints the table and writes bench/results/matmul.json. */
export async function main(args: string[] = []): Promise<void> {
  const sizes = args.length ? args.map(Number) : [256, 512, 1024, 2048];
  const load0 = loadAverage();
  console.log(`adapter: ${s.adapterInfo()}\nload average at start: ${load0 ?? "?"}`);
  const started = new Date().toISOString();
  const t = await matmulTable(sizes, { log: (l) => console.log(l) });
  const load1 = loadAverage();
  console.log(
    `\n${t.text}\nload average at end: ${load1 ?? "?"} (other processes on these CPUs slow every column)`,
  );
  const file = await writeResult("matmul", {
    bench: "matmul",
    started,
    adapter: t.adapter,
    deno: Deno.version.deno,
    loadAverage: { start: load0, end: load1 },
    unit: "GFLOP/s",
    target: { N: TARGET.N, minGflops: TARGET.gflops, minVsTfjs: TARGET.vsTfjs, ...t.target },
    tfjsError: t.tfjsError,
    rows: t.rows,
  });
  console.log(`wrote ${file}`);
}
