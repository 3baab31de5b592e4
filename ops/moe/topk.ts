/**
 * Top-k along an axis (values and i32 indices), with its backward; the router's selection in a
 * mixture-of-experts layer (`models/moe.ts`).
 * @module
 */

import { isFloat } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { record } from "../../runtime/autograd.ts";
import { fmt, normAxis, numel } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { grid, MAX_LOOP } from "../../runtime/webgpu.ts";
import { contiguous } from "../core/elementwise.ts";
import { empty, Uniforms } from "../core/util.ts";
import { topkBackwardRef, topkRef } from "./topk_ref.ts";
import { TOPK_MAX, TOPK_WG, topkBackwardSource, topkSource } from "./topk_wgsl.ts";

/**
 * Row entries per topk v1 dispatch for a given k: lavapipe's loop cap counts every trip of an
 * invocation's loops together, and an entry that enters the list shifts up to k - 1 others (an ascending
 * row of 8192 with k 16 stopped short in one dispatch), so a window holds MAX_LOOP / 2k entries.
 */
function topkChunk(k: number): number {
  return Math.floor(MAX_LOOP / (2 * k));
}

/** What {@link topk} returns. */
export interface TopK {
  /** The k largest entries along the axis, largest first (x's dtype; the axis has size k). */
  values: Tensor;
  /** Their positions along the axis (i32), same shape as `values`. */
  indices: Tensor;
}

/**
 * The `k` largest entries of `x` along `axis` (default the last), largest first, and their indices (i32).
 * Ties keep the lower index first (stable); NaN ranks above every number (as argmax, and torch.topk),
 * NaNs among themselves by index. The gradient flows through `values` to the chosen positions (0
 * elsewhere). `1 <= k <= min(size of axis, 16)` on both backends: the WebGPU shader keeps a sorted list
 * of k per row in private memory ({@link TOPK_MAX}); float inputs only.
 *
 * @example
 * ```ts
 * import { tensor, topk } from "seqlab";
 * const { values, indices } = topk(tensor([[1, 5, 3, 5], [2, 0, 9, 1]]), 2);
 * console.log(await values.toArray(), await indices.toArray()); // [5, 5, 9, 2] Int32Array [1, 3, 2, 0]
 * ```
 */
export function topk(x: Tensor, k: number, axis = -1): TopK {
  x.check("topk");
  if (!isFloat(x.dtype)) throw new Error(`topk: x must be a float tensor, got ${x.describe()}`);
  if (x.rank === 0) throw new Error(`topk: ${x.describe()} is a scalar; it has no axis ${axis}`);
  const a = normAxis("topk", axis, x.rank);
  const R = x.shape[a];
  if (!Number.isInteger(k) || k < 1 || k > R) {
    throw new Error(
      `topk: k must be an integer in [1, ${R}] (the size of axis ${a} of ${fmt(x.shape)}), got ${k}`,
    );
  }
  if (k > TOPK_MAX) {
    throw new Error(`topk: k ${k} is past the limit ${TOPK_MAX} (a sorted list of k per row); sort instead`);
  }
  const outer = numel(x.shape.slice(0, a)), inner = numel(x.shape.slice(a + 1));
  const outShape = x.shape.map((d, i) => (i === a ? k : d));
  const device = x.device;
  const values = empty("topk", outShape, x.dtype, device);
  const indices = empty("topk", outShape, "i32", device);
  let src: Tensor | null = null;
  try {
    src = contiguous(x);
    if (device === "cpu") {
      topkRef(src.storage.data!, src.offset, outer, R, inner, k, values.storage.data!, indices.storage.data!);
    } else if (outer * inner > 0) {
      const chunk = topkChunk(k);
      for (let r0 = 0; r0 < R; r0 += chunk) {
        gpu().run({
          name: "topk",
          key: `v1|${x.dtype}`,
          source: () => topkSource(x.dtype),
          inputs: [src.storage.buffer!],
          outputs: [values.storage.buffer!, indices.storage.buffer!],
          uniforms: new Uniforms().u32(outer, R, inner, k, src.offset, r0, Math.min(R, r0 + chunk))
            .build(),
          workgroups: grid(outer * inner, TOPK_WG),
        });
      }
    }
  } catch (e) {
    values.dispose();
    indices.dispose();
    throw e;
  } finally {
    src?.dispose();
  }
  const xShape = x.shape;
  record("topk", values, [x], [indices], (g, [idx]) => [topkBackward(g, idx, xShape, a)]);
  return { values, indices };
}

/** gx of x's shape: g (x's shape with axis a of size k) placed at `indices` along a, 0 elsewhere. */
function topkBackward(g: Tensor, indices: Tensor, xShape: readonly number[], a: number): Tensor {
  const k = g.shape[a], R = xShape[a];
  const outer = numel(xShape.slice(0, a)), inner = numel(xShape.slice(a + 1));
  const gx = empty("topk backward", xShape, g.dtype, g.device);
  let gc: Tensor | null = null, ic: Tensor | null = null;
  try {
    gc = contiguous(g);
    ic = contiguous(indices);
    if (g.device === "cpu") {
      topkBackwardRef(
        gc.storage.data!,
        gc.offset,
        ic.storage.data!,
        ic.offset,
        outer,
        R,
        inner,
        k,
        gx.storage.data!,
      );
    } else if (gx.size > 0) {
      gpu().run({
        name: "topk backward",
        key: `v1|${g.dtype}`,
        source: () => topkBackwardSource(g.dtype),
        inputs: [gc.storage.buffer!, ic.storage.buffer!],
        outputs: [gx.storage.buffer!],
        uniforms: new Uniforms().u32(outer, R, inner, k, gc.offset, ic.offset).build(),
        workgroups: grid(gx.size, TOPK_WG),
      });
    }
    return gx;
  } catch (e) {
    gx.dispose();
    throw e;
  } finally {
    gc?.dispose();
    ic?.dispose();
  }
}
