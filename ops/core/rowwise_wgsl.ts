/**
 * WGSL row-wise ops.
 *
 * Versions:
 * - softmax v1: one invocation per (outer, inner) line: max pass, sum-of-exp pass, write pass (f32).
 * - norm v1: one invocation per row: mean, then variance of deviations (two passes, stable), then write.
 *   No workgroup reductions: barriers are costly on the software adapter and rows are many.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl, WGSL_MATH } from "./util.ts";

export const ROW_WG = 64;

/** Uniforms: [outer, R, inner, offset]. */
export function softmaxSource(dtype: DType, lse: boolean): string {
  return `${enables(dtype)}${uniformDecl(4)}
${binding(1, "x", dtype)}
${binding(2, "out", dtype, true)}
${WGSL_MATH}
${flatId(ROW_WG)}
  let outer = U(0u); let R = U(1u); let inner = U(2u);
  if (gid >= outer * inner) { return; }
  let o = gid / inner; let i = gid % inner;
  let base = o * R * inner + i;
  var m = -inf();
  for (var r = 0u; r < R; r++) {
    let v = f32(x[U(3u) + base + r * inner]);
    if (is_nan(v)) { m = v; break; }
    m = max(m, v);
  }
  var s = 0.0;
  for (var r = 0u; r < R; r++) { s += exp(f32(x[U(3u) + base + r * inner]) - m); }
  ${
    lse ? `out[gid] = ${dtype}(select(m + log(s), m, m == -inf()));` : `for (var r = 0u; r < R; r++) {
    out[base + r * inner] = ${dtype}(exp(f32(x[U(3u) + base + r * inner]) - m) / s);
  }`
  }
}`;
}

/** Uniforms: [rows, D, xOff, wOff, bOff, eps(f32)]. */
export function normSource(dtype: DType, rms: boolean, hasW: boolean, hasB: boolean): string {
  let b = 2;
  const wBind = hasW ? binding(b++, "w", dtype) : "";
  const bBind = hasB ? binding(b++, "bias", dtype) : "";
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "x", dtype)}
${wBind}
${bBind}
${binding(b, "out", dtype, true)}
${flatId(ROW_WG)}
  let rows = U(0u); let D = U(1u);
  if (gid >= rows) { return; }
  let base = U(2u) + gid * D;
  var mean = 0.0;
  ${
    rms ? "" : `for (var d = 0u; d < D; d++) { mean += f32(x[base + d]); }
  mean /= f32(D);`
  }
  var v = 0.0;
  for (var d = 0u; d < D; d++) { let t = f32(x[base + d]) - mean; v += t * t; }
  let inv = inverseSqrt(v / f32(D) + UF(5u));
  for (var d = 0u; d < D; d++) {
    var y = (f32(x[base + d]) - mean) * inv;
    ${hasW ? "y *= f32(w[U(3u) + d]);" : ""}
    ${hasB ? "y += f32(bias[U(4u) + d]);" : ""}
    out[gid * D + d] = ${dtype}(y);
  }
}`;
}
