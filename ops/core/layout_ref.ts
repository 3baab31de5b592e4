/**
 * Reference layout kernels: copying a contiguous block into a wider row-major destination (concat) and
 * gathering along an axis (embedding lookup).
 * @module
 */

import type { TypedArray } from "../../runtime/dtype.ts";

/** Copies src (outer, cols) into dst (outer, dstCols) starting at column `colOff`. */
export function copyIntoRef(
  src: TypedArray,
  srcOff: number,
  outer: number,
  cols: number,
  dst: TypedArray,
  dstCols: number,
  colOff: number,
): void {
  for (let o = 0; o < outer; o++) {
    for (let c = 0; c < cols; c++) dst[o * dstCols + colOff + c] = src[srcOff + o * cols + c];
  }
}

/** out (outer, I, inner) = x (outer, A, inner) at idx[j] along A. Throws on an index out of [0, A). */
export function gatherRef(
  x: TypedArray,
  xOff: number,
  outer: number,
  A: number,
  inner: number,
  idx: TypedArray,
  idxOff: number,
  I: number,
  out: TypedArray,
  op: string,
): void {
  for (let j = 0; j < I; j++) {
    const k = idx[idxOff + j];
    if (!(k >= 0 && k < A)) throw new Error(`${op}: index ${k} is out of range for an axis of size ${A}`);
  }
  for (let o = 0; o < outer; o++) {
    for (let j = 0; j < I; j++) {
      const k = idx[idxOff + j];
      for (let i = 0; i < inner; i++) out[(o * I + j) * inner + i] = x[xOff + (o * A + k) * inner + i];
    }
  }
}

/** out (outer, A, inner) = sum over j with idx[j] = a of src (outer, I, inner); the adjoint of gather. */
export function scatterAddRef(
  src: TypedArray,
  srcOff: number,
  outer: number,
  I: number,
  inner: number,
  idx: TypedArray,
  idxOff: number,
  A: number,
  out: TypedArray,
  op: string,
): void {
  const acc = new Float64Array(outer * A * inner);
  for (let j = 0; j < I; j++) {
    const k = idx[idxOff + j];
    if (!(k >= 0 && k < A)) throw new Error(`${op}: index ${k} is out of range for an axis of size ${A}`);
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < inner; i++) acc[(o * A + k) * inner + i] += src[srcOff + (o * I + j) * inner + i];
    }
  }
  out.set(acc);
}
