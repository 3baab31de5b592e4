/**
 * WGSL for Performer's positive random features (FAVOR+).
 *
 * Versions:
 * - favor v1: the projection p = x W^T stays a core matmul (its register-blocked shaders are far faster
 *   on the software adapter than a dot product per (row, feature): that variant took 2.4 s where this one
 *   takes 0.2 s at B 1, H 4, T 1024, D 64, m 256); then one element-wise pass, in place:
 *   phi = exp(root p - c sq[row] - stab[group]), with c sq[row] = |x_row|^2 root^2 / 2 for keys (0 for
 *   queries) and the stabiliser computed beforehand from the (B, H, T, 1) row maxima. Composed from core
 *   ops the same map was ~5 passes over (B, H, T, m) per side (scale, sub, max, sub, exp).
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl } from "../core/util.ts";

export const FAVOR_WG = 64;

/**
 * Uniforms: [n = rows * m, m, group, root (f32), c (f32)]. Bindings: sq (rows), stab (n / group), p (n,
 * updated in place). p[i] = exp(root p[i] - c sq[i / m] - stab[i / group]).
 */
export function favorExpV1(dtype: DType): string {
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "sq", dtype)}
${binding(2, "stab", dtype)}
${binding(3, "p", dtype, true)}
${flatId(FAVOR_WG)}
  if (gid >= U(0u)) { return; }
  let e = UF(3u) * f32(p[gid]) - UF(4u) * f32(sq[gid / U(1u)]) - f32(stab[gid / U(2u)]);
  p[gid] = ${dtype}(exp(e));
}`;
}
