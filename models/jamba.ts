/**
 * Jamba (Lieber et al., arXiv 2403.19887): a hybrid decoder whose layers are either attention or Mamba
 * mixers, each followed by either a SwiGLU MLP or a mixture-of-experts layer, all pre-norm with RMSNorm and
 * without positional encoding. Layers repeat in blocks of `blockLayers` (Jamba: 8) with an attention:Mamba
 * ratio `a:m` (Jamba: 1:7, attention at i % 8 == 4) and MoE every `moeEvery` layers (Jamba: 2, at
 * i % 2 == 1). The same class runs the pure-attention and pure-Mamba ablations (`mixer`). Decoding keeps a
 * mixed cache: contiguous K/V for the attention layers, conv and SSM states for the Mamba layers. For
 * serving, `initPagedCache` / `forwardPaged` (the `PagedModel` interface) keep the attention layers' K/V in
 * the paged pools of `ops/paged` and each sequence's Mamba states in a state slot (`models/mamba_paged.ts`).
 * @module
 */

import { type DType, isFloat, itemSize } from "../runtime/dtype.ts";
import type { DeviceName } from "../runtime/device.ts";
import { noGrad } from "../runtime/autograd.ts";
import { keep, type Tensor, tidy } from "../runtime/tensor.ts";
import { zeros } from "../ops/core/creation.ts";
import { copyInto } from "../ops/core/elementwise.ts";
import { tensor } from "../ops/core/creation.ts";
import { concat, gather } from "../ops/core/layout.ts";
import { attention, attentionDecode } from "../ops/attention/mod.ts";
import { pagedAttention, pagedPools, pagedPrefill, writeKV } from "../ops/paged/mod.ts";
import type { SelectiveScanGpuOptions } from "../ops/ssm/mod.ts";
import { Mamba, type MambaState } from "./mamba.ts";
import { mambaPagedLayer, mambaStatePools, planMambaBatch } from "./mamba_paged.ts";
import { MoE, SwiGLU } from "./moe.ts";
import { Embedding, init, type Initializer, Linear, Module, RMSNorm } from "./nn.ts";
import { JambaSpecError } from "./jamba_config.ts";
import {
  checkPagedBatch,
  type PagedBatch,
  PagedBatchError,
  type PagedCacheConfig,
  PagedKVCache,
  type PagedModel,
  type PagedTensors,
} from "./paged.ts";

/** Configuration of a {@link JambaLM}; defaults are Jamba's layout (sizes are the caller's). */
export interface JambaLMConfig {
  /** Vocabulary size V. */
  vocabSize: number;
  /** Model width D. */
  dModel: number;
  /** Number of layers (a multiple of `blockLayers`). */
  nLayer: number;
  /** Layers per Jamba block l (default 8); the layout repeats every block. */
  blockLayers?: number;
  /**
   * Attention:Mamba ratio [a, m] (default [1, 7]): every group of a + m layers (a + m must divide
   * `blockLayers`) holds a attention layers at positions `attnOffset` .. `attnOffset` + a - 1.
   */
  attnRatio?: [number, number];
  /** First attention position within a group (default floor((a + m) / 2) when m > 0, else 0; Jamba: 4). */
  attnOffset?: number;
  /**
   * The ablations of the same class: "attention" (every mixer attention, ratio 1:0) or "mamba" (every
   * mixer Mamba, 0:1); "hybrid" (default) uses `attnRatio`.
   */
  mixer?: "hybrid" | "attention" | "mamba";
  /** MoE every e layers, at i % e == e - 1 (default 2); 0: no MoE, SwiGLU MLPs everywhere. */
  moeEvery?: number;
  /** Experts n of each MoE layer (default 16). */
  nExperts?: number;
  /** Experts chosen per token K (default 2). */
  topK?: number;
  /** Hidden width of the SwiGLU MLPs and of each expert (default 4 D). */
  dFf?: number;
  /** Options of the MoE layers (renormalize, auxLossCoef, blockRows, capacityFactor). */
  moe?: { renormalize?: boolean; auxLossCoef?: number; blockRows?: number; capacityFactor?: number };
  /** Query heads H; the head width is D / H. */
  nHead: number;
  /** Key/value heads (default nHead; fewer is grouped-query attention). */
  nKvHead?: number;
  /** Mamba state size N (default 16). */
  dState?: number;
  /** Mamba conv width (default 4). */
  dConv?: number;
  /** Mamba expansion (default 2). */
  expand?: number;
  /** Mamba delta rank (default ceil(D / 16)). */
  dtRank?: number;
  /** Jamba's RMSNorms on delta, B and C inside the Mamba layers (default true; see `MambaConfig`). */
  mambaInnerNorm?: boolean;
  /** Options passed to the Mamba layers' selective scan. */
  scan?: Pick<SelectiveScanGpuOptions, "version" | "chunkSize" | "carry">;
  /** RMSNorm epsilon (default 1e-6, Jamba's). */
  eps?: number;
  /** Standard deviation of the embedding's, the head's and the attention projections' init (default 0.02). */
  initStd?: number;
  /** Seed of the first parameter (the others follow). */
  seed?: number;
  /** Device of the parameters (default: the default device). */
  device?: DeviceName;
  /** Float dtype of the parameters (default f32). */
  dtype?: DType;
}

/** Which mixer and which MLP each layer of a {@link JambaLM} has. */
export interface JambaLayout {
  /** Per layer: "attention" or "mamba". */
  mixers: ("attention" | "mamba")[];
  /** Per layer: true for an MoE layer, false for a SwiGLU MLP. */
  moe: boolean[];
}

/**
 * The layer layout of a Jamba configuration, checked: throws a {@link JambaSpecError} when the ratio's group
 * does not divide the block, the block does not divide the layers, K > n, or the mixer is unknown.
 *
 * @example
 * ```ts
 * import { jambaLayout } from "seqlab";
 * const l = jambaLayout({ nLayer: 8 }); // Jamba's block: l 8, 1:7, MoE every 2
 * console.log(l.mixers.indexOf("attention"), l.moe.map(Number).join("")); // 4 01010101
 * ```
 */
export function jambaLayout(
  cfg: Pick<
    JambaLMConfig,
    "nLayer" | "blockLayers" | "attnRatio" | "attnOffset" | "mixer" | "moeEvery" | "nExperts" | "topK"
  >,
): JambaLayout {
  const L = cfg.nLayer, l = cfg.blockLayers ?? 8, e = cfg.moeEvery ?? 2;
  const mixer = cfg.mixer ?? "hybrid";
  if (!["hybrid", "attention", "mamba"].includes(mixer)) {
    throw new JambaSpecError(
      `JambaLM: mixer must be "hybrid", "attention" or "mamba", got ${JSON.stringify(mixer)}`,
    );
  }
  const [a, m] = mixer === "attention" ? [1, 0] : mixer === "mamba" ? [0, 1] : cfg.attnRatio ?? [1, 7];
  const n = cfg.nExperts ?? 16, K = cfg.topK ?? 2;
  for (const [name, v] of [["nLayer", L], ["blockLayers", l], ["nExperts", n], ["topK", K]] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new JambaSpecError(`JambaLM: ${name} must be a positive integer, got ${v}`);
    }
  }
  if (!Number.isInteger(a) || !Number.isInteger(m) || a < 0 || m < 0 || a + m < 1) {
    throw new JambaSpecError(
      `JambaLM: attnRatio must be two non-negative integers a:m, not both 0, got ${a}:${m}`,
    );
  }
  if (!Number.isInteger(e) || e < 0) {
    throw new JambaSpecError(`JambaLM: moeEvery must be an integer >= 0, got ${e}`);
  }
  const g = a + m;
  if (l % g !== 0) {
    throw new JambaSpecError(
      `JambaLM: the attention:Mamba ratio ${a}:${m} (groups of ${g} layers) does not divide a block of ${l} layers`,
    );
  }
  if (L % l !== 0) throw new JambaSpecError(`JambaLM: nLayer = ${L} is not a multiple of blockLayers = ${l}`);
  if (e > 0 && l % e !== 0) {
    throw new JambaSpecError(`JambaLM: moeEvery = ${e} does not divide a block of ${l} layers`);
  }
  const off = mixer === "hybrid" ? cfg.attnOffset ?? (m > 0 ? Math.floor(g / 2) : 0) : 0;
  if (!Number.isInteger(off) || off < 0 || off + a > g) {
    throw new JambaSpecError(
      `JambaLM: attnOffset = ${off} puts attention outside a group of ${g} layers (${a}:${m})`,
    );
  }
  if (e > 0 && K > n) {
    throw new JambaSpecError(`JambaLM: topK = ${K} is more than the nExperts = ${n} experts`);
  }
  const mixers = Array.from({ length: L }, (_, i) => {
    const j = (i % g) - off;
    return j >= 0 && j < a ? "attention" as const : "mamba" as const;
  });
  const moe = Array.from({ length: L }, (_, i) => e > 0 && i % e === e - 1);
  return { mixers, moe };
}

/**
 * Grouped-query causal self-attention without positional encoding (Jamba's attention sub-layer):
 * x (B, T, D) -> (B, T, D) through wq (D, H Dh), wk and wv (D, Hkv Dh), wo (H Dh, D), no biases.
 */
export class JambaAttention extends Module {
  /** D -> H Dh. */
  wq: Linear;
  /** D -> Hkv Dh. */
  wk: Linear;
  /** D -> Hkv Dh. */
  wv: Linear;
  /** H Dh -> D. */
  wo: Linear;
  /** Creates the projections (normal init with `std`). */
  constructor(
    readonly dModel: number,
    readonly nHead: number,
    readonly nKvHead: number,
    o: { std: number; seed?: number; device?: DeviceName; dtype?: DType },
  ) {
    super();
    const Dh = dModel / nHead;
    const w: Initializer = (s, io) => init.normal(s, { ...io, std: o.std });
    const lo = { device: o.device, dtype: o.dtype, bias: false, weightInit: w };
    const seed = (k: number) => (o.seed === undefined ? undefined : o.seed + k);
    this.wq = new Linear(dModel, nHead * Dh, { ...lo, seed: seed(0) });
    this.wk = new Linear(dModel, nKvHead * Dh, { ...lo, seed: seed(1) });
    this.wv = new Linear(dModel, nKvHead * Dh, { ...lo, seed: seed(2) });
    this.wo = new Linear(nHead * Dh, dModel, { ...lo, seed: seed(3) });
  }

  #qkv(x: Tensor): [Tensor, Tensor, Tensor] {
    const [B, T] = x.shape, H = this.nHead, Hkv = this.nKvHead, Dh = this.dModel / H;
    return [
      this.wq.forward(x).reshape([B, T, H, Dh]),
      this.wk.forward(x).reshape([B, T, Hkv, Dh]),
      this.wv.forward(x).reshape([B, T, Hkv, Dh]),
    ];
  }

  /**
   * x (B, T, D) -> (B, T, D), causal. With a cache (k and v (B, Hkv, maxLen, Dh)) the T new keys are
   * written at positions start .. start + T - 1 and the rows attend to everything before them too.
   */
  forward(x: Tensor, cache?: { k: Tensor; v: Tensor; start: number }): Tensor {
    const [B, T, D] = x.shape;
    const [q, k, v] = this.#qkv(x); // (B, T, H, Dh), (B, T, Hkv, Dh) x 2
    let kk = k, vv = v;
    if (cache) {
      const end = cache.start + T;
      copyInto(cache.k.slice([null, null, [cache.start, end]]), k.transpose(1, 2));
      copyInto(cache.v.slice([null, null, [cache.start, end]]), v.transpose(1, 2));
      kk = cache.k.slice([null, null, [0, end]]).transpose(1, 2); // (B, end, Hkv, Dh), a view
      vv = cache.v.slice([null, null, [0, end]]).transpose(1, 2);
    }
    const { o } = attention(q, kk, vv, { causal: true, layout: "bthd" }); // (B, T, H, Dh), bottom-right
    return this.wo.forward(o.reshape([B, T, D]));
  }

  /** One token per sequence, x (B, 1, D), written at position `cache.start` -> (B, 1, D). Inference only. */
  step(x: Tensor, cache: { k: Tensor; v: Tensor; start: number }): Tensor {
    const [B, , D] = x.shape, p = cache.start;
    const [q, k, v] = this.#qkv(x); // (B, 1, H, Dh), (B, 1, Hkv, Dh) x 2
    copyInto(cache.k.slice([null, null, [p, p + 1]]), k.transpose(1, 2));
    copyInto(cache.v.slice([null, null, [p, p + 1]]), v.transpose(1, 2));
    const { o } = attentionDecode(q.transpose(1, 2), cache.k, cache.v, { length: p + 1 }); // (B, H, 1, Dh)
    return this.wo.forward(o.transpose(1, 2).reshape([B, 1, D]));
  }

  /**
   * A ragged paged batch, x (1, N, D): writes the rows' keys and values into their `slots` of the pools and
   * attends each row to its sequence's pages (decode when every sequence has one new row, chunked prefill
   * otherwise) -> (1, N, D). No positions (Jamba's attention has none). Inference only.
   */
  forwardPaged(x: Tensor, pool: { k: Tensor; v: Tensor }, m: PagedTensors): Tensor {
    const N = x.shape[1], H = this.nHead, Hkv = this.nKvHead, Dh = this.dModel / H;
    const [q, k, v] = this.#qkv(x); // (1, N, H, Dh), (1, N, Hkv, Dh) x 2
    writeKV(pool.k, pool.v, k.reshape([N, Hkv, Dh]), v.reshape([N, Hkv, Dh]), m.slots);
    const q3 = q.reshape([N, H, Dh]);
    const { o } = m.decode
      ? pagedAttention(q3, pool.k, pool.v, m.blockTables, m.contextLens)
      : pagedPrefill(q3, pool.k, pool.v, m.blockTables, m.contextLens, m.queryStarts); // (N, H, Dh)
    return this.wo.forward(o.reshape([1, N, this.dModel])); // (1, N, D)
  }
}

/**
 * One Jamba layer: x + mixer(norm1 x), then + mlp(norm2 x); the mixer is attention or Mamba, the MLP SwiGLU
 * or MoE (exactly one of each pair is non-null).
 */
export class JambaLayer extends Module {
  /** RMSNorm before the mixer. */
  norm1: RMSNorm;
  /** The attention mixer, or null. */
  attn: JambaAttention | null;
  /** The Mamba mixer, or null. */
  mamba: Mamba | null;
  /** RMSNorm before the MLP. */
  norm2: RMSNorm;
  /** The SwiGLU MLP, or null. */
  mlp: SwiGLU | null;
  /** The MoE layer, or null. */
  moe: MoE | null;
  /** Builds a layer from its parts. */
  constructor(
    parts: { norm1: RMSNorm; attn: JambaAttention | null; mamba: Mamba | null; norm2: RMSNorm },
    ffn: SwiGLU | MoE,
  ) {
    super();
    this.norm1 = parts.norm1;
    this.attn = parts.attn;
    this.mamba = parts.mamba;
    this.norm2 = parts.norm2;
    this.mlp = ffn instanceof SwiGLU ? ffn : null;
    this.moe = ffn instanceof MoE ? ffn : null;
  }

  /** x (B, T, D) -> (B, T, D), the whole layer (an MoE's aux loss dropped). */
  forward(x: Tensor): Tensor {
    return tidy(() => {
      const h = this.norm1.forward(x);
      const r = this.ffn(x.add(this.attn ? this.attn.forward(h) : this.mamba!.forward(h)));
      return r.y;
    });
  }

  /** The MLP half: x (B, T, D) -> x + mlp(norm2 x) and the MoE's aux loss and load (or null). */
  ffn(x: Tensor): { y: Tensor; auxLoss: Tensor | null; load: Tensor | null } {
    const h = this.norm2.forward(x);
    if (this.mlp) return { y: x.add(this.mlp.forward(h)), auxLoss: null, load: null };
    const r = this.moe!.forwardAux(h);
    r.dropped.dispose();
    return { y: x.add(r.y), auxLoss: r.auxLoss, load: r.load };
  }
}

/**
 * The decoding cache of a {@link JambaLM}: per layer, K and V (B, Hkv, maxLen, Dh) for an attention layer
 * (null for a Mamba layer) and a {@link MambaState} for a Mamba layer (null for attention). `prefill` and
 * `step` update it in place (the Mamba states are replaced, the old ones freed) and advance `length`.
 * Free it with `dispose()`.
 */
export class JambaCache {
  /** Positions filled so far (the next token's position). */
  length = 0;
  /** Creates a cache (use {@link JambaLM.initCache}). */
  constructor(
    /** Keys per layer, or null for a Mamba layer. */
    readonly k: (Tensor | null)[],
    /** Values per layer, or null for a Mamba layer. */
    readonly v: (Tensor | null)[],
    /** Mamba states per layer, or null for an attention layer. */
    readonly mamba: (MambaState | null)[],
    /** Batch size B. */
    readonly batch: number,
    /** Capacity in positions of the attention layers (the Mamba states hold any length). */
    readonly maxLen: number,
    /** The configuration the cache was made for (layout and sizes). */
    readonly signature: string,
  ) {}
  /** Bytes held: K/V plus the Mamba states. */
  get bytes(): number {
    const ts = [...this.k, ...this.v, ...this.mamba.flatMap((s) => (s ? [s.conv, s.ssm] : []))];
    return ts.reduce((n, t) => n + (t ? t.size * itemSize(t.dtype) : 0), 0);
  }
  /** Frees the cache's tensors. */
  dispose(): void {
    for (const t of [...this.k, ...this.v]) t?.dispose();
    for (const s of this.mamba) {
      s?.conv.dispose();
      s?.ssm.dispose();
    }
  }
}

/** What {@link JambaLM.forwardAux} returns. */
export interface JambaOutput {
  /** (B, T, V). */
  logits: Tensor;
  /** The MoE layers' load-balancing losses summed (a scalar; 0 without MoE layers): add it to the loss. */
  auxLoss: Tensor;
  /** Per MoE layer, in order, (E) f32: the choices routed to each expert. */
  loads: Tensor[];
}

/**
 * The Jamba language model: tokens (B, T) i32 -> logits (B, T, V). Embedding -> nLayer {@link JambaLayer}s
 * -> RMSNorm -> linear head (not tied). No positional encoding (the Mamba layers carry order).
 *
 * Parameters: `embed` (V, D); per layer `layers.i.norm1`, the mixer `layers.i.attn.{wq,wk,wv,wo}` or
 * `layers.i.mamba.*` (a {@link Mamba} block with Jamba's inner norms by default), `layers.i.norm2`, the MLP
 * `layers.i.mlp.{w1,w2,w3}` or `layers.i.moe.{router,w1,w2,w3}`; `normF`; `head` (D, V).
 *
 * @example
 * ```ts
 * import { JambaLM, tensor } from "seqlab";
 * const lm = new JambaLM({
 *   vocabSize: 11, dModel: 16, nLayer: 4, blockLayers: 4, attnRatio: [1, 3],
 *   nExperts: 4, topK: 2, nHead: 4, nKvHead: 2, dState: 4, seed: 1,
 * });
 * console.log(lm.layout.mixers); // ["mamba", "mamba", "attention", "mamba"]
 * const tokens = tensor([[1, 2, 3]], { dtype: "i32" });
 * const { logits, auxLoss } = lm.forwardAux(tokens);
 * console.log(logits.shape, auxLoss.shape); // [1, 3, 11] []
 * const cache = lm.initCache(1, 8);
 * lm.prefill(tokens, cache);
 * console.log(lm.step(tensor([4], { dtype: "i32" }), cache).logits.shape, cache.length); // [1, 11] 4
 * cache.dispose();
 * lm.dispose();
 * ```
 */
export class JambaLM extends Module implements PagedModel {
  /** Token embedding (V, D). */
  embed: Embedding;
  /** The layers. */
  layers: JambaLayer[];
  /** Final RMSNorm. */
  normF: RMSNorm;
  /** D -> V, no bias. */
  head: Linear;
  /** Each layer's mixer and MLP kind. */
  readonly layout: JambaLayout;
  /** The configuration as given (device, dtype and seed included). */
  readonly config: Readonly<JambaLMConfig>;
  readonly #sig: string;
  readonly #dh: number;
  readonly #hkv: number;

  /** Creates the model's parameters; throws a {@link JambaSpecError} on an inconsistent configuration. */
  constructor(cfg: JambaLMConfig) {
    super();
    const V = cfg.vocabSize, D = cfg.dModel, H = cfg.nHead, Hkv = cfg.nKvHead ?? H;
    for (const [n, v] of [["vocabSize", V], ["dModel", D], ["nHead", H], ["nKvHead", Hkv]] as const) {
      if (!Number.isInteger(v) || v < 1) {
        throw new JambaSpecError(`JambaLM: ${n} must be a positive integer, got ${v}`);
      }
    }
    if (D % H !== 0) throw new JambaSpecError(`JambaLM: nHead = ${H} must divide dModel = ${D}`);
    if (H % Hkv !== 0) throw new JambaSpecError(`JambaLM: nKvHead = ${Hkv} must divide nHead = ${H}`);
    this.layout = jambaLayout(cfg);
    this.config = { ...cfg };
    const L = cfg.nLayer, F = cfg.dFf ?? 4 * D, eps = cfg.eps ?? 1e-6, std = cfg.initStd ?? 0.02;
    this.#dh = D / H;
    this.#hkv = Hkv;
    const o = { device: cfg.device, dtype: cfg.dtype };
    const seed = (k: number) => (cfg.seed === undefined ? undefined : cfg.seed + 1000 * k);
    const normal: Initializer = (s, io) => init.normal(s, { ...io, std });
    this.embed = new Embedding(V, D, { ...o, seed: seed(0), weightInit: normal });
    this.layers = this.layout.mixers.map((kind, i) => {
      const attn = kind === "attention"
        ? new JambaAttention(D, H, Hkv, { ...o, std, seed: seed(1 + i) })
        : null;
      const mamba = kind === "mamba"
        ? new Mamba({
          ...o,
          dModel: D,
          dState: cfg.dState,
          dConv: cfg.dConv,
          expand: cfg.expand,
          dtRank: cfg.dtRank,
          innerNorm: cfg.mambaInnerNorm ?? true,
          innerNormEps: eps,
          nLayer: L,
          scan: cfg.scan,
          seed: seed(1 + i),
        })
        : null;
      const fo = { ...o, seed: seed(1 + i) === undefined ? undefined : seed(1 + i)! + 500 };
      const ffn = this.layout.moe[i]
        ? new MoE(D, F, cfg.nExperts ?? 16, cfg.topK ?? 2, { ...fo, ...cfg.moe })
        : new SwiGLU(D, F, fo);
      const norm = () => new RMSNorm(D, { ...o, eps });
      return new JambaLayer({ norm1: norm(), attn, mamba, norm2: norm() }, ffn);
    });
    this.normF = new RMSNorm(D, { ...o, eps });
    this.head = new Linear(D, V, { ...o, bias: false, seed: seed(1 + L), weightInit: normal });
    const m0 = this.layers.find((l) => l.mamba)?.mamba;
    this.#sig = JSON.stringify([this.layout.mixers, D, H, Hkv, m0?.dims ?? null, !!m0?.dtNorm]);
  }

  #checkTokens(op: string, tokens: Tensor, rank: number): void {
    tokens.check(`JambaLM.${op}`);
    if (tokens.rank !== rank || isFloat(tokens.dtype)) {
      throw new Error(
        `JambaLM.${op}: tokens must be ${rank === 2 ? "(B, T)" : "(B)"} i32 or u32, got ${tokens.describe()}`,
      );
    }
    if (tokens.device !== this.embed.weight.device) {
      throw new Error(
        `JambaLM.${op}: tokens are on ${tokens.device} but the model is on ${this.embed.weight.device}`,
      );
    }
  }

  /** Logits (B, T, V) of tokens (B, T): causal, every position predicts the next token. */
  forward(tokens: Tensor): Tensor {
    const r = this.forwardAux(tokens);
    r.auxLoss.dispose();
    for (const l of r.loads) l.dispose();
    return r.logits;
  }

  /**
   * Logits (B, T, V), the MoE layers' summed load-balancing loss (for training: loss + auxLoss) and each
   * MoE layer's expert load.
   */
  forwardAux(tokens: Tensor): JambaOutput {
    this.#checkTokens("forward", tokens, 2);
    return tidy(() => {
      let x = this.embed.forward(tokens); // (B, T, D)
      const aux: Tensor[] = [], loads: Tensor[] = [];
      for (const l of this.layers) {
        const h = l.norm1.forward(x);
        x = x.add(l.attn ? l.attn.forward(h) : l.mamba!.forward(h));
        const r = l.ffn(x);
        x = r.y;
        if (r.auxLoss) aux.push(r.auxLoss);
        if (r.load) loads.push(r.load);
      }
      const logits = this.head.forward(this.normF.forward(x)); // (B, T, V)
      const auxLoss = aux.length
        ? aux.reduce((a, b) => a.add(b))
        : zeros([], { device: x.device, dtype: x.dtype });
      return { logits, auxLoss, loads };
    });
  }

  /**
   * An empty mixed cache for `batch` sequences of up to `maxLen` positions on the model's device: K and V
   * (B, Hkv, maxLen, Dh) per attention layer, a zero conv (B, ED, dConv - 1) and SSM (B, ED, N) state per
   * Mamba layer. Exempt from `tidy` scopes; free it with its `dispose()`.
   */
  initCache(batch: number, maxLen: number): JambaCache {
    for (const [n, v] of [["batch", batch], ["maxLen", maxLen]] as const) {
      if (!Number.isInteger(v) || v < 1) {
        throw new Error(`JambaLM.initCache: ${n} must be a positive integer, got ${v}`);
      }
    }
    const o = { device: this.embed.weight.device, dtype: this.embed.weight.dtype };
    const kv = () =>
      this.layers.map((l) => (l.attn ? keep(zeros([batch, this.#hkv, maxLen, this.#dh], o)) : null));
    const mamba = this.layers.map((l) => {
      if (!l.mamba) return null;
      const s = l.mamba.initialState(batch);
      return { conv: keep(s.conv), ssm: keep(s.ssm) };
    });
    return new JambaCache(kv(), kv(), mamba, batch, maxLen, this.#sig);
  }

  #checkCache(op: string, cache: JambaCache, B: number, T: number): void {
    if (!(cache instanceof JambaCache)) {
      throw new Error(`JambaLM.${op}: cache must come from JambaLM.initCache`);
    }
    if (cache.signature !== this.#sig) {
      throw new Error(
        `JambaLM.${op}: the cache was made for another configuration (layers ${
          JSON.parse(cache.signature)[0].length
        }, its layout or sizes differ from this model's)`,
      );
    }
    const t = cache.k.find((x) => x) ?? cache.mamba.find((s) => s)!.ssm;
    if (t.disposed) throw new Error(`JambaLM.${op}: the cache has been disposed`);
    if (cache.batch !== B) {
      throw new Error(`JambaLM.${op}: tokens have batch ${B} but the cache was made for ${cache.batch}`);
    }
    if (cache.length + T > cache.maxLen) {
      throw new Error(
        `JambaLM.${op}: the cache holds ${cache.length} of ${cache.maxLen} positions; ${T} more would overflow it`,
      );
    }
  }

  /** Replaces the cache's Mamba states with new ones (kept out of tidy scopes), freeing the old. */
  #swapStates(cache: JambaCache, states: (MambaState | null)[]): void {
    states.forEach((s, i) => {
      const old = cache.mamba[i];
      if (!s || !old) return;
      cache.mamba[i] = { conv: keep(s.conv), ssm: keep(s.ssm) };
      old.conv.dispose();
      old.ssm.dispose();
    });
  }

  /**
   * Runs a prompt (B, T) after what the cache holds (positions cache.length ...): writes the attention
   * layers' keys and values, advances the Mamba states and returns the logits (B, T, V). From an empty
   * cache a Mamba layer runs its scan over the prompt; after earlier tokens it steps through it. Inference
   * only.
   */
  prefill(tokens: Tensor, cache: JambaCache): Tensor {
    this.#checkTokens("prefill", tokens, 2);
    const [B, T] = tokens.shape;
    this.#checkCache("prefill", cache, B, T);
    const start = cache.length;
    const { logits, states } = noGrad(() =>
      tidy(() => {
        let x = this.embed.forward(tokens); // (B, T, D)
        const states = this.layers.map((l, i) => {
          const h = l.norm1.forward(x);
          let st: MambaState | null = null;
          if (l.attn) x = x.add(l.attn.forward(h, { k: cache.k[i]!, v: cache.v[i]!, start }));
          else if (start === 0) {
            const r = l.mamba!.prefill(h); // (B, T, D)
            x = x.add(r.y);
            st = r.state;
          } else {
            st = cache.mamba[i]!;
            const ys: Tensor[] = [];
            for (let t = 0; t < T; t++) {
              const r = l.mamba!.step(h.slice([null, t]), st); // (B, D)
              ys.push(r.y.unsqueeze(1));
              st = r.state;
            }
            x = x.add(concat(ys, 1));
          }
          x = l.ffn(x).y;
          return st;
        });
        return { logits: this.head.forward(this.normF.forward(x)), states }; // (B, T, V)
      })
    );
    this.#swapStates(cache, states);
    cache.length = start + T;
    return logits;
  }

  /**
   * One token per sequence: tokens (B) at position cache.length -> logits (B, V) for the next one. Updates
   * the cache in place and returns `{ logits, cache }` with the same object. Stepping through a sequence
   * equals {@link JambaLM.forward} on it. Inference only.
   */
  step(tokens: Tensor, cache: JambaCache): { logits: Tensor; cache: JambaCache } {
    this.#checkTokens("step", tokens, 1);
    const B = tokens.shape[0];
    this.#checkCache("step", cache, B, 1);
    const start = cache.length;
    const { logits, states } = noGrad(() =>
      tidy(() => {
        let x = this.embed.forward(tokens.reshape([B, 1])); // (B, 1, D)
        const states = this.layers.map((l, i) => {
          let st: MambaState | null = null;
          if (l.attn) {
            x = x.add(l.attn.step(l.norm1.forward(x), { k: cache.k[i]!, v: cache.v[i]!, start }));
          } else {
            // x + Mamba(norm1 x) in one call (fused where the block allows it)
            const r = l.mamba!.stepResidual(x.reshape([B, -1]), cache.mamba[i]!, l.norm1);
            x = r.y.unsqueeze(1);
            st = r.state;
          }
          x = l.ffn(x).y;
          return st;
        });
        const logits = this.head.forward(this.normF.forward(x)).reshape([B, -1]); // (B, V)
        return { logits, states };
      })
    );
    this.#swapStates(cache, states);
    cache.length = start + 1;
    return { logits, cache };
  }

  /** Vocabulary size (the logits' width). */
  get vocabSize(): number {
    return this.config.vocabSize;
  }

  /**
   * A paged cache for the serving engine (`LLMEngine`) or {@link JambaLM.forwardPaged}: a key and a value
   * pool of (numBlocks, Hkv, blockSize, D / H) per attention layer only, and per Mamba layer a conv pool
   * (maxSeqs, ED, dConv - 1) and an SSM pool (maxSeqs, ED, N): `maxSeqs` state slots, one per sequence in
   * flight (required when the model has Mamba layers). Exempt from `tidy`; free it with its `dispose()`.
   */
  initPagedCache(cfg: PagedCacheConfig): PagedKVCache {
    const op = "JambaLM.initPagedCache", bs = cfg.blockSize ?? 16;
    if (!Number.isInteger(cfg.numBlocks) || cfg.numBlocks < 1) {
      throw new PagedBatchError(`${op}: numBlocks must be a positive integer, got ${cfg.numBlocks}`);
    }
    const mambas = this.layers.flatMap((l) => (l.mamba ? [l.mamba] : []));
    if (mambas.length && (!Number.isInteger(cfg.maxSeqs) || cfg.maxSeqs! < 1)) {
      throw new PagedBatchError(
        `${op}: maxSeqs (state slots) must be a positive integer for a model with ${mambas.length} Mamba layers, got ${cfg.maxSeqs}`,
      );
    }
    const o = { device: this.embed.weight.device, dtype: this.embed.weight.dtype };
    const pools = this.layers.flatMap((
      l,
    ) => (l.attn ? [pagedPools(cfg.numBlocks, this.#hkv, bs, this.#dh, o)] : []));
    const state = mambas.flatMap((m) => {
      const p = mambaStatePools(m, cfg.maxSeqs!);
      return [keep(p.conv), keep(p.ssm)];
    });
    return new PagedKVCache(pools.map((p) => keep(p.k)), pools.map((p) => keep(p.v)), cfg.numBlocks, bs, {
      state,
      stateSlots: mambas.length ? cfg.maxSeqs : 0,
      signature: this.#sig,
    });
  }

  /**
   * Runs a ragged batch of new tokens from many sequences against a paged cache (see {@link PagedBatch}):
   * the attention layers write their keys and values into the slots the batch names and attend over each
   * sequence's pages; the Mamba layers continue each sequence's state from its `stateSlots` entry (a
   * sequence whose new tokens start at position 0 starts from a zero state) and leave the new state there.
   * Returns the logits of each sequence's last new token, (S, V), or with `allRows` of every new token,
   * (N, V); a sequence's logits equal {@link JambaLM.forward} over its whole context. Inference only.
   * Throws a `PagedBatchError` for a batch that does not fit (a missing or out-of-range state slot among
   * them) or a cache made for another configuration.
   *
   * @example
   * ```ts
   * import { JambaLM } from "seqlab";
   * const lm = new JambaLM({
   *   vocabSize: 7, dModel: 8, nLayer: 2, blockLayers: 2, attnRatio: [1, 1], moeEvery: 0, nHead: 2,
   *   dState: 4, seed: 1,
   * });
   * const cache = lm.initPagedCache({ numBlocks: 4, blockSize: 8, maxSeqs: 2 });
   * // one sequence in state slot 1, a 3-token prompt in block 2 (slots 16, 17, 18)
   * const logits = lm.forwardPaged({
   *   tokens: new Int32Array([1, 2, 3]), positions: new Int32Array([0, 1, 2]),
   *   slots: new Int32Array([16, 17, 18]), queryStarts: new Int32Array([0, 3]),
   *   contextLens: new Int32Array([3]), blockTables: new Int32Array([2]), maxBlocks: 1,
   *   stateSlots: new Int32Array([1]),
   * }, cache);
   * console.log(logits.shape); // [1, 7]
   * cache.dispose();
   * lm.dispose();
   * ```
   */
  forwardPaged(batch: PagedBatch, cache: PagedKVCache, opts: { allRows?: boolean } = {}): Tensor {
    const op = "JambaLM.forwardPaged";
    if (!(cache instanceof PagedKVCache) || !cache.signature) {
      throw new PagedBatchError(`${op}: cache must come from JambaLM.initPagedCache`);
    }
    if (cache.signature !== this.#sig) {
      throw new PagedBatchError(
        `${op}: the cache was made for another configuration (layers ${
          JSON.parse(cache.signature)[0].length
        }, its layout or sizes differ from this model's)`,
      );
    }
    if ([...cache.k, ...cache.state][0].disposed) {
      throw new PagedBatchError(`${op}: the cache has been disposed`);
    }
    const { S, N } = checkPagedBatch(op, batch, cache);
    const V = this.vocabSize, D = this.config.dModel;
    for (let i = 0; i < N; i++) {
      if (!(batch.tokens[i] >= 0 && batch.tokens[i] < V)) {
        throw new PagedBatchError(
          `${op}: token ${batch.tokens[i]} at row ${i} is outside the vocabulary [0, ${V})`,
        );
      }
    }
    const device = this.embed.weight.device;
    return noGrad(() =>
      tidy(() => {
        const i32 = (a: Int32Array, shape: number[]) => tensor(a, { dtype: "i32", device, shape });
        const m: PagedTensors = {
          slots: i32(batch.slots, [N]),
          blockTables: i32(batch.blockTables, [S, batch.maxBlocks]),
          contextLens: i32(batch.contextLens, [S]),
          queryStarts: i32(batch.queryStarts, [S + 1]),
          decode: N === S,
        };
        const plan = cache.stateSlots > 0 ? planMambaBatch(batch, device) : null;
        let x = this.embed.forward(i32(batch.tokens, [1, N])); // (1, N, D)
        let ai = 0, mi = 0;
        for (const l of this.layers) {
          if (l.attn) {
            const pool = { k: cache.k[ai], v: cache.v[ai++] };
            x = x.add(l.attn.forwardPaged(l.norm1.forward(x), pool, m));
          } else {
            const pools = { conv: cache.state[2 * mi], ssm: cache.state[2 * mi++ + 1] };
            x = mambaPagedLayer(l.mamba!, l.norm1, x.reshape([N, D]), pools, plan!, this.config.scan)
              .reshape([1, N, D]);
          }
          x = l.ffn(x).y;
        }
        let h = x.reshape([N, D]); // (N, D)
        if (!opts.allRows) {
          const last = Int32Array.from({ length: S }, (_, s) => batch.queryStarts[s + 1] - 1);
          h = gather(h, i32(last, [S])); // (S, D)
        }
        return this.head.forward(this.normF.forward(h)); // (S or N, V)
      })
    );
  }
}
