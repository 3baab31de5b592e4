/**
 * Sizes of a decoder that mixes attention and Mamba layers, dense and mixture-of-experts MLPs (Jamba, Lieber
 * et al., arXiv 2403.19887), and the sums the paper's Table 1 and parameter counts come from: the KV cache
 * (`kvCacheBytes`), the constant Mamba state (`stateBytes`) and the parameters, total and active
 * (`paramCount`). Pure arithmetic on a {@link JambaSpec}: no tensors, nothing allocated.
 *
 * Layer i (0-based) is attention when i % (a + m) lies in [attnOffset, attnOffset + a), else Mamba; its MLP is
 * an MoE when moeEvery > 0 and i % moeEvery == moeOffset, else dense. Jamba v0.1: a:m 1:7, attnOffset 4 (layers
 * 4, 12, 20, 28), moeEvery 2, moeOffset 1.
 *
 * @module
 */

/** A named error for a spec that cannot describe a model (a ratio that does not divide the layers, K > n). */
export class JambaSpecError extends Error {
  /** Always "JambaSpecError". */
  override name = "JambaSpecError";
}

/** The sizes of a hybrid attention/Mamba decoder with optional MoE MLPs; the comments give the defaults. */
export interface JambaSpec {
  /** Model width D. */
  hidden: number;
  /** Number of layers. */
  nLayer: number;
  /** Query heads. */
  nHead: number;
  /** Key/value heads (GQA); default nHead. */
  nKvHead?: number;
  /** Head width; default hidden / nHead. */
  headDim?: number;
  /** SwiGLU inner width (each expert's, in an MoE layer). */
  ffn: number;
  /** Vocabulary size. */
  vocab: number;
  /** Whether the head reuses the embedding matrix; default false. */
  tiedEmbeddings?: boolean;
  /** Attention : Mamba layers per period of a + m layers; default [1, 0] (pure attention). [0, 1] is pure Mamba. */
  attnMamba?: readonly [number, number];
  /** First attention layer inside each period; default floor((a + m) / 2) when m > 0, else 0 (Jamba: 4). */
  attnOffset?: number;
  /** An MoE MLP every e layers; default 0 (all dense). */
  moeEvery?: number;
  /** Which layer of each e is the MoE one; default e - 1 (Jamba: 1). */
  moeOffset?: number;
  /** Experts n per MoE layer; default 1. */
  nExperts?: number;
  /** Experts each token uses, K <= n; default 1. */
  topK?: number;
  /** Mamba state size N; default 16. */
  dState?: number;
  /** Mamba conv width; default 4. */
  dConv?: number;
  /** Mamba expansion E (inner width E * hidden); default 2. */
  expand?: number;
  /** Rank of Mamba's dt projection; default ceil(hidden / 16). */
  dtRank?: number;
  /** Jamba's RMSNorms on dt, B and C inside the Mamba mixer; default false. */
  mambaNorms?: boolean;
}

/** One layer's parts: its sequence mixer and its MLP. */
export interface LayerKind {
  /** "attention" or "mamba". */
  mixer: "attention" | "mamba";
  /** "moe" or "dense". */
  mlp: "moe" | "dense";
}

/** Parameter counts: `total` stored, `active` used per token (the top K of n experts in each MoE layer). */
export interface ParamCount {
  /** Every parameter. */
  total: number;
  /** Parameters one token passes through. */
  active: number;
}

function int(what: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min) {
    throw new JambaSpecError(`JambaSpec: ${what} must be an integer >= ${min}, got ${v}`);
  }
  return v;
}

/** Every field filled in with its default, after checking that the spec describes a model. */
function resolve(spec: JambaSpec): Required<JambaSpec> {
  const hidden = int("hidden", spec.hidden, 1), nLayer = int("nLayer", spec.nLayer, 1);
  const nHead = int("nHead", spec.nHead, 1), nKvHead = int("nKvHead", spec.nKvHead ?? nHead, 1);
  if (nHead % nKvHead !== 0) {
    throw new JambaSpecError(`JambaSpec: nHead ${nHead} is not a multiple of nKvHead ${nKvHead}`);
  }
  if (spec.headDim === undefined && hidden % nHead !== 0) {
    throw new JambaSpecError(`JambaSpec: hidden ${hidden} is not a multiple of nHead ${nHead}; give headDim`);
  }
  const [a, m] = spec.attnMamba ?? [1, 0];
  int("attnMamba[0]", a, 0), int("attnMamba[1]", m, 0);
  const period = a + m;
  if (period === 0) throw new JambaSpecError("JambaSpec: attnMamba is [0, 0]: no layers of either kind");
  if (nLayer % period !== 0) {
    throw new JambaSpecError(
      `JambaSpec: attention:Mamba ${a}:${m} does not divide nLayer ${nLayer} (${period} per period)`,
    );
  }
  const attnOffset = int("attnOffset", spec.attnOffset ?? (m > 0 ? Math.floor(period / 2) : 0), 0);
  if (a > 0 && attnOffset + a > period) {
    throw new JambaSpecError(
      `JambaSpec: attnOffset ${attnOffset} + ${a} attention layers overflows a period of ${period}`,
    );
  }
  const moeEvery = int("moeEvery", spec.moeEvery ?? 0, 0);
  const moeOffset = int("moeOffset", spec.moeOffset ?? Math.max(moeEvery - 1, 0), 0);
  if (moeEvery > 0 && moeOffset >= moeEvery) {
    throw new JambaSpecError(`JambaSpec: moeOffset ${moeOffset} must be below moeEvery ${moeEvery}`);
  }
  const nExperts = int("nExperts", spec.nExperts ?? 1, 1), topK = int("topK", spec.topK ?? 1, 1);
  if (topK > nExperts) throw new JambaSpecError(`JambaSpec: topK ${topK} exceeds nExperts ${nExperts}`);
  return {
    hidden,
    nLayer,
    nHead,
    nKvHead,
    headDim: int("headDim", spec.headDim ?? hidden / nHead, 1),
    ffn: int("ffn", spec.ffn, 1),
    vocab: int("vocab", spec.vocab, 1),
    tiedEmbeddings: spec.tiedEmbeddings ?? false,
    attnMamba: [a, m],
    attnOffset,
    moeEvery,
    moeOffset,
    nExperts,
    topK,
    dState: int("dState", spec.dState ?? 16, 1),
    dConv: int("dConv", spec.dConv ?? 4, 1),
    expand: int("expand", spec.expand ?? 2, 1),
    dtRank: int("dtRank", spec.dtRank ?? Math.ceil(hidden / 16), 1),
    mambaNorms: spec.mambaNorms ?? false,
  };
}

/**
 * Each layer's mixer and MLP, in order; throws {@link JambaSpecError} for a spec that describes no model.
 *
 * @example
 * ```ts
 * import { JAMBA_PRESETS, layerKinds } from "seqlab";
 * const kinds = layerKinds(JAMBA_PRESETS["jamba-v0.1"]);
 * console.log(kinds[4]); // { mixer: "attention", mlp: "dense" }
 * ```
 */
export function layerKinds(spec: JambaSpec): LayerKind[] {
  const s = resolve(spec);
  const [a, m] = s.attnMamba, period = a + m;
  return Array.from({ length: s.nLayer }, (_, i) => {
    const j = i % period;
    return {
      mixer: j >= s.attnOffset && j < s.attnOffset + a ? "attention" : "mamba",
      mlp: s.moeEvery > 0 && i % s.moeEvery === s.moeOffset ? "moe" : "dense",
    };
  });
}

/**
 * Bytes of the KV cache for one sequence of `tokens` tokens: 2 (K and V) x attention layers x KV heads x head
 * width x tokens x bytesPerValue (default 2, 16-bit). Mamba layers hold no KV.
 *
 * @example
 * ```ts
 * import { JAMBA_PRESETS, kvCacheBytes } from "seqlab";
 * console.log(kvCacheBytes(JAMBA_PRESETS["jamba-v0.1"], 262144) / 2 ** 30); // 4 (GiB; Table 1's "4GB")
 * ```
 */
export function kvCacheBytes(spec: JambaSpec, tokens: number, bytesPerValue = 2): number {
  const s = resolve(spec);
  int("tokens", tokens, 0);
  const attn = layerKinds(s).filter((k) => k.mixer === "attention").length;
  return 2 * attn * s.nKvHead * s.headDim * tokens * bytesPerValue;
}

/**
 * Bytes of the Mamba state one sequence carries, whatever its length: per Mamba layer the conv state
 * (dConv - 1) x E*hidden (the last dConv - 1 inputs, what the recurrence needs; the Hugging Face cache keeps
 * dConv columns) plus the SSM state E*hidden x dState, times bytesPerValue (default 2).
 *
 * @example
 * ```ts
 * import { JAMBA_PRESETS, stateBytes } from "seqlab";
 * console.log(stateBytes(JAMBA_PRESETS["jamba-v0.1"])); // 8716288: 28 x 8192 x (3 + 16) x 2
 * ```
 */
export function stateBytes(spec: JambaSpec, bytesPerValue = 2): number {
  const s = resolve(spec);
  const mamba = layerKinds(s).filter((k) => k.mixer === "mamba").length;
  const inner = s.expand * s.hidden;
  return mamba * inner * (s.dConv - 1 + s.dState) * bytesPerValue;
}

/**
 * Parameters, total and active (each MoE layer counted with its top K of n experts), of the Llama-style layout
 * with no biases except Mamba's conv and dt_proj: the embedding; per layer two RMSNorms (before the mixer and
 * before the MLP); attention q, k, v, o; Mamba in_proj (D -> 2 ED), conv1d (ED x dConv) + bias, x_proj
 * (ED -> dtRank + 2N), dt_proj (dtRank -> ED) + bias, A_log (ED x N), D (ED), out_proj (ED -> D) and, with
 * mambaNorms, RMSNorm weights on dt (dtRank), B and C (N each); SwiGLU MLPs (3 matrices); an MoE layer's
 * router (D x n); the final norm; the head unless tied.
 *
 * @example
 * ```ts
 * import { JAMBA_PRESETS, paramCount } from "seqlab";
 * const { total, active } = paramCount(JAMBA_PRESETS["mixtral-8x7b"]);
 * console.log((total / 1e9).toFixed(1), (active / 1e9).toFixed(1)); // 46.7 12.9
 * ```
 */
export function paramCount(spec: JambaSpec): ParamCount {
  const s = resolve(spec);
  const D = s.hidden, ED = s.expand * D, N = s.dState, R = s.dtRank;
  const attention = D * s.nHead * s.headDim + 2 * D * s.nKvHead * s.headDim + s.nHead * s.headDim * D;
  const mamba = D * 2 * ED + ED * s.dConv + ED + ED * (R + 2 * N) + R * ED + ED + ED * N + ED + ED * D +
    (s.mambaNorms ? R + 2 * N : 0);
  const mlp = 3 * D * s.ffn, router = D * s.nExperts;
  let total = s.vocab * D * (s.tiedEmbeddings ? 1 : 2) + D, active = total;
  for (const k of layerKinds(s)) {
    const mixer = 2 * D + (k.mixer === "attention" ? attention : mamba);
    total += mixer + (k.mlp === "moe" ? router + s.nExperts * mlp : mlp);
    active += mixer + (k.mlp === "moe" ? router + s.topK * mlp : mlp);
  }
  return { total, active };
}

/**
 * The four models of Jamba's Table 1, from their public configurations (all untied, head width 128):
 * "llama2-7b" (MHA, FFN 11008, vocab 32000), "mistral-7b" (GQA 32/8, FFN 14336, vocab 32000), "mixtral-8x7b"
 * (Mistral's layers with 8 experts, top 2, in every layer) and "jamba-v0.1" (hidden 4096, 32 layers, 32/8
 * heads, FFN 14336, vocab 65536, attention:Mamba 1:7 at i % 8 == 4, MoE at i % 2 == 1 with 16 experts top 2,
 * d_state 16, d_conv 4, expand 2, dt_rank 256, RMSNorm on dt, B, C).
 *
 * @example
 * ```ts
 * import { JAMBA_PRESETS } from "seqlab";
 * console.log(Object.keys(JAMBA_PRESETS)); // ["llama2-7b", "mistral-7b", "mixtral-8x7b", "jamba-v0.1"]
 * ```
 */
export const JAMBA_PRESETS: Readonly<
  Record<"llama2-7b" | "mistral-7b" | "mixtral-8x7b" | "jamba-v0.1", JambaSpec>
> = {
  "llama2-7b": { hidden: 4096, nLayer: 32, nHead: 32, ffn: 11008, vocab: 32000 },
  "mistral-7b": { hidden: 4096, nLayer: 32, nHead: 32, nKvHead: 8, ffn: 14336, vocab: 32000 },
  "mixtral-8x7b": {
    hidden: 4096,
    nLayer: 32,
    nHead: 32,
    nKvHead: 8,
    ffn: 14336,
    vocab: 32000,
    moeEvery: 1,
    moeOffset: 0,
    nExperts: 8,
    topK: 2,
  },
  "jamba-v0.1": {
    hidden: 4096,
    nLayer: 32,
    nHead: 32,
    nKvHead: 8,
    ffn: 14336,
    vocab: 65536,
    attnMamba: [1, 7],
    attnOffset: 4,
    moeEvery: 2,
    moeOffset: 1,
    nExperts: 16,
    topK: 2,
    dState: 16,
    dConv: 4,
    expand: 2,
    dtRank: 256,
    mambaNorms: true,
  },
};
