/**
 * Recurrent decoding throughput: a MambaLM against a TransformerLM of about the same parameter count
 * (the Mamba paper's pairing: the same width, two Mamba blocks per Transformer block, since a Mamba block
 * holds ~6 D^2 parameters and a Transformer block ~12 D^2) with a preallocated KV cache, and a JambaLM
 * hybrid of the same width (2 nLayer layers, attention:Mamba 1:3, an MoE of 4 experts (top 2, hidden D)
 * every other layer, SwiGLU MLPs of hidden D between: its KV cache is a quarter of its layers'). For each context
 * length the context is prefilled once at batch 1 (timed: prefill tokens/s), copied into every row of
 * the batch (the rows share the context; decode cost depends on its length, not its content), and then
 * greedy decoding is timed over `steps` tokens in two ways:
 *
 * - "device": the next token is the argmax of the logits on the device and feeds the next step; one
 *   readback after the timed loop (nothing waits inside it).
 * - "host": every step reads the logits (B, V) back, picks the argmax on the host and uploads the
 *   token, as a host-side sampler does (one submit-and-wait per token).
 *
 * Before anything is timed, both models' decode path is checked: prefill then step must give the logits
 * of `forward` on the same tokens. Trials interleave the models and modes; the median is reported.
 *
 * Run: `deno task bench decode` (contexts 1K and 8K, batches 1 and 4), or `deno task bench decode 1024`
 * for chosen contexts. Prints the table, writes bench/results/decode.json.
 * @module
 */

import * as s from "../mod.ts";
import type { MambaLMState, Tensor } from "../mod.ts";
import { gpu, hasWebGPU } from "../runtime/device.ts";
import { loadAverage, median, table, verdict, writeResult } from "./util.ts";

/** Options of {@link decodeThroughput}. */
export interface DecodeBenchOptions {
  /** Context lengths to prefill (default [1024, 8192]). */
  contexts?: number[];
  /** Batch sizes (default [1, 4]). */
  batches?: number[];
  /**
   * Decode steps per timed loop (default 64). Device mode pays one submit-and-wait (~11 ms on lavapipe) per
   * loop, so a short loop measures that more than decoding: 16 steps added ~0.7 ms to every token (the
   * Mamba paper's throughput figure generates 128 tokens per prompt: docs/papers.md).
   */
  steps?: number;
  /** Timed loops per cell; the median is reported (default 3). */
  trials?: number;
  /** Model width D of both models (default 128). */
  dModel?: number;
  /** Transformer blocks; the MambaLM gets twice as many (default 2). */
  nLayer?: number;
  /** Vocabulary (default 256, bytes). */
  vocabSize?: number;
  /** Also the JambaLM hybrid (default true; notebook 04 compares the two pure models only). */
  jamba?: boolean;
}

/** One measured cell. */
export interface DecodeRow {
  model: "mamba" | "transformer" | "jamba";
  params: number;
  context: number;
  B: number;
  /** "device": argmax on the device, one readback per loop; "host": logits read back every token. */
  mode: "device" | "host";
  steps: number;
  /** Median ms per decode step (the whole batch advances one token). */
  msPerStep: number;
  /** B / (ms per step) * 1000. */
  tokensPerSecond: number;
  /** Bytes of recurrent state for the batch at this context (KV cache filled part, or conv + ssm state). */
  stateBytes: number;
  /** Batch-1 prefill of the context, ms (one run, synchronised). */
  prefillMs: number;
}

type Model = s.MambaLM | s.TransformerLM | s.JambaLM;
type Kind = DecodeRow["model"];
/** The cache API TransformerLM and JambaLM share (K/V per layer, null for a Mamba layer; Mamba states). */
interface LMCache {
  k: (Tensor | null)[];
  v: (Tensor | null)[];
  mamba?: ({ conv: Tensor; ssm: Tensor } | null)[];
  length: number;
  dispose(): void;
}
interface CachedLM {
  initCache(batch: number, maxLen: number): LMCache;
  prefill(tokens: Tensor, cache: LMCache): Tensor;
  step(tokens: Tensor, cache: LMCache): { logits: Tensor };
}

/** A decoding session: advances the batch one token; `state` owns its tensors. */
interface Session {
  model: Kind;
  /** Current input tokens (B), on the device. */
  tok: Tensor;
  /** One step: returns the logits (B, V) and replaces the state. */
  step(): Tensor;
  stateBytes: number;
  dispose(): void;
}

/** Checks that prefill + step reproduces forward's last logits for both models; throws on a mismatch. */
export async function checkDecode(models: Model[]): Promise<void> {
  for (const m of models) {
    await s.tidy(async () => {
      const V = m.config.vocabSize, T = 40;
      const toks = s.tensor(Int32Array.from({ length: 2 * T }, (_, i) => (i * 37 + 11) % V), {
        shape: [2, T],
        dtype: "i32",
      });
      const want = await s.noGrad(() => m.forward(toks)).slice([null, T - 1]).toArray();
      let got: ArrayLike<number>;
      if (m instanceof s.TransformerLM) {
        const cache = m.initCache(2, T);
        m.prefill(toks.slice([null, [0, T - 1]]), cache);
        got = await m.step(toks.slice([null, T - 1]), cache).logits.toArray();
        cache.dispose();
      } else if (m instanceof s.JambaLM) {
        const cache = m.initCache(2, T);
        m.prefill(toks.slice([null, [0, T - 1]]), cache);
        got = await m.step(toks.slice([null, T - 1]), cache).logits.toArray();
        cache.dispose();
      } else {
        const p = m.prefill(toks.slice([null, [0, T - 1]]));
        got = await m.step(toks.slice([null, T - 1]), p.state).logits.toArray();
      }
      for (let i = 0; i < want.length; i++) {
        if (!(Math.abs(got[i] - want[i]) <= 1e-3 + 1e-3 * Math.abs(want[i]))) {
          throw new Error(
            `bench/decode: ${m.constructor.name} prefill + step differs from forward at ${i}: ${got[i]} vs ${
              want[i]
            }`,
          );
        }
      }
    });
  }
}

/** Greedy argmax per row of host logits (B, V). */
function hostArgmax(a: ArrayLike<number>, B: number, V: number): Int32Array {
  const out = new Int32Array(B);
  for (let b = 0; b < B; b++) {
    let best = 0;
    for (let v = 1; v < V; v++) if (a[b * V + v] > a[b * V + best]) best = v;
    out[b] = best;
  }
  return out;
}

/** Prefills `context` tokens at batch 1; returns a factory of batch-B sessions and the prefill time. */
async function prefilled(
  m: Model,
  context: number,
  capacity: number,
): Promise<{ prefillMs: number; session: (B: number) => Session; dispose(): void }> {
  const V = m.config.vocabSize;
  const prompt = s.tensor(Int32Array.from({ length: context }, (_, i) => (i * 131 + 7) % V), {
    shape: [1, context],
    dtype: "i32",
  });
  await gpu().sync();
  const t0 = performance.now();
  let first: Tensor;
  if (m instanceof s.TransformerLM || m instanceof s.JambaLM) {
    // a KV cache (the JambaLM's: K/V for its attention layers, conv/SSM states for its Mamba layers)
    const lm = m as CachedLM;
    const cache = lm.initCache(1, context);
    const logits = lm.prefill(prompt, cache);
    first = s.tidy(() => logits.slice([null, -1]).argmax(-1)); // (1)
    await first.toArray();
    const prefillMs = performance.now() - t0;
    logits.dispose();
    prompt.dispose();
    return {
      prefillMs,
      session: (B) => {
        const c = lm.initCache(B, capacity);
        s.noGrad(() =>
          s.tidy(() => {
            // every row gets the batch-1 context: K/V rows and Mamba states by broadcasting copies
            for (let i = 0; i < c.k.length; i++) {
              if (c.k[i]) {
                s.copyInto(c.k[i]!.slice([null, null, [0, context]]), cache.k[i]!);
                s.copyInto(c.v[i]!.slice([null, null, [0, context]]), cache.v[i]!);
              }
              const st = cache.mamba?.[i];
              if (st) {
                s.copyInto(c.mamba![i]!.conv, st.conv);
                s.copyInto(c.mamba![i]!.ssm, st.ssm);
              }
            }
          })
        );
        c.length = context;
        // K/V (B, Hkv, capacity, Dh) per attention layer: the filled part; the Mamba states whole
        const kvPerToken = c.k.reduce((n, k) => n + (k ? 2 * k.shape[1] * k.shape[3] * 4 : 0), 0);
        const states = (c.mamba ?? []).reduce((n, st) => n + (st ? (st.conv.size + st.ssm.size) * 4 : 0), 0);
        const sess: Session = {
          model: m instanceof s.JambaLM ? "jamba" : "transformer",
          tok: first.expand([B]).contiguous(),
          step: () => lm.step(sess.tok, c).logits,
          stateBytes: B * kvPerToken * context + states,
          dispose: () => {
            c.dispose();
            sess.tok.dispose();
          },
        };
        return sess;
      },
      dispose: () => {
        cache.dispose();
        first.dispose();
      },
    };
  }
  const p = m.prefill(prompt);
  first = s.tidy(() => p.logits.slice([null, -1]).argmax(-1));
  await first.toArray();
  const prefillMs = performance.now() - t0;
  p.logits.dispose();
  prompt.dispose();
  return {
    prefillMs,
    session: (B) => {
      let st: MambaLMState = s.tidy(() => ({
        layers: p.state.layers.map((l) => ({
          conv: l.conv.expand([B, ...l.conv.shape.slice(1)]).contiguous(),
          ssm: l.ssm.expand([B, ...l.ssm.shape.slice(1)]).contiguous(),
        })),
      }));
      const sess: Session = {
        model: "mamba",
        tok: first.expand([B]).contiguous(),
        step: () => {
          const r = m.step(sess.tok, st);
          m.disposeState(st);
          st = r.state;
          // the state outlives the caller's tidy scope (it is freed by the next step or dispose)
          for (const l of st.layers) s.keep(l.conv), s.keep(l.ssm);
          return r.logits;
        },
        stateBytes: st.layers.reduce((n, l) => n + (l.conv.size + l.ssm.size) * 4, 0),
        dispose: () => {
          m.disposeState(st);
          sess.tok.dispose();
        },
      };
      return sess;
    },
    dispose: () => {
      m.disposeState(p.state);
      first.dispose();
    },
  };
}

/** Times `steps` decode steps of a session in one mode; returns ms per step. */
async function timeLoop(sess: Session, mode: "device" | "host", steps: number, V: number): Promise<number> {
  await gpu().sync();
  const t0 = performance.now();
  if (mode === "device") {
    for (let i = 0; i < steps; i++) {
      const next = s.tidy(() => sess.step().argmax(-1)); // (B) i32, stays on the device
      sess.tok.dispose();
      sess.tok = next;
    }
    await sess.tok.toArray();
  } else {
    for (let i = 0; i < steps; i++) {
      const logits = sess.step(); // (B, V)
      const B = logits.shape[0];
      const host = await logits.toArray();
      logits.dispose();
      sess.tok.dispose();
      sess.tok = s.tensor(hostArgmax(host, B, V), { shape: [B], dtype: "i32" });
    }
  }
  return (performance.now() - t0) / steps;
}

/** Runs the benchmark; returns the rows and the printed text. Needs WebGPU. */
export async function decodeThroughput(
  opts: DecodeBenchOptions = {},
): Promise<{ rows: DecodeRow[]; text: string; config: Required<DecodeBenchOptions> }> {
  const cfg: Required<DecodeBenchOptions> = {
    contexts: opts.contexts ?? [1024, 8192],
    batches: opts.batches ?? [1, 4],
    steps: opts.steps ?? 64,
    trials: opts.trials ?? 5,
    dModel: opts.dModel ?? 128,
    nLayer: opts.nLayer ?? 2,
    vocabSize: opts.vocabSize ?? 256,
    jamba: opts.jamba ?? true,
  };
  const { dModel: D, nLayer, vocabSize: V, steps, trials } = cfg;
  const mamba = new s.MambaLM({ vocabSize: V, dModel: D, nLayer: 2 * nLayer, seed: 1 });
  const transformer = new s.TransformerLM({ vocabSize: V, dModel: D, nLayer, nHead: 4, seed: 2 });
  const jamba = !cfg.jamba ? null : new s.JambaLM({
    vocabSize: V,
    dModel: D,
    nLayer: 2 * nLayer,
    blockLayers: 4,
    attnRatio: [1, 3],
    nHead: 4,
    moeEvery: 2,
    nExperts: 4,
    topK: 2,
    dFf: D,
    seed: 3,
  });
  const models: [Model, Kind][] = [[mamba, "mamba"], [transformer, "transformer"]];
  if (jamba) models.push([jamba, "jamba"]);
  const kinds = models.map(([, k]) => k);
  const rows: DecodeRow[] = [];
  try {
    await checkDecode(models.map(([m]) => m));
    console.log(
      `decode path checked: prefill + step equals forward for the ${models.length} models (f32, atol and rtol 1e-3)`,
    );
    for (const context of cfg.contexts) {
      // room for the warm-up and every timed loop of both modes
      const capacity = context + (2 + 2 * trials) * steps + 4;
      const pre: Awaited<ReturnType<typeof prefilled>>[] = [];
      for (const [m] of models) pre.push(await prefilled(m, context, capacity));
      try {
        for (const B of cfg.batches) {
          const sessions = pre.map((p) => p.session(B));
          try {
            for (const sess of sessions) {
              for (const mode of ["device", "host"] as const) await timeLoop(sess, mode, 2, V); // warm-up
            }
            const times = new Map<string, number[]>();
            for (let r = 0; r < trials; r++) {
              for (const mode of ["device", "host"] as const) {
                for (const sess of sessions) {
                  const k = `${sess.model}|${mode}`;
                  if (!times.has(k)) times.set(k, []);
                  times.get(k)!.push(await timeLoop(sess, mode, steps, V));
                }
              }
            }
            for (const mode of ["device", "host"] as const) {
              sessions.forEach((sess, i) => {
                const ms = median(times.get(`${sess.model}|${mode}`)!);
                rows.push({
                  model: sess.model,
                  params: models[i][0].numParameters(),
                  context,
                  B,
                  mode,
                  steps,
                  msPerStep: ms,
                  tokensPerSecond: (1000 * B) / ms,
                  stateBytes: sess.stateBytes,
                  prefillMs: pre[i].prefillMs,
                });
              });
            }
            const cell = rows.slice(-2 * models.length);
            console.log(
              `  context ${fmtK(context)}, B = ${B}: ` +
                cell.map((r) => `${r.model} ${r.mode} ${r.tokensPerSecond.toFixed(1)} tok/s`).join(", "),
            );
          } finally {
            sessions.forEach((x) => x.dispose());
          }
        }
      } finally {
        pre.forEach((p) => p.dispose());
      }
    }
  } finally {
    mamba.dispose();
    transformer.dispose();
    jamba?.dispose();
  }
  const get = (m: string, c: number, B: number, mode: string) =>
    rows.find((r) => r.model === m && r.context === c && r.B === B && r.mode === mode)!;
  const body: string[][] = [];
  const hasJ = kinds.includes("jamba");
  for (const c of cfg.contexts) {
    for (const B of cfg.batches) {
      for (const mode of ["device", "host"] as const) {
        const [a, t, j] = kinds.map((k) => get(k, c, B, mode));
        const vs = (r: DecodeRow) => `${(r.tokensPerSecond / t.tokensPerSecond).toFixed(2)}x`;
        body.push([
          fmtK(c),
          `${B}`,
          mode,
          ...[a, t, ...(hasJ ? [j] : [])].map((r) => r.tokensPerSecond.toFixed(1)),
          vs(a),
          ...(hasJ ? [vs(j)] : []),
          ...[a, t, ...(hasJ ? [j] : [])].map((r) => fmtBytes(r.stateBytes)),
        ]);
      }
    }
  }
  const [mp, tp] = [mamba, transformer].map((m) => m.numParameters());
  const jp = jamba?.numParameters() ?? 0;
  // active: each of the nLayer MoE layers runs 2 of its 4 experts (SwiGLU, 3 D x D weights, no biases)
  const jActive = jp - nLayer * (4 - 2) * 3 * D * D;
  const prefill = cfg.contexts.map((c) => {
    const r = kinds.map((k) => get(k, c, cfg.batches[0], "device"));
    return [
      fmtK(c),
      ...r.map((x) => x.prefillMs.toFixed(0)),
      ...r.map((x) => ((1000 * c) / x.prefillMs).toFixed(0)),
    ];
  });
  // the target: MambaLM at least twice the Transformer's tokens/s at 1K context, batch 1, argmax on the device
  const find = (m: string) =>
    rows.find((r) => r.model === m && r.context === 1024 && r.B === 1 && r.mode === "device");
  const ta = find("mamba"), tt = find("transformer");
  const ratio = ta && tt ? ta.tokensPerSecond / tt.tokensPerSecond : null;
  const target = `target: MambaLM >= 2x the Transformer's tokens/s at 1K, B 1 (device argmax): ${
    ratio === null ? "" : `${ratio.toFixed(2)}x, `
  }${verdict(ratio === null ? null : ratio >= 2)}`;
  const J = (...x: string[]) => (hasJ ? x : []);
  const text = [
    `Greedy decoding, MambaLM (D = ${D}, ${2 * nLayer} blocks, N = 16, ${mp} parameters) vs TransformerLM ` +
    `(D = ${D}, ${nLayer} blocks, 4 heads, RoPE, KV cache, ${tp} parameters)` +
    (hasJ
      ? ` vs JambaLM (D = ${D}, ${
        2 * nLayer
      } layers, attention:Mamba 1:3, MoE 4 experts top 2 hidden D every 2nd ` +
        `layer, SwiGLU hidden D between, Mamba inner norms, ${jp} parameters, ${jActive} active)`
      : "") +
    `, V = ${V}; median of ${trials} loops of ${steps} steps. device: argmax on the device, one readback per ` +
    `loop; host: logits read back every token (a host-side sampler). tok/s counts every sequence of the batch; ` +
    `"cache": the filled KV cache plus recurrent state for the batch.`,
    table(
      [
        "context",
        "B",
        "mode",
        "mamba tok/s",
        "transformer tok/s",
        ...J("jamba tok/s"),
        "mamba / transformer",
        ...J("jamba / transformer"),
        "mamba cache",
        "transformer cache",
        ...J("jamba cache"),
      ],
      body,
    ),
    `\nPrefill of the context at B = 1 (one run each, synchronised)`,
    table(
      [
        "context",
        ...kinds.map((k) => `${k} ms`),
        ...kinds.map((k) => `${k} tok/s`),
      ],
      prefill,
    ),
    `\n${target}`,
  ].join("\n");
  return { rows, text, config: cfg };
}

const fmtK = (n: number) => (n >= 1024 && n % 1024 === 0 ? `${n / 1024}K` : `${n}`);
const fmtBytes = (
  n: number,
) => (n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`);

/** `deno task bench decode [context...]`. */
export async function main(args: string[] = []): Promise<void> {
  if (!hasWebGPU()) {
    console.log("bench decode: no WebGPU adapter; decoding throughput is measured on the WebGPU backend");
    return;
  }
  const contexts = args.length ? args.map(Number) : undefined;
  const load0 = loadAverage();
  console.log(`adapter: ${s.adapterInfo()}\nload average at start: ${load0 ?? "?"}`);
  const started = new Date().toISOString();
  const r = await decodeThroughput({ contexts });
  const load1 = loadAverage();
  console.log(`\n${r.text}\nload average at end: ${load1 ?? "?"}`);
  const file = await writeResult("decode", {
    bench: "decode",
    started,
    adapter: s.adapterInfo(),
    deno: Deno.version.deno,
    loadAverage: { start: load0, end: load1 },
    config: r.config,
    unit: "tokens/s",
    rows: r.rows,
  });
  console.log(`wrote ${file}`);
}

if (import.meta.main) await main(Deno.args);
