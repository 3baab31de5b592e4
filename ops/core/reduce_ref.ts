/**
 * Reference reductions over a contiguous (outer, R, inner) layout, accumulating in float64.
 * `x` is the flat data starting at `offset`; the result is (outer, inner) row-major.
 * @module
 */

import type { TypedArray } from "../../runtime/dtype.ts";

/** The reduction kinds. */
export type ReduceKind = "sum" | "mean" | "max" | "min" | "argmax";

/** Reduces `x` viewed as (outer, R, inner) over R into `out` (outer * inner). */
export function reduceRef(
  kind: ReduceKind,
  x: TypedArray,
  offset: number,
  outer: number,
  R: number,
  inner: number,
  out: TypedArray,
): void {
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const at = (r: number) => x[offset + (o * R + r) * inner + i];
      let acc: number;
      if (kind === "sum" || kind === "mean") {
        acc = 0;
        for (let r = 0; r < R; r++) acc += at(r);
        if (kind === "mean") acc /= R;
      } else if (kind === "argmax") {
        let best = -Infinity;
        acc = 0;
        for (let r = 0; r < R; r++) {
          const v = at(r);
          if (Number.isNaN(v)) {
            acc = r;
            break;
          }
          if (v > best) {
            best = v;
            acc = r;
          }
        }
      } else {
        acc = at(0);
        for (let r = 1; r < R && !Number.isNaN(acc); r++) {
          const v = at(r);
          if (Number.isNaN(v) || (kind === "max" ? v > acc : v < acc)) acc = v;
        }
      }
      out[o * inner + i] = acc;
    }
  }
}

/** Inclusive cumulative sum along R of (outer, R, inner), float64 running sums. */
export function cumsumRef(
  x: TypedArray,
  offset: number,
  outer: number,
  R: number,
  inner: number,
  out: TypedArray,
): void {
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      let acc = 0;
      for (let r = 0; r < R; r++) {
        const k = (o * R + r) * inner + i;
        acc += x[offset + k];
        out[k] = acc;
      }
    }
  }
}
