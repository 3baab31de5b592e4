/**
 * Batched matrix multiplication with NumPy semantics: 1-D operands are promoted and squeezed back, batch
 * dimensions broadcast. The WebGPU shader versions are described in matmul_wgsl.ts.
 * @module
 */

import { isFloat, promote } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { broadcastShapes, fmt, numel } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { MAX_LOOP } from "../../runtime/webgpu.ts";
import { add, cast, contiguous } from "./elementwise.ts";
import { matmulRef } from "./matmul_ref.ts";
import { record } from "../../runtime/autograd.ts";
import { registerOps } from "../../runtime/tensor_ops.ts";
import { sumTo } from "./reduce.ts";
import { matmulV1, matmulV2, matmulV3, texTile, TILE } from "./matmul_wgsl.ts";
import { texFits, texHeight, texMatmul } from "./matmul_tex.ts";
import { empty, sameDevice, Uniforms } from "./util.ts";

/**
 * Shader versions of matmul (see matmul_wgsl.ts). "auto" picks v5 for short A (M <= 16) and v4 otherwise
 * when K fits the texture limit and the product is large enough to repay the packing (and the extra
 * submit); else v3 when aligned, else v2. v1 is the naive baseline.
 */
export type MatmulVersion = "auto" | "v1" | "v2" | "v3" | "v4" | "v5";

const VERSIONS: readonly MatmulVersion[] = ["auto", "v1", "v2", "v3", "v4", "v5"];

/** Validates a matmul version option (the same on every backend). */
export function checkMatmulVersion(version: unknown): MatmulVersion {
  if (!VERSIONS.includes(version as MatmulVersion)) {
    throw new Error(`matmul: version must be one of ${VERSIONS.join(", ")}, got ${JSON.stringify(version)}`);
  }
  return version as MatmulVersion;
}

/** Below this many multiply-adds "auto" stays on the storage-buffer versions (no packing, no extra submit). */
const TEX_MIN_WORK = 64 * 64 * 64;

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

/**
 * A product whose inner dimension is longer than one invocation may loop (lavapipe ends an invocation's
 * loops after 65535 iterations): the sum of products over K-slices of at most MAX_LOOP.
 */
function matmulSplitK(a: Tensor, b: Tensor, K: number, version: MatmulVersion): Tensor {
  let acc: Tensor | null = null;
  for (let k0 = 0; k0 < K; k0 += MAX_LOOP) {
    const k1 = Math.min(K, k0 + MAX_LOOP);
    const as = a.slice(a.shape.map((_d, i) => (i === a.rank - 1 ? [k0, k1] as [number, number] : null)));
    const bs = b.slice(
      b.shape.map((_d, i) => (i === Math.max(b.rank - 2, 0) ? [k0, k1] as [number, number] : null)),
    );
    const part = matmulWith(as, bs, version);
    as.dispose();
    bs.dispose();
    if (acc) {
      const total = add(acc, part);
      acc.dispose();
      part.dispose();
      acc = total;
    } else acc = part;
  }
  return acc!;
}

/**
 * {@link matmul} with a chosen shader version (for tests and benchmarks); "auto" is what `matmul` uses.
 * On the cpu the reference computes every version, after the same checks: v3 needs K, N and the
 * operands' offsets divisible by 4 and f32; v4/v5 need K within the texture height limit.
 *
 * @example
 * ```ts
 * import { matmulWith, randn } from "seqlab";
 * const a = randn([8, 5]), b = randn([5, 3]);
 * console.log(matmulWith(a, b, "v2").shape); // [8, 3]
 * ```
 */
export function matmulWith(a: Tensor, b: Tensor, version: MatmulVersion): Tensor {
  const device = sameDevice("matmul", a, b);
  if (a.rank === 0 || b.rank === 0) {
    throw new Error(
      `matmul: operands must have at least 1 dimension: a is ${fmt(a.shape)}, b is ${fmt(b.shape)}`,
    );
  }
  if (!isFloat(a.dtype) || !isFloat(b.dtype)) {
    throw new Error(
      `matmul: needs float tensors: a is ${fmt(a.shape)} ${a.dtype}, b is ${fmt(b.shape)} ${b.dtype}`,
    );
  }
  const as = a.rank === 1 ? [1, a.shape[0]] : [...a.shape];
  const bs = b.rank === 1 ? [b.shape[0], 1] : [...b.shape];
  const [M, K] = as.slice(-2), [K2, N] = bs.slice(-2);
  if (K !== K2) {
    throw new Error(`matmul: inner dimensions differ: a is ${fmt(a.shape)}, b is ${fmt(b.shape)}`);
  }
  if (device === "webgpu" && K > MAX_LOOP) return matmulSplitK(a, b, K, version);
  let batchShape: number[];
  try {
    batchShape = broadcastShapes("matmul", as.slice(0, -2), bs.slice(0, -2));
  } catch {
    throw new Error(
      `matmul: batch dimensions cannot be broadcast: a is ${fmt(a.shape)}, b is ${fmt(b.shape)}`,
    );
  }
  const batch = numel(batchShape);
  const outShape = [...batchShape];
  if (a.rank > 1) outShape.push(M);
  if (b.rank > 1) outShape.push(N);
  const dtype = promote(a.dtype, b.dtype);
  let v = checkMatmulVersion(version);
  // the same checks on both backends: an option refused on webgpu is refused on cpu with the same message
  const texOk = texFits(K);
  if ((v === "v4" || v === "v5") && !texOk) {
    throw new Error(
      `matmul ${v}: K = ${K} is over the packed texture's height limit ` +
        `(${texHeight()}); use v2 or v3: a is ${fmt(a.shape)}, b is ${fmt(b.shape)}`,
    );
  }
  if (v === "auto") {
    if (texOk && K > 0 && batch * M * N * K >= TEX_MIN_WORK) v = M <= 16 ? "v5" : "v4";
    else v = "v2"; // refined to v3 below once the operands' layout is known
  }
  const out = empty("matmul", outShape, dtype, device);
  if (out.size === 0) return out;
  if (device === "webgpu" && (v === "v4" || v === "v5")) {
    if (K > 0) {
      texMatmul(v, texTile(v, batch * M, N), a, b, out, batchShape, M, N, K);
      return out;
    }
    v = "v2"; // K = 0: nothing to pack; v2 writes the zeros
  }
  // Lay each operand out as contiguous (batch?, rows, cols) with a batch stride of 0 when shared.
  const prep = (t: Tensor, shape: number[]) => {
    const tb = shape.slice(0, -2);
    const shared = numel(tb) === 1;
    const c0 = t.dtype === dtype ? t : cast(t, dtype);
    const r = shared ? c0 : c0.reshape(shape); // a copy when the view cannot be reshaped in place
    const full = shared ? c0 : r.expand([...batchShape, ...shape.slice(-2)]);
    const c = contiguous(full);
    for (const tmp of new Set([full, r, c0])) if (tmp !== t) tmp.dispose();
    return { t: c, stride: shared ? 0 : shape.at(-2)! * shape.at(-1)! };
  };
  const pa = prep(a, as), pb = prep(b, bs);
  try {
    const aligned = K % 4 === 0 && N % 4 === 0 && pa.t.offset % 4 === 0 && pb.t.offset % 4 === 0 &&
      dtype === "f32";
    if (v === "v2" && version === "auto" && aligned) v = "v3";
    if (v === "v3" && !aligned) {
      out.dispose();
      throw new Error(
        `matmul v3: needs K, N and offsets divisible by 4 and f32: a is ${fmt(a.shape)} ${a.dtype}, ` +
          `b is ${fmt(b.shape)} ${b.dtype}`,
      );
    }
    if (device === "cpu") {
      matmulRef(
        pa.t.storage.data!,
        pa.t.offset,
        pa.stride,
        pb.t.storage.data!,
        pb.t.offset,
        pb.stride,
        out.storage.data!,
        batch,
        M,
        N,
        K,
      );
      return out;
    }
    const groups = v === "v1"
      ? [Math.ceil(N / 8), Math.ceil(M / 8)]
      : [Math.ceil(N / TILE), Math.ceil(M / TILE)];
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

registerOps({ matmul });
