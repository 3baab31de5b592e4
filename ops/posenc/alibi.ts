/**
 * ALiBi (attention with linear biases): per-head slopes for any head count and the (H, Tq, Tk) bias.
 * @module
 */

import { checkDType, type DType, isFloat } from "../../runtime/dtype.ts";
import { checkDevice, type DeviceName, getDevice, gpu } from "../../runtime/device.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { grid } from "../../runtime/webgpu.ts";
import { empty, fromArray, Uniforms } from "../core/util.ts";
import { alibiBiasRef } from "./alibi_ref.ts";
import { ALIBI_WG, alibiV1 } from "./alibi_wgsl.ts";

/** m_h = 2^(-8h/n), h = 1..n, for n a power of two. */
function powerOfTwoSlopes(n: number): number[] {
  return Array.from({ length: n }, (_, h) => 2 ** ((-8 * (h + 1)) / n));
}

/**
 * ALiBi slopes for `nHeads` heads (docs/papers.md, ALiBi): m_h = 2^(-8h / n) for h = 1..n when n is a power
 * of two. Otherwise, with c the largest power of two below n, the c slopes of c heads followed by every
 * other slope (the 1st, 3rd, ...) of 2c heads, n - c of them: the interleaving of the ALiBi reference code.
 *
 * @example
 * ```ts
 * import { alibiSlopes } from "seqlab";
 * console.log(Array.from(alibiSlopes(4))); // [0.25, 0.0625, 0.015625, 0.00390625]
 * console.log(Array.from(alibiSlopes(6))); // [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]
 * ```
 */
export function alibiSlopes(nHeads: number): Float64Array {
  if (!Number.isInteger(nHeads) || nHeads <= 0) {
    throw new Error(`alibiSlopes: nHeads must be a positive integer, got ${nHeads}`);
  }
  const c = 2 ** Math.floor(Math.log2(nHeads));
  if (c === nHeads) return Float64Array.from(powerOfTwoSlopes(nHeads));
  const extra = powerOfTwoSlopes(2 * c).filter((_, i) => i % 2 === 0).slice(0, nHeads - c);
  return Float64Array.from([...powerOfTwoSlopes(c), ...extra]);
}

/** Options for {@link alibiBias}. */
export interface AlibiOptions {
  /** Device of the bias (default {@link getDevice}). */
  device?: DeviceName;
  /** Float dtype of the bias (default f32). */
  dtype?: DType;
}

/**
 * The ALiBi bias (H, Tq, Tk) to add to attention scores (B, H, Tq, Tk): bias[h, i, j] = -m_h |p_i - j|
 * with query i at position p_i = i + Tk - Tq (queries aligned to the end of the keys, as for new tokens
 * against a cache; p_i = i when Tq = Tk). With a causal mask this is the original m_h (j - i) for j <= i.
 *
 * @example
 * ```ts
 * import { alibiBias, alibiSlopes } from "seqlab";
 * const b = alibiBias(alibiSlopes(2), 3, 3);
 * console.log(b.shape, Array.from(await b.toArray()).slice(0, 3)); // [2, 3, 3] [-0, -0.0625, -0.125]
 * ```
 */
export function alibiBias(
  slopes: ArrayLike<number>,
  Tq: number,
  Tk: number,
  opts: AlibiOptions = {},
): Tensor {
  if (slopes.length === 0) throw new Error("alibiBias: slopes is empty; pass one slope per head");
  for (let h = 0; h < slopes.length; h++) {
    if (!Number.isFinite(slopes[h])) throw new Error(`alibiBias: slope ${h} is ${slopes[h]}, not finite`);
  }
  for (const [name, v] of [["Tq", Tq], ["Tk", Tk]] as const) {
    if (!Number.isInteger(v) || v < 0) {
      throw new Error(`alibiBias: ${name} must be an integer >= 0, got ${v}`);
    }
  }
  if (Tq > Tk) {
    throw new Error(
      `alibiBias: Tq = ${Tq} queries cannot be aligned to the end of Tk = ${Tk} keys (Tq > Tk)`,
    );
  }
  const device = opts.device === undefined ? getDevice() : checkDevice("alibiBias", opts.device);
  const dtype = opts.dtype === undefined ? "f32" : checkDType("alibiBias", opts.dtype);
  if (!isFloat(dtype)) throw new Error(`alibiBias: dtype must be a float type, got ${dtype}`);
  if (device === "cpu") return alibiBiasRef(slopes, Tq, Tk, dtype);
  const H = slopes.length;
  const out = empty("alibiBias", [H, Tq, Tk], dtype, device);
  if (out.size === 0) return out;
  const s = fromArray(Float32Array.from(slopes), [H], "f32", device, "alibi slopes");
  gpu().run({
    name: "alibiBias",
    key: `v1|${dtype}`,
    source: () => alibiV1(dtype),
    inputs: [s.storage.buffer!],
    outputs: [out.storage.buffer!],
    uniforms: new Uniforms().u32(out.size, Tq, Tk).build(),
    workgroups: grid(out.size, ALIBI_WG),
  });
  s.dispose();
  return out;
}
