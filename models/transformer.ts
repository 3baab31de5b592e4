/**
 * A decoder-only Transformer language model (pre-norm, GPT-2's layout): token embedding -> nLayer x
 * [LayerNorm, causal multi-head attention, residual; LayerNorm, GELU MLP, residual] -> LayerNorm -> linear
 * head. Positions by RoPE (with the context-extension scalings of `ropeFrequencies`, swappable at
 * evaluation time), ALiBi, learned absolute embeddings, or none. Grouped-query attention with `nKvHead`.
 * Attention is `attention()`: FlashAttention on WebGPU, the float64 reference on the cpu. Recurrent
 * decoding keeps a per-layer K/V cache preallocated to its maximum length; each `step` writes one
 * position into it and attends with `attentionDecode` (nothing is read back).
 * @module
 */

import { type DType, isFloat } from "../runtime/dtype.ts";
import type { DeviceName } from "../runtime/device.ts";
import { noGrad } from "../runtime/autograd.ts";
import { keep, type Tensor, tidy } from "../runtime/tensor.ts";
import { zeros } from "../ops/core/creation.ts";
import { copyInto } from "../ops/core/elementwise.ts";
import { attention, attentionDecode } from "../ops/attention/mod.ts";
import {
  alibiSlopes,
  applyRope,
  type RopeFrequencies,
  ropeFrequencies,
  type RopeOptions,
} from "../ops/posenc/mod.ts";
import { pagedAttention, pagedPools, pagedPrefill, writeKV } from "../ops/paged/mod.ts";
import { gather } from "../ops/core/layout.ts";
import { tensor } from "../ops/core/creation.ts";
import { Embedding, init, type Initializer, LayerNorm, Linear, Module } from "./nn.ts";
import {
  checkPagedBatch,
  type PagedBatch,
  type PagedCacheConfig,
  PagedKVCache,
  type PagedModel,
  type PagedTensors,
} from "./paged.ts";

/** Configuration of a {@link TransformerLM}. */
export interface TransformerConfig {
  /** Vocabulary size V. */
  vocabSize: number;
  /** Model width D. */
  dModel: number;
  /** Number of blocks. */
  nLayer: number;
  /** Query heads H; the head width is D / H. */
  nHead: number;
  /** Key/value heads (default nHead; fewer is grouped-query attention, 1 is multi-query). */
  nKvHead?: number;
  /** Width of the MLP (default 4 D). */
  dFf?: number;
  /** Positional encoding (default "rope"). */
  posenc?: "rope" | "alibi" | "learned" | "none";
  /** RoPE base and scaling (default: base 10000, no scaling); see {@link TransformerLM.setRope}. */
  rope?: RopeOptions;
  /**
   * Longest sequence for "learned" positions (the table's rows; default 2048). RoPE, ALiBi and "none"
   * have no table and take any length.
   */
  maxLen?: number;
  /** LayerNorm epsilon (default 1e-5). */
  eps?: number;
  /** Standard deviation of the weights' normal init (default 0.02, GPT-2's). */
  initStd?: number;
  /** Seed of the first parameter (the others follow). */
  seed?: number;
  /** Device of the parameters (default: the default device). */
  device?: DeviceName;
  /** Float dtype of the parameters (default f32). */
  dtype?: DType;
}

/**
 * The per-layer K/V cache of a {@link TransformerLM}: k[i] and v[i] are (B, Hkv, maxLen, D / H), of which
 * the first `length` positions are filled. `step` and `prefill` write into these tensors in place and
 * advance `length`; they return this same object. Free it with `dispose()`.
 */
export class KVCache {
  /** Positions filled so far (the next token's position). */
  length = 0;
  /** Creates an empty cache (use {@link TransformerLM.initCache}). */
  constructor(
    /** Keys per layer, (B, Hkv, maxLen, Dh), rotated by RoPE when the model uses it. */
    readonly k: Tensor[],
    /** Values per layer, (B, Hkv, maxLen, Dh). */
    readonly v: Tensor[],
    /** Batch size B. */
    readonly batch: number,
    /** Capacity in positions. */
    readonly maxLen: number,
  ) {}
  /** Frees the cache's tensors. */
  dispose(): void {
    for (const t of [...this.k, ...this.v]) t.dispose();
  }
}

/** Resolved sizes of a {@link TransformerLM}: V vocabulary, D width, H and Hkv heads, Dh head width, F MLP width. */
export interface TransformerDims {
  /** Vocabulary size. */
  V: number;
  /** Model width. */
  D: number;
  /** Query heads. */
  H: number;
  /** Key/value heads. */
  Hkv: number;
  /** Head width D / H. */
  Dh: number;
  /** MLP width. */
  F: number;
}

/** Positional information for one call of a {@link TransformerBlock}: the first row's position and the encoding. */
export interface BlockPositions {
  /** Position of the first new row. */
  start: number;
  /** RoPE frequencies for this call, or null (no rotation). */
  freqs: RopeFrequencies | null;
  /** ALiBi slopes (H), or undefined (no bias). */
  alibi: Float64Array | undefined;
  /** Each row's own position (ragged paged batches), overriding `start`. */
  positions?: ArrayLike<number>;
}

const NO_POS: BlockPositions = { start: 0, freqs: null, alibi: undefined };

/**
 * One pre-norm block of a {@link TransformerLM}: x + attention(ln1 x), then + fc2 gelu(fc1 ln2 x); x is
 * (B, T, D). Built by the model; positions come from the model in a {@link BlockPositions}.
 *
 * @example
 * ```ts
 * import { randn, TransformerBlock } from "seqlab";
 * const d = { V: 10, D: 16, H: 4, Hkv: 2, Dh: 4, F: 64 };
 * const b = new TransformerBlock(d, 1, { eps: 1e-5, initStd: 0.02, seed: 1 });
 * console.log(b.forward(randn([2, 5, 16])).shape); // [2, 5, 16] (no positions: plain causal attention)
 * b.dispose();
 * ```
 */
export class TransformerBlock extends Module {
  /** LayerNorm before attention. */
  ln1: LayerNorm;
  /** D -> H Dh queries, no bias. */
  wq: Linear;
  /** D -> Hkv Dh keys, no bias. */
  wk: Linear;
  /** D -> Hkv Dh values, no bias. */
  wv: Linear;
  /** H Dh -> D output projection, no bias. */
  wo: Linear;
  /** LayerNorm before the MLP. */
  ln2: LayerNorm;
  /** D -> F, with bias. */
  fc1: Linear;
  /** F -> D, with bias. */
  fc2: Linear;

  /** Creates the block's parameters (residual projections scaled for a model of `nLayer` blocks). */
  constructor(
    /** The model's sizes. */
    readonly d: TransformerDims,
    nLayer: number,
    o: Required<Pick<TransformerConfig, "eps" | "initStd">> & {
      seed?: number;
      device?: DeviceName;
      dtype?: DType;
    },
  ) {
    super();
    const { D, H, Hkv, Dh, F } = d;
    const lo = { device: o.device, dtype: o.dtype };
    const w = (std: number): Initializer => (s, io) => init.normal(s, { ...io, std });
    const seed = (k: number) => (o.seed === undefined ? undefined : o.seed + 10 * k);
    // GPT-2: residual projections scaled by 1 / sqrt(2 nLayer)
    const res = o.initStd / Math.sqrt(2 * nLayer);
    this.ln1 = new LayerNorm(D, { ...lo, eps: o.eps });
    this.wq = new Linear(D, H * Dh, { ...lo, bias: false, seed: seed(0), weightInit: w(o.initStd) });
    this.wk = new Linear(D, Hkv * Dh, { ...lo, bias: false, seed: seed(1), weightInit: w(o.initStd) });
    this.wv = new Linear(D, Hkv * Dh, { ...lo, bias: false, seed: seed(2), weightInit: w(o.initStd) });
    this.wo = new Linear(H * Dh, D, { ...lo, bias: false, seed: seed(3), weightInit: w(res) });
    this.ln2 = new LayerNorm(D, { ...lo, eps: o.eps });
    this.fc1 = new Linear(D, F, { ...lo, seed: seed(4), weightInit: w(o.initStd), biasInit: init.zeros });
    this.fc2 = new Linear(F, D, { ...lo, seed: seed(5), weightInit: w(res), biasInit: init.zeros });
  }

  /**
   * q (B, T, H, Dh), k and v (B, T, Hkv, Dh) of x (B, T, D) at positions start, start + 1, ...: the
   * projections reshaped, never transposed (attention takes them in its "bthd" layout).
   */
  qkv(x: Tensor, p: BlockPositions): [Tensor, Tensor, Tensor] {
    const { H, Hkv, Dh } = this.d;
    const [B, T] = x.shape;
    const h = this.ln1.forward(x); // (B, T, D)
    let q = this.wq.forward(h).reshape([B, T, H, Dh]); // (B, T, H, Dh)
    let k = this.wk.forward(h).reshape([B, T, Hkv, Dh]); // (B, T, Hkv, Dh)
    const v = this.wv.forward(h).reshape([B, T, Hkv, Dh]); // (B, T, Hkv, Dh)
    if (p.freqs) {
      q = applyRope(q, p.positions ?? p.start, p.freqs, { layout: "bthd" });
      k = applyRope(k, p.positions ?? p.start, p.freqs, { layout: "bthd" });
    }
    return [q, k, v];
  }

  /** The attention output o (B, T, H, Dh) -> residual and MLP: x (B, T, D) -> (B, T, D). */
  finish(x: Tensor, o: Tensor): Tensor {
    const [B, T, D] = x.shape;
    const a = this.wo.forward(o.reshape([B, T, D])); // (B, T, D)
    const x1 = x.add(a);
    const m = this.fc2.forward(this.fc1.forward(this.ln2.forward(x1), "gelu")); // (B, T, D)
    return x1.add(m);
  }

  /** A whole sequence, x (B, T, D) -> (B, T, D); with a cache, its keys come first and T's are written. */
  forward(x: Tensor, p: BlockPositions = NO_POS, cache?: { k: Tensor; v: Tensor }): Tensor {
    const [q, k, v] = this.qkv(x, p); // (B, T, H, Dh), (B, T, Hkv, Dh) x 2
    let kk = k, vv = v;
    if (cache) {
      const T = x.shape[1], end = p.start + T;
      copyInto(cache.k.slice([null, null, [p.start, end]]), k.transpose(1, 2));
      copyInto(cache.v.slice([null, null, [p.start, end]]), v.transpose(1, 2));
      // the cache is (B, Hkv, maxLen, Dh): attention reads it through (B, start + T, Hkv, Dh) views
      kk = cache.k.slice([null, null, [0, end]]).transpose(1, 2);
      vv = cache.v.slice([null, null, [0, end]]).transpose(1, 2);
    }
    // causal, bottom-right aligned: with a cache, row i sits at position start + i
    const { o } = attention(q, kk, vv, { causal: true, alibi: p.alibi, layout: "bthd" }); // (B, T, H, Dh)
    return this.finish(x, o);
  }

  /** One token per sequence, x (B, 1, D), written at position p.start of the cache -> (B, 1, D). */
  step(x: Tensor, p: BlockPositions, cache: { k: Tensor; v: Tensor }): Tensor {
    const [q, k, v] = this.qkv(x, p); // (B, 1, H, Dh), (B, 1, Hkv, Dh) x 2
    copyInto(cache.k.slice([null, null, [p.start, p.start + 1]]), k.transpose(1, 2));
    copyInto(cache.v.slice([null, null, [p.start, p.start + 1]]), v.transpose(1, 2));
    const { o } = attentionDecode(q.transpose(1, 2), cache.k, cache.v, {
      length: p.start + 1,
      alibi: p.alibi,
    }); // (B, H, 1, Dh)
    return this.finish(x, o.transpose(1, 2)); // (B, 1, H, Dh)
  }

  /**
   * A ragged paged batch, x (1, N, D) with each row's position in `p.positions`: writes the rows' keys and
   * values into their `slots` of the pools, attends each row to its sequence's pages (decode when every
   * sequence has one new row, chunked prefill otherwise) -> (1, N, D).
   */
  forwardPaged(x: Tensor, p: BlockPositions, pool: { k: Tensor; v: Tensor }, m: PagedTensors): Tensor {
    const { H, Hkv, Dh } = this.d;
    const N = x.shape[1];
    const [q, k, v] = this.qkv(x, p); // (1, N, H, Dh), (1, N, Hkv, Dh) x 2
    writeKV(pool.k, pool.v, k.reshape([N, Hkv, Dh]), v.reshape([N, Hkv, Dh]), m.slots);
    const q3 = q.reshape([N, H, Dh]);
    const { o } = m.decode
      ? pagedAttention(q3, pool.k, pool.v, m.blockTables, m.contextLens, { alibi: p.alibi })
      : pagedPrefill(q3, pool.k, pool.v, m.blockTables, m.contextLens, m.queryStarts, { alibi: p.alibi });
    return this.finish(x, o.reshape([1, N, H, Dh])); // (1, N, D)
  }
}

/**
 * A pre-norm decoder-only Transformer LM: tokens (B, T) i32 -> logits (B, T, V).
 *
 * Parameters (seqlab's Linear layout, weight (in, out)): `embed` (V, D); per block `ln1`, `wq` (D, H Dh),
 * `wk` and `wv` (D, Hkv Dh), `wo` (H Dh, D), `ln2`, `fc1` (D, dFf) + bias, `fc2` (dFf, D) + bias; `pos`
 * (maxLen, D) for learned positions; `lnF`; `head` (D, V). Attention projections have no bias (as LLaMA).
 * Init as GPT-2: weights and embeddings N(0, 0.02^2), the residual projections `wo` and `fc2` with
 * std 0.02 / sqrt(2 nLayer), biases 0.
 *
 * @example
 * ```ts
 * import { TransformerLM, tensor } from "seqlab";
 * const lm = new TransformerLM({ vocabSize: 11, dModel: 16, nLayer: 2, nHead: 4, nKvHead: 2, seed: 1 });
 * const tokens = tensor([[1, 2, 3, 4]], { dtype: "i32" }); // (B, T)
 * console.log(lm.forward(tokens).shape); // [1, 4, 11]
 * const cache = lm.initCache(1, 16);
 * const { logits } = lm.step(tensor([1], { dtype: "i32" }), cache); // (B) -> (B, V)
 * console.log(logits.shape, cache.length); // [1, 11] 1
 * cache.dispose();
 * lm.dispose();
 * ```
 */
export class TransformerLM extends Module implements PagedModel {
  /** Token embedding (V, D). */
  embed: Embedding;
  /** Learned positions (maxLen, D), or null. */
  pos: Embedding | null;
  /** The blocks. */
  blocks: TransformerBlock[];
  /** Final LayerNorm. */
  lnF: LayerNorm;
  /** D -> V, no bias. */
  head: Linear;
  /** The resolved configuration (defaults filled in). */
  readonly config: Readonly<
    Required<Omit<TransformerConfig, "seed" | "device" | "dtype">> & { seed?: number }
  >;
  readonly #d: TransformerDims;
  #rope: RopeOptions;
  readonly #alibi: Float64Array | undefined;

  /** Creates the model's parameters; throws on an inconsistent configuration. */
  constructor(cfg: TransformerConfig) {
    super();
    const V = cfg.vocabSize, D = cfg.dModel, L = cfg.nLayer, H = cfg.nHead;
    const Hkv = cfg.nKvHead ?? H, F = cfg.dFf ?? 4 * D, maxLen = cfg.maxLen ?? 2048;
    const posenc = cfg.posenc ?? "rope";
    for (
      const [n, v] of [
        ["vocabSize", V],
        ["dModel", D],
        ["nLayer", L],
        ["nHead", H],
        ["nKvHead", Hkv],
        ["dFf", F],
        ["maxLen", maxLen],
      ] as const
    ) {
      if (!Number.isInteger(v) || v < 1) {
        throw new Error(`TransformerLM: ${n} must be a positive integer, got ${v}`);
      }
    }
    if (D % H !== 0) throw new Error(`TransformerLM: nHead = ${H} must divide dModel = ${D}`);
    if (H % Hkv !== 0) throw new Error(`TransformerLM: nKvHead = ${Hkv} must divide nHead = ${H}`);
    if (!["rope", "alibi", "learned", "none"].includes(posenc)) {
      throw new Error(
        `TransformerLM: posenc must be "rope", "alibi", "learned" or "none", got ${JSON.stringify(posenc)}`,
      );
    }
    const Dh = D / H;
    if (posenc === "rope" && Dh % 2 !== 0) {
      throw new Error(`TransformerLM: RoPE needs an even head width, got dModel / nHead = ${Dh}`);
    }
    const eps = cfg.eps ?? 1e-5, initStd = cfg.initStd ?? 0.02;
    this.config = {
      vocabSize: V,
      dModel: D,
      nLayer: L,
      nHead: H,
      nKvHead: Hkv,
      dFf: F,
      posenc,
      rope: cfg.rope ?? {},
      maxLen,
      eps,
      initStd,
      seed: cfg.seed,
    };
    this.#d = { V, D, H, Hkv, Dh, F };
    this.#rope = cfg.rope ?? {};
    if (posenc === "rope") ropeFrequencies(Dh, this.#rope); // validates the options now
    this.#alibi = posenc === "alibi" ? alibiSlopes(H) : undefined;
    const o = { device: cfg.device, dtype: cfg.dtype };
    const seed = (k: number) => (cfg.seed === undefined ? undefined : cfg.seed + 1000 * k);
    const emb: Initializer = (s, io) => init.normal(s, { ...io, std: initStd });
    this.embed = new Embedding(V, D, { ...o, seed: seed(0), weightInit: emb });
    this.pos = posenc === "learned"
      ? new Embedding(maxLen, D, { ...o, seed: seed(1), weightInit: emb })
      : null;
    this.blocks = Array.from(
      { length: L },
      (_, i) => new TransformerBlock(this.#d, L, { ...o, eps, initStd, seed: seed(2 + i) }),
    );
    this.lnF = new LayerNorm(D, { ...o, eps });
    this.head = new Linear(D, V, { ...o, bias: false, seed: seed(2 + L), weightInit: emb });
  }

  /**
   * Swaps the RoPE base or scaling (Position Interpolation, NTK-aware, dynamic NTK, YaRN) used from now
   * on, to evaluate a model trained with plain RoPE beyond its training length. For "dynamic" scaling the
   * `length` field is replaced by the current sequence length on each call (T in `forward`, the position
   * + 1 in `step`), which is what makes it dynamic; keys already in a cache keep the rotation they were
   * written with (as Hugging Face's dynamic NTK does).
   *
   * @example
   * ```ts
   * import { TransformerLM } from "seqlab";
   * const lm = new TransformerLM({ vocabSize: 8, dModel: 16, nLayer: 1, nHead: 2 });
   * lm.setRope({ scaling: { type: "yarn", factor: 4, originalLength: 256 } });
   * console.log(lm.rope.scaling?.type); // "yarn"
   * lm.dispose();
   * ```
   */
  setRope(opts: RopeOptions): void {
    if (this.config.posenc !== "rope") {
      throw new Error(`TransformerLM.setRope: the model uses posenc "${this.config.posenc}", not "rope"`);
    }
    ropeFrequencies(this.#d.Dh, opts); // throws on bad options before anything changes
    this.#rope = opts;
  }

  /** The RoPE options in use (see {@link TransformerLM.setRope}). */
  get rope(): RopeOptions {
    return this.#rope;
  }

  #pos(start: number, length: number): BlockPositions {
    if (this.config.posenc !== "rope") return { start, freqs: null, alibi: this.#alibi };
    const sc = this.#rope.scaling;
    const opts = sc?.type === "dynamic" ? { ...this.#rope, scaling: { ...sc, length } } : this.#rope;
    return { start, freqs: ropeFrequencies(this.#d.Dh, opts), alibi: undefined };
  }

  #checkTokens(op: string, tokens: Tensor, rank: number): void {
    tokens.check(`TransformerLM.${op}`);
    if (tokens.rank !== rank || isFloat(tokens.dtype)) {
      throw new Error(
        `TransformerLM.${op}: tokens must be ${
          rank === 2 ? "(B, T)" : "(B)"
        } i32 or u32, got ${tokens.describe()}`,
      );
    }
    if (tokens.device !== this.embed.weight.device) {
      throw new Error(
        `TransformerLM.${op}: tokens are on ${tokens.device} but the model is on ${this.embed.weight.device}`,
      );
    }
  }

  /** Embedding plus learned positions: tokens (B, T) -> (B, T, D). */
  #embed(op: string, tokens: Tensor, start: number): Tensor {
    const T = tokens.shape[1];
    const x = this.embed.forward(tokens); // (B, T, D)
    if (!this.pos) return x;
    if (start + T > this.config.maxLen) {
      throw new Error(
        `TransformerLM.${op}: positions up to ${
          start + T
        } exceed maxLen = ${this.config.maxLen} of the learned position table`,
      );
    }
    return x.add(this.pos.weight.slice([[start, start + T]])); // (B, T, D)
  }

  /** Logits (B, T, V) of tokens (B, T): causal, every position predicts the next token. */
  forward(tokens: Tensor): Tensor {
    this.#checkTokens("forward", tokens, 2);
    return tidy(() => {
      const p = this.#pos(0, tokens.shape[1]);
      let x = this.#embed("forward", tokens, 0); // (B, T, D)
      for (const b of this.blocks) x = b.forward(x, p);
      return this.head.forward(this.lnF.forward(x)); // (B, T, V)
    });
  }

  /**
   * An empty K/V cache for `batch` sequences of up to `maxLen` positions, on the model's device:
   * 2 nLayer tensors of (B, Hkv, maxLen, D / H). They are exempt from `tidy` scopes; free them with the
   * cache's `dispose()`.
   */
  initCache(batch: number, maxLen: number): KVCache {
    for (const [n, v] of [["batch", batch], ["maxLen", maxLen]] as const) {
      if (!Number.isInteger(v) || v < 1) {
        throw new Error(`TransformerLM.initCache: ${n} must be a positive integer, got ${v}`);
      }
    }
    const { Hkv, Dh } = this.#d;
    const o = { device: this.embed.weight.device, dtype: this.embed.weight.dtype };
    // kept out of tidy scopes: the cache lives across steps until its dispose()
    const mk = () => this.blocks.map(() => keep(zeros([batch, Hkv, maxLen, Dh], o)));
    return new KVCache(mk(), mk(), batch, maxLen);
  }

  #checkCache(op: string, cache: KVCache, B: number, T: number): void {
    if (!(cache instanceof KVCache) || cache.k.length !== this.blocks.length) {
      throw new Error(`TransformerLM.${op}: cache must come from this model's initCache`);
    }
    if (cache.k[0].disposed) throw new Error(`TransformerLM.${op}: the cache has been disposed`);
    if (cache.batch !== B) {
      throw new Error(
        `TransformerLM.${op}: tokens have batch ${B} but the cache was made for ${cache.batch}`,
      );
    }
    if (cache.length + T > cache.maxLen) {
      throw new Error(
        `TransformerLM.${op}: the cache holds ${cache.length} of ${cache.maxLen} positions; ${T} more would overflow it`,
      );
    }
  }

  /**
   * Runs a prompt (B, T) after what the cache holds (positions cache.length ...), writes its keys and
   * values into the cache and returns the logits (B, T, V). Inference only (no gradients).
   *
   * @example
   * ```ts
   * import { TransformerLM, tensor } from "seqlab";
   * const lm = new TransformerLM({ vocabSize: 5, dModel: 8, nLayer: 1, nHead: 2, seed: 1 });
   * const cache = lm.initCache(1, 8);
   * const logits = lm.prefill(tensor([[1, 2, 3]], { dtype: "i32" }), cache);
   * console.log(logits.shape, cache.length); // [1, 3, 5] 3
   * cache.dispose();
   * lm.dispose();
   * ```
   */
  prefill(tokens: Tensor, cache: KVCache): Tensor {
    this.#checkTokens("prefill", tokens, 2);
    const [B, T] = tokens.shape;
    this.#checkCache("prefill", cache, B, T);
    const start = cache.length;
    const logits = noGrad(() =>
      tidy(() => {
        const p = this.#pos(start, start + T);
        let x = this.#embed("prefill", tokens, start); // (B, T, D)
        this.blocks.forEach((b, i) => (x = b.forward(x, p, { k: cache.k[i], v: cache.v[i] })));
        return this.head.forward(this.lnF.forward(x)); // (B, T, V)
      })
    );
    cache.length = start + T;
    return logits;
  }

  /**
   * One token per sequence: tokens (B) at position cache.length -> logits (B, V) for the next one. Writes
   * the token's keys and values into the cache and advances it; returns `{ logits, cache }` with the same
   * cache object. Stepping through a sequence equals {@link TransformerLM.forward} on it. Inference only.
   */
  step(tokens: Tensor, cache: KVCache): { logits: Tensor; cache: KVCache } {
    this.#checkTokens("step", tokens, 1);
    const B = tokens.shape[0];
    this.#checkCache("step", cache, B, 1);
    const start = cache.length;
    const logits = noGrad(() =>
      tidy(() => {
        const p = this.#pos(start, start + 1);
        let x = this.#embed("step", tokens.reshape([B, 1]), start); // (B, 1, D)
        this.blocks.forEach((b, i) => (x = b.step(x, p, { k: cache.k[i], v: cache.v[i] })));
        return this.head.forward(this.lnF.forward(x)).reshape([B, this.#d.V]); // (B, V)
      })
    );
    cache.length = start + 1;
    return { logits, cache };
  }

  /** Vocabulary size (the logits' width). */
  get vocabSize(): number {
    return this.#d.V;
  }

  /**
   * A paged K/V cache: per layer a key and a value pool of (numBlocks, Hkv, blockSize, D / H) on the model's
   * device, for the serving engine (`LLMEngine`) or {@link TransformerLM.forwardPaged}. Exempt from `tidy`;
   * free it with its `dispose()`.
   */
  initPagedCache(cfg: PagedCacheConfig): PagedKVCache {
    const bs = cfg.blockSize ?? 16;
    if (!Number.isInteger(cfg.numBlocks) || cfg.numBlocks < 1) {
      throw new Error(
        `TransformerLM.initPagedCache: numBlocks must be a positive integer, got ${cfg.numBlocks}`,
      );
    }
    const { Hkv, Dh } = this.#d;
    const o = { device: this.embed.weight.device, dtype: this.embed.weight.dtype };
    const pools = this.blocks.map(() => pagedPools(cfg.numBlocks, Hkv, bs, Dh, o));
    return new PagedKVCache(
      pools.map((p) => keep(p.k)),
      pools.map((p) => keep(p.v)),
      cfg.numBlocks,
      bs,
    );
  }

  /**
   * Runs a ragged batch of new tokens from many sequences against a paged cache (see {@link PagedBatch}):
   * writes their keys and values into the slots the batch names and returns the logits of each sequence's
   * last new token, (S, V), or with `allRows` of every new token, (N, V). Prompt chunks and decode tokens
   * mix in one call; a sequence's logits equal {@link TransformerLM.forward} over its whole context.
   * Inference only. RoPE's dynamic scaling is refused (each sequence would need its own frequencies).
   *
   * @example
   * ```ts
   * import { TransformerLM } from "seqlab";
   * const lm = new TransformerLM({ vocabSize: 7, dModel: 8, nLayer: 1, nHead: 2, seed: 1 });
   * const cache = lm.initPagedCache({ numBlocks: 4, blockSize: 8 });
   * // one sequence, a 3-token prompt in block 2 (slots 16, 17, 18)
   * const logits = lm.forwardPaged({
   *   tokens: new Int32Array([1, 2, 3]), positions: new Int32Array([0, 1, 2]),
   *   slots: new Int32Array([16, 17, 18]), queryStarts: new Int32Array([0, 3]),
   *   contextLens: new Int32Array([3]), blockTables: new Int32Array([2]), maxBlocks: 1,
   * }, cache);
   * console.log(logits.shape); // [1, 7]
   * cache.dispose();
   * lm.dispose();
   * ```
   */
  forwardPaged(batch: PagedBatch, cache: PagedKVCache, opts: { allRows?: boolean } = {}): Tensor {
    const op = "TransformerLM.forwardPaged";
    if (!(cache instanceof PagedKVCache) || cache.k.length !== this.blocks.length) {
      throw new Error(`${op}: cache must come from this model's initPagedCache`);
    }
    if (cache.k[0].disposed) throw new Error(`${op}: the cache has been disposed`);
    const { S, N } = checkPagedBatch(op, batch, cache);
    const { V } = this.#d;
    for (let i = 0; i < N; i++) {
      if (!(batch.tokens[i] >= 0 && batch.tokens[i] < V)) {
        throw new Error(`${op}: token ${batch.tokens[i]} at row ${i} is outside the vocabulary [0, ${V})`);
      }
    }
    if (this.config.posenc === "rope" && this.#rope.scaling?.type === "dynamic") {
      throw new Error(
        `${op}: RoPE's dynamic scaling is not supported in paged batches (one length per call)`,
      );
    }
    const maxPos = batch.positions.reduce((a, b) => Math.max(a, b), 0);
    if (this.pos && maxPos >= this.config.maxLen) {
      throw new Error(
        `${op}: position ${maxPos} exceeds maxLen = ${this.config.maxLen} of the learned position table`,
      );
    }
    const device = this.embed.weight.device;
    return noGrad(() =>
      tidy(() => {
        const i32 = (a: Int32Array, shape: number[]) => tensor(a, { dtype: "i32", device, shape });
        const m = {
          slots: i32(batch.slots, [N]),
          blockTables: i32(batch.blockTables, [S, batch.maxBlocks]),
          contextLens: i32(batch.contextLens, [S]),
          queryStarts: i32(batch.queryStarts, [S + 1]),
          decode: N === S,
        };
        const p: BlockPositions = { ...this.#pos(0, maxPos + 1), positions: batch.positions };
        const tok = i32(batch.tokens, [1, N]);
        let x = this.embed.forward(tok); // (1, N, D)
        if (this.pos) x = x.add(this.pos.forward(i32(batch.positions, [1, N])));
        this.blocks.forEach((b, i) => (x = b.forwardPaged(x, p, { k: cache.k[i], v: cache.v[i] }, m)));
        let h = x.reshape([N, this.#d.D]); // (N, D)
        if (!opts.allRows) {
          const last = Int32Array.from({ length: S }, (_, s) => batch.queryStarts[s + 1] - 1);
          h = gather(h, i32(last, [S])); // (S, D)
        }
        return this.head.forward(this.lnF.forward(h)); // (S or N, V)
      })
    );
  }
}
