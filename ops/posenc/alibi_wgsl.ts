/**
 * WGSL ALiBi bias.
 *
 * Versions:
 * - alibi v1: one invocation per element of (H, Tq, Tk); generating on the device avoids computing and
 *   uploading H * Tq * Tk values from the host (512 MiB at H = 8, T = 4096). |i + Tk - Tq - j| is formed
 *   in i32 and converted once, exact below 2^24.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl } from "../core/util.ts";

export const ALIBI_WG = 64;

/** Uniforms: [n = H * Tq * Tk, Tq, Tk]. Binding 1 holds the H slopes (f32). */
export function alibiV1(dtype: DType): string {
  return `${enables(dtype)}${uniformDecl(4)}
${binding(1, "slopes", "f32")}
${binding(2, "out", dtype, true)}
${flatId(ALIBI_WG)}
  let n = U(0u); let Tq = U(1u); let Tk = U(2u);
  if (gid >= n) { return; }
  let j = gid % Tk; let i = (gid / Tk) % Tq; let h = gid / (Tk * Tq);
  let dist = abs(i32(i + Tk) - i32(Tq) - i32(j));
  out[gid] = ${dtype}(-slopes[h] * f32(dist));
}`;
}
