/**
 * Causal depthwise conv1d in float64: the reference for the WebGPU shaders and the cpu backend.
 * @module
 */

/**
 * Forward. Shapes: x (B, D, L), weight (D, W), bias (D) or null, initial state (B, D, W - 1) or null (the
 * W - 1 inputs before t = 0; zeros when null). out (B, D, L):
 * out[b, d, t] = bias[d] + sum_k weight[d, k] * x[b, d, t - (W - 1) + k], inputs before t = 0 from the
 * state; with `activation` "silu", silu(out). All arrays row-major and contiguous.
 *
 * @example
 * ```ts
 * import { causalConv1dRef } from "seqlab";
 * // width 2, weights [1, 10]: out_t = x_t-1 + 10 x_t
 * console.log(causalConv1dRef(new Float64Array([1, 2, 3]), [1, 1, 3], new Float64Array([1, 10]), 2, null, null));
 * // Float64Array [10, 21, 32]
 * ```
 */
export function causalConv1dRef(
  x: ArrayLike<number>,
  [Bn, D, L]: readonly number[],
  w: ArrayLike<number>,
  W: number,
  bias: ArrayLike<number> | null,
  state: ArrayLike<number> | null,
  activation: "silu" | null = null,
): Float64Array {
  const out = new Float64Array(Bn * D * L);
  const S = W - 1;
  for (let b = 0; b < Bn; b++) {
    for (let d = 0; d < D; d++) {
      const row = (b * D + d) * L;
      for (let t = 0; t < L; t++) {
        let acc = bias ? bias[d] : 0;
        for (let k = 0; k < W; k++) {
          const s = t - S + k;
          const v = s >= 0 ? x[row + s] : state ? state[(b * D + d) * S + S + s] : 0;
          acc += w[d * W + k] * v;
        }
        out[row + t] = activation === "silu" ? acc / (1 + Math.exp(-acc)) : acc;
      }
    }
  }
  return out;
}

/**
 * Backward of {@link causalConv1dRef} for the output gradient g (B, D, L): dx (B, D, L), dweight (D, W),
 * dbias (D), dstate (B, D, W - 1). With `activation` "silu" g is the gradient of silu(out), and the
 * pre-activation is recomputed from x, the state and `bias` (B, D) or null.
 *
 * @example
 * ```ts
 * import { causalConv1dBackwardRef } from "seqlab";
 * const g = causalConv1dBackwardRef(new Float64Array([1, 1, 1]), new Float64Array([1, 2, 3]), [1, 1, 3],
 *   new Float64Array([1, 10]), 2, null);
 * console.log(g.dx, g.dweight); // Float64Array [11, 11, 10] Float64Array [3, 6]
 * ```
 */
export function causalConv1dBackwardRef(
  g: ArrayLike<number>,
  x: ArrayLike<number>,
  [Bn, D, L]: readonly number[],
  w: ArrayLike<number>,
  W: number,
  state: ArrayLike<number> | null,
  bias: ArrayLike<number> | null = null,
  activation: "silu" | null = null,
): { dx: Float64Array; dweight: Float64Array; dbias: Float64Array; dstate: Float64Array } {
  const S = W - 1;
  if (activation === "silu") {
    // g through silu'(pre) = sg (1 + pre (1 - sg)), pre the conv's output
    const pre = causalConv1dRef(x, [Bn, D, L], w, W, bias, state);
    g = Float64Array.from(pre, (p, i) => {
      const sg = 1 / (1 + Math.exp(-p));
      return g[i] * sg * (1 + p * (1 - sg));
    });
  }
  const dx = new Float64Array(Bn * D * L), dweight = new Float64Array(D * W);
  const dbias = new Float64Array(D), dstate = new Float64Array(Bn * D * S);
  for (let b = 0; b < Bn; b++) {
    for (let d = 0; d < D; d++) {
      const row = (b * D + d) * L;
      for (let t = 0; t < L; t++) {
        const gt = g[row + t];
        dbias[d] += gt;
        for (let k = 0; k < W; k++) {
          const s = t - S + k;
          if (s >= 0) {
            dx[row + s] += w[d * W + k] * gt;
            dweight[d * W + k] += gt * x[row + s];
          } else {
            dstate[(b * D + d) * S + S + s] += w[d * W + k] * gt;
            if (state) dweight[d * W + k] += gt * state[(b * D + d) * S + S + s];
          }
        }
      }
    }
  }
  return { dx, dweight, dbias, dstate };
}
