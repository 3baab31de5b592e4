/**
 * WGSL layout kernels.
 *
 * Versions:
 * - copyInto v1: one invocation per source element (concat writes each input at its column offset).
 * - gather v1: one invocation per output element; an index outside [0, A) writes 0 and raises a
 *   diagnostic that the next readback turns into an error (no garbage reads, no silent clamp).
 * - scatterAdd v1: one invocation per output element, looping over all indices and summing the matches.
 *   Deterministic and atomic-free (WGSL has no float atomics); O(outputs x indices), fine for embedding
 *   tables and gradients of moderate size.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl } from "./util.ts";

export const LAYOUT_WG = 64;

/** Uniforms: [outer, cols, dstCols, colOff, srcOff]. */
export function copyIntoSource(dtype: DType): string {
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "src", dtype)}
${binding(2, "dst", dtype, true)}
${flatId(LAYOUT_WG)}
  let outer = U(0u); let cols = U(1u);
  if (gid >= outer * cols) { return; }
  let o = gid / cols; let c = gid % cols;
  dst[o * U(2u) + U(3u) + c] = src[U(4u) + gid];
}`;
}

/**
 * The diagnostic codes gather and scatterAdd raise for an index out of range, one per index dtype: the
 * shader stores the index word, and the code tells the runtime to read it as i32 or as u32.
 */
export const INDEX_OOB = {
  gather: { i32: 1, u32: 3 },
  scatterAdd: { i32: 2, u32: 4 },
} as const;

/** The out-of-range code of `op` for an index dtype (i32 or u32). */
export function indexOobCode(op: keyof typeof INDEX_OOB, idxType: DType): number {
  if (idxType !== "i32" && idxType !== "u32") {
    throw new Error(`${op}: indices must be i32 or u32, got ${idxType}`);
  }
  return INDEX_OOB[op][idxType];
}

/** Uniforms: [outer, A, inner, I, xOff, idxOff]. */
export function gatherSource(dtype: DType, idxType: DType): string {
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "x", dtype)}
${binding(2, "idx", idxType)}
${binding(3, "out", dtype, true)}
@group(0) @binding(4) var<storage, read_write> diag: array<atomic<u32>, 4>;
${flatId(LAYOUT_WG)}
  let outer = U(0u); let A = U(1u); let inner = U(2u); let I = U(3u);
  if (gid >= outer * I * inner) { return; }
  let i = gid % inner;
  let j = (gid / inner) % I;
  let o = gid / (inner * I);
  let k = idx[U(5u) + j];
  if (${idxType === "i32" ? "k < 0 || " : ""}u32(k) >= A) {
    atomicStore(&diag[1], u32(k));
    atomicStore(&diag[2], A);
    atomicStore(&diag[0], ${indexOobCode("gather", idxType)}u);
    out[gid] = ${dtype}(0);
    return;
  }
  out[gid] = x[U(4u) + (o * A + u32(k)) * inner + i];
}`;
}

/**
 * Uniforms: [outer, A, inner, I, srcOff, idxOff, j0, j1]: indices j0 .. j1 - 1 (at most MAX_LOOP per
 * dispatch), added to the output when j0 > 0.
 */
export function scatterAddSource(dtype: DType, idxType: DType): string {
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "src", dtype)}
${binding(2, "idx", idxType)}
${binding(3, "out", dtype, true)}
@group(0) @binding(4) var<storage, read_write> diag: array<atomic<u32>, 4>;
${flatId(LAYOUT_WG)}
  let outer = U(0u); let A = U(1u); let inner = U(2u); let I = U(3u);
  if (gid >= outer * A * inner) { return; }
  let i = gid % inner;
  let a = (gid / inner) % A;
  let o = gid / (inner * A);
  var s = 0.0;
  if (U(6u) > 0u) { s = f32(out[gid]); }
  for (var j = U(6u); j < U(7u); j++) {
    let k = idx[U(5u) + j];
    if (gid == 0u && (${idxType === "i32" ? "k < 0 || " : ""}u32(k) >= A)) {
      atomicStore(&diag[1], u32(k));
      atomicStore(&diag[2], A);
      atomicStore(&diag[0], ${indexOobCode("scatterAdd", idxType)}u);
    }
    if (u32(k) == a) { s += f32(src[U(4u) + (o * I + j) * inner + i]); }
  }
  out[gid] = ${dtype}(s);
}`;
}
