/**
 * WGSL top-k kernels, layout (outer, R, inner) with the k outputs at (outer, k, inner).
 *
 * Versions:
 * - topk v1: one invocation per row, keeping the best k (<= TOPK_MAX) in a sorted private list by
 *   insertion; an entry enters only past the list's last, so a row costs R loads plus k moves per entry
 *   that enters. Rows longer than MAX_LOOP / 2k run over several dispatches, each resuming from the list it
 *   left in the outputs. Chosen for MoE routing (R = experts, k = 1 or 2): one pass, no sort of the row.
 * - topk backward v1: one invocation per input element, looking for its index among its row's k entries
 *   (k <= TOPK_MAX loads): writes g there, 0 elsewhere; no atomics, no zero-fill pass.
 * @module
 */

import { type DType, wgslType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl, WGSL_MATH } from "../core/util.ts";

/** Invocations per workgroup of the top-k kernels. */
export const TOPK_WG = 64;

/** The largest k the shaders keep in their private list (topk refuses more on both backends). */
export const TOPK_MAX = 16;

/**
 * topk v1. Uniforms: [outer, R, inner, k, xOff, r0, r1]: entries r0 .. r1 - 1 of each row (at most
 * MAX_LOOP / 2k per dispatch); with r0 > 0 the list starts from what values and indices hold (r0 >= k).
 */
export function topkSource(dtype: DType): string {
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "x", dtype)}
${binding(2, "values", dtype, true)}
${binding(3, "indices", "i32", true)}
${WGSL_MATH}
// a ranks before b: larger first, NaN above every number
fn above(a: f32, b: f32) -> bool { return (is_nan(a) && !is_nan(b)) || a > b; }
${flatId(TOPK_WG)}
  let outer = U(0u); let R = U(1u); let inner = U(2u); let k = U(3u);
  if (gid >= outer * inner) { return; }
  let o = gid / inner; let i = gid % inner;
  var v: array<f32, ${TOPK_MAX}>;
  var ix: array<i32, ${TOPK_MAX}>;
  var n = 0u;
  let r0 = U(5u);
  if (r0 > 0u) {
    for (var j = 0u; j < k; j++) {
      v[j] = f32(values[(o * k + j) * inner + i]);
      ix[j] = indices[(o * k + j) * inner + i];
    }
    n = k;
  }
  let base = U(4u) + o * R * inner + i;
  for (var r = r0; r < U(6u); r++) {
    let x0 = f32(x[base + r * inner]);
    if (n == k && !above(x0, v[k - 1u])) { continue; }
    var j = min(n, k - 1u);
    // insertion: an equal entry already in the list (a lower index) stays in front
    loop {
      if (j == 0u || !above(x0, v[j - 1u])) { break; }
      v[j] = v[j - 1u];
      ix[j] = ix[j - 1u];
      j--;
    }
    v[j] = x0;
    ix[j] = i32(r);
    n = min(n + 1u, k);
  }
  for (var j = 0u; j < k; j++) {
    values[(o * k + j) * inner + i] = ${wgslType(dtype)}(v[j]);
    indices[(o * k + j) * inner + i] = ix[j];
  }
}`;
}

/**
 * topk backward v1. Uniforms: [outer, R, inner, k, gOff, iOff]: gx (outer, R, inner) from g and indices
 * (outer, k, inner).
 */
export function topkBackwardSource(dtype: DType): string {
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "g", dtype)}
${binding(2, "indices", "i32")}
${binding(3, "gx", dtype, true)}
${flatId(TOPK_WG)}
  let outer = U(0u); let R = U(1u); let inner = U(2u); let k = U(3u);
  if (gid >= outer * R * inner) { return; }
  let i = gid % inner; let r = (gid / inner) % R; let o = gid / (R * inner);
  var s = ${wgslType(dtype)}(0);
  for (var j = 0u; j < k; j++) {
    let at = (o * k + j) * inner + i;
    if (indices[U(5u) + at] == i32(r)) { s = g[U(4u) + at]; break; }
  }
  gx[gid] = s;
}`;
}
