/**
 * Mixture-of-experts layers: the {@link SwiGLU} MLP (LLaMA / Mixtral form) and the {@link MoE} layer
 * (Jamba's and Mixtral's: a linear router, softmax over all experts, top-K, SwiGLU experts, the Switch
 * load-balancing loss).
 * @module
 */

import { param } from "../runtime/autograd.ts";

import { type Tensor, tidy } from "../runtime/tensor.ts";
import { zeros } from "../ops/core/creation.ts";
import { eq, mul, where } from "../ops/core/elementwise.ts";
import { concat, gather, scatterAdd } from "../ops/core/layout.ts";
import { matmul } from "../ops/core/matmul.ts";
import { mean, sum } from "../ops/core/reduce.ts";
import { softmax } from "../ops/core/rowwise.ts";
import { arange } from "../ops/core/creation.ts";
import { topk } from "../ops/moe/topk.ts";
import { moeRoute, moeRouteBlocks } from "../ops/moe/route.ts";
import { init, type LayerOptions, Linear, Module } from "./nn.ts";

/**
 * The gated MLP of LLaMA and Mixtral: y = (silu(x W1) * (x W3)) W2, no biases; x (..., D) -> (..., D)
 * through a hidden width F. W1 and W3 are (D, F), W2 (F, D), each a {@link Linear} without bias (init
 * uniform in ±1/sqrt(in)); silu is fused into W1's matmul output pass.
 *
 * @example
 * ```ts
 * import { randn, SwiGLU } from "seqlab";
 * const mlp = new SwiGLU(8, 32, { seed: 1 });
 * console.log(mlp.forward(randn([2, 5, 8])).shape); // [2, 5, 8]
 * mlp.dispose();
 * ```
 */
export class SwiGLU extends Module {
  /** The gate projection D -> F (silu). */
  w1: Linear;
  /** The down projection F -> D. */
  w2: Linear;
  /** The up projection D -> F. */
  w3: Linear;
  /** Creates the three projections (seeds seed, seed + 2, seed + 4 when seeded). */
  constructor(readonly dim: number, readonly hidden: number, o: LayerOptions = {}) {
    super();
    const at = (k: number) => ({ ...o, bias: false, seed: o.seed === undefined ? undefined : o.seed + k });
    this.w1 = new Linear(dim, hidden, at(0));
    this.w2 = new Linear(hidden, dim, at(2));
    this.w3 = new Linear(dim, hidden, at(4));
  }

  /** x (..., D) -> (..., D). */
  forward(x: Tensor): Tensor {
    return tidy(() => this.w2.forward(mul(this.w1.forward(x, "silu"), this.w3.forward(x))));
  }
}

/** Options of {@link MoE}. */
export interface MoEOptions extends LayerOptions {
  /**
   * Divide the K chosen router probabilities by their sum (Mixtral-style ports) instead of using them as
   * they are (default false, as the Hugging Face Jamba code).
   */
  renormalize?: boolean;
  /** The load-balancing loss coefficient (default 0.001, Jamba's `router_aux_loss_coef`). */
  auxLossCoef?: number;
  /**
   * Rows per block of the grouped path's exact table (default 64): each expert's tokens fill whole blocks
   * ({@link moeRouteBlocks}), so the expert matmuls run on at most T K + E (B - 1) rows. Smaller blocks
   * pad less but make more, smaller matmuls and gather more weight copies: at T 1024, E 16, K 2, 64 and
   * 128 were fastest, 16 slower than dense (`deno task bench moe`).
   */
  blockRows?: number;
  /**
   * Instead of blocks, fixed slots per expert, as a multiple of the mean load T K / E: an expert's choices
   * past ceil(factor T K / E) are dropped (they add 0, as in Switch/GShard), counted in `dropped`. Unset
   * (default): the exact block table.
   */
  capacityFactor?: number;
}

/** What {@link MoE.forwardAux} returns. */
export interface MoEOutput {
  /** The layer's output, x's shape. */
  y: Tensor;
  /** coef E sum_e f_e P_e (a scalar that requires grad through the router): add it to the training loss. */
  auxLoss: Tensor;
  /** (E) f32: the choices routed to each expert (the K choices of every token counted). */
  load: Tensor;
  /** Scalar u32: choices dropped past capacity (grouped path; 0 on the dense path). */
  dropped: Tensor;
}

/**
 * A mixture-of-experts MLP: router logits x Wr (D -> E, no bias), p = softmax over all E experts, the top
 * K of p as gate weights (renormalised to sum 1 with `renormalize`), y = sum over the chosen experts of
 * gate * SwiGLU_e(x). Expert weights are stacked, w1 and w3 (E, D, F), w2 (E, F, D), so one batched matmul
 * serves all experts.
 *
 * Paths: `"auto"` (default) takes the dense path when it computes fewer expert rows than the grouped one
 * would (T (E - K) <= min(E, T K) blockRows / 2: a few tokens, as in decoding, where each chosen expert's
 * block of `blockRows` rows would be mostly padding), else the grouped path. `"grouped"` builds a dispatch table on the device ({@link moeRouteBlocks}: each
 * expert's tokens in order, in whole blocks of `blockRows`), gathers the tokens (P, B, D) and each block's
 * expert weights, runs one batched matmul per projection and scatter-adds the weighted outputs back: exact,
 * no readback. With `capacityFactor` it uses E fixed-capacity slot lists instead ({@link moeRoute}), which
 * may drop choices. `"dense"` runs every expert on every token with the weights zero outside the top K:
 * the reference and the baseline.
 *
 * Load balancing (Switch form): auxLoss = coef E sum_e f_e P_e, f_e = (choices of e) / T counting each of
 * a token's K choices (so sum_e f_e = K and uniform routing gives K coef, as the Hugging Face
 * `load_balancing_loss_func` of Mixtral and Jamba), P_e the mean of p_e over tokens. `forward` returns y
 * alone (a plain Module); a training loop calls `forwardAux` and adds `auxLoss`.
 *
 * @example
 * ```ts
 * import { MoE, randn } from "seqlab";
 * const moe = new MoE(8, 16, 4, 2, { seed: 1 });
 * const { y, auxLoss } = moe.forwardAux(randn([3, 5, 8]));
 * console.log(y.shape, auxLoss.shape); // [3, 5, 8] []
 * moe.dispose();
 * ```
 */
export class MoE extends Module {
  /** D -> E, no bias. */
  router: Linear;
  /** (E, D, F): the experts' gate projections. */
  w1: Tensor;
  /** (E, F, D): the experts' down projections. */
  w2: Tensor;
  /** (E, D, F): the experts' up projections. */
  w3: Tensor;
  /** See {@link MoEOptions}. */
  readonly renormalize: boolean;
  /** See {@link MoEOptions}. */
  readonly auxLossCoef: number;
  /** See {@link MoEOptions}. */
  readonly blockRows: number;
  /** See {@link MoEOptions}; null: the exact block table. */
  readonly capacityFactor: number | null;

  /** dim D, hidden F per expert, E experts, top K. */
  constructor(
    readonly dim: number,
    readonly hidden: number,
    readonly experts: number,
    readonly topK: number,
    o: MoEOptions = {},
  ) {
    super();
    for (const [n, v] of [["dim", dim], ["hidden", hidden], ["experts", experts], ["topK", topK]] as const) {
      if (!Number.isInteger(v) || v <= 0) throw new Error(`MoE: ${n} must be a positive integer, got ${v}`);
    }
    if (topK > experts) throw new Error(`MoE: topK ${topK} is more than the ${experts} experts`);
    this.renormalize = o.renormalize ?? false;
    this.auxLossCoef = o.auxLossCoef ?? 0.001;
    this.capacityFactor = o.capacityFactor ?? null;
    if (this.capacityFactor !== null && !(this.capacityFactor > 0)) {
      throw new Error(`MoE: capacityFactor must be positive, got ${this.capacityFactor}`);
    }
    this.blockRows = o.blockRows ?? 64;
    if (!Number.isInteger(this.blockRows) || this.blockRows < 1) {
      throw new Error(`MoE: blockRows must be a positive integer, got ${this.blockRows}`);
    }
    const seed = (k: number) => (o.seed === undefined ? undefined : o.seed + k);
    const u = (shape: number[], fanIn: number, k: number) => {
      const b = 1 / Math.sqrt(fanIn);
      return param(
        init.uniform(shape, { device: o.device, dtype: o.dtype, seed: seed(k), low: -b, high: b }),
      );
    };
    this.router = new Linear(dim, experts, { ...o, bias: false, seed: seed(0) });
    this.w1 = u([experts, dim, hidden], dim, 1);
    this.w2 = u([experts, hidden, dim], hidden, 2);
    this.w3 = u([experts, dim, hidden], dim, 3);
  }

  /** x (..., D) -> y (..., D) by `path` (default "auto"); the auxiliary loss is dropped (see `forwardAux`). */
  forward(x: Tensor, path: "auto" | "grouped" | "dense" = "auto"): Tensor {
    const { y, auxLoss, load, dropped } = this.forwardAux(x, path);
    for (const t of [auxLoss, load, dropped]) t.dispose();
    return y;
  }

  /** x (..., D) -> y, auxLoss, load and dropped, by `path` (default "auto", see the class). */
  forwardAux(x: Tensor, path: "auto" | "grouped" | "dense" = "auto"): MoEOutput {
    const D = this.dim, E = this.experts, K = this.topK;
    if (x.check("MoE").rank === 0 || x.shape[x.rank - 1] !== D) {
      throw new Error(`MoE: input ${x.describe()} does not end in dim ${D}`);
    }
    if (path !== "auto" && path !== "grouped" && path !== "dense") {
      throw new Error(`MoE: path must be "auto", "grouped" or "dense", got ${JSON.stringify(path)}`);
    }
    if (path === "auto") {
      const T = x.size / D;
      path = T * (E - K) <= (Math.min(E, T * K) * this.blockRows) / 2 && this.capacityFactor === null
        ? "dense"
        : "grouped";
    }
    return tidy(() => {
      const x2 = x.reshape([-1, D]); // (T, D)
      const T = x2.shape[0];
      const p = softmax(this.router.forward(x2), -1); // (T, E)
      const top = topk(p, K); // (T, K)
      const w = this.renormalize ? top.values.div(sum(top.values, -1, true)) : top.values; // (T, K)
      const onehot = eq(top.indices.unsqueeze(-1), arange(E, { dtype: "i32", device: x.device })); // (T, K, E)
      const load = sum(onehot.cast("f32"), [0, 1]); // (E)
      const auxLoss = sum(mul(load.div(Math.max(T, 1)), mean(p, 0))).mul(this.auxLossCoef * E);
      let y: Tensor, dropped: Tensor;
      if (path === "dense") {
        const gate = sum(where(onehot, w.unsqueeze(-1), 0), 1); // (T, E)
        const h = mul(matmul(x2, this.w1).silu(), matmul(x2, this.w3)); // (E, T, F)
        const ye = matmul(h, this.w2); // (E, T, D)
        y = sum(mul(ye, gate.transpose().unsqueeze(-1)), 0); // (T, D)
        dropped = zeros([], { dtype: "u32", device: x.device });
      } else {
        const xPad = concat([x2, zeros([1, D], { dtype: x2.dtype, device: x.device })], 0); // (T + 1, D)
        const wPad = concat([w.reshape([T * K]), zeros([1], { dtype: w.dtype, device: x.device })]); // (T K + 1)
        let tokenOf: Tensor, choiceOf: Tensor, ye: Tensor;
        if (this.capacityFactor === null) {
          // exact: P blocks of B rows, each block one expert's, its weights gathered per block
          const B = this.blockRows, r = moeRouteBlocks(top.indices, E, B), P = r.blocks;
          [tokenOf, choiceOf] = [r.tokenOf, r.choiceOf];
          const [w1, w2, w3] = [this.w1, this.w2, this.w3].map((m) => gather(m, r.blockExpert)); // (P, ., .)
          const xe = gather(xPad, tokenOf).reshape([P, B, D]); // (P, B, D)
          const h = mul(matmul(xe, w1).silu(), matmul(xe, w3)); // (P, B, F)
          ye = matmul(h, w2).reshape([P * B, D]); // (P B, D)
          dropped = zeros([], { dtype: "u32", device: x.device });
        } else {
          const C = Math.max(1, Math.min(T, Math.ceil((this.capacityFactor * T * K) / E)));
          const r = moeRoute(top.indices, E, C);
          [tokenOf, choiceOf] = [r.tokenOf, r.choiceOf];
          const xe = gather(xPad, tokenOf).reshape([E, C, D]); // (E, C, D)
          const h = mul(matmul(xe, this.w1).silu(), matmul(xe, this.w3)); // (E, C, F)
          ye = matmul(h, this.w2).reshape([E * C, D]); // (E C, D)
          dropped = sum(r.counts.cast("i32").sub(C).maximum(0)).cast("u32");
        }
        const g = gather(wPad, choiceOf).unsqueeze(-1); // (rows, 1)
        y = scatterAdd(mul(ye, g), tokenOf, T + 1).slice([[0, T]]); // (T, D)
      }
      return { y: y.contiguous().reshape(x.shape), auxLoss, load, dropped };
    });
  }
}
