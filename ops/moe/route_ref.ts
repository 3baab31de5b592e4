/**
 * Reference of the MoE dispatch table: the oracle for `route_wgsl.ts`.
 * @module
 */

import type { TypedArray } from "../../runtime/dtype.ts";

/**
 * Groups the router's choices by expert. idx (T, K) holds expert ids in [0, E); choice j = t K + k. For
 * each expert e, its choices in increasing j fill slots e C .. e C + C - 1: tokenOf[slot] = t and
 * choiceOf[slot] = j; unused slots keep what the caller filled (T and T K: a zero row and a zero weight);
 * choices past an expert's capacity C are dropped. counts[e] = all choices of e, dropped ones included.
 */
export function moeRouteRef(
  idx: TypedArray,
  idxOff: number,
  T: number,
  K: number,
  E: number,
  C: number,
  tokenOf: TypedArray,
  choiceOf: TypedArray,
  counts: TypedArray,
): void {
  counts.fill(0);
  for (let j = 0; j < T * K; j++) {
    const e = idx[idxOff + j];
    if (!(e >= 0 && e < E)) throw new Error(`moeRoute: expert ${e} is out of range for ${E} experts`);
    const c = counts[e]++;
    if (c < C) {
      tokenOf[e * C + c] = Math.floor(j / K);
      choiceOf[e * C + c] = j;
    }
  }
}

/**
 * Reference of the block-padded dispatch table: each expert's choices (in increasing j = t K + k) fill
 * whole blocks of B rows, expert after expert, its last block padded; rows of P = ceil(T K / B) + E blocks
 * in all (enough for any routing). tokenOf[row] = t, choiceOf[row] = j; padding rows keep what the caller
 * filled (T, T K); blockExpert[p] = the expert of block p (unused trailing blocks keep the caller's 0).
 * counts[e] = the choices of e. Nothing is dropped.
 */
export function moeRouteBlocksRef(
  idx: TypedArray,
  idxOff: number,
  T: number,
  K: number,
  E: number,
  B: number,
  tokenOf: TypedArray,
  choiceOf: TypedArray,
  blockExpert: TypedArray,
  counts: TypedArray,
): void {
  counts.fill(0);
  for (let j = 0; j < T * K; j++) {
    const e = idx[idxOff + j];
    if (!(e >= 0 && e < E)) throw new Error(`moeRoute: expert ${e} is out of range for ${E} experts`);
    counts[e]++;
  }
  const start: number[] = [];
  for (let e = 0, base = 0; e < E; e++) {
    start.push(base);
    const blocks = Math.ceil(counts[e] / B);
    for (let p = 0; p < blocks; p++) blockExpert[base / B + p] = e;
    base += blocks * B;
  }
  const fill = new Array(E).fill(0);
  for (let j = 0; j < T * K; j++) {
    const e = idx[idxOff + j], row = start[e] + fill[e]++;
    tokenOf[row] = Math.floor(j / K);
    choiceOf[row] = j;
  }
}
