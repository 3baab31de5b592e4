/**
 * Reference softmax cross-entropy in float64, over rows of contiguous logits (rows, C) with class-index
 * targets (rows).
 * @module
 */

import type { TypedArray } from "../../runtime/dtype.ts";

/**
 * Per-row loss and log-sum-exp of logits (rows, C) at `off` against targets (rows) at `tOff`: with
 * lse = log sum exp(x), loss = (1 - eps) (lse - x[t]) + eps (lse - mean(x)) (the eps term only when
 * eps > 0), 0 where t is `ignore` (its logits are not read). Writes `loss` and `lse` (rows); returns the
 * number of rows counted (targets that are not `ignore`). Targets must be in [0, C) or `ignore`.
 */
export function crossEntropyRef(
  x: TypedArray,
  off: number,
  rows: number,
  C: number,
  t: TypedArray,
  tOff: number,
  ignore: number,
  eps: number,
  loss: TypedArray,
  lse: TypedArray,
): number {
  let count = 0;
  for (let r = 0; r < rows; r++) {
    const tr = t[tOff + r], base = off + r * C;
    if (tr === ignore) {
      loss[r] = 0;
      lse[r] = 0;
      continue;
    }
    count++;
    let m = -Infinity;
    for (let c = 0; c < C; c++) {
      const v = x[base + c];
      m = Number.isNaN(v) || Number.isNaN(m) ? NaN : Math.max(m, v);
    }
    let s = 0, sx = 0;
    for (let c = 0; c < C; c++) {
      s += Math.exp(x[base + c] - m);
      sx += x[base + c];
    }
    const l = m === -Infinity ? -Infinity : m + Math.log(s);
    lse[r] = l;
    const nll = l - x[base + tr];
    loss[r] = eps > 0 ? nll * (1 - eps) + (l - sx / C) * eps : nll;
  }
  return count;
}

/**
 * Backward of {@link crossEntropyRef}: dx (rows, C) = (softmax(x) - q) * scale_r with
 * q = (1 - eps) onehot(t) + eps / C and softmax from the saved `lse`; scale_r = `g[gOff + r]` when
 * `perRow`, else `g[gOff] / div`; 0 for ignored rows.
 */
export function crossEntropyBackwardRef(
  x: TypedArray,
  off: number,
  rows: number,
  C: number,
  t: TypedArray,
  tOff: number,
  ignore: number,
  eps: number,
  lse: TypedArray,
  g: TypedArray,
  gOff: number,
  perRow: boolean,
  div: number,
  dx: TypedArray,
): void {
  for (let r = 0; r < rows; r++) {
    const tr = t[tOff + r];
    if (tr === ignore) {
      dx.fill(0, r * C, r * C + C);
      continue;
    }
    const scale = perRow ? g[gOff + r] : g[gOff] / div;
    for (let c = 0; c < C; c++) {
      const q = (c === tr ? 1 - eps : 0) + eps / C;
      dx[r * C + c] = (Math.exp(x[off + r * C + c] - lse[r]) - q) * scale;
    }
  }
}
