/**
 * Kernelized (linear) attention composed from core ops on either device, differentiable through
 * autograd: `featureAttention` for given feature maps, `linearAttention` with elu(x) + 1 (Katharopoulos
 * et al.; docs/papers.md, "Linear attention"). Memory is linear in T: the T x T score matrix never exists.
 * @module
 */

import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { full, tensor } from "../core/creation.ts";
import { add, contiguous, div, exp, minimum, mul, relu } from "../core/elementwise.ts";
import { concat } from "../core/layout.ts";
import { cumsum, sum } from "../core/reduce.ts";
import { matmul } from "../core/matmul.ts";
import { checkQKV, padSeq } from "./util.ts";

/** Options of {@link featureAttention} and {@link linearAttention}. */
export interface FeatureAttentionOptions {
  /** Query i sees keys j <= i (needs Tq = Tk). Default false. */
  causal?: boolean;
  /**
   * Chunk length of the causal path (default 64): quadratic inside a chunk, running sums across chunks.
   * Memory is T * chunk + (T / chunk) * m * Dv per (b, h).
   */
  chunkSize?: number;
}

/** Exclusive prefix sum along axis 2 of (B, H, n, ...): zeros, then cumsum of all but the last. */
function exclusiveCumsum(x: Tensor): Tensor {
  const n = x.shape[2];
  const zero = full([...x.shape.slice(0, 2), 1, ...x.shape.slice(3)], 0, {
    dtype: x.dtype,
    device: x.device,
  });
  if (n === 1) return zero;
  const spec = x.shape.map((_, d) => (d === 2 ? [0, n - 1] as [number, number] : null));
  return concat([zero, cumsum(x, 2).slice(spec)], 2);
}

/** Lower-triangular ones (C, C), including the diagonal. */
function tril(C: number, like: Tensor): Tensor {
  const m = new Float32Array(C * C);
  for (let i = 0; i < C; i++) for (let j = 0; j <= i; j++) m[i * C + j] = 1;
  return tensor(m, { shape: [C, C], dtype: like.dtype, device: like.device });
}

/**
 * Attention with scores phiQ_i . phiK_j for non-negative feature maps, normalised per query:
 * out_i = sum_j (phiQ_i . phiK_j) v_j / sum_j phiQ_i . phiK_j, never forming the (Tq, Tk) scores.
 *
 * - `phiQ`: (B, H, Tq, m), `phiK`: (B, H, Tk, m), `v`: (B, H, Tk, Dv) -> (B, H, Tq, Dv).
 * - Non-causal: S = phiK^T v (m, Dv) and z = sum_j phiK_j once, then phiQ S / phiQ z.
 * - Causal (Tq = Tk): in chunks of C rows, the masked quadratic form inside a chunk plus the exclusive
 *   cumulative sums of phiK_c^T v_c and phiK_c over earlier chunks.
 *
 * The reference is {@link featureAttentionRef}; gradients flow to all three inputs.
 *
 * @example
 * ```ts
 * import { featureAttention, ones, tensor } from "seqlab";
 * const f = ones([1, 1, 2, 3]), v = tensor([[[[1], [3]]]]);
 * console.log(await featureAttention(f, f, v).toArray()); // uniform weights: [2, 2]
 * console.log(await featureAttention(f, f, v, { causal: true }).toArray()); // [1, 2]
 * ```
 */
export function featureAttention(
  phiQ: Tensor,
  phiK: Tensor,
  v: Tensor,
  opts: FeatureAttentionOptions = {},
): Tensor {
  const causal = !!opts.causal;
  const chunk = opts.chunkSize ?? 64;
  if (!Number.isInteger(chunk) || chunk < 1) {
    throw new Error(`featureAttention: chunkSize must be a positive integer, got ${chunk}`);
  }
  const { B, H, Tq, Dv } = checkQKV("featureAttention", phiQ, phiK, v, causal);
  const m = phiQ.shape[3];
  return tidy(() => {
    if (!causal) {
      const S = matmul(phiK.transpose(), v); // (B, H, m, Dv)
      const z = sum(phiK, 2, true); // (B, H, 1, m)
      return div(matmul(phiQ, S), matmul(phiQ, z.transpose())); // (B, H, Tq, Dv) / (B, H, Tq, 1)
    }
    const T = Tq, C = Math.min(chunk, Math.max(T, 1)), n = Math.ceil(T / C), Tp = n * C;
    // padded queries get features 1 so their (discarded) rows never divide 0 by 0, which would put NaN
    // into the gradients of the real rows through the shared sums
    const Qc = padSeq(phiQ, Tp, 1).reshape([B, H, n, C, m]);
    const Kc = padSeq(phiK, Tp, 0).reshape([B, H, n, C, m]);
    const Vc = padSeq(v, Tp, 0).reshape([B, H, n, C, Dv]);
    const A = mul(matmul(Qc, Kc.transpose()), tril(C, phiQ)); // (B, H, n, C, C), masked within a chunk
    let num = matmul(A, Vc); // (B, H, n, C, Dv)
    let den = sum(A, -1, true); // (B, H, n, C, 1)
    if (n > 1) {
      const Sprev = exclusiveCumsum(matmul(Kc.transpose(), Vc)); // (B, H, n, m, Dv): chunks before c
      const zprev = exclusiveCumsum(sum(Kc, 3)); // (B, H, n, m)
      num = add(num, matmul(Qc, Sprev));
      den = add(den, matmul(Qc, zprev.unsqueeze(-1)));
    }
    const out = div(num, den).reshape([B, H, Tp, Dv]);
    return Tp === T ? out : contiguous(out.slice([null, null, [0, T]]));
  });
}

/** phi(x) = elu(x) + 1, written as relu(x) + exp(min(x, 0)) so that it is differentiable everywhere. */
function eluPlusOne(x: Tensor): Tensor {
  return tidy(() => add(relu(x), exp(minimum(x, 0))));
}

/**
 * Linear attention (Katharopoulos et al., "Transformers are RNNs"): softmax(q k^T) replaced by the kernel
 * phi(q_i) . phi(k_j) with phi(x) = elu(x) + 1, so out_i = phi(q_i)^T S / phi(q_i)^T z with S = sum_j
 * phi(k_j) v_j^T and z = sum_j phi(k_j) (non-causal: via K^T V; causal: via cumulative sums, see
 * {@link featureAttention}). No 1/sqrt(D) scaling, as in the paper.
 *
 * - `q`: (B, H, Tq, D), `k`: (B, H, Tk, D), `v`: (B, H, Tk, Dv) -> (B, H, Tq, Dv).
 *
 * The reference is {@link linearAttentionRef}; differentiable in q, k and v.
 *
 * @example
 * ```ts
 * import { linearAttention, randn } from "seqlab";
 * const q = randn([1, 2, 16, 8], { seed: 1 }), k = randn([1, 2, 16, 8], { seed: 2 });
 * const v = randn([1, 2, 16, 8], { seed: 3 });
 * console.log(linearAttention(q, k, v, { causal: true }).shape); // [1, 2, 16, 8]
 * ```
 */
export function linearAttention(q: Tensor, k: Tensor, v: Tensor, opts: FeatureAttentionOptions = {}): Tensor {
  checkQKV("linearAttention", q, k, v, !!opts.causal);
  return tidy(() => featureAttention(eluPlusOne(q), eluPlusOne(k), v, opts));
}
