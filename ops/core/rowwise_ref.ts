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

/**
 * LayerNorm (`rms` false) or RMSNorm backward over the last dim of contiguous (rows, D): with
 * xhat = (x - mean) / sigma, sigma = sqrt(var + eps) and gw = g * w (g alone without weight),
 * dx = (gw - mean(gw) - xhat mean(gw xhat)) / sigma (rmsNorm: no mean(gw) term and mean 0),
 * dw = sum over rows of g xhat, db = sum over rows of g. `dx`, `dw`, `db` are written where given.
 */
export function normBackwardRef(
  x: TypedArray,
  xOff: number,
  g: TypedArray,
  gOff: number,
  rows: number,
  D: number,
  w: TypedArray | null,
  wOff: number,
  eps: number,
  rms: boolean,
  dx: TypedArray | null,
  dw: TypedArray | null,
  db: TypedArray | null,
): void {
  const aw = new Float64Array(D), ab = new Float64Array(D);
  const xhat = new Float64Array(D), gw = new Float64Array(D);
  for (let r = 0; r < rows; r++) {
    const xb = xOff + r * D, gb = gOff + r * D;
    let mean = 0;
    if (!rms) {
      for (let d = 0; d < D; d++) mean += x[xb + d];
      mean /= D;
    }
    let v = 0;
    for (let d = 0; d < D; d++) v += (x[xb + d] - mean) ** 2;
    const inv = 1 / Math.sqrt(v / D + eps);
    let sg = 0, sgx = 0;
    for (let d = 0; d < D; d++) {
      xhat[d] = (x[xb + d] - mean) * inv;
      gw[d] = w ? g[gb + d] * w[wOff + d] : g[gb + d];
      sg += gw[d];
      sgx += gw[d] * xhat[d];
      aw[d] += g[gb + d] * xhat[d];
      ab[d] += g[gb + d];
    }
    if (dx) {
      for (let d = 0; d < D; d++) dx[r * D + d] = (gw[d] - (rms ? 0 : sg / D) - xhat[d] * sgx / D) * inv;
    }
  }
  if (dw) dw.set(aw);
  if (db) db.set(ab);
}

/**
 * The unit a long norm row is computed in (rows of (rows, 1) max |x|): r = 1 / 2^k with
 * k = floor(log2(amax)) clamped to [lo, hi] (1 where amax is 0 or not finite), and eps r^2 capped at `big`
 * (eps in those units). Scaling by an exact power of two changes no normalised value.
 */
export function normUnitRef(
  amax: TypedArray,
  rows: number,
  eps: number,
  lo: number,
  hi: number,
  big: number,
  r: TypedArray,
  epsU: TypedArray,
): void {
  for (let i = 0; i < rows; i++) {
    const a = amax[i];
    const k = a > 0 && a < Infinity ? Math.min(Math.max(Math.floor(Math.log2(a)), lo), hi) : 0;
    r[i] = 2 ** -k;
    epsU[i] = Math.min(eps * r[i] * r[i], big);
  }
}
