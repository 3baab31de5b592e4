/**
 * WGSL rotary position embedding.
 *
 * Versions:
 * - rope v1: one invocation per (row, pair (i, i + D/2)); cos and sin come from a table the host computes
 *   in float64 (with mscale folded in), because an f32 angle p * inv_freq loses ~p * 6e-8 radians: at
 *   p = 1e5 that is 6e-3, far above f32 rounding of the result. The table is (2, Tt, D/2): cos then sin.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl } from "../core/util.ts";

export const ROPE_WG = 64;

/**
 * Uniforms: [n = rows * half, T, half, xOff, group, Tt, sign (f32), inner]. Row r is at position index
 * q = r / inner (inner = H for a (B, T, H, D) layout, 1 for (..., T, D)), t = q % T. `group` is the number
 * of position indices per batch entry when each batch row has its own positions (table row b * T + t), 0
 * when shared (table row t).
 */
export function ropeV1(dtype: DType): string {
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "x", dtype)}
${binding(2, "tab", "f32")}
${binding(3, "out", dtype, true)}
${flatId(ROPE_WG)}
  let n = U(0u); let T = U(1u); let half = U(2u); let group = U(4u);
  if (gid >= n) { return; }
  let row = gid / half; let i = gid % half;
  let q = row / U(7u);
  let t = q % T;
  let tr = select(t, (q / max(group, 1u)) * T + t, group != 0u);
  let c = tab[tr * half + i];
  let s = UF(6u) * tab[(U(5u) + tr) * half + i];
  let base = row * 2u * half;
  let x1 = f32(x[U(3u) + base + i]);
  let x2 = f32(x[U(3u) + base + i + half]);
  out[base + i] = ${dtype}(x1 * c - x2 * s);
  out[base + i + half] = ${dtype}(x2 * c + x1 * s);
}`;
}
