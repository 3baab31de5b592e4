/**
 * Batched matrix multiplication with NumPy semantics: 1-D operands are promoted and squeezed back, batch
 * dimensions broadcast.
 * @module
 */

import { isFloat, promote } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { broadcastShapes, fmt, numel } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { cast, contiguous } from "./elementwise.ts";
import { matmulRef } from "./matmul_ref.ts";
import { record } from "../../runtime/autograd.ts";
import { sumTo } from "./reduce.ts";
import { matmulV1, matmulV2, matmulV3, TILE } from "./matmul_wgsl.ts";
import { empty, sameDevice, Uniforms } from "./util.ts";

/** Shader versions of matmul (see matmul_wgsl.ts); "auto" picks v3 when aligned, else v2. */
export type MatmulVersion = "auto" | "v1" | "v2" | "v3";

/**
 * Matrix product `a @ b`. Shapes (..., M, K) @ (..., K, N) -> (..., M, N) with broadcast batch dims;
 * a 1-D `a` is a row vector and a 1-D `b` a column vector (their dim is dropped from the result).
 * Float dtypes only; mixed float dtypes promote.
 *
 * @example
 * ```ts
 * import { matmul, tensor } from "seqlab";
 * const a = tensor([[1, 2], [3, 4]]);
 * console.log(await matmul(a, tensor([[5], [6]])).toArray()); // [17, 39]
 * ```
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  return recordMatmul(a, b, matmulWith(a, b, "auto"));
}

/**
 * Records matmul's backward: dA = g @ B^T and dB = A^T @ g, 1-D operands lifted to matrices as in the
 * forward pass, broadcast batch dims summed back to each operand's shape, and no product for an operand
 * that did not require grad (a Linear layer's input).
 */
function recordMatmul(a: Tensor, b: Tensor, out: Tensor): Tensor {
  const sa = a.shape, sb = b.shape, da = a.dtype, db = b.dtype;
  const needA = a.requiresGrad, needB = b.requiresGrad;
  return record("matmul", out, [a, b], [a, b], (g, [as, bs]) => {
    const a2 = sa.length === 1 ? as.reshape([1, sa[0]]) : as; // (..., M, K)
    const b2 = sb.length === 1 ? bs.reshape([sb[0], 1]) : bs; // (..., K, N)
    const lead = g.shape.slice(0, g.rank - (sa.length > 1 ? 1 : 0) - (sb.length > 1 ? 1 : 0));
    const g2 = g.reshape([...lead, a2.shape.at(-2)!, b2.shape.at(-1)!]); // (..., M, N)
    const fit = (d: Tensor, lifted: readonly number[], shape: readonly number[], dtype: Tensor["dtype"]) => {
      const r = sumTo(d, lifted).reshape(shape);
      return r.dtype === dtype ? r : cast(r, dtype);
    };
    return [
      needA ? fit(matmul(g2, b2.transpose()), a2.shape, sa, da) : null,
      needB ? fit(matmul(a2.transpose(), g2), b2.shape, sb, db) : null,
    ];
  });
}

/** {@link matmul} with a chosen shader version (for tests and benchmarks). */
export function matmulWith(a: Tensor, b: Tensor, version: MatmulVersion): Tensor {
  const device = sameDevice("matmul", a, b);
  if (a.rank === 0 || b.rank === 0) {
    throw new Error(`matmul: operands must have at least 1 dimension: a is ${fmt(a.shape)}, b is ${fmt(b.shape)}`);
  }
  if (!isFloat(a.dtype) || !isFloat(b.dtype)) {
    throw new Error(`matmul: needs float tensors: a is ${fmt(a.shape)} ${a.dtype}, b is ${fmt(b.shape)} ${b.dtype}`);
  }
  const as = a.rank === 1 ? [1, a.shape[0]] : [...a.shape];
  const bs = b.rank === 1 ? [b.shape[0], 1] : [...b.shape];
  const [M, K] = as.slice(-2), [K2, N] = bs.slice(-2);
  if (K !== K2) {
    throw new Error(`matmul: inner dimensions differ: a is ${fmt(a.shape)}, b is ${fmt(b.shape)}`);
  }
  let batchShape: number[];
  try {
    batchShape = broadcastShapes("matmul", as.slice(0, -2), bs.slice(0, -2));
  } catch {
    throw new Error(`matmul: batch dimensions cannot be broadcast: a is ${fmt(a.shape)}, b is ${fmt(b.shape)}`);
  }
  const batch = numel(batchShape);
  const outShape = [...batchShape];
  if (a.rank > 1) outShape.push(M);
  if (b.rank > 1) outShape.push(N);
  const dtype = promote(a.dtype, b.dtype);
  const out = empty("matmul", outShape, dtype, device);
  if (out.size === 0) return out;
  // Lay each operand out as contiguous (batch?, rows, cols) with a batch stride of 0 when shared.
  const prep = (t: Tensor, shape: number[]) => {
    const tb = shape.slice(0, -2);
    const shared = numel(tb) === 1;
    const c0 = t.dtype === dtype ? t : cast(t, dtype);
    const full = shared ? c0 : c0.reshape(shape).expand([...batchShape, ...shape.slice(-2)]);
    const c = contiguous(full);
    if (full !== c0) full.dispose();
    if (c0 !== t) c0.dispose();
    return { t: c, stride: shared ? 0 : shape.at(-2)! * shape.at(-1)! };
  };
  const pa = prep(a, as), pb = prep(b, bs);
  try {
    if (device === "cpu") {
      matmulRef(pa.t.storage.data!, pa.t.offset, pa.stride, pb.t.storage.data!, pb.t.offset, pb.stride, out.storage.data!, batch, M, N, K);
      return out;
    }
    let v = version;
    const aligned = K % 4 === 0 && N % 4 === 0 && pa.t.offset % 4 === 0 && pb.t.offset % 4 === 0 && dtype === "f32";
    if (v === "auto") v = aligned ? "v3" : "v2";
    if (v === "v3" && !aligned) throw new Error(`matmul v3 needs K, N and offsets divisible by 4 and f32`);
    const groups = v === "v1" ? [Math.ceil(N / 8), Math.ceil(M / 8)] : [Math.ceil(N / TILE), Math.ceil(M / TILE)];
    const ctx = gpu();
    for (let b0 = 0; b0 < batch; b0 += 65535) {
      ctx.run({
        name: "matmul",
        key: `${v}|${dtype}`,
        source: () => (v === "v1" ? matmulV1(dtype) : v === "v2" ? matmulV2(dtype) : matmulV3()),
        inputs: [pa.t.storage.buffer!, pb.t.storage.buffer!],
        outputs: [out.storage.buffer!],
        uniforms: new Uniforms().u32(M, N, K, b0, pa.t.offset, pb.t.offset, pa.stride, pb.stride).build(),
        workgroups: [groups[0], groups[1], Math.min(65535, batch - b0)],
      });
    }
    return out;
  } finally {
    pa.t.dispose();
    pb.t.dispose();
  }
}
