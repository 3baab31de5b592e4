/**
 * Rotary position embedding (rotate-half pairing) on both backends, differentiable: the backward is the
 * transposed rotation (angle -a), run by the same code.
 * @module
 */

import { isFloat } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { fmt, numel } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { grid } from "../../runtime/webgpu.ts";
import { record } from "../../runtime/autograd.ts";
import { contiguous } from "../core/elementwise.ts";
import { empty, fromArray, Uniforms } from "../core/util.ts";
import { type RopeFrequencies, ropeFrequencies } from "./frequencies.ts";
import { type RopeLayout, ropeRef } from "./rope_ref.ts";
import { ROPE_WG, ropeV1, ropeV2 } from "./rope_wgsl.ts";

/** Positions for the T rows of each sequence: a start offset, or T (or B * T) explicit values. */
export type RopePositions = number | ArrayLike<number>;

/** Options of {@link applyRope}. */
export interface ApplyRopeOptions {
  /** "bhtd" (default): x is (B, H, T, D) or any (..., T, D); "bthd": x is (B, T, H, D). */
  layout?: RopeLayout;
}

/** Validates x, positions and layout; returns the explicit positions. */
function check(x: Tensor, positions: RopePositions, freqs: RopeFrequencies | undefined, layout: unknown) {
  x.check("applyRope");
  if (!isFloat(x.dtype)) throw new Error(`applyRope: needs a float tensor, got ${x.describe()}`);
  if (layout !== "bhtd" && layout !== "bthd") {
    throw new Error(`applyRope: layout must be "bhtd" or "bthd", got ${JSON.stringify(layout)}`);
  }
  if (layout === "bthd" && x.rank !== 4) {
    throw new Error(`applyRope: layout "bthd" needs x (B, T, H, D), got ${x.describe()}`);
  }
  if (x.rank < 2) {
    throw new Error(`applyRope: x must be (B, H, T, D) or (..., T, D), got ${x.describe()}`);
  }
  const D = x.shape[x.rank - 1], T = layout === "bthd" ? x.shape[1] : x.shape[x.rank - 2];
  if (D % 2 !== 0) {
    throw new Error(
      `applyRope: head dim D = ${D} of ${fmt(x.shape)} is odd; RoPE rotates pairs (i, i + D/2)`,
    );
  }
  const f = freqs ?? ropeFrequencies(D);
  if (f.dim !== D || f.invFreq.length !== D / 2) {
    throw new Error(`applyRope: frequencies are for head dim ${f.dim} but x ${fmt(x.shape)} has D = ${D}`);
  }
  let pos: ArrayLike<number>;
  if (typeof positions === "number") {
    if (!Number.isFinite(positions)) throw new Error(`applyRope: offset must be finite, got ${positions}`);
    pos = Float64Array.from({ length: T }, (_, t) => positions + t);
  } else {
    pos = Float64Array.from(positions); // copied: the backward must see the forward's positions
    const B = x.rank > 2 ? x.shape[0] : 1;
    if (pos.length !== T && !(x.rank > 2 && pos.length === B * T)) {
      throw new Error(
        `applyRope: ${pos.length} positions for x ${fmt(x.shape)}; expected T = ${T}` +
          (x.rank > 2 ? ` or B * T = ${B * T}` : ""),
      );
    }
    for (let i = 0; i < pos.length; i++) {
      if (!Number.isFinite(pos[i])) throw new Error(`applyRope: position ${i} is ${pos[i]}, not finite`);
    }
  }
  return { pos, f };
}

/** Recent cos/sin tables per frequency set, by positions (a forward and its backward share one). */
const tables = new WeakMap<RopeFrequencies, Map<string, Float32Array>>();
const TABLES_KEPT = 8;

/**
 * The (2, Tt, D/2) table of mscale cos and sin at each position, computed in float64 once per positions
 * and frequencies among the last few used: a training step rotates q and k of every layer at the same
 * positions, forward and backward (16 tables of 4,096 cos/sin pairs a step for the bench's LM).
 */
function cosSinTable(pos: ArrayLike<number>, freqs: RopeFrequencies): Float32Array {
  const Tt = pos.length, half = freqs.invFreq.length;
  // positions start, start + 1, ... (the common case) are keyed by start; others by their values
  let arith = true;
  for (let t = 1; t < Tt && arith; t++) arith = pos[t] === pos[0] + t;
  const key = arith ? `${pos[0]}+${Tt}` : Array.prototype.join.call(pos, ",");
  let m = tables.get(freqs);
  if (!m) tables.set(freqs, m = new Map());
  const hit = m.get(key);
  if (hit) {
    m.delete(key);
    m.set(key, hit); // most recent last
    return hit;
  }
  const tab = new Float32Array(2 * Tt * half);
  for (let t = 0; t < Tt; t++) {
    for (let i = 0; i < half; i++) {
      const a = pos[t] * freqs.invFreq[i];
      tab[t * half + i] = freqs.mscale * Math.cos(a);
      tab[(Tt + t) * half + i] = freqs.mscale * Math.sin(a);
    }
  }
  if (m.size >= TABLES_KEPT) m.delete(m.keys().next().value!);
  m.set(key, tab);
  return tab;
}

/** The rotation (or its transpose) without recording. */
function rotate(
  x: Tensor,
  pos: ArrayLike<number>,
  freqs: RopeFrequencies,
  transpose: boolean,
  layout: RopeLayout,
): Tensor {
  if (x.device === "cpu") return ropeRef(x, pos, freqs, transpose, layout);
  const D = x.shape[x.rank - 1], half = D / 2;
  const inner = layout === "bthd" ? x.shape[2] : 1;
  const T = layout === "bthd" ? x.shape[1] : x.shape[x.rank - 2];
  const rows = numel(x.shape.slice(0, -1));
  const out = empty("applyRope", x.shape, x.dtype, x.device);
  if (out.size === 0) return out;
  const Tt = pos.length;
  const tab = cosSinTable(pos, freqs);
  const table = fromArray(tab, [2, Tt, half], "f32", x.device, "rope table");
  // rows read through their strides (a view such as q of a fused projection is not copied first) when
  // D has unit stride and the rows fit (n0, n1, n2)
  const strided = x.strides[x.rank - 1] === 1 && x.rank <= 4;
  const src = strided ? x : contiguous(x);
  const lead = [1, 1, 1, ...src.shape.slice(0, -1)].slice(-3);
  const ls = [0, 0, 0, ...src.strides.slice(0, -1)].slice(-3);
  try {
    const v2 = x.dtype === "f32" && half % 4 === 0 && src.offset % 4 === 0 && ls.every((d) => d % 4 === 0);
    gpu().run({
      name: "applyRope",
      key: v2 ? "v2" : `v1|${x.dtype}`,
      source: () => (v2 ? ropeV2() : ropeV1(x.dtype)),
      inputs: [src.storage.buffer!, table.storage.buffer!],
      outputs: [out.storage.buffer!],
      uniforms: new Uniforms()
        .u32(rows * half, T, half, src.offset, Tt === T ? 0 : rows / inner / x.shape[0], Tt)
        .f32(transpose ? -1 : 1)
        .u32(inner, lead[1], lead[2], ...ls)
        .build(),
      workgroups: grid(v2 ? (rows * half) / 4 : rows * half, ROPE_WG),
    });
  } finally {
    if (src !== x) src.dispose();
    table.dispose();
  }
  return out;
}

/**
 * Applies rotary position embedding to `x` (B, H, T, D) (or any (..., T, D)) with rotate-half pairing:
 * for pair (i, i + D/2) at position p, angle a = p * invFreq[i], c = mscale cos a, s = mscale sin a,
 * out[i] = x[i] c - x[i + D/2] s and out[i + D/2] = x[i + D/2] c + x[i] s (docs/papers.md, RoPE).
 *
 * `positions` is a start offset (rows get offset, offset + 1, ...), or T explicit positions shared by every
 * leading index, or B * T (row-major (B, T)) giving each batch entry its own. `layout: "bthd"` takes x as
 * (B, T, H, D), a projection's output reshaped, so attention in that layout needs no transpose. `freqs` defaults to
 * `ropeFrequencies(D)`; pass scaled ones for PI, NTK, dynamic NTK or YaRN. Differentiable in x.
 * The cpu path is {@link ropeRef} (float64); the WebGPU path reads a float64-computed cos/sin table.
 *
 * @example
 * ```ts
 * import { applyRope, ropeFrequencies, tensor } from "seqlab";
 * const x = tensor([[[[1, 0, 0, 1]]]]); // (B, H, T, D) = (1, 1, 1, 4)
 * console.log(await applyRope(x, 0).toArray()); // position 0 is the identity: [1, 0, 0, 1]
 * const y = applyRope(x, [1], ropeFrequencies(4)); // rotates pair (0, 2) by 1 rad, pair (1, 3) by 0.01
 * console.log((await y.toArray())[2].toFixed(4)); // "0.8415" (sin 1)
 * ```
 */
export function applyRope(
  x: Tensor,
  positions: RopePositions,
  freqs?: RopeFrequencies,
  o: ApplyRopeOptions = {},
): Tensor {
  const layout = o.layout ?? "bhtd";
  const { pos, f } = check(x, positions, freqs, layout);
  const out = rotate(x, pos, f, false, layout);
  return record("applyRope", out, [x], [], (g) => [rotate(g, pos, f, true, layout)]);
}
