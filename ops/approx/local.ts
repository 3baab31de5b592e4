/**
 * Block-wise local attention: non-overlapping blocks, each attending within itself (optionally causal),
 * composed from batched core matmuls and softmax over (B, H, T / b, b, b) on either device,
 * differentiable in q, k and v. Memory O(T b) per head instead of O(T^2).
 * @module
 */

import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { tensor } from "../core/creation.ts";
import { add, contiguous, mul } from "../core/elementwise.ts";
import { softmax } from "../core/rowwise.ts";
import { checkBlockSize, type LocalAttentionOptions } from "./local_ref.ts";
import { matmul } from "../core/matmul.ts";
import { checkQKV, checkScale, padSeq } from "./util.ts";

/**
 * The additive mask (n, b, b) of the padded blocks: 0 where key j is visible from query i (same block,
 * j < T, and j <= i when causal), -inf elsewhere; null when nothing is masked.
 */
function blockMask(T: number, b: number, n: number, causal: boolean, like: Tensor): Tensor | null {
  if (!causal && n * b === T) return null;
  const m = new Float32Array(n * b * b);
  for (let c = 0; c < n; c++) {
    for (let i = 0; i < b; i++) {
      for (let j = 0; j < b; j++) {
        if (c * b + j >= T || (causal && j > i)) m[(c * b + i) * b + j] = -Infinity;
      }
    }
  }
  // one block's mask serves all when only the causal triangle is masked
  const shape = n * b === T ? [b, b] : [n, b, b];
  return tensor(n * b === T ? m.subarray(0, b * b) : m, { shape, dtype: like.dtype, device: like.device });
}

/**
 * Block-wise local attention (the survey's local attention): the sequence is cut into blocks of
 * `blockSize` positions (the last may be shorter) and each query attends to the keys of its own block
 * only, causal within the block with `causal`: out_i = softmax_j(scale q_i . k_j) v_j over those j.
 * Information does not cross block boundaries (stack layers with shifted blocks or add global tokens for
 * that). With blockSize >= T this is exact softmax attention.
 *
 * - `q`, `k`: (B, H, T, D), `v`: (B, H, T, Dv) -> (B, H, T, Dv).
 *
 * The reference is {@link localAttentionRef}; differentiable in q, k and v.
 *
 * @example
 * ```ts
 * import { localAttention, randn } from "seqlab";
 * const q = randn([1, 2, 50, 16], { seed: 1 }), k = randn([1, 2, 50, 16], { seed: 2 });
 * const v = randn([1, 2, 50, 16], { seed: 3 });
 * console.log(localAttention(q, k, v, { blockSize: 16, causal: true }).shape); // [1, 2, 50, 16]
 * ```
 */
export function localAttention(q: Tensor, k: Tensor, v: Tensor, opts: LocalAttentionOptions): Tensor {
  const op = "localAttention";
  const { B, H, Tq: T, D, Dv } = checkQKV(op, q, k, v, true);
  const b = Math.min(checkBlockSize(op, opts), T);
  const scale = checkScale(op, opts.scale, D);
  const n = Math.ceil(T / b), Tp = n * b;
  return tidy(() => {
    const qb = padSeq(q, Tp, 0).reshape([B, H, n, b, D]);
    const kb = padSeq(k, Tp, 0).reshape([B, H, n, b, D]);
    const vb = padSeq(v, Tp, 0).reshape([B, H, n, b, Dv]);
    let s = mul(matmul(qb, kb.transpose()), scale); // (B, H, n, b, b)
    const mask = blockMask(T, b, n, !!opts.causal, q);
    if (mask) s = add(s, mask);
    const out = matmul(softmax(s, -1), vb).reshape([B, H, Tp, Dv]);
    return Tp === T ? out : contiguous(out.slice([null, null, [0, T]]));
  });
}
