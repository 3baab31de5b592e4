/**
 * Linformer (Wang et al.): keys and values projected from length T to k by E and F before softmax
 * attention, so the scores are (Tq, k) instead of (Tq, T). Composed from core ops on either device,
 * differentiable in q, k, v, E and F.
 * @module
 */

import { checkDType, type DType, isFloat } from "../../runtime/dtype.ts";
import { checkDevice, type DeviceName, getDevice } from "../../runtime/device.ts";
import { fmt } from "../../runtime/shape.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { randn } from "../core/creation.ts";
import { mul } from "../core/elementwise.ts";
import { softmax } from "../core/rowwise.ts";
import { checkProjection, type LinformerOptions } from "./linformer_ref.ts";
import { matmul } from "../core/matmul.ts";
import { checkQKV, checkScale } from "./util.ts";

/** Options of {@link linformerProjection}. */
export interface LinformerProjectionOptions {
  /** Seed (default: the next stream of the global seed, as `randn`). */
  seed?: number;
  /** Heads: an (H, k, T) projection per head instead of one shared (k, T). */
  heads?: number;
  /** Device (default {@link getDevice}). */
  device?: DeviceName;
  /** Float dtype (default f32). */
  dtype?: DType;
}

/**
 * A random Linformer projection (k, T) (or (H, k, T) with `heads`) with entries N(0, 1/k): the
 * Johnson-Lindenstrauss projection of Linformer's analysis, and a starting point for training E and F.
 *
 * @example
 * ```ts
 * import { linformerProjection } from "seqlab";
 * console.log(linformerProjection(16, 128, { seed: 1 }).shape); // [16, 128]
 * ```
 */
export function linformerProjection(k: number, T: number, opts: LinformerProjectionOptions = {}): Tensor {
  for (const [name, v] of [["k", k], ["T", T], ["heads", opts.heads ?? 1]] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new Error(`linformerProjection: ${name} must be a positive integer, got ${v}`);
    }
  }
  const device = opts.device === undefined ? getDevice() : checkDevice("linformerProjection", opts.device);
  const dtype = opts.dtype === undefined ? "f32" : checkDType("linformerProjection", opts.dtype);
  if (!isFloat(dtype)) throw new Error(`linformerProjection: dtype must be a float type, got ${dtype}`);
  const shape = opts.heads === undefined ? [k, T] : [opts.heads, k, T];
  return randn(shape, { seed: opts.seed, std: 1 / Math.sqrt(k), device, dtype });
}

/**
 * Linformer attention (docs/papers.md, Linformer): softmax(scale Q (E K)^T) (F V), E, F in R^{k x T}.
 * Time and memory O(Tq k) per head instead of O(Tq Tk). Not causal: the projection mixes all positions.
 *
 * - `q`: (B, H, Tq, D), `k`: (B, H, Tk, D), `v`: (B, H, Tk, Dv) -> (B, H, Tq, Dv).
 * - `E`: (k, Tk) shared by all heads, or (H, k, Tk) per head, on q's device; `opts.F` the same shape
 *   (default E, Linformer's key-value sharing).
 *
 * The reference is {@link linformerAttentionRef}; differentiable in q, k, v, E and F.
 *
 * @example
 * ```ts
 * import { linformerAttention, linformerProjection, randn } from "seqlab";
 * const q = randn([1, 2, 64, 16], { seed: 1 }), k = randn([1, 2, 64, 16], { seed: 2 });
 * const v = randn([1, 2, 64, 16], { seed: 3 });
 * const E = linformerProjection(8, 64, { seed: 4 });
 * console.log(linformerAttention(q, k, v, E).shape); // [1, 2, 64, 16]
 * ```
 */
export function linformerAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  E: Tensor,
  opts: LinformerOptions = {},
): Tensor {
  const op = "linformerAttention";
  const { H, Tk, D } = checkQKV(op, q, k, v);
  const F = opts.F ?? E;
  const kP = checkProjection(op, "E", E, H, Tk);
  if (checkProjection(op, "F", F, H, Tk) !== kP || F.rank !== E.rank) {
    throw new Error(`${op}: E ${fmt(E.shape)} and F ${fmt(F.shape)} must have the same shape`);
  }
  for (const [name, P] of [["E", E], ["F", F]] as const) {
    if (P.device !== q.device) throw new Error(`${op}: ${name} is on ${P.device} but q is on ${q.device}`);
    if (P.dtype !== q.dtype) throw new Error(`${op}: ${name} is ${P.dtype} but q is ${q.dtype}`);
  }
  const scale = checkScale(op, opts.scale, D);
  return tidy(() => {
    const EK = matmul(E, k); // (B, H, k, D): E's batch dims [] or [H] broadcast against [B, H]
    const FV = matmul(F, v); // (B, H, k, Dv)
    const P = softmax(mul(matmul(q, EK.transpose()), scale), -1); // (B, H, Tq, k)
    return matmul(P, FV); // (B, H, Tq, Dv)
  });
}
