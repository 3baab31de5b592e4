/**
 * WGSL rotary position embedding.
 *
 * Versions:
 * - rope v1: one invocation per (row, pair (i, i + D/2)); cos and sin come from a table the host computes
 *   in float64 (with mscale folded in), because an f32 angle p * inv_freq loses ~p * 6e-8 radians: at
 *   p = 1e5 that is 6e-3, far above f32 rounding of the result. The table is (2, Tt, D/2): cos then sin.
 * - rope v2: f32 with D/2 and the offset divisible by 4: one invocation per 4 pairs, every load and store a
 *   vec4 (a quarter of v1's memory operations, each a per-lane loop on lavapipe).
 *
 * Both read x through the strides of its rows (x as (n0, n1, n2, D) with a unit D stride), so a view
 * such as the q heads of a fused q/k/v projection is rotated without a copy first; out is contiguous.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl } from "../core/util.ts";

export const ROPE_WG = 64;

/** The element index of x's row `row` from uniforms 8-12: [n1, n2, s0, s1, s2] (element strides). */
const ROW_BASE = `let rb = U(3u) + (row / (U(8u) * U(9u))) * U(10u) + ((row / U(9u)) % U(8u)) * U(11u) +
    (row % U(9u)) * U(12u);`;

/**
 * Uniforms: [n = rows * half, T, half, xOff, group, Tt, sign (f32), inner, n1, n2, s0, s1, s2]: x's rows
 * as (n0, n1, n2) with element strides s0, s1, s2 (see ROW_BASE). Row r is at position index
 * q = r / inner (inner = H for a (B, T, H, D) layout, 1 for (..., T, D)), t = q % T. `group` is the number
 * of position indices per batch entry when each batch row has its own positions (table row b * T + t), 0
 * when shared (table row t).
 */
export function ropeV1(dtype: DType): string {
  return `${enables(dtype)}${uniformDecl(13)}
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
  ${ROW_BASE}
  let x1 = f32(x[rb + i]);
  let x2 = f32(x[rb + i + half]);
  out[base + i] = ${dtype}(x1 * c - x2 * s);
  out[base + i + half] = ${dtype}(x2 * c + x1 * s);
}`;
}

/**
 * rope v2: v1's uniforms and table, 4 pairs per invocation through vec4 loads and stores (f32; the offset
 * and strides divisible by 4).
 */
export function ropeV2(): string {
  return `${uniformDecl(13)}
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> tab: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
${flatId(ROPE_WG)}
  let T = U(1u); let h4 = U(2u) / 4u; let group = U(4u);
  if (gid >= U(0u) / 4u) { return; }
  let row = gid / h4; let i = gid % h4;
  let q = row / U(7u);
  let t = q % T;
  let tr = select(t, (q / max(group, 1u)) * T + t, group != 0u);
  let c = tab[tr * h4 + i];
  let s = UF(6u) * tab[(U(5u) + tr) * h4 + i];
  let base = row * 2u * h4;
  ${ROW_BASE}
  let xo = rb / 4u;
  let x1 = x[xo + i];
  let x2 = x[xo + i + h4];
  out[base + i] = x1 * c - x2 * s;
  out[base + i + h4] = x2 * c + x1 * s;
}`;
}
