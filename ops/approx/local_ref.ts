/**
 * Reference block-wise local attention in float64 loops.
 * @module
 */

import type { Tensor } from "../../runtime/tensor.ts";
import { checkQKV, checkScale, host64, tensor64 } from "./util.ts";

/** Options of `localAttention` and its reference. */
export interface LocalAttentionOptions {
  /** Block length b: positions [c b, (c + 1) b) form block c. Required. */
  blockSize: number;
  /** Within its block, query i sees keys j <= i only. Default false. */
  causal?: boolean;
  /** Softmax temperature (default 1 / sqrt(D)). */
  scale?: number;
}

/** Validates the block size; returns it. */
export function checkBlockSize(op: string, opts: LocalAttentionOptions | undefined): number {
  const b = opts?.blockSize;
  if (typeof b !== "number" || !Number.isInteger(b) || b < 1) {
    throw new Error(`${op}: blockSize must be a positive integer, got ${String(b)}`);
  }
  return b;
}

/**
 * Reference block-wise local attention (the survey's "local attention"): the sequence is cut into
 * non-overlapping blocks of b positions (the last may be shorter) and each query attends only to keys of
 * its own block (and with `causal` only to j <= i): out_i = softmax_j(scale q_i . k_j) v_j over those j.
 *
 * - `q`, `k`: (B, H, T, D), `v`: (B, H, T, Dv), cpu tensors -> (B, H, T, Dv) f64.
 *
 * @example
 * ```ts
 * import { localAttentionRef, randn } from "seqlab";
 * const q = randn([1, 1, 5, 4], { device: "cpu" }), v = randn([1, 1, 5, 2], { device: "cpu" });
 * console.log(localAttentionRef(q, q, v, { blockSize: 2, causal: true }).shape); // [1, 1, 5, 2]
 * ```
 */
export function localAttentionRef(q: Tensor, k: Tensor, v: Tensor, opts: LocalAttentionOptions): Tensor {
  const op = "localAttentionRef";
  const { B, H, Tq: T, D, Dv } = checkQKV(op, q, k, v, true);
  const bs = checkBlockSize(op, opts);
  const scale = checkScale(op, opts.scale, D);
  const qd = host64(op, q), kd = host64(op, k), vd = host64(op, v);
  const out = new Float64Array(B * H * T * Dv);
  const s = new Float64Array(bs);
  for (let bh = 0; bh < B * H; bh++) {
    for (let i = 0; i < T; i++) {
      const start = Math.floor(i / bs) * bs;
      const end = opts.causal ? i + 1 : Math.min(start + bs, T);
      let mx = -Infinity;
      for (let j = start; j < end; j++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += qd[(bh * T + i) * D + d] * kd[(bh * T + j) * D + d];
        s[j - start] = scale * dot;
        mx = Math.max(mx, s[j - start]);
      }
      let z = 0;
      for (let j = start; j < end; j++) z += s[j - start] = Math.exp(s[j - start] - mx);
      for (let d = 0; d < Dv; d++) {
        let acc = 0;
        for (let j = start; j < end; j++) acc += s[j - start] * vd[(bh * T + j) * Dv + d];
        out[(bh * T + i) * Dv + d] = acc / z;
      }
    }
  }
  return tensor64(out, [B, H, T, Dv]);
}
