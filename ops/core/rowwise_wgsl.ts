/**
 * WGSL row-wise ops.
 *
 * Versions:
 * - softmax v1: one invocation per (outer, inner) line: max pass, sum-of-exp pass, write pass (f32).
 * - norm v1: one invocation per row: mean, then variance of deviations (two passes, stable), then write;
 *   in units of a power of two near max |x| (found in the first pass), so rows of any finite scale
 *   normalise without the sum of squares overflowing f32.
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
  // Everything in units of m, a power of two at most max |x| kept while reading (a larger element
  // rescales what was summed, exactly): x / m is in (-8, 8), so no sum of squares overflows f32, and the
  // normalised output is the same in any unit.
  var m = 0.0;
  var rm = 1.0; // 1 / m, exact: m is a power of two in [2^-100, 2^125], so 1 / m is finite and normal
  var acc = 0.0;
  for (var d = 0u; d < D; d++) {
    let xd = f32(x[base + d]);
    let a = abs(xd);
    if (a >= 2.0 * m && a > 0.0 && a <= 3.4028235e38 && m < 4.2535296e37) {
      let m2 = exp2(clamp(floor(log2(a)), -100.0, 125.0));
      let r = m * (1.0 / m2);
      acc *= ${rms ? "r * r" : "r"};
      m = m2;
      rm = 1.0 / m2;
    }
    let t = xd * rm;
    acc += ${rms ? "t * t" : "t"};
  }
  let unit = select(1.0, m, m > 0.0);
  let runit = rm;
  ${
    rms ? "let mean = 0.0; let v = acc / f32(D);" : `let mean0 = acc / f32(D);
  // the corrected two-pass form: the deviations' own sum corrects the rounded mean (a row of equal
  // values has variance 0, not the rounding error, which no eps would hide at large scale)
  var st = 0.0;
  var sq = 0.0;
  for (var d = 0u; d < D; d++) { let t = f32(x[base + d]) * runit - mean0; st += t; sq += t * t; }
  let c = st / f32(D);
  let mean = mean0 + c;
  let v = max(sq / f32(D) - c * c, 0.0);`
  }
  // eps in units of m (it underflows to 0 at large scale, where it does not matter); a zero row stays 0
  let den = v + min(UF(5u) / unit / unit, 3.4028235e38);
  let inv = select(0.0, inverseSqrt(den), den > 0.0);
  for (var d = 0u; d < D; d++) {
    var y = (f32(x[base + d]) * runit - mean${rms ? "" : "0 - c"}) * inv;
    ${hasW ? "y *= f32(w[U(3u) + d]);" : ""}
    ${hasB ? "y += f32(bias[U(4u) + d]);" : ""}
    out[gid * D + d] = ${dtype}(y);
  }
}`;
}
