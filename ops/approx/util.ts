/**
 * Helpers shared by the approximated attentions: input validation, sequence padding, and float64 host
 * views for the references.
 * @module
 */

import { isFloat } from "../../runtime/dtype.ts";
import type { DeviceName } from "../../runtime/device.ts";
import { fmt } from "../../runtime/shape.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { full } from "../core/creation.ts";
import { contiguous } from "../core/elementwise.ts";
import { concat } from "../core/layout.ts";
import { fromArray } from "../core/util.ts";

/** The sizes of a validated (q, k, v) triple. */
export interface AttentionDims {
  B: number;
  H: number;
  Tq: number;
  Tk: number;
  D: number;
  Dv: number;
  device: DeviceName;
}

/**
 * Checks q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv): live, float, one device and dtype, matching
 * sizes; `sameLength` also needs Tq = Tk. Errors name the op and every shape.
 */
export function checkQKV(op: string, q: Tensor, k: Tensor, v: Tensor, sameLength = false): AttentionDims {
  for (const t of [q, k, v]) t.check(op);
  const shapes = `q is ${fmt(q.shape)}, k is ${fmt(k.shape)}, v is ${fmt(v.shape)}`;
  if (q.rank !== 4 || k.rank !== 4 || v.rank !== 4) {
    throw new Error(`${op}: q, k and v must be (B, H, T, D): ${shapes}`);
  }
  for (const t of [q, k, v]) {
    if (!isFloat(t.dtype)) throw new Error(`${op}: needs float tensors, got ${t.describe()}`);
  }
  if (k.dtype !== q.dtype || v.dtype !== q.dtype) {
    throw new Error(`${op}: q, k and v must share a dtype: ${q.dtype}, ${k.dtype}, ${v.dtype}`);
  }
  if (k.device !== q.device || v.device !== q.device) {
    throw new Error(`${op}: q, k and v must be on one device: ${q.device}, ${k.device}, ${v.device}`);
  }
  const [B, H, Tq, D] = q.shape, [Bk, Hk, Tk, Dk] = k.shape, [Bv, Hv, Tv, Dv] = v.shape;
  if (Bk !== B || Bv !== B || Hk !== H || Hv !== H) {
    throw new Error(`${op}: batch and head dims of q, k and v differ: ${shapes}`);
  }
  if (Dk !== D) throw new Error(`${op}: head dims of q and k differ: ${shapes}`);
  if (Tv !== Tk) throw new Error(`${op}: k and v have different lengths: ${shapes}`);
  if (Tq === 0 || Tk === 0) throw new Error(`${op}: sequence lengths must be at least 1: ${shapes}`);
  if (sameLength && Tq !== Tk) throw new Error(`${op}: needs Tq = Tk: ${shapes}`);
  return { B, H, Tq, Tk, D, Dv, device: q.device };
}

/** The softmax temperature: `scale` if given (positive, finite), else 1 / sqrt(D). */
export function checkScale(op: string, scale: number | undefined, D: number): number {
  const s = scale ?? 1 / Math.sqrt(D);
  if (typeof s !== "number" || !Number.isFinite(s) || s <= 0) {
    throw new Error(`${op}: scale must be a positive finite number, got ${String(scale)}`);
  }
  return s;
}

/** Pads axis 2 of (B, H, T, X) to length `Tp` with `value` (a concat, so gradients flow to x). */
export function padSeq(x: Tensor, Tp: number, value: number): Tensor {
  const T = x.shape[2];
  if (Tp === T) return x;
  const [B, H, , X] = x.shape;
  return tidy(() => concat([x, full([B, H, Tp - T, X], value, { dtype: x.dtype, device: x.device })], 2));
}

/** The elements of a cpu tensor as a float64 array (row-major). */
export function host64(op: string, t: Tensor): Float64Array {
  t.check(op);
  if (t.device !== "cpu") {
    throw new Error(`${op}: the reference needs cpu tensors, got ${t.describe()}`);
  }
  const c = contiguous(t);
  const out = Float64Array.from(c.storage.data!.subarray(c.offset, c.offset + c.size) as ArrayLike<number>);
  c.dispose();
  return out;
}

/** Wraps float64 results as a cpu f64 tensor. */
export function tensor64(data: Float64Array, shape: number[]): Tensor {
  return fromArray(data, shape, "f64", "cpu");
}
