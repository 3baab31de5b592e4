/**
 * Reference Linformer attention in float64 loops.
 * @module
 */

import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { checkQKV, checkScale, host64, tensor64 } from "./util.ts";

/** Options of `linformerAttention` and its reference. */
export interface LinformerOptions {
  /** The value projection F, same shape as E (default E: Linformer's key-value sharing). */
  F?: Tensor;
  /** Softmax temperature (default 1 / sqrt(D)). */
  scale?: number;
}

/** Checks a projection (k, Tk) or (H, k, Tk); returns its k and whether it is per head. */
export function checkProjection(op: string, name: string, P: Tensor, H: number, Tk: number): number {
  P.check(op);
  const ok = (P.rank === 2 && P.shape[1] === Tk) || (P.rank === 3 && P.shape[0] === H && P.shape[2] === Tk);
  if (!ok) {
    throw new Error(
      `${op}: ${name} must be (k, Tk = ${Tk}) or (H = ${H}, k, Tk = ${Tk}), got ${fmt(P.shape)}`,
    );
  }
  return P.shape[P.rank - 2];
}

/**
 * Reference Linformer attention (docs/papers.md, Linformer): softmax(scale Q (E K)^T) (F V).
 *
 * - `q`: (B, H, Tq, D), `k`: (B, H, Tk, D), `v`: (B, H, Tk, Dv), cpu tensors.
 * - `E`: (k, Tk) shared by all heads, or (H, k, Tk) per head; `opts.F` the same shape (default E).
 * - returns (B, H, Tq, Dv) f64: keys and values are projected from length Tk to k before attention.
 *
 * @example
 * ```ts
 * import { linformerAttentionRef, ones, randn } from "seqlab";
 * const q = randn([1, 1, 5, 4], { device: "cpu" }), v = randn([1, 1, 5, 2], { device: "cpu" });
 * const E = ones([1, 5], { device: "cpu" }).div(5); // k = 1: the mean of the keys and values
 * console.log(linformerAttentionRef(q, q, v, E).shape); // [1, 1, 5, 2]
 * ```
 */
export function linformerAttentionRef(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  E: Tensor,
  opts: LinformerOptions = {},
): Tensor {
  const op = "linformerAttentionRef";
  const { B, H, Tq, Tk, D, Dv } = checkQKV(op, q, k, v);
  const F = opts.F ?? E;
  const kP = checkProjection(op, "E", E, H, Tk);
  if (checkProjection(op, "F", F, H, Tk) !== kP || F.rank !== E.rank) {
    throw new Error(`${op}: E ${fmt(E.shape)} and F ${fmt(F.shape)} must have the same shape`);
  }
  const scale = checkScale(op, opts.scale, D);
  const qd = host64(op, q), kd = host64(op, k), vd = host64(op, v), ed = host64(op, E), fd = host64(op, F);
  const out = new Float64Array(B * H * Tq * Dv);
  const EK = new Float64Array(kP * D), FV = new Float64Array(kP * Dv), s = new Float64Array(kP);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const bh = b * H + h, pe = E.rank === 3 ? h * kP * Tk : 0;
      EK.fill(0);
      FV.fill(0);
      for (let p = 0; p < kP; p++) {
        for (let t = 0; t < Tk; t++) {
          const e = ed[pe + p * Tk + t], f = fd[pe + p * Tk + t];
          for (let d = 0; d < D; d++) EK[p * D + d] += e * kd[(bh * Tk + t) * D + d];
          for (let d = 0; d < Dv; d++) FV[p * Dv + d] += f * vd[(bh * Tk + t) * Dv + d];
        }
      }
      for (let i = 0; i < Tq; i++) {
        let mx = -Infinity;
        for (let p = 0; p < kP; p++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += qd[(bh * Tq + i) * D + d] * EK[p * D + d];
          s[p] = scale * dot;
          mx = Math.max(mx, s[p]);
        }
        let z = 0;
        for (let p = 0; p < kP; p++) z += s[p] = Math.exp(s[p] - mx);
        for (let d = 0; d < Dv; d++) {
          let acc = 0;
          for (let p = 0; p < kP; p++) acc += s[p] * FV[p * Dv + d];
          out[(bh * Tq + i) * Dv + d] = acc / z;
        }
      }
    }
  }
  return tensor64(out, [B, H, Tq, Dv]);
}
