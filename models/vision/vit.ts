/**
 * Self-attention over image patches (ViT, Dosovitskiy et al.; Guo et al., arXiv 2111.07624, Section 3.3)
 * and attention rollout (Abnar and Zuidema, ACL 2020) over a stack of such layers.
 * @module
 */

import { noGrad } from "../../runtime/autograd.ts";
import { isFloat } from "../../runtime/dtype.ts";
import { fmt } from "../../runtime/shape.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { tensor } from "../../ops/core/creation.ts";
import { add, div } from "../../ops/core/elementwise.ts";
import { matmul } from "../../ops/core/matmul.ts";
import { mean, sum } from "../../ops/core/reduce.ts";
import { softmax } from "../../ops/core/rowwise.ts";
import { attention } from "../../ops/attention/attention.ts";
import { type LayerOptions, Linear, Module } from "../nn.ts";
import { checkInt, linearFlops, VisionError } from "./common.ts";

/** What {@link ViTAttention} computed. */
export interface ViTAttentionOutput {
  /** (B, T, D). */
  y: Tensor;
  /** (B, H, T, T): softmax(q k^T / sqrt(Dh)) per head, row = query token (no gradient). */
  attention: Tensor;
}

/**
 * Multi-head self-attention over tokens (patches, plus a class token if the caller adds one), ViT's: one
 * Linear to q, k, v (D -> 3 D, bias by default), H heads of Dh = D / H, softmax(q k^T / sqrt(Dh)) v with
 * no mask, then a Linear D -> D. The attention is seqlab's `attention` op on (B, T, H, Dh) views in the
 * "bthd" layout (FlashAttention on WebGPU), so no T x T matrix is kept for the backward. In the survey's
 * form, g(x) = softmax(q k^T / sqrt(Dh)) and f(g(x), x) = W_o (g(x) v). `forwardWithAttention` also
 * returns the per-head maps (B, H, T, T), computed beside the op without gradient, for
 * {@link attentionRollout}.
 *
 * @example
 * ```ts
 * import { randn, ViTAttention } from "seqlab";
 * const mhsa = new ViTAttention(32, 4, { seed: 1 });
 * const { y, attention } = mhsa.forwardWithAttention(randn([2, 17, 32])); // 16 patches + a class token
 * console.log(y.shape, attention.shape, mhsa.numParameters()); // [2, 17, 32] [2, 4, 17, 17] 4224
 * mhsa.dispose();
 * ```
 */
export class ViTAttention extends Module {
  /** D -> 3 D: q, k, v in that order, each (H, Dh) head-major. */
  qkv: Linear;
  /** D -> D. */
  proj: Linear;
  /** Dh = D / H. */
  readonly headDim: number;

  /** Creates the projections (qkv seeded with seed, proj with seed + 2); D must be a multiple of H. */
  constructor(readonly dim: number, readonly heads: number, o: LayerOptions & { qkvBias?: boolean } = {}) {
    super();
    checkInt("ViTAttention", "dim", dim);
    checkInt("ViTAttention", "heads", heads);
    if (dim % heads !== 0) {
      throw new VisionError(`ViTAttention: dim ${dim} is not a multiple of heads ${heads}`);
    }
    this.headDim = dim / heads;
    const base = { device: o.device, dtype: o.dtype };
    this.qkv = new Linear(dim, 3 * dim, { ...base, seed: o.seed, bias: o.qkvBias ?? true });
    this.proj = new Linear(dim, dim, { ...base, seed: o.seed === undefined ? undefined : o.seed + 2 });
  }

  #check(x: Tensor): void {
    if (x.rank !== 3 || x.shape[2] !== this.dim) {
      throw new VisionError(`ViTAttention: x must be (B, T, ${this.dim}) tokens, got ${x.describe()}`);
    }
    if (x.device !== this.qkv.weight.device) {
      throw new VisionError(
        `ViTAttention: x is on ${x.device} but the module's parameters are on ${this.qkv.weight.device}`,
      );
    }
  }

  /** (q, k, v), each (B, T, H, Dh) views of one (B, T, 3, H, Dh) projection. */
  #qkv(x: Tensor): [Tensor, Tensor, Tensor] {
    const [B, T] = x.shape;
    const qkv = this.qkv.forward(x).reshape([B, T, 3, this.heads, this.headDim]); // (B, T, 3, H, Dh)
    return [0, 1, 2].map((i) => qkv.slice([null, null, i])) as [Tensor, Tensor, Tensor];
  }

  #finish(o: Tensor, B: number, T: number): Tensor {
    return this.proj.forward(o.reshape([B, T, this.dim])); // (B, T, D)
  }

  /** x (B, T, D) -> (B, T, D). */
  forward(x: Tensor): Tensor {
    this.#check(x);
    const [B, T] = x.shape;
    return tidy(() => {
      const [q, k, v] = this.#qkv(x);
      return this.#finish(attention(q, k, v, { layout: "bthd" }).o, B, T); // o (B, T, H, Dh)
    });
  }

  /** x (B, T, D) -> the output and the attention maps (B, H, T, T). */
  forwardWithAttention(x: Tensor): ViTAttentionOutput {
    this.#check(x);
    const [B, T] = x.shape;
    return tidy(() => {
      const [q, k, v] = this.#qkv(x);
      const y = this.#finish(attention(q, k, v, { layout: "bthd" }).o, B, T);
      const maps = noGrad(() => {
        const s = matmul(q.transpose(1, 2), k.transpose(1, 2).transpose(2, 3)); // (B, H, T, T)
        return softmax(s.mul(1 / Math.sqrt(this.headDim)), -1);
      });
      return { y, attention: maps };
    });
  }

  /**
   * FLOPs on tokens of `shape` (B, T, D): the qkv projection, scores 2 B H T^2 Dh, softmax 5 B H T^2,
   * weighted sum 2 B H T^2 Dh, the output projection.
   */
  flops(shape: readonly number[]): number {
    if (shape.length !== 3 || shape[2] !== this.dim || !shape.every((n) => Number.isInteger(n) && n > 0)) {
      throw new VisionError(`ViTAttention: the shape must be (B, T, ${this.dim}), got ${fmt(shape)}`);
    }
    const [B, T, D] = shape;
    const attn = B * this.heads * T * T * (4 * this.headDim + 5);
    return linearFlops(B * T, D, 3 * D, this.qkv.bias !== null) + attn + linearFlops(B * T, D, D, true);
  }
}

/**
 * Attention rollout (Abnar and Zuidema, ACL 2020): for each layer's attention maps (B, H, T, T) (or
 * (B, T, T), already fused), average the heads, add the identity for the residual connection and
 * renormalise each row to sum 1: A_l = (mean_h(W_l) + I) / rowsum; then multiply through the layers,
 * R = A_L ... A_2 A_1 (layer 1 first in `maps`). Row i of R says how much each input token flows into
 * token i at the top. Works on either device; no gradient is recorded.
 *
 * @example
 * ```ts
 * import { attentionRollout, tensor } from "seqlab";
 * const a = tensor([[[0, 1], [1, 0]]]); // one layer, (B, T, T): each token attends to the other
 * console.log(await attentionRollout([a]).toArray()); // [0.5, 0.5, 0.5, 0.5]
 * ```
 */
export function attentionRollout(maps: readonly Tensor[]): Tensor {
  if (maps.length === 0) throw new VisionError("attentionRollout: needs at least one layer's attention map");
  const first = maps[0];
  for (const [l, m] of maps.entries()) {
    const ok = (m.rank === 3 || m.rank === 4) && m.shape[m.rank - 1] === m.shape[m.rank - 2] &&
      isFloat(m.dtype);
    if (!ok) {
      throw new VisionError(
        `attentionRollout: layer ${l}'s map must be float (B, H, T, T) or (B, T, T), got ${m.describe()}`,
      );
    }
    const bt = (t: Tensor) => [t.shape[0], t.shape[t.rank - 1]].join();
    if (bt(m) !== bt(first) || m.device !== first.device || m.dtype !== first.dtype) {
      throw new VisionError(
        `attentionRollout: layer ${l}'s map ${m.describe()} does not match layer 0's ${first.describe()} ` +
          `(batch, tokens, dtype and device must agree)`,
      );
    }
  }
  const T = first.shape[first.rank - 1];
  return noGrad(() =>
    tidy(() => {
      const eye = new Float64Array(T * T);
      for (let i = 0; i < T; i++) eye[i * T + i] = 1;
      const I = tensor(eye, { shape: [T, T], dtype: first.dtype, device: first.device });
      let r: Tensor | null = null;
      for (const m of maps) {
        const fused = m.rank === 4 ? mean(m, 1) : m; // (B, T, T)
        const s = add(fused, I);
        const a = div(s, sum(s, -1, true)); // rows sum to 1
        r = r ? matmul(a, r) : a; // (B, T, T)
      }
      return r!;
    })
  );
}
