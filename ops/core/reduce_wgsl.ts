/**
 * WGSL reductions over (outer, R, inner).
 *
 * Versions:
 * - v1 one invocation per output, looping over R (coalesced across `inner`); Kahan-compensated f32 sums.
 * - v2 split: when there are few outputs and R is long, a first pass reduces C chunks of R per output
 *   (outer, C, inner), then v1 reduces the chunks. Same shader, `chunk` < R. Keeps the adapter busy
 *   and shortens f32 accumulation chains.
 * - cumsum v1: one invocation per (outer, inner) line, sequential Kahan-compensated scan, over steps
 *   r0 .. r1 per dispatch (MAX_LOOP at most), continuing from the value at r0 - 1.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import type { ReduceKind } from "./reduce_ref.ts";
import { binding, computeType, enables, uniformDecl, WGSL_MATH } from "./util.ts";

export const RED_WG = 64;

/** Uniforms: [outer, R, inner, offset, chunk, C, scale(f32)]. */
export function reduceSource(kind: ReduceKind, inDtype: DType, outDtype: DType): string {
  // mean always accumulates in f32 (an integer mean is a float, and must not wrap)
  const ct = kind === "mean" ? "f32" : computeType(inDtype);
  const float = ct === "f32";
  let body: string;
  if (kind === "sum" || kind === "mean") {
    body = float
      ? `var s = 0.0; var comp = 0.0;
  for (var r = r0; r < r1; r++) {
    let y = f32(x[base + r * inner]) - comp;
    let t = s + y;
    comp = (t - s) - y;
    s = t;
  }
  let res = s * UF(6u);`
      : `var s = ${ct}(0);
  for (var r = r0; r < r1; r++) { s += ${ct}(x[base + r * inner]); }
  let res = s;`;
  } else if (kind === "argmax") {
    body = `var best = ${float ? "-inf()" : `${ct}(x[base + r0 * inner])`}; var idx = r0;
  for (var r = r0; r < r1; r++) {
    let v = ${ct}(x[base + r * inner]);
    ${float ? "if (is_nan(v)) { idx = r; break; }" : ""}
    if (v > best) { best = v; idx = r; }
  }
  let res = i32(idx);`;
  } else {
    const cmp = kind === "max" ? ">" : "<";
    body = `var acc = ${ct}(x[base + r0 * inner]);
  for (var r = r0 + 1u; r < r1; r++) {
    let v = ${ct}(x[base + r * inner]);
    ${float ? "if (is_nan(v)) { acc = v; break; }" : ""}
    if (v ${cmp} acc) { acc = v; }
  }
  let res = acc;`;
  }
  return `${enables(inDtype, outDtype)}${uniformDecl(8)}
${binding(1, "x", inDtype)}
${binding(2, "out", outDtype, true)}
${WGSL_MATH}
${flatId(RED_WG)}
  let outer = U(0u); let R = U(1u); let inner = U(2u); let chunk = U(4u); let C = U(5u);
  if (gid >= outer * C * inner) { return; }
  let o = gid / (C * inner);
  let rem = gid % (C * inner);
  let c = rem / inner;
  let i = rem % inner;
  let r0 = c * chunk;
  let r1 = min(R, r0 + chunk);
  let base = U(3u) + o * R * inner + i;
  ${body}
  out[gid] = ${outDtype}(res);
}`;
}

/** Uniforms: [outer, R, inner, offset, r0, r1]. */
export function cumsumSource(dtype: DType): string {
  const ct = computeType(dtype);
  const float = ct === "f32";
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "x", dtype)}
${binding(2, "out", dtype, true)}
${flatId(RED_WG)}
  let outer = U(0u); let R = U(1u); let inner = U(2u); let r0 = U(4u); let r1 = U(5u);
  if (gid >= outer * inner) { return; }
  let o = gid / inner;
  let i = gid % inner;
  let base = o * R * inner + i;
  var s = ${ct}(0); ${float ? "var comp = 0.0;" : ""}
  if (r0 > 0u) { s = ${ct}(out[base + (r0 - 1u) * inner]); }
  for (var r = r0; r < r1; r++) {
    let k = base + r * inner;
    ${
    float
      ? `let y = f32(x[U(3u) + k]) - comp;
    let t = s + y;
    comp = (t - s) - y;
    s = t;`
      : `s += ${ct}(x[U(3u) + k]);`
  }
    out[k] = ${dtype}(s);
  }
}`;
}
