/**
 * Reference row-wise ops in float64: softmax and log-sum-exp over R of (outer, R, inner); layerNorm and
 * rmsNorm over the last dimension of (rows, D).
 * @module
 */

import type { TypedArray } from "../../runtime/dtype.ts";

/** Softmax (or log-sum-exp when `lse`) over R of contiguous (outer, R, inner) data at `off`. */
export function softmaxRef(
  x: TypedArray,
  off: number,
  outer: number,
  R: number,
  inner: number,
  out: TypedArray,
  lse: boolean,
): void {
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const at = (r: number) => off + (o * R + r) * inner + i;
      let m = -Infinity;
      for (let r = 0; r < R; r++) {
        const v = x[at(r)];
        m = Number.isNaN(v) || Number.isNaN(m) ? NaN : Math.max(m, v);
      }
      let s = 0;
      for (let r = 0; r < R; r++) s += Math.exp(x[at(r)] - m);
      if (lse) out[o * inner + i] = m === -Infinity ? -Infinity : m + Math.log(s);
      else for (let r = 0; r < R; r++) out[(o * R + r) * inner + i] = Math.exp(x[at(r)] - m) / s;
    }
  }
}

/** LayerNorm (`rms` false) or RMSNorm over the last dim of contiguous (rows, D) at `off`. */
export function normRef(
  x: TypedArray,
  off: number,
  rows: number,
  D: number,
  w: TypedArray | null,
  wOff: number,
  b: TypedArray | null,
  bOff: number,
  eps: number,
  rms: boolean,
  out: TypedArray,
): void {
  for (let r = 0; r < rows; r++) {
    const base = off + r * D;
    let mean = 0;
    if (!rms) {
      for (let d = 0; d < D; d++) mean += x[base + d];
      mean /= D;
    }
    let v = 0;
    for (let d = 0; d < D; d++) v += (x[base + d] - mean) ** 2;
    const inv = 1 / Math.sqrt(v / D + eps);
    for (let d = 0; d < D; d++) {
      let y = (x[base + d] - mean) * inv;
      if (w) y *= w[wOff + d];
      if (b) y += b[bOff + d];
      out[r * D + d] = y;
    }
  }
}
