/**
 * 2-D pooling (NCHW, PyTorch's conventions, floor mode): {@link maxPool2d} (stride, -inf padding,
 * dilation; the backward sends each gradient to its window's argmax, ties to the first tap),
 * {@link avgPool2d} (count_include_pad on or off) and {@link adaptiveAvgPool2d} (PyTorch's bins),
 * differentiable on both backends. One WGSL pass per op and one per backward (`pool_wgsl.ts`: the backward
 * passes gather per input element, deterministic, no atomics); the cpu path and the oracle are the float64
 * loops in `pool_ref.ts`. Bad input throws a {@link ConvError}.
 * @module
 */

import { isGradEnabled, record } from "../../runtime/autograd.ts";
import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { MAX_LOOP } from "../../runtime/webgpu.ts";
import { empty } from "../core/util.ts";
import { checkImage, ConvError, pair2, pass, type Size2, strided4 } from "./common.ts";

export { checkImage, ConvError, pair2, type Size2, strided4 };
import {
  adaptiveAvgPool2dBackwardRef,
  adaptiveAvgPool2dRef,
  type AdaptiveGeometry,
  avgPool2dBackwardRef,
  avgPool2dRef,
  maxPool2dBackwardRef,
  maxPool2dRef,
  type PoolGeometry,
} from "./pool_ref.ts";
import {
  adaptiveAvgBackwardSource,
  adaptiveAvgSource,
  adaptiveKey,
  avgPoolBackwardSource,
  avgPoolSource,
  maxPoolBackwardSource,
  maxPoolSource,
  poolKey,
} from "./pool_wgsl.ts";

export type { AdaptiveGeometry, PoolGeometry } from "./pool_ref.ts";

/** Options of {@link maxPool2d}. */
export interface MaxPool2dOptions {
  /** Step between windows, one number or [h, w] (default: the kernel). */
  stride?: Size2;
  /** -inf added on each side, one number or [h, w], at most half the kernel (default 0). */
  padding?: Size2;
  /** Spacing of the window's taps, one number or [h, w] (default 1). */
  dilation?: Size2;
}

/** Options of {@link avgPool2d}. */
export interface AvgPool2dOptions {
  /** Step between windows, one number or [h, w] (default: the kernel). */
  stride?: Size2;
  /** Zeros added on each side, one number or [h, w], at most half the kernel (default 0). */
  padding?: Size2;
  /** Divide by KH KW (true, PyTorch's default) or by the number of taps inside the input (false). */
  countIncludePad?: boolean;
}

/**
 * The geometry of a window pooling of x (N, C, H, W) under a KH x KW kernel, checked: stride (default
 * the kernel), padding at most half the kernel (as PyTorch requires), dilation, and a kernel extent no
 * larger than the padded input. Throws a {@link ConvError} naming what is wrong.
 *
 * @example
 * ```ts
 * import { poolGeometry } from "seqlab";
 * const g = poolGeometry("maxPool2d", [8, 64, 112, 112], 3, { stride: 2, padding: 1 });
 * console.log(g.OH, g.OW); // 56 56
 * ```
 */
export function poolGeometry(
  op: string,
  xShape: readonly number[],
  kernel: Size2,
  opts: MaxPool2dOptions = {},
): PoolGeometry {
  if (xShape.length !== 4) throw new ConvError(`${op}: x must be (N, C, H, W), got ${fmt(xShape)}`);
  const [N, C, H, W] = xShape;
  const [KH, KW] = pair2(op, "kernel", kernel, 1, 1);
  const [sh, sw] = pair2(op, "stride", opts.stride, [KH, KW], 1);
  const [ph, pw] = pair2(op, "padding", opts.padding, 0, 0);
  const [dh, dw] = pair2(op, "dilation", opts.dilation, 1, 1);
  if (2 * ph > KH || 2 * pw > KW) {
    throw new ConvError(
      `${op}: padding ${ph}x${pw} is more than half the kernel ${KH}x${KW} (PyTorch refuses it: a window ` +
        `could hold padding only)`,
    );
  }
  const eh = dh * (KH - 1) + 1, ew = dw * (KW - 1) + 1;
  if (eh > H + 2 * ph || ew > W + 2 * pw) {
    throw new ConvError(
      `${op}: the kernel ${KH}x${KW} (dilation ${dh}x${dw}: extent ${eh}x${ew}) is larger than the padded ` +
        `input ${H + 2 * ph}x${W + 2 * pw} (x ${fmt(xShape)}, padding ${ph}x${pw})`,
    );
  }
  if (KH * KW > MAX_LOOP) throw new ConvError(`${op}: a kernel of ${KH * KW} taps is over ${MAX_LOOP}`);
  const OH = Math.floor((H + 2 * ph - eh) / sh) + 1, OW = Math.floor((W + 2 * pw - ew) / sw) + 1;
  return { N, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW };
}

/**
 * 2-D max pooling, NCHW: x (N, C, H, W) -> (N, C, OH, OW), OH = floor((H + 2 ph - dh (KH - 1) - 1) / sh) +
 * 1 (likewise OW), the padding -inf. A NaN in a window wins (propagates). Differentiable on both backends:
 * each output's gradient goes to its window's argmax (ties to the first tap in row-major order).
 * Bad shapes or options throw a {@link ConvError}.
 *
 * @example
 * ```ts
 * import { maxPool2d, tensor } from "seqlab";
 * const x = tensor([1, 5, 2, 0, 3, 4, 8, 7, 6, 1, 0, 2, 9, 3, 4, 1], { shape: [1, 1, 4, 4] });
 * const y = maxPool2d(x, 2); // 2x2 windows, stride 2
 * console.log(y.shape, await y.toArray()); // [1, 1, 2, 2] [5, 8, 9, 4]
 * ```
 */
export function maxPool2d(x: Tensor, kernel: Size2, opts: MaxPool2dOptions = {}): Tensor {
  const op = "maxPool2d";
  checkImage(op, x);
  const g = poolGeometry(op, x.shape, kernel, opts);
  const shape = [g.N, g.C, g.OH, g.OW];
  const withIdx = isGradEnabled() && x.requiresGrad;
  const idx = withIdx ? empty(op, shape, "i32", x.device) : null;
  let y: Tensor;
  try {
    y = pass(
      op,
      x,
      shape,
      () => {
        const r = maxPool2dRef(g, strided4(x));
        if (idx) idx.storage.data!.set(r.idx);
        return r.y;
      },
      `v1|${x.dtype}|${withIdx}|${poolKey(g)}`,
      () => maxPoolSource(x.dtype, g, withIdx),
      {
        outputs: idx ? [idx] : [],
      },
    );
  } catch (e) {
    idx?.dispose();
    throw e;
  }
  if (!idx) return y;
  const out = record(op, y, [x], [idx], (gy, [ix]) => [
    pass(
      `${op} backward`,
      gy,
      [g.N, g.C, g.H, g.W],
      () => maxPool2dBackwardRef(g, ix.storage.data!, strided4(gy)),
      `bwd v1|${gy.dtype}|${poolKey(g)}`,
      () => maxPoolBackwardSource(gy.dtype, g),
      { inputs: [ix] },
    ),
  ]);
  idx.dispose(); // the graph keeps its own handle
  return out;
}

/**
 * 2-D average pooling, NCHW: x (N, C, H, W) -> (N, C, OH, OW), OH = floor((H + 2 ph - KH) / sh) + 1
 * (likewise OW), zero padding; each window's sum is divided by KH KW (`countIncludePad`, the default, as
 * PyTorch's) or by the number of its taps inside x. Differentiable on both backends. Bad shapes or
 * options throw a {@link ConvError}.
 *
 * @example
 * ```ts
 * import { avgPool2d, ones } from "seqlab";
 * const y = avgPool2d(ones([1, 1, 3, 3]), 3, { stride: 1, padding: 1 });
 * console.log((await y.toArray())[0]); // 0.4444444 (4 ones / 9 taps)
 * const z = avgPool2d(ones([1, 1, 3, 3]), 3, { stride: 1, padding: 1, countIncludePad: false });
 * console.log((await z.toArray())[0]); // 1
 * ```
 */
export function avgPool2d(x: Tensor, kernel: Size2, opts: AvgPool2dOptions = {}): Tensor {
  const op = "avgPool2d";
  checkImage(op, x);
  const g = poolGeometry(op, x.shape, kernel, { stride: opts.stride, padding: opts.padding });
  const inc = opts.countIncludePad ?? true;
  const y = pass(
    op,
    x,
    [g.N, g.C, g.OH, g.OW],
    () => avgPool2dRef(g, strided4(x), inc),
    `v1|${x.dtype}|${inc}|${poolKey(g)}`,
    () => avgPoolSource(x.dtype, g, inc),
  );
  return record(op, y, [x], [], (gy) => [
    pass(
      `${op} backward`,
      gy,
      [g.N, g.C, g.H, g.W],
      () => avgPool2dBackwardRef(g, strided4(gy), inc),
      `bwd v1|${gy.dtype}|${inc}|${poolKey(g)}`,
      () => avgPoolBackwardSource(gy.dtype, g, inc),
    ),
  ]);
}

/** One adaptive pass (either direction needs a bin area, or a fan-in, of at most MAX_LOOP). */
function adaptivePass(x: Tensor, g: AdaptiveGeometry): Tensor {
  const op = "adaptiveAvgPool2d";
  const y = pass(
    op,
    x,
    [g.N, g.C, g.OH, g.OW],
    () => adaptiveAvgPool2dRef(g, strided4(x)),
    `v1|${x.dtype}|${adaptiveKey(g)}`,
    () => adaptiveAvgSource(x.dtype, g),
  );
  return record(op, y, [x], [], (gy) => [
    pass(
      `${op} backward`,
      gy,
      [g.N, g.C, g.H, g.W],
      () => adaptiveAvgPool2dBackwardRef(g, strided4(gy)),
      `bwd v1|${gy.dtype}|${adaptiveKey(g)}`,
      () => adaptiveAvgBackwardSource(gy.dtype, g),
    ),
  ]);
}

/** The most entries of one adaptive bin along a dimension: ceil(size / out) + 1 at most. */
const binSpan = (size: number, out: number) => Math.ceil(size / out) + (size % out === 0 ? 0 : 1);

/**
 * Adaptive 2-D average pooling, NCHW: x (N, C, H, W) -> (N, C, OH, OW), output (i, j) the mean of input
 * rows floor(i H / OH) .. ceil((i + 1) H / OH) - 1 and the same bins of columns (PyTorch's bins; they
 * overlap when OH does not divide H, and OH > H repeats rows). `outputSize` is one number or [OH, OW];
 * 1 is global average pooling. Differentiable on both backends. Where a bin holds more than MAX_LOOP
 * entries it runs as two passes (columns, then rows), as the mean is separable. Bad input throws a
 * {@link ConvError}.
 *
 * @example
 * ```ts
 * import { adaptiveAvgPool2d, arange } from "seqlab";
 * const x = arange(0, 10).reshape([1, 1, 2, 5]);
 * const y = adaptiveAvgPool2d(x, [1, 3]); // column bins [0, 2), [1, 4), [3, 5)
 * console.log(await y.toArray()); // [3, 4.5, 6]
 * ```
 */
export function adaptiveAvgPool2d(x: Tensor, outputSize: Size2): Tensor {
  const op = "adaptiveAvgPool2d";
  checkImage(op, x);
  const [OH, OW] = pair2(op, "outputSize", outputSize, 1, 1);
  const [N, C, H, W] = x.shape;
  if (H < 1 || W < 1) throw new ConvError(`${op}: x ${fmt(x.shape)} has an empty plane: no bin to average`);
  const spanH = binSpan(H, OH), spanW = binSpan(W, OW);
  const fanH = binSpan(OH, H), fanW = binSpan(OW, W); // outputs reading one input, per dimension
  if (Math.max(spanH, spanW, fanH * fanW) > MAX_LOOP) {
    throw new ConvError(
      `${op}: x ${fmt(x.shape)} to ${OH}x${OW}: a bin of ${Math.max(spanH, spanW)} rows or columns, or ` +
        `${fanH * fanW} outputs reading one input, is over ${MAX_LOOP}`,
    );
  }
  if (spanH * spanW <= MAX_LOOP) return adaptivePass(x, { N, C, H, W, OH, OW });
  const cols = adaptivePass(x, { N, C, H, W, OH: H, OW }); // (N, C, H, OW)
  const y = adaptivePass(cols, { N, C, H, W: OW, OH, OW }); // (N, C, OH, OW)
  cols.dispose();
  return y;
}
