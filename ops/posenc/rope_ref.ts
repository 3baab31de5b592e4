/**
 * Reference rotary position embedding in float64 loops: the oracle for the WebGPU shader and the cpu
 * path of `applyRope`.
 * @module
 */

import { numel } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { contiguous } from "../core/elementwise.ts";
import { empty } from "../core/util.ts";
import type { RopeFrequencies } from "./frequencies.ts";

/** Where T sits: (..., T, D) ("bhtd", the default) or (B, T, H, D) ("bthd"). */
export type RopeLayout = "bhtd" | "bthd";

/**
 * Rotary embedding with rotate-half pairing, in float64 (rounded once to x's dtype on store).
 *
 * - `x`: (B, H, T, D), or any (..., T, D); D even, on cpu. With `layout` "bthd", x is (B, T, H, D) (the
 *   heads of one position side by side, as a projection's output reshapes to).
 * - `positions`: T numbers shared by every leading index, or B * T numbers (row-major (B, T)) giving each
 *   batch row its own positions (B = x.shape[0]).
 * - `freqs.invFreq`: (D / 2) inverse frequencies; `freqs.mscale` scales cos and sin (YaRN's temperature).
 * - returns (..., T, D): for pair i in [0, D/2) at position p, with a = p * invFreq[i], c = mscale cos a,
 *   s = mscale sin a:
 *   out[i] = x[i] c - x[i + D/2] s;  out[i + D/2] = x[i + D/2] c + x[i] s.
 *   With `transpose`, the transposed map (angle -a): the backward of the forward map.
 *
 * @example
 * ```ts
 * import { ropeFrequencies, ropeRef, tensor } from "seqlab";
 * const x = tensor([[1, 0]], { device: "cpu", dtype: "f64" }); // (T, D) = (1, 2)
 * console.log(await ropeRef(x, [Math.PI / 2], ropeFrequencies(2)).toArray()); // [cos, sin] = [~0, 1]
 * ```
 */
export function ropeRef(
  x: Tensor,
  positions: ArrayLike<number>,
  freqs: RopeFrequencies,
  transpose = false,
  layout: RopeLayout = "bhtd",
): Tensor {
  const D = x.shape[x.rank - 1], half = D / 2;
  // "bthd": x is (B, T, H, D), H rows per position; else (..., T, D), one row per position
  const inner = layout === "bthd" ? x.shape[2] : 1;
  const T = layout === "bthd" ? x.shape[1] : x.shape[x.rank - 2];
  const rows = numel(x.shape.slice(0, -1));
  const perBatch = positions.length !== T; // then B * T, checked by the caller
  const group = perBatch ? rows / inner / x.shape[0] : 0; // positions per batch entry
  const src = contiguous(x);
  const out = empty("ropeRef", x.shape, x.dtype, "cpu");
  const a = src.storage.data!, o = out.storage.data!, off = src.offset;
  const sign = transpose ? -1 : 1;
  for (let r = 0; r < rows; r++) {
    const q = Math.floor(r / inner), t = q % T;
    const p = positions[perBatch ? Math.floor(q / group) * T + t : t];
    const base = r * D;
    for (let i = 0; i < half; i++) {
      const ang = p * freqs.invFreq[i];
      const c = freqs.mscale * Math.cos(ang), s = sign * freqs.mscale * Math.sin(ang);
      const x1 = a[off + base + i], x2 = a[off + base + i + half];
      o[base + i] = x1 * c - x2 * s;
      o[base + i + half] = x2 * c + x1 * s;
    }
  }
  src.dispose();
  return out;
}
