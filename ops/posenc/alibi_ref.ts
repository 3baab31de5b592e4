/**
 * Reference ALiBi bias in float64 loops: the oracle for the WebGPU shader and the cpu path of `alibiBias`.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { empty } from "../core/util.ts";

/**
 * ALiBi bias on cpu.
 *
 * - `slopes`: (H) per-head slopes m_h.
 * - returns (H, Tq, Tk): bias[h, i, j] = -m_h |(i + Tk - Tq) - j|. Queries are aligned to the end of the
 *   keys (query i sits at position i + Tk - Tq), as when new queries attend to a cache of Tk keys.
 *
 * @example
 * ```ts
 * import { alibiBiasRef } from "seqlab";
 * console.log(await alibiBiasRef([0.5], 1, 3).toArray()); // the last query: [-1, -0.5, -0]
 * ```
 */
export function alibiBiasRef(
  slopes: ArrayLike<number>,
  Tq: number,
  Tk: number,
  dtype: DType = "f32",
): Tensor {
  const H = slopes.length;
  const out = empty("alibiBiasRef", [H, Tq, Tk], dtype, "cpu");
  const o = out.storage.data!;
  for (let h = 0; h < H; h++) {
    for (let i = 0; i < Tq; i++) {
      for (let j = 0; j < Tk; j++) o[(h * Tq + i) * Tk + j] = -slopes[h] * Math.abs(i + Tk - Tq - j);
    }
  }
  return out;
}
