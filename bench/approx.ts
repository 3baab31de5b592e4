/**
 * Benchmark of the approximated and local attentions (ops/approx) against exact softmax attention composed
 * from core ops (softmax(q k^T / sqrt(D)) v, materialising the (T, T) scores): forward time and peak device
 * memory vs T on the default device. Every variant is checked against the float64 reference on a small
 * case before anything is timed.
 *
 *   deno run -A bench/approx.ts                 # T = 256 ... 2048, B 1, H 4, D 64
 *   deno run -A bench/approx.ts --T 512,4096 --H 8 --reps 5
 * @module
 */

import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { gpu } from "../runtime/device.ts";

/** One measured cell. */
export interface ApproxBenchRow {
  method: string;
  T: number;
  /** Median forward time (ms), synchronised with the device. */
  ms: number;
  /** Peak device bytes above the inputs during one forward (MiB). */
  peakMiB: number;
}

type Method = [name: string, fn: (q: Tensor, k: Tensor, v: Tensor, T: number) => Tensor];

const exact = (q: Tensor, k: Tensor, v: Tensor) =>
  s.tidy(() => q.matmul(k.transpose()).mul(1 / Math.sqrt(q.shape[3])).softmax(-1).matmul(v));

/** The compared methods (Performer with 256 features, Linformer with k = 256, local blocks of 128). */
export const METHODS: Method[] = [
  ["exact (core ops)", (q, k, v) => exact(q, k, v)],
  ["linear", (q, k, v) => s.linearAttention(q, k, v)],
  ["linear causal", (q, k, v) => s.linearAttention(q, k, v, { causal: true })],
  ["performer m=256", (q, k, v) => s.performerAttention(q, k, v, { features: 256, seed: 0 })],
  ["performer m=256 causal", (q, k, v) => s.performerAttention(q, k, v, { features: 256, causal: true })],
  ["linformer k=256", (q, k, v, T) => {
    const E = s.linformerProjection(256, T, { seed: 0, device: q.device });
    const out = s.linformerAttention(q, k, v, E);
    E.dispose();
    return out;
  }],
  ["local b=128", (q, k, v) => s.localAttention(q, k, v, { blockSize: 128 })],
  ["local b=128 causal", (q, k, v) => s.localAttention(q, k, v, { blockSize: 128, causal: true })],
];

async function sync(device: s.DeviceName): Promise<void> {
  if (device === "webgpu") await gpu().sync();
}

/** Checks every method's output against its float64 reference on a small case (throws on mismatch). */
export async function checkApprox(): Promise<void> {
  await s.tidy(async () => {
    const [q, k, v] = [1, 2, 3].map((seed) => s.randn([1, 2, 37, 16], { seed, device: "cpu", dtype: "f64" }));
    const dev = await Promise.all([q, k, v].map(async (t) => await s.cast(t, "f32").to(s.getDevice())));
    const E = s.linformerProjection(8, 37, { seed: 0, device: "cpu", dtype: "f64" });
    const Ed = await s.cast(E, "f32").to(s.getDevice());
    const pairs: [string, Tensor, Tensor][] = [
      [
        "linear",
        s.linearAttention(dev[0], dev[1], dev[2], { causal: true, chunkSize: 8 }),
        s.linearAttentionRef(q, k, v, { causal: true }),
      ],
      [
        "performer",
        s.performerAttention(dev[0], dev[1], dev[2], { features: 32 }),
        s.performerAttentionRef(q, k, v, { features: 32 }),
      ],
      ["linformer", s.linformerAttention(dev[0], dev[1], dev[2], Ed), s.linformerAttentionRef(q, k, v, E)],
      [
        "local",
        s.localAttention(dev[0], dev[1], dev[2], { blockSize: 8, causal: true }),
        s.localAttentionRef(q, k, v, { blockSize: 8, causal: true }),
      ],
    ];
    for (const [name, out, ref] of pairs) {
      const a = await out.toArray(), b = await ref.toArray();
      let err = 0;
      for (let i = 0; i < a.length; i++) err = Math.max(err, Math.abs(a[i] - b[i]));
      if (!(err < 1e-3)) throw new Error(`bench/approx: ${name} differs from its reference by ${err}`);
    }
  });
}

/** Times each method at each T (B, H, D fixed); returns one row per (method, T). */
export async function benchApprox(
  { Ts = [256, 512, 1024, 2048], B = 1, H = 4, D = 64, reps = 3 } = {},
): Promise<ApproxBenchRow[]> {
  const device = s.getDevice();
  const rows: ApproxBenchRow[] = [];
  for (const T of Ts) {
    const [q, k, v] = [1, 2, 3].map((seed) => s.randn([B, H, T, D], { seed, device }));
    for (const [method, fn] of METHODS) {
      let ms = NaN, peak = NaN;
      try {
        fn(q, k, v, T).dispose(); // warm-up: pipelines compiled, pool primed
        await sync(device);
        const times: number[] = [];
        for (let r = 0; r < reps; r++) {
          s.resetPeak(device);
          const base = s.memory(device).bytesInUse;
          const t0 = performance.now();
          const out = fn(q, k, v, T);
          await sync(device);
          times.push(performance.now() - t0);
          peak = (s.memory(device).peakBytes - base) / 2 ** 20;
          out.dispose();
        }
        ms = times.sort((a, b) => a - b)[Math.floor(times.length / 2)];
      } catch (e) {
        console.error(`${method} at T = ${T}: ${(e as Error).message}`); // e.g. over the buffer limit
      }
      rows.push({ method, T, ms, peakMiB: peak });
    }
    for (const t of [q, k, v]) t.dispose();
  }
  return rows;
}

/** Formats rows as a Markdown table: one line per method, time (ms) / peak MiB per T. */
export function formatApprox(rows: ApproxBenchRow[]): string {
  const Ts = [...new Set(rows.map((r) => r.T))];
  const lines = [
    `| method | ${Ts.map((T) => `T=${T} ms / MiB`).join(" | ")} |`,
    `|---|${Ts.map(() => "---").join("|")}|`,
  ];
  for (const [method] of METHODS) {
    const cells = Ts.map((T) => {
      const r = rows.find((x) => x.method === method && x.T === T)!;
      return Number.isNaN(r.ms) ? "failed" : `${r.ms.toFixed(1)} / ${r.peakMiB.toFixed(1)}`;
    });
    lines.push(`| ${method} | ${cells.join(" | ")} |`);
  }
  return lines.join("\n");
}

if (import.meta.main) {
  const arg = (name: string) => {
    const i = Deno.args.indexOf(`--${name}`);
    return i >= 0 ? Deno.args[i + 1] : undefined;
  };
  const Ts = arg("T")?.split(",").map(Number);
  await checkApprox();
  console.log(`device: ${s.getDevice()} (${s.adapterInfo()})`);
  const rows = await benchApprox({
    Ts,
    H: Number(arg("H") ?? 4),
    D: Number(arg("D") ?? 64),
    reps: Number(arg("reps") ?? 3),
  });
  console.log(formatApprox(rows));
}
