/**
 * Reductions along axes (sum, mean, max, min, argmax) with keepdims, and cumsum.
 * @module
 */

import { type DType, isFloat } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { fmt, normAxis, numel } from "../../runtime/shape.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { grid, MAX_LOOP } from "../../runtime/webgpu.ts";
import { record } from "../../runtime/autograd.ts";
import { registerOps } from "../../runtime/tensor_ops.ts";
import { add, contiguous, div, eq, mul, ne, sub, where } from "./elementwise.ts";
import { arange } from "./creation.ts";
import { cumsumRef, type ReduceKind, reduceRef } from "./reduce_ref.ts";
import { cumsumSource, RED_WG, reduceSource } from "./reduce_wgsl.ts";
import { disposeOnThrow, empty, Uniforms } from "./util.ts";

/** Axis argument: one axis, several, or all (undefined/null). */
export type Axes = number | readonly number[] | null | undefined;

/** The axes an Axes argument names, normalised and sorted. */
function axesList(op: string, x: Tensor, axes: Axes): number[] {
  if (x.rank === 0) return [];
  const list = axes === undefined || axes === null
    ? [...Array(x.rank).keys()]
    : (typeof axes === "number" ? [axes] : [...axes]).map((a) => normAxis(op, a, x.rank));
  return [...new Set(list)].sort((a, b) => a - b);
}

/** Records the backward of sum/mean/max/min: the gradient spreads back over the reduced axes. */
function recordReduce(kind: ReduceKind, x: Tensor, out: Tensor, axes: Axes): Tensor {
  if (!isFloat(x.dtype)) return out;
  const list = axesList(kind, x, axes);
  const kshape = x.shape.map((d, i) => (list.includes(i) ? 1 : d));
  const shape = x.shape;
  const R = numel(list.map((a) => x.shape[a]));
  if (kind === "sum" || kind === "mean") {
    return record(kind, out, [x], [], (g) => {
      const spread = g.reshape(kshape).expand(shape);
      return [kind === "mean" ? mul(spread, 1 / R) : spread];
    });
  }
  // max/min: the gradient goes to the elements equal to the result, split evenly among ties
  return record(kind, out, [x], [x, out], (g, [xs, o]) => {
    const hit = eq(xs, o.reshape(kshape));
    const count = sum(hit, list, true);
    return [div(mul(g.reshape(kshape), hit), count)];
  });
}

/**
 * Sums `g` over broadcast dimensions so it has `shape`: the gradient of an implicit broadcast.
 *
 * @example
 * ```ts
 * import { ones, sumTo } from "seqlab";
 * console.log(sumTo(ones([4, 3]), [1, 3]).shape); // [1, 3]
 * ```
 */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  if (g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])) return g;
  const lead = g.rank - shape.length;
  if (lead < 0) throw new Error(`sumTo: ${g.describe()} has fewer dims than ${fmt(shape)}`);
  const axes: number[] = [];
  for (let i = 0; i < g.rank; i++) {
    if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
  }
  const summed = axes.length ? sum(g, axes, true) : g;
  const r = summed.reshape(shape);
  if (summed !== g) summed.dispose();
  return r;
}

/** Lays `x` out as contiguous (outer, R, inner) for reducing `axes`; also the result shapes. */
function plan(op: string, x: Tensor, axes: Axes, keepdims: boolean) {
  x.check(op);
  const rank = x.rank;
  const list = axesList(op, x, axes);
  const outShape = keepdims
    ? x.shape.map((d, i) => (list.includes(i) ? 1 : d))
    : x.shape.filter((_, i) => !list.includes(i));
  const R = numel(list.map((a) => x.shape[a]));
  let src: Tensor, outer: number, inner: number;
  const consecutive = list.every((a, i) => i === 0 || a === list[i - 1] + 1);
  if (list.length === 0) {
    src = contiguous(x);
    outer = x.size;
    inner = 1;
  } else if (consecutive) {
    src = contiguous(x);
    outer = numel(x.shape.slice(0, list[0]));
    inner = numel(x.shape.slice(list[list.length - 1] + 1));
  } else {
    const kept = [...Array(rank).keys()].filter((a) => !list.includes(a));
    const p = x.permute([...kept, ...list]);
    try {
      src = contiguous(p);
    } finally {
      p.dispose();
    }
    outer = numel(kept.map((a) => x.shape[a]));
    inner = 1;
  }
  return { src, outer, R, inner, outShape };
}

function reduce(kind: ReduceKind, x: Tensor, axes: Axes, keepdims: boolean): Tensor {
  const { src, outer, R, inner, outShape } = plan(kind, x, axes, keepdims);
  try {
    if (R === 0 && kind !== "sum" && kind !== "mean") {
      throw new Error(
        `${kind}: cannot reduce over an empty dimension of ${x.describe()} (axis ${String(axes)})`,
      );
    }
    const outDtype: DType = kind === "argmax"
      ? "i32"
      : kind === "mean" && !isFloat(x.dtype)
      ? "f32"
      : x.dtype;
    const v1 = R <= MAX_LOOP && (kind === "argmax" || outer * inner >= 4096 || R < 1024);
    if (x.device === "webgpu" && !v1 && kind === "argmax" && numel(outShape) > 0) {
      return argmaxLong(x, axes as number, keepdims);
    }
    const out = empty(kind, outShape, outDtype, x.device);
    if (out.size === 0) return out;
    if (x.device === "cpu") {
      reduceRef(kind, src.storage.data!, src.offset, outer, R, inner, out.storage.data!);
      return out;
    }
    const ctx = gpu();
    const pass = (
      k: ReduceKind,
      input: Tensor,
      offset: number,
      R_: number,
      chunk: number,
      C: number,
      target: Tensor,
      scale: number,
    ) =>
      ctx.run({
        name: kind,
        key: `${k}|${input.dtype}>${target.dtype}`,
        source: () => reduceSource(k, input.dtype, target.dtype),
        inputs: [input.storage.buffer!],
        outputs: [target.storage.buffer!],
        uniforms: new Uniforms().u32(outer, R_, inner, offset, chunk, C).f32(scale).padTo(8).build(),
        workgroups: grid(outer * C * inner, RED_WG),
      });
    const scale = kind === "mean" ? 1 / R : 1;
    return disposeOnThrow([out], () => {
      if (v1) {
        pass(kind, src, src.offset, R, R, 1, out, scale); // v1
        return out;
      }
      // v2: reduce C chunks of R per output into partials, then the partials. A mean sums its chunks in f32
      // (scale 1) and scales at the end.
      // enough chunks to keep each invocation's loop (and the second pass's) under MAX_LOOP
      const C = Math.min(
        MAX_LOOP,
        Math.max(
          Math.ceil(R / MAX_LOOP),
          Math.min(Math.ceil(R / 256), Math.max(1, Math.floor(65536 / (outer * inner)))),
        ),
      );
      const partial = empty(
        kind,
        [outer, C, inner],
        kind === "mean" || isFloat(x.dtype) ? "f32" : x.dtype,
        x.device,
      );
      try {
        pass(kind === "mean" ? "mean" : kind, src, src.offset, R, Math.ceil(R / C), C, partial, 1);
        pass(kind === "mean" ? "mean" : kind, partial, 0, C, C, 1, out, scale);
      } finally {
        partial.dispose();
      }
      return out;
    });
  } finally {
    src.dispose();
  }
}

/**
 * argmax over a line longer than one invocation may loop: the first index where x equals the maximum (or is
 * NaN), as a min-reduction of masked positions. Both reductions split into chunks.
 */
function argmaxLong(x: Tensor, axis: number, keepdims: boolean): Tensor {
  const a = normAxis("argmax", axis, x.rank);
  const R = x.shape[a];
  // tidy frees the temporaries, also when a step throws
  return tidy(() => {
    const m = max(x, a, true);
    const hit = add(eq(x, m), ne(x, x));
    const pos = arange(R, { dtype: "i32", device: x.device }).reshape(
      x.shape.map((_d, i) => (i === a ? R : 1)),
    );
    return min(where(hit, pos, R), a, keepdims);
  });
}

/**
 * Sum over `axis` (one, several, or all when omitted); ints stay ints (wrapping), floats accumulate
 * compensated in f32 on webgpu and in float64 on cpu.
 *
 * @example
 * ```ts
 * import { sum, tensor } from "seqlab";
 * const t = tensor([[1, 2, 3], [4, 5, 6]]);
 * console.log(await sum(t).item(), await sum(t, 1).toArray(), sum(t, 0, true).shape); // 21 [6, 15] [1, 3]
 * ```
 */
export function sum(x: Tensor, axis?: Axes, keepdims = false): Tensor {
  return recordReduce("sum", x, reduce("sum", x, axis, keepdims), axis);
}

/**
 * Mean over `axis` (all when omitted); integer inputs give f32. An empty reduction gives NaN.
 *
 * @example
 * ```ts
 * import { mean, tensor } from "seqlab";
 * console.log(await mean(tensor([[1, 2], [3, 4]]), -1).toArray()); // [1.5, 3.5]
 * ```
 */
export function mean(x: Tensor, axis?: Axes, keepdims = false): Tensor {
  return recordReduce("mean", x, reduce("mean", x, axis, keepdims), axis);
}

/**
 * Maximum over `axis` (all when omitted); NaN propagates.
 *
 * @example
 * ```ts
 * import { max, tensor } from "seqlab";
 * console.log(await max(tensor([[1, 9], [3, 4]]), 0).toArray()); // [3, 9]
 * ```
 */
export function max(x: Tensor, axis?: Axes, keepdims = false): Tensor {
  return recordReduce("max", x, reduce("max", x, axis, keepdims), axis);
}

/**
 * Minimum over `axis` (all when omitted); NaN propagates.
 *
 * @example
 * ```ts
 * import { min, tensor } from "seqlab";
 * console.log(await min(tensor([[1, 9], [3, 4]]), 1).toArray()); // [1, 3]
 * ```
 */
export function min(x: Tensor, axis?: Axes, keepdims = false): Tensor {
  return recordReduce("min", x, reduce("min", x, axis, keepdims), axis);
}

/**
 * Index (i32) of the first maximum along `axis`, or in the flattened tensor when omitted. NaN counts as
 * the maximum.
 *
 * @example
 * ```ts
 * import { argmax, tensor } from "seqlab";
 * console.log(await argmax(tensor([[1, 9], [5, 4]]), 1).toArray()); // Int32Array [1, 0]
 * ```
 */
export function argmax(x: Tensor, axis?: number | null, keepdims = false): Tensor {
  if (axis === undefined || axis === null) {
    const flat = x.check("argmax").reshape([-1]);
    try {
      const r = reduce("argmax", flat, 0, false);
      if (!keepdims) return r;
      const k = r.reshape(x.shape.map(() => 1));
      r.dispose();
      return k;
    } finally {
      flat.dispose();
    }
  }
  return reduce("argmax", x, axis, keepdims);
}

/**
 * Inclusive cumulative sum along `axis` (default the last).
 *
 * @example
 * ```ts
 * import { cumsum, tensor } from "seqlab";
 * console.log(await cumsum(tensor([1, 2, 3, 4])).toArray()); // [1, 3, 6, 10]
 * ```
 */
export function cumsum(x: Tensor, axis = -1): Tensor {
  x.check("cumsum");
  if (x.rank === 0) throw new Error(`cumsum: ${x.describe()} is a scalar; it has no axis ${axis}`);
  const a = normAxis("cumsum", axis, x.rank);
  const src = contiguous(x);
  try {
    const outer = numel(x.shape.slice(0, a)), R = x.shape[a], inner = numel(x.shape.slice(a + 1));
    const out = empty("cumsum", x.shape, x.dtype, x.device);
    // d/dx_j of sum_i<=k x_i: the reversed cumulative sum of g, written as total - cumsum + g
    const recorded = isFloat(x.dtype)
      ? record("cumsum", out, [x], [], (g) => [add(sub(sum(g, a, true), cumsum(g, a)), g)])
      : out;
    if (out.size === 0) return recorded;
    if (x.device === "cpu") {
      cumsumRef(src.storage.data!, src.offset, outer, R, inner, out.storage.data!);
      return recorded;
    }
    // slices of at most MAX_LOOP steps per dispatch; each slice continues from the last value written
    return disposeOnThrow([recorded], () => {
      for (let r0 = 0; r0 < R; r0 += MAX_LOOP) {
        gpu().run({
          name: "cumsum",
          key: x.dtype,
          source: () => cumsumSource(x.dtype),
          inputs: [src.storage.buffer!],
          outputs: [out.storage.buffer!],
          uniforms: new Uniforms().u32(outer, R, inner, src.offset, r0, Math.min(R, r0 + MAX_LOOP)).padTo(8)
            .build(),
          workgroups: grid(outer * inner, RED_WG),
        });
      }
      return recorded;
    });
  } finally {
    src.dispose();
  }
}

registerOps({ sumTo, sum, mean, max, min, argmax, cumsum });
