/**
 * Reference batched matmul: C[b] = A[b] @ B[b] with float64 dot products.
 * Shapes: A (batch, M, K), B (batch, K, N), C (batch, M, N), all row-major; `sA`/`sB` are batch strides
 * in elements (0 broadcasts one matrix over the batch).
 * @module
 */

import type { TypedArray } from "../../runtime/dtype.ts";

/** Computes C = A @ B per batch. */
export function matmulRef(
  A: TypedArray,
  offA: number,
  sA: number,
  B: TypedArray,
  offB: number,
  sB: number,
  C: TypedArray,
  batch: number,
  M: number,
  N: number,
  K: number,
): void {
  const row = new Float64Array(N);
  for (let b = 0; b < batch; b++) {
    const a0 = offA + b * sA, b0 = offB + b * sB, c0 = b * M * N;
    for (let m = 0; m < M; m++) {
      row.fill(0);
      for (let k = 0; k < K; k++) {
        const a = A[a0 + m * K + k];
        const bk = b0 + k * N;
        for (let n = 0; n < N; n++) row[n] += a * B[bk + n];
      }
      for (let n = 0; n < N; n++) C[c0 + m * N + n] = row[n];
    }
  }
}
