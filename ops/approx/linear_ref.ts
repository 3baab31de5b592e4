/**
 * Reference kernelized (linear) attention in float64 loops: the oracle for `featureAttention`,
 * `linearAttention` and (through its feature map) `performerAttention`.
 * @module
 */

import type { Tensor } from "../../runtime/tensor.ts";
import { checkQKV, host64, tensor64 } from "./util.ts";

/**
 * Linear attention from feature maps on flat float64 arrays, per (b, h) slab:
 * non-causal out_i = phiQ_i^T S / phiQ_i^T z with S = sum_j phiK_j v_j^T (m, Dv), z = sum_j phiK_j;
 * causal: the same with the running sums S_i, z_i over j <= i (the recurrence S_i = S_{i-1} + phiK_i v_i^T).
 * Layouts: fq (BH, Tq, m), fk (BH, Tk, m), v (BH, Tk, Dv) -> (BH, Tq, Dv).
 */
export function featureAttention64(
  fq: Float64Array,
  fk: Float64Array,
  v: Float64Array,
  BH: number,
  Tq: number,
  Tk: number,
  m: number,
  Dv: number,
  causal: boolean,
): Float64Array {
  const out = new Float64Array(BH * Tq * Dv);
  const S = new Float64Array(m * Dv), z = new Float64Array(m);
  const accumulate = (s: number, j: number) => {
    const kb = (s * Tk + j) * m, vb = (s * Tk + j) * Dv;
    for (let f = 0; f < m; f++) {
      z[f] += fk[kb + f];
      for (let e = 0; e < Dv; e++) S[f * Dv + e] += fk[kb + f] * v[vb + e];
    }
  };
  for (let s = 0; s < BH; s++) {
    S.fill(0);
    z.fill(0);
    if (!causal) { for (let j = 0; j < Tk; j++) accumulate(s, j); }
    for (let i = 0; i < Tq; i++) {
      if (causal) accumulate(s, i);
      const qb = (s * Tq + i) * m;
      let den = 0;
      for (let f = 0; f < m; f++) den += fq[qb + f] * z[f];
      for (let e = 0; e < Dv; e++) {
        let num = 0;
        for (let f = 0; f < m; f++) num += fq[qb + f] * S[f * Dv + e];
        out[(s * Tq + i) * Dv + e] = num / den;
      }
    }
  }
  return out;
}

/**
 * Reference of `featureAttention`: attention whose scores are phiQ_i . phiK_j, normalised per query.
 *
 * - `phiQ`: (B, H, Tq, m) non-negative query features; `phiK`: (B, H, Tk, m); `v`: (B, H, Tk, Dv); cpu.
 * - `causal`: query i sees keys j <= i (needs Tq = Tk).
 * - returns (B, H, Tq, Dv) f64: out_i = sum_j (phiQ_i . phiK_j) v_j / sum_j phiQ_i . phiK_j.
 *
 * @example
 * ```ts
 * import { featureAttentionRef, ones, tensor } from "seqlab";
 * const f = ones([1, 1, 2, 3], { device: "cpu" }), v = tensor([[[[1], [3]]]], { device: "cpu" });
 * console.log(await featureAttentionRef(f, f, v, { causal: true }).toArray()); // [1, 2]
 * ```
 */
export function featureAttentionRef(
  phiQ: Tensor,
  phiK: Tensor,
  v: Tensor,
  opts: { causal?: boolean } = {},
): Tensor {
  const { B, H, Tq, Tk, D: m, Dv } = checkQKV("featureAttentionRef", phiQ, phiK, v, !!opts.causal);
  const out = featureAttention64(
    host64("featureAttentionRef", phiQ),
    host64("featureAttentionRef", phiK),
    host64("featureAttentionRef", v),
    B * H,
    Tq,
    Tk,
    m,
    Dv,
    !!opts.causal,
  );
  return tensor64(out, [B, H, Tq, Dv]);
}

/** elu(x) + 1: x + 1 for x > 0, e^x otherwise. */
export function eluPlusOne64(x: Float64Array): Float64Array {
  return x.map((t) => (t > 0 ? t + 1 : Math.exp(t)));
}

/**
 * Reference linear attention (Katharopoulos et al.) with feature map phi(x) = elu(x) + 1.
 *
 * - `q`: (B, H, Tq, D), `k`: (B, H, Tk, D), `v`: (B, H, Tk, Dv), cpu tensors.
 * - `causal`: query i sees keys j <= i (needs Tq = Tk), computed by the running-sum recurrence.
 * - returns (B, H, Tq, Dv) f64: out_i = sum_j (phi(q_i) . phi(k_j)) v_j / sum_j phi(q_i) . phi(k_j).
 *
 * @example
 * ```ts
 * import { linearAttentionRef, randn } from "seqlab";
 * const q = randn([1, 2, 4, 8], { device: "cpu" }), v = randn([1, 2, 4, 3], { device: "cpu" });
 * console.log(linearAttentionRef(q, q, v, { causal: true }).shape); // [1, 2, 4, 3]
 * ```
 */
export function linearAttentionRef(q: Tensor, k: Tensor, v: Tensor, opts: { causal?: boolean } = {}): Tensor {
  const { B, H, Tq, Tk, D, Dv } = checkQKV("linearAttentionRef", q, k, v, !!opts.causal);
  const out = featureAttention64(
    eluPlusOne64(host64("linearAttentionRef", q)),
    eluPlusOne64(host64("linearAttentionRef", k)),
    host64("linearAttentionRef", v),
    B * H,
    Tq,
    Tk,
    D,
    Dv,
    !!opts.causal,
  );
  return tensor64(out, [B, H, Tq, Dv]);
}
