/**
 * Attention benchmark (issue 5): FlashAttention against standard attention (S and P in device memory) on
 * the WebGPU adapter, B = 1 (the software adapter is saturated by one sequence's heads), H = 8, D = 64.
 * - time and peak device memory vs T, forward and forward + backward, causal and not: flash up to 16K,
 *   standard until one head's T x T scores pass maxStorageBufferBindingSize (T = 4096 here); backward up
 *   to 4096 (the paper's Tables 20 and 21 range);
 * - a block-size sweep with the modelled device-memory traffic beside the runtime (the paper's Figure 2);
 * - block-sparse time vs the fraction of non-zero blocks.
 * - same-run peers at T = 1024, non-causal, on the same adapter: attention composed from
 *   tfjs-backend-webgpu ops (matMul, softmax, matMul) and ONNX Runtime Web's WebGPU provider (its
 *   com.microsoft MultiHeadAttention op, which runs its FlashAttention shader on this adapter, and a plain
 *   MatMul-Softmax-MatMul graph), with ONNX Runtime Web's wasm provider (the CPU) for scale. The ONNX models
 *   are encoded here, in memory (nothing is downloaded at run time beyond the pinned npm packages).
 * Every implementation, peers included, is checked against the float64 reference before anything is timed.
 *
 * `deno run -A bench/attention.ts small [T ...]` prints device times with small heads (B 8, H 4, D 16-64,
 * T 256-4096, causal) in both layouts, as a language model's training step runs them (nothing written).
 * Run: `deno task bench attention` (full), `deno task bench attention 1024 4096` (chosen T values for the
 * main table; the sweeps use the first; the peers run when 1024 is among them). Prints tables, writes
 * bench/results/attention.json. `deno run -A bench/attention.ts peers` runs only the peer table (and its
 * targets), writing bench/results/attention_peers.json.
 * SEQLAB_ORT_LOG=verbose prints ONNX Runtime's log (the WGSL of every program it builds: FlashAttention).
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
      ["flash v1", () => s.flashAttention(qg, kg, vg, { ...o, version: "v1" })],
      ["flash v2", () => s.flashAttention(qg, kg, vg, { ...o, version: "v2" })],
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

// ---------------------------------------------------------------------------------------------------------
// same-run peers (bench only: the npm: specifiers are pinned here, and nothing in the library imports them)

/** Pinned peer versions. onnxruntime-web 1.23 ran MultiHeadAttention unfused here (its FlashAttention then
 * needed the subgroups feature, which this adapter lacks); from 1.24 on it runs FlashAttention. */
export const PEERS = { tfjs: "4.22.0", ort: "1.30.0" } as const;

/** The issue's targets at T = 1024 (non-causal): flash forward >= 5x tfjs and >= 3x ORT's FlashAttention. */
export const PEER_TARGET = { T: 1024, vsTfjs: 5, vsOrtFlash: 3 } as const;

/** One peer column at the peer size. */
export interface PeerRow {
  name: string;
  /** Median ms per forward call; null where it did not load, failed its check or was skipped. */
  ms: number | null;
  /** Max |error| against the float64 reference over the checked rows. */
  maxErr: number | null;
  /** How it ran (graph, provider, what each call includes) or why it did not. */
  note: string;
}

// A minimal ONNX protobuf writer: just the fields these graphs use (onnx.proto3 field numbers).
type Bytes = number[];
const pbVarint = (n: number): Bytes => {
  let v = BigInt(n);
  if (v < 0n) v += 1n << 64n;
  const out: Bytes = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return out;
};
const pbKey = (field: number, wire: number) => pbVarint((field << 3) | wire);
const pbInt = (field: number, n: number): Bytes => [...pbKey(field, 0), ...pbVarint(n)];
const pbBytes = (field: number, b: ArrayLike<number>): Bytes => [
  ...pbKey(field, 2),
  ...pbVarint(b.length),
  ...Array.from(b),
];
const pbStr = (field: number, x: string) => pbBytes(field, new TextEncoder().encode(x));

/** A node attribute: an int, a float or a list of ints. */
interface OnnxAttr {
  name: string;
  i?: number;
  f?: number;
  ints?: number[];
}
interface OnnxNode {
  op: string;
  inputs: string[];
  outputs: string[];
  domain?: string;
  attrs?: OnnxAttr[];
}

function onnxAttr(a: OnnxAttr): Bytes {
  // AttributeProto: name 1, f 2 (fixed32), i 3, ints 8, type 20 (FLOAT 1, INT 2, INTS 7)
  const body = a.f !== undefined
    ? [...pbKey(2, 5), ...new Uint8Array(new Float32Array([a.f]).buffer), ...pbInt(20, 1)]
    : a.i !== undefined
    ? [...pbInt(3, a.i), ...pbInt(20, 2)]
    : [...(a.ints ?? []).flatMap((x) => pbInt(8, x)), ...pbInt(20, 7)];
  return [...pbStr(1, a.name), ...body];
}

/** ModelProto bytes (IR 8, opsets "" 17 and com.microsoft 1) of a graph of float32 tensors. */
export function onnxModel(
  nodes: OnnxNode[],
  inputs: [string, number[]][],
  outputs: [string, number[]][],
  scalars: [string, number][] = [],
): Uint8Array {
  // NodeProto: input 1, output 2, name 3, op_type 4, attribute 5, domain 7
  const node = (n: OnnxNode, k: number) => [
    ...n.inputs.flatMap((x) => pbStr(1, x)),
    ...n.outputs.flatMap((x) => pbStr(2, x)),
    ...pbStr(3, `${n.op}_${k}`),
    ...pbStr(4, n.op),
    ...(n.attrs ?? []).flatMap((a) => pbBytes(5, onnxAttr(a))),
    ...(n.domain ? pbStr(7, n.domain) : []),
  ];
  // ValueInfoProto: name 1, type 2 -> TypeProto.tensor_type 1 -> elem_type 1 (FLOAT = 1), shape 2 -> dim 1 -> dim_value 1
  const value = ([name, dims]: [string, number[]]) => [
    ...pbStr(1, name),
    ...pbBytes(2, pbBytes(1, [...pbInt(1, 1), ...pbBytes(2, dims.flatMap((d) => pbBytes(1, pbInt(1, d))))])),
  ];
  // TensorProto (a float scalar initializer): data_type 2, raw_data 9, name 8
  const scalar = ([name, x]: [string, number]) => [
    ...pbInt(2, 1),
    ...pbStr(8, name),
    ...pbBytes(9, new Uint8Array(new Float32Array([x]).buffer)),
  ];
  // GraphProto: node 1, name 2, initializer 5, input 11, output 12
  const graph = [
    ...nodes.flatMap((n, k) => pbBytes(1, node(n, k))),
    ...pbStr(2, "attention"),
    ...scalars.flatMap((x) => pbBytes(5, scalar(x))),
    ...inputs.flatMap((x) => pbBytes(11, value(x))),
    ...outputs.flatMap((x) => pbBytes(12, value(x))),
  ];
  // ModelProto: ir_version 1, producer_name 2, graph 7, opset_import 8 (domain 1, version 2)
  return new Uint8Array([
    ...pbInt(1, 8),
    ...pbStr(2, "seqlab bench"),
    ...pbBytes(7, graph),
    ...pbBytes(8, [...pbStr(1, ""), ...pbInt(2, 17)]),
    ...pbBytes(8, [...pbStr(1, "com.microsoft"), ...pbInt(2, 1)]),
  ]);
}

// deno-lint-ignore no-explicit-any
type Any = any;

async function loadTfjs(): Promise<Any> {
  // deno-lint-ignore no-import-prefix
  const tf = await import("npm:@tensorflow/tfjs-core@4.22.0");
  // deno-lint-ignore no-import-prefix
  await import("npm:@tensorflow/tfjs-backend-webgpu@4.22.0");
  if (!(await tf.setBackend("webgpu"))) throw new Error("tf.setBackend('webgpu') returned false");
  await tf.ready();
  return tf;
}

async function loadOrt(): Promise<Any> {
  // the webgpu bundle also carries the wasm (CPU) provider
  // deno-lint-ignore no-import-prefix
  const ort = await import("npm:onnxruntime-web@1.30.0/webgpu");
  ort.env.wasm.numThreads = 1; // threads would need cross-origin isolation; 2 cores are shared anyway
  ort.env.logLevel = (Deno.env.get("SEQLAB_ORT_LOG") ?? "error") as typeof ort.env.logLevel;
  return ort;
}

/** (B, H, T, D) -> (B, T, H D), MultiHeadAttention's layout. */
function toBSHD(x: Float32Array, B: number, h: number, T: number, d: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let b = 0; b < B; b++) {
    for (let hh = 0; hh < h; hh++) {
      for (let t = 0; t < T; t++) {
        const src = ((b * h + hh) * T + t) * d, dst = ((b * T + t) * h + hh) * d;
        out.set(x.subarray(src, src + d), dst);
      }
    }
  }
  return out;
}

/** Max |error| of a (B, H, T, D) output (or (B, T, H D) when `bshd`) against reference rows [r0, r1). */
function rowsError(
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  T: number,
  r0: number,
  r1: number,
  bshd = false,
): number {
  const n = r1 - r0;
  let worst = 0;
  for (let h = 0; h < H; h++) {
    for (let i = 0; i < n; i++) {
      for (let d = 0; d < D; d++) {
        const t = r0 + i;
        const g = bshd ? got[(t * H + h) * D + d] : got[(h * T + t) * D + d];
        const e = Math.abs(g - ref[(h * n + i) * D + d]);
        worst = Number.isNaN(e) ? Infinity : Math.max(worst, e);
      }
    }
  }
  return worst;
}

/**
 * The peer table at T (non-causal, B 1, H 8, D 64): seqlab flash and standard forward, tfjs composed
 * attention, ORT WebGPU MultiHeadAttention and MatMul-Softmax-MatMul, ORT wasm MultiHeadAttention and
 * MatMul-Softmax-MatMul. Each column is checked against the float64 reference on 32 query rows of every
 * head before it is timed; the trials are interleaved across columns.
 */
export async function peerTable(T = PEER_TARGET.T, log: (l: string) => void = console.log): Promise<{
  T: number;
  rows: PeerRow[];
  text: string;
  ratios: Record<string, number | null>;
}> {
  const x = inputs(T);
  const scale = 1 / Math.sqrt(D);
  const [qh, kh, vh] = await Promise.all(
    [x.q, x.k, x.v].map(async (t) => (await t.toArray()) as Float32Array),
  );
  // the reference on query rows [r0, r1) of every head (non-causal: each row needs only its own q)
  const r0 = T >> 1, r1 = Math.min(T, r0 + 32);
  const ref = await s.tidy(async () => {
    const [q64, k64, v64] = await Promise.all(
      [x.q, x.k, x.v].map(async (t) => s.cast(await t.to("cpu"), "f64")),
    );
    return await s.attentionRef(q64.slice([null, null, [r0, r1]]), k64, v64).o.toArray();
  });
  const rows: PeerRow[] = [];
  const timed: { row: PeerRow; timer: Timer }[] = [];
  const cleanup: (() => void)[] = [];
  const tryPeer = async (
    name: string,
    note: string,
    make: () => Promise<{ timer: Timer; out: ArrayLike<number>; bshd?: boolean }>,
  ) => {
    const row: PeerRow = { name, ms: null, maxErr: null, note };
    rows.push(row);
    try {
      log(`  peers T ${T}: ${name}: load, warm-up and check`);
      const { timer, out, bshd } = await make();
      row.maxErr = rowsError(out, ref, T, r0, r1, bshd);
      if (!(row.maxErr < 1e-4)) {
        row.note = `wrong result (max error ${row.maxErr} on rows ${r0}-${r1 - 1}); not timed`;
        return;
      }
      timed.push({ row, timer });
    } catch (e) {
      row.note = `did not run: ${((e as Error).message ?? String(e)).split("\n")[0].slice(0, 160)}`;
    }
  };
  const seqlab = (impl: "flash" | "standard") => async () => {
    let out: ArrayLike<number> = [];
    const timer = await prepareTimer(() => impls[impl](x.q, x.k, x.v), (r) => r.lse.toArray(), drop, {
      trials: 3,
      check: async (r) => void (out = await r.o.toArray()),
    });
    return { timer, out };
  };
  await tryPeer(
    "seqlab flash",
    "flashAttention (v3), one submit; waits on the LSE readback",
    seqlab("flash"),
  );
  await tryPeer("seqlab standard", "standardAttention: S and P in device memory", seqlab("standard"));

  let tf: Any = null;
  await tryPeer(
    `tfjs-webgpu ${PEERS.tfjs}`,
    "tf.matMul(q, k, false, true) * scale, tf.softmax, tf.matMul(p, v) on (H, T, D); waits on data()",
    async () => {
      tf = await loadTfjs();
      const [q, k, v] = [qh, kh, vh].map((a) => tf.tensor3d(a, [H, T, D]));
      cleanup.push(() => [q, k, v].forEach((t) => t.dispose()));
      const op = () => tf.tidy(() => tf.matMul(tf.softmax(tf.mul(tf.matMul(q, k, false, true), scale)), v));
      let out: ArrayLike<number> = [];
      const timer = await prepareTimer(op, (t: Any) => t.data(), (t: Any) => t.dispose(), {
        trials: 3,
        check: async (t: Any) => void (out = await t.data()),
      });
      return { timer, out };
    },
  );

  let ort: Any = null;
  const HD = H * D;
  const mha = onnxModel(
    [{
      op: "MultiHeadAttention",
      domain: "com.microsoft",
      inputs: ["q", "k", "v"],
      // present_key / present_value asked for: ORT's FlashAttention path needs them
      outputs: ["o", "pk", "pv"],
      attrs: [{ name: "num_heads", i: H }, { name: "scale", f: scale }],
    }],
    [["q", [1, T, HD]], ["k", [1, T, HD]], ["v", [1, T, HD]]],
    [["o", [1, T, HD]], ["pk", [1, H, T, D]], ["pv", [1, H, T, D]]],
  );
  const msm = onnxModel(
    [
      { op: "Transpose", inputs: ["k"], outputs: ["kt"], attrs: [{ name: "perm", ints: [0, 1, 3, 2] }] },
      { op: "MatMul", inputs: ["q", "kt"], outputs: ["s"] },
      { op: "Mul", inputs: ["s", "scale"], outputs: ["ss"] },
      { op: "Softmax", inputs: ["ss"], outputs: ["p"], attrs: [{ name: "axis", i: -1 }] },
      { op: "MatMul", inputs: ["p", "v"], outputs: ["o"] },
    ],
    [["q", [1, H, T, D]], ["k", [1, H, T, D]], ["v", [1, H, T, D]]],
    [["o", [1, H, T, D]]],
    [["scale", scale]],
  );
  const bshd = [qh, kh, vh].map((a) => toBSHD(a, 1, H, T, D));
  const ortPeer = (graph: "mha" | "msm", ep: "webgpu" | "wasm") => async () => {
    ort ??= await loadOrt();
    const isMha = graph === "mha";
    const session = await ort.InferenceSession.create(isMha ? mha : msm, {
      executionProviders: [ep],
      // the K/V cache outputs stay on the device and are dropped; O is read back
      ...(isMha && ep === "webgpu"
        ? { preferredOutputLocation: { pk: "gpu-buffer", pv: "gpu-buffer" } }
        : {}),
    });
    cleanup.push(() => session.release());
    const dims = isMha ? [1, T, HD] : [1, H, T, D];
    const [q, k, v] = (isMha ? bshd : [qh, kh, vh]).map((a) => new ort.Tensor("float32", a, dims));
    // session.run calls are chained (one at a time); a trial waits on the last one
    let chain: Promise<unknown> = Promise.resolve();
    const op = () =>
      chain = chain.then(async () => {
        const r = await session.run({ q, k, v });
        if (isMha) { for (const name of ["pk", "pv"]) r[name].dispose?.(); }
        return r.o.data as Float32Array;
      });
    let out: ArrayLike<number> = [];
    const timer = await prepareTimer(op, (p) => p, () => {}, {
      trials: 3,
      check: async (p) => void (out = (await p) as Float32Array),
    });
    return { timer, out, bshd: isMha };
  };
  const ortNote = (graph: string, ep: string) =>
    `${graph}; inputs uploaded and O read back every call${ep === "wasm" ? "; 1 thread" : ""}`;
  await tryPeer(
    `ORT-web ${PEERS.ort} webgpu MHA`,
    ortNote("com.microsoft MultiHeadAttention (its FlashAttention program)", "webgpu"),
    ortPeer("mha", "webgpu"),
  );
  await tryPeer(
    `ORT-web ${PEERS.ort} webgpu MatMul-Softmax-MatMul`,
    ortNote("Transpose, MatMul, Mul, Softmax, MatMul", "webgpu"),
    ortPeer("msm", "webgpu"),
  );
  await tryPeer(
    `ORT-web ${PEERS.ort} wasm MHA`,
    ortNote("com.microsoft MultiHeadAttention on the CPU", "wasm"),
    ortPeer("mha", "wasm"),
  );
  await tryPeer(
    `ORT-web ${PEERS.ort} wasm MatMul-Softmax-MatMul`,
    ortNote("Transpose, MatMul, Mul, Softmax, MatMul on the CPU", "wasm"),
    ortPeer("msm", "wasm"),
  );
  log(`  peers T ${T}: ${Math.max(0, ...timed.map((t) => t.timer.trials))} interleaved trials`);
  const times = await timeInterleaved(timed.map((t) => t.timer));
  timed.forEach((t, i) => (t.row.ms = times[i]));
  for (const f of cleanup) {
    try {
      await f();
    } catch { /* a peer's own teardown */ }
  }
  x.dispose();
  const flash = rows[0].ms;
  const msOf = (suffix: string) => rows.find((r) => r.name.endsWith(suffix))?.ms ?? null;
  const ratio = (peer: number | null) => (flash && peer ? peer / flash : null);
  const ratios = {
    "tfjs / seqlab flash": ratio(rows.find((r) => r.name.startsWith("tfjs"))?.ms ?? null),
    "ORT webgpu MHA (FlashAttention) / seqlab flash": ratio(msOf("webgpu MHA")),
    "ORT webgpu MatMul-Softmax-MatMul / seqlab flash": ratio(msOf("webgpu MatMul-Softmax-MatMul")),
    "ORT wasm MHA / seqlab flash": ratio(msOf("wasm MHA")),
    "ORT wasm MatMul-Softmax-MatMul / seqlab flash": ratio(msOf("wasm MatMul-Softmax-MatMul")),
  };
  const text = [
    `same-run peers, T ${T}, non-causal, B 1, H ${H}, D ${D} (median ms per forward, trials interleaved across`,
    `columns; each column checked against the float64 reference on rows ${r0}-${r1 - 1} of every head first)`,
    table(
      ["implementation", "ms", "peer / seqlab flash", "max error"],
      rows.map((r) => [
        r.name,
        r.ms === null ? "-" : ms(r.ms),
        r.ms !== null && flash ? `${(r.ms / flash).toFixed(2)}x` : "-",
        r.maxErr === null ? "-" : r.maxErr.toExponential(1),
      ]),
    ),
    "how each ran:",
    ...rows.map((r) => `  ${r.name}: ${r.note}`),
  ].join("\n");
  return { T, rows, text, ratios };
}

const peerTarget = (ratio: number | null | undefined, min: number) =>
  ratio ? { ratio, met: ratio >= min } : { met: null };

function printTargets(targets: Record<string, unknown>): void {
  console.log("\ntargets:");
  for (const [k, v] of Object.entries(targets)) {
    const r = v as { met: boolean | null; ratio?: number };
    console.log(
      `  ${k}: ${r.met === null ? "not measured" : r.met ? "met" : "NOT met"}${
        r.ratio ? ` (${r.ratio.toFixed(1)}x)` : ""
      }`,
    );
  }
}

/** The issue's two peer targets from a peer table (not measured without one). */
function peerTargets(p: { ratios: Record<string, number | null> } | null) {
  return {
    [`flash forward >= ${PEER_TARGET.vsTfjs}x faster than tfjs-webgpu at T = ${PEER_TARGET.T} (non-causal)`]:
      peerTarget(p?.ratios["tfjs / seqlab flash"], PEER_TARGET.vsTfjs),
    [`flash forward >= ${PEER_TARGET.vsOrtFlash}x faster than ORT WebGPU's FlashAttention at T = ${PEER_TARGET.T}`]:
      peerTarget(p?.ratios["ORT webgpu MHA (FlashAttention) / seqlab flash"], PEER_TARGET.vsOrtFlash),
  };
}

/**
 * Runs the benchmark; `args` may list T values for the main table, or be `["peers"]` for the peer table
 * alone.
 */
/**
 * Device time (timestamp profiler, median of 3) of flash forward and forward + backward with small heads
 * (B 8, H 4, D 16, 32, 64; causal), as a language model's training step runs them: q, k, v in (B, T, H, D)
 * ("bthd") against transposed (B, H, T, D) views ("bhtd", what the model passed before the layout option).
 */
async function smallHeadTable(Ts: number[]): Promise<string> {
  const { gpu } = await import("../runtime/device.ts");
  const B = 8, Hs = 4;
  const rows: string[][] = [];
  for (const Dh of [16, 32, 64]) {
    for (const T of Ts.length ? Ts : [256, 1024, 4096]) {
      const x = [1, 2, 3].map((seed) => s.randn([B, T, Hs, Dh], { seed }));
      const g = s.randn([B, T, Hs, Dh], { seed: 4 });
      const cells: string[] = [];
      for (const layout of ["bhtd", "bthd"] as const) {
        const leaves = x.map((t) => t.detach());
        for (const t of leaves) t.requiresGrad = true;
        const gl = layout === "bthd" ? g : g.transpose(1, 2);
        const ms = { fwd: [] as number[], bwd: [] as number[] };
        for (let trial = 0; trial < 4; trial++) {
          // the transposed views are recorded per call (a backward frees the graph through them)
          const ins = layout === "bthd" ? leaves : leaves.map((t) => t.transpose(1, 2));
          gpu().startProfile();
          const r = s.flashAttention(ins[0], ins[1], ins[2], { causal: true, layout });
          await r.lse.toArray();
          const f = await gpu().stopProfile();
          gpu().startProfile();
          r.o.backward(gl);
          await leaves[0].grad!.slice([0, [0, 1]]).toArray();
          const b = await gpu().stopProfile();
          drop(r);
          for (const t of leaves) t.zeroGrad();
          if (layout === "bhtd") { for (const t of ins) t.dispose(); }
          if (trial === 0) continue; // compiles
          ms.fwd.push(f.reduce((a, p) => a + p.ms, 0));
          ms.bwd.push(b.reduce((a, p) => a + p.ms, 0));
        }
        const med = (a: number[]) => a.sort((p, q) => p - q)[Math.floor(a.length / 2)];
        cells.push(med(ms.fwd).toFixed(2), med(ms.bwd).toFixed(2));
        if (layout === "bhtd") gl.dispose();
        for (const t of leaves) t.dispose();
      }
      for (const t of [...x, g]) t.dispose();
      rows.push([`D ${Dh}, T ${T}`, ...cells]);
    }
  }
  return `flash attention device ms, B ${B}, H ${Hs}, causal (load average ${loadAverage()})\n` +
    table(["", "bhtd view fwd", "bhtd view bwd", "bthd fwd", "bthd bwd"], rows);
}

export async function main(args: string[] = []): Promise<void> {
  if (!hasWebGPU()) {
    console.log("bench attention: no WebGPU adapter; skipped");
    return;
  }
  const load0 = loadAverage(), started = new Date().toISOString();
  console.log(`adapter: ${adapterInfo()}; load average ${load0}`);
  if (args[0] === "peers") {
    const p = await peerTable(PEER_TARGET.T);
    const load1 = loadAverage();
    console.log(`\n${p.text}\nload average at the end: ${load1}`);
    printTargets(peerTargets(p));
    const file = await writeResult("attention_peers", {
      adapter: adapterInfo(),
      started,
      loadAverage: { start: load0, end: load1 },
      setup: { B: 1, H, D, T: p.T, causal: false },
      versions: PEERS,
      rows: p.rows,
      ratios: p.ratios,
      targets: peerTargets(p),
    });
    console.log(`wrote ${file}`);
    return;
  }
  await checkAttention();
  console.log("checked: flash v1, v2, v3 and standard match the float64 reference");
  if (args[0] === "small") {
    console.log(await smallHeadTable(args.slice(1).map(Number)));
    return;
  }

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
    "flash f+b MiB",
    "std f+b MiB",
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
        MiB(f.fwdBwdPeakBytes),
        MiB(st.fwdBwdPeakBytes),
      ]);
    }
  }
  console.log(
    `\nflash vs standard, B 1, H ${H}, D ${D} (peak device memory above the inputs: forward, then forward + backward)`,
  );
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

  // same-run peers at the target size
  let peers: Awaited<ReturnType<typeof peerTable>> | null = null;
  if (Ts.includes(PEER_TARGET.T)) {
    peers = await peerTable(PEER_TARGET.T);
    console.log(`\n${peers.text}`);
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
    ...peerTargets(peers),
  };
  printTargets(targets);
  const file = await writeResult("attention", {
    adapter: adapterInfo(),
    started,
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
    peers: peers
      ? { T: peers.T, causal: false, versions: PEERS, rows: peers.rows, ratios: peers.ratios }
      : `not run (T = ${PEER_TARGET.T} not among the sizes)`,
  });
  console.log(`wrote ${file}`);
}

if (import.meta.main) await main(Deno.args);
