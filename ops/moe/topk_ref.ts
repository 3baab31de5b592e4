/**
 * Reference top-k along an axis, in plain loops: the oracle for the WGSL versions in `topk_wgsl.ts`.
 * @module
 */

import type { TypedArray } from "../../runtime/dtype.ts";

/** Whether `a` ranks before `b` in topk's order: larger first, NaN above every number. */
export function ranksAbove(a: number, b: number): boolean {
  return (Number.isNaN(a) && !Number.isNaN(b)) || a > b;
}

/**
 * The k largest entries of each row of x (outer, R, inner) along R, largest first: values (outer, k, inner)
 * and their indices along R (outer, k, inner). Ties keep the lower index first (stable); NaN ranks above
 * every number (NaNs among themselves by index). Requires 1 <= k <= R.
 */
export function topkRef(
  x: TypedArray,
  xOff: number,
  outer: number,
  R: number,
  inner: number,
  k: number,
  values: TypedArray,
  indices: TypedArray,
): void {
  const v = new Float64Array(k), ix = new Int32Array(k);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      let n = 0;
      for (let r = 0; r < R; r++) {
        const x0 = x[xOff + (o * R + r) * inner + i];
        if (n === k && !ranksAbove(x0, v[k - 1])) continue;
        // insertion into the sorted list; an equal entry already there (a lower index) stays in front
        let j = Math.min(n, k - 1);
        while (j > 0 && ranksAbove(x0, v[j - 1])) {
          v[j] = v[j - 1];
          ix[j] = ix[j - 1];
          j--;
        }
        v[j] = x0;
        ix[j] = r;
        n = Math.min(n + 1, k);
      }
      for (let j = 0; j < k; j++) {
        values[(o * k + j) * inner + i] = v[j];
        indices[(o * k + j) * inner + i] = ix[j];
      }
    }
  }
}

/**
 * topk's backward: gx (outer, R, inner) holds g (outer, k, inner) at the chosen indices along R and 0
 * elsewhere (every row's indices are distinct, so nothing adds up).
 */
export function topkBackwardRef(
  g: TypedArray,
  gOff: number,
  indices: TypedArray,
  iOff: number,
  outer: number,
  R: number,
  inner: number,
  k: number,
  gx: TypedArray,
): void {
  gx.fill(0);
  for (let o = 0; o < outer; o++) {
    for (let j = 0; j < k; j++) {
      for (let i = 0; i < inner; i++) {
        const r = indices[iOff + (o * k + j) * inner + i];
        gx[(o * R + r) * inner + i] = g[gOff + (o * k + j) * inner + i];
      }
    }
  }
}
