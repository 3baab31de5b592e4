/**
 * 2-D convolution (NCHW, PyTorch's conventions): stride, zero padding, dilation, groups (depthwise
 * included) and bias, differentiable on both backends.
 *
 * How: im2col rearranges each group's receptive fields into a matrix cols (groups, N OH OW, Cg KH KW)
 * (`im2colSource`, one WGSL pass with the geometry as constants; loops on the cpu), then one batched matmul by the weights (O / groups,
 * Cg KH KW) per group gives the output, moved to NCHW by one copy. On WebGPU the matmul is seqlab's texture
 * matmul (`ops/core/matmul_tex.ts`, ~50 GFLOP/s on lavapipe). The backward is the composition's: the matmul's
 * (dcols = dy W, dW = dy^T cols) and col2im (`col2imSource`), the adjoint of im2col, as a gather with a
 * fixed summation order (deterministic, no atomics). Large batches run in chunks of images so that cols
 * stays under {@link conv2dLimits} bytes. A 1x1 convolution (stride 1, no padding, one group) skips im2col:
 * it is W (O, C) @ x (N, C, H W). The float64 oracle is `conv2dRef` (direct loops).
 * @module
 */

import { noGrad, record } from "../../runtime/autograd.ts";
import { gpu } from "../../runtime/device.ts";
import { isFloat } from "../../runtime/dtype.ts";
import { fmt } from "../../runtime/shape.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { type GpuTexture, grid, MAX_LOOP } from "../../runtime/webgpu.ts";
import { add, contiguous, mul } from "../core/elementwise.ts";
import { concat } from "../core/layout.ts";
import { sum } from "../core/reduce.ts";
import { matmul } from "../core/matmul.ts";
import { empty, Uniforms } from "../core/util.ts";
import { ConvError, pair2, pass, strided4 } from "./common.ts";
import { col2imRef, type ConvGeometry, im2colRef } from "./conv2d_ref.ts";

export { ConvError };
import {
  col2imSource,
  CONV_WG,
  convDirectSource,
  convDirectV4Source,
  DIRECT_MAX_TAPS,
  geometryKey,
  im2colSource,
  TEX_ROW,
} from "./conv2d_wgsl.ts";

export type { ConvGeometry } from "./conv2d_ref.ts";

/**
 * Bytes of the im2col matrix per chunk of images (larger batches run in chunks); a knob for tests.
 *
 * @example
 * ```ts
 * import { conv2dLimits } from "seqlab";
 * console.log(conv2dLimits.im2colBytes); // 33554432
 * ```
 */
export const conv2dLimits: { im2colBytes: number } = { im2colBytes: 32 * 2 ** 20 };

/** Options of {@link conv2d}. */
export interface Conv2dOptions {
  /** (O), added to every output channel; null or absent: none. */
  bias?: Tensor | null;
  /** Step between output positions, one number or [h, w] (default 1). */
  stride?: number | readonly [number, number];
  /** Zeros added on each side, one number or [h, w] (default 0). */
  padding?: number | readonly [number, number];
  /** Spacing of the kernel's taps, one number or [h, w] (default 1). */
  dilation?: number | readonly [number, number];
  /** Channel groups: C and O must be multiples; groups = C is depthwise (default 1). */
  groups?: number;
  /**
   * WebGPU version: "im2col" (im2col v2 + the texture matmul), "direct" (one output channel per group and at
   * most DIRECT_MAX_TAPS = 64 taps (C / groups) KH KW, e.g. depthwise: direct v4, x read through a texture,
   * for f32 within the texture limits, else direct v2; "direct v2" forces v2), "auto" (default): direct where
   * it applies and there is more than one group, else im2col. Checked on every backend; the cpu runs the
   * im2col composition either way.
   */
  version?: "auto" | "im2col" | "direct" | "direct v2";
}

/**
 * The geometry of `conv2d(x, w, opts)` from the shapes, checked: x (N, C, H, W), w (O, C / groups, KH, KW),
 * groups dividing C and O, a kernel no larger than the padded input, and positive output sizes. Throws a
 * {@link ConvError} naming what is wrong.
 *
 * @example
 * ```ts
 * import { conv2dGeometry } from "seqlab";
 * const g = conv2dGeometry([2, 3, 28, 28], [8, 3, 3, 3], { stride: 2, padding: 1 });
 * console.log(g.OH, g.OW); // 14 14
 * ```
 */
export function conv2dGeometry(
  xShape: readonly number[],
  wShape: readonly number[],
  opts: Omit<Conv2dOptions, "bias"> = {},
  op = "conv2d",
): ConvGeometry {
  if (xShape.length !== 4) throw new ConvError(`${op}: x must be (N, C, H, W), got ${fmt(xShape)}`);
  if (wShape.length !== 4) {
    throw new ConvError(`${op}: the weight must be (O, C / groups, KH, KW), got ${fmt(wShape)}`);
  }
  const [N, C, H, W] = xShape, [O, Cw, KH, KW] = wShape;
  const groups = opts.groups ?? 1;
  if (!Number.isInteger(groups) || groups < 1) {
    throw new ConvError(`${op}: groups must be a positive integer, got ${groups}`);
  }
  if (C % groups !== 0 || O % groups !== 0) {
    throw new ConvError(
      `${op}: groups = ${groups} must divide the input channels (${C}) and the output channels (${O})`,
    );
  }
  if (Cw !== C / groups) {
    throw new ConvError(
      `${op}: the weight ${fmt(wShape)} expects ${Cw * groups} input channels (${Cw} per group, ${groups} ` +
        `group${groups > 1 ? "s" : ""}) but x ${fmt(xShape)} has ${C}`,
    );
  }
  if (KH < 1 || KW < 1 || O < 1) {
    throw new ConvError(`${op}: the weight ${fmt(wShape)} has an empty dimension`);
  }
  const [sh, sw] = pair2(op, "stride", opts.stride, 1, 1);
  const [ph, pw] = pair2(op, "padding", opts.padding, 0, 0);
  const [dh, dw] = pair2(op, "dilation", opts.dilation, 1, 1);
  const eh = dh * (KH - 1) + 1, ew = dw * (KW - 1) + 1; // the kernel's extent
  if (eh > H + 2 * ph || ew > W + 2 * pw) {
    throw new ConvError(
      `${op}: the kernel ${KH}x${KW} (dilation ${dh}x${dw}: extent ${eh}x${ew}) is larger than the padded ` +
        `input ${H + 2 * ph}x${W + 2 * pw} (x ${fmt(xShape)}, padding ${ph}x${pw})`,
    );
  }
  if (KH * KW > MAX_LOOP) throw new ConvError(`${op}: a kernel of ${KH * KW} taps is over ${MAX_LOOP}`);
  const OH = Math.floor((H + 2 * ph - eh) / sh) + 1, OW = Math.floor((W + 2 * pw - ew) / sw) + 1;
  return { N, C, H, W, O, KH, KW, sh, sw, ph, pw, dh, dw, groups, OH, OW };
}

/**
 * The im2col matrix of x (N, C, H, W) for geometry `g`: (groups, N OH OW, Cg KH KW), row (n, i, j) holding
 * the receptive field of output position (i, j) of image n, column (c, kh, kw); 0 in the padding.
 * Differentiable (the backward is col2im, the adjoint).
 *
 * @example
 * ```ts
 * import { conv2dGeometry, im2col, tensor } from "seqlab";
 * const x = tensor([1, 2, 3, 4], { shape: [1, 1, 2, 2] });
 * const cols = im2col(x, conv2dGeometry(x.shape, [1, 1, 2, 2], { padding: 0 }));
 * console.log(cols.shape, await cols.toArray()); // [1, 1, 4] [1, 2, 3, 4]
 * ```
 */
export function im2col(x: Tensor, g: ConvGeometry): Tensor {
  x.check("im2col");
  if (!isFloat(x.dtype)) throw new ConvError(`im2col: x must be a float tensor, got ${x.describe()}`);
  if (x.shape.join() !== [g.N, g.C, g.H, g.W].join()) {
    throw new ConvError(
      `im2col: x ${fmt(x.shape)} does not match the geometry (${g.N}, ${g.C}, ${g.H}, ${g.W})`,
    );
  }
  const Cg = g.C / g.groups, M = g.N * g.OH * g.OW, K = Cg * g.KH * g.KW;
  const cols = pass(
    "im2col",
    x,
    [g.groups, M, K],
    () => {
      const out = new Float64Array(g.groups * M * K);
      im2colRef(g, strided4(x), out);
      return out;
    },
    `v2|${x.dtype}|${geometryKey(g)}`,
    () => im2colSource(x.dtype, g),
    { threads: g.groups * M * Cg }, // one per (group, row, channel)
  );
  return record("im2col", cols, [x], [], (gc) => [col2im(gc, g)]);
}

/** col2im: dx (N, C, H, W) of the cols gradient (groups, N OH OW, Cg KH KW), any strides. */
function col2im(gc: Tensor, g: ConvGeometry): Tensor {
  return pass(
    "im2col backward",
    gc,
    [g.N, g.C, g.H, g.W],
    () => {
      const out = new Float64Array(g.N * g.C * g.H * g.W);
      col2imRef(g, { data: gc.storage.data!, off: gc.offset, s: gc.strides }, out);
      return out;
    },
    `col2im v2|${gc.dtype}|${geometryKey(g)}`,
    () => col2imSource(gc.dtype, g),
  );
}

/**
 * 2-D convolution, NCHW: x (N, C, H, W), w (O, C / groups, KH, KW) -> (N, O, OH, OW) with OH =
 * floor((H + 2 ph - dh (KH - 1) - 1) / sh) + 1 (likewise OW), plus `bias` (O). Cross-correlation, as
 * PyTorch's `conv2d`. Differentiable in x, w and bias on both backends. Bad shapes or options throw a
 * {@link ConvError}.
 *
 * @example
 * ```ts
 * import { conv2d, ones } from "seqlab";
 * const y = conv2d(ones([1, 1, 4, 4]), ones([2, 1, 3, 3]), { padding: 1, bias: ones([2]) });
 * console.log(y.shape, (await y.toArray()).slice(0, 4)); // [1, 2, 4, 4] [5, 7, 7, 5]
 * ```
 */
export function conv2d(x: Tensor, w: Tensor, opts: Conv2dOptions = {}): Tensor {
  x.check("conv2d");
  w.check("conv2d");
  const g = conv2dGeometry(x.shape, w.shape, opts);
  const bias = opts.bias ?? null;
  if (bias && (bias.rank !== 1 || bias.shape[0] !== g.O)) {
    throw new ConvError(`conv2d: bias must be (${g.O}), one per output channel, got ${bias.describe()}`);
  }
  for (const t of [w, ...(bias ? [bias] : [])]) {
    if (t.device !== x.device) {
      throw new ConvError(`conv2d: x is on ${x.device} but ${t.describe()} is on ${t.device}`);
    }
  }
  const { N, O, OH, OW, groups: G } = g;
  const Cg = g.C / G, Og = O / G, K = Cg * g.KH * g.KW, P = OH * OW;
  const version = opts.version ?? "auto";
  if (!["auto", "im2col", "direct", "direct v2"].includes(version)) {
    throw new ConvError(
      `conv2d: version must be "auto", "im2col", "direct" or "direct v2", got ${JSON.stringify(version)}`,
    );
  }
  const directFits = Og === 1 && K <= DIRECT_MAX_TAPS;
  const direct = version === "direct" || version === "direct v2";
  if (direct && !directFits) {
    throw new ConvError(
      `conv2d: version ${
        JSON.stringify(version)
      } takes one output channel per group and at most ${DIRECT_MAX_TAPS} taps ` +
        `(C / groups x KH x KW); got ${Og} output channels per group and ${K} taps`,
    );
  }
  // images per chunk: cols (G, n P, K) under the cap
  const per = Math.max(1, Math.floor(conv2dLimits.im2colBytes / Math.max(1, G * P * K * 4)));
  if (x.device === "webgpu" && (direct || (version === "auto" && directFits && G > 1))) {
    return tidy(() => {
      const y = convDirect(x, w, g, per, version === "direct v2" ? "v2" : "v4");
      return bias ? y.add(bias.reshape([1, O, 1, 1])) : y;
    });
  }
  const pointwise = G === 1 && g.KH === 1 && g.KW === 1 && g.sh === 1 && g.sw === 1 && g.ph === 0 &&
    g.pw === 0;
  if (pointwise && !direct) {
    // a 1x1 convolution is a matmul over the channels: W (O, C) @ x (N, C, H W) is NCHW already (no im2col,
    // no transposing copy)
    return tidy(() => {
      const y = matmul(w.reshape([O, g.C]), x.reshape([N, g.C, P])).reshape([N, O, OH, OW]); // (N, O, H, W)
      return bias ? y.add(bias.reshape([1, O, 1, 1])) : y;
    });
  }
  return tidy(() => {
    const wT = w.reshape([G, Og, K]).transpose(1, 2); // (G, K, Og)
    const parts: Tensor[] = [];
    for (let n0 = 0; n0 < N; n0 += per) {
      const n1 = Math.min(N, n0 + per), Nc = n1 - n0;
      const xc = N === Nc ? x : x.slice([[n0, n1]]);
      const cols = im2col(xc, { ...g, N: Nc }); // (G, Nc P, K)
      const out = matmul(cols, wT); // (G, Nc P, Og)
      // (G, Nc, P, Og) -> (Nc, G, Og, P): NCHW
      parts.push(
        out.reshape([G, Nc, P, Og]).transpose(0, 1).transpose(2, 3).contiguous().reshape([Nc, O, OH, OW]),
      );
    }
    const y = parts.length === 1 ? parts[0] : concat(parts, 0);
    return bias ? y.add(bias.reshape([1, O, 1, 1])) : y;
  });
}

/**
 * The texture direct v4 reads x from: x's buffer from element `x.offset` in rows of TEX_ROW floats, `height`
 * rows a layer; null where v4 does not apply (not f32 or not contiguous, an offset off a texel, over the
 * texture limits, or a buffer too short for the last row's whole texels).
 */
function texLayout(x: Tensor): { height: number; layers: number } | null {
  if (x.dtype !== "f32" || !x.isContiguous || x.offset % 4 !== 0 || x.size === 0) return null;
  const lim = gpu().limits;
  const rows = Math.ceil(x.size / TEX_ROW);
  const height = Math.min(rows, lim.maxTextureDimension2D);
  const layers = Math.ceil(rows / height);
  if (layers > lim.maxTextureArrayLayers) return null;
  if ((x.offset + Math.ceil(x.size / 4) * 4) * 4 > x.storage.buffer!.size) return null;
  return { height, layers };
}

/** Copies tensor t's buffer (from element t.offset) into `tex` as {@link texLayout} says: whole rows per layer, then the last row's texels. */
function copyRows(t: Tensor, tex: GpuTexture, height: number): void {
  const ctx = gpu();
  const buffer = t.storage.buffer!;
  const full = Math.floor(t.size / TEX_ROW), tail = t.size - full * TEX_ROW;
  const copy = (row: number, size: [number, number, number]) =>
    ctx.copyBufferToTexture(
      "conv2d",
      { buffer, offset: (t.offset + row * TEX_ROW) * 4, bytesPerRow: TEX_ROW * 4 },
      { texture: tex, origin: [0, row % height, Math.floor(row / height)] },
      size,
    );
  for (let r0 = 0; r0 < full; r0 += height) copy(r0, [TEX_ROW / 4, Math.min(height, full - r0), 1]);
  if (tail > 0) copy(full, [Math.ceil(tail / 4), 1, 1]);
}

/** A pooled texture holding tensor t (see {@link texLayout}). */
function texOf(t: Tensor, layout: { height: number; layers: number }): GpuTexture {
  const tex = gpu().acquireTexture(
    { width: TEX_ROW / 4, height: layout.height, layers: layout.layers },
    "conv2d",
  );
  try {
    copyRows(t, tex, layout.height);
  } catch (e) {
    tex.release();
    throw e;
  }
  return tex;
}

/**
 * direct v4 (or v2) forward (one output channel per group); its backward builds the im2col matrix in chunks
 * of `per` images: dW = sum over rows of dy cols, dx = col2im(dy w).
 */
function convDirect(x: Tensor, w: Tensor, g: ConvGeometry, per: number, want: "v2" | "v4"): Tensor {
  const { N, O, OH, OW, groups: G } = g;
  const K = (g.C / G) * g.KH * g.KW;
  const y = empty("conv2d", [N, O, OH, OW], x.dtype, "webgpu");
  const wc = contiguous(w);
  const n = N * G * OH * Math.ceil(OW / 8);
  const layout = want === "v4" && n > 0 ? texLayout(x) : null;
  const wLayout = layout ? texLayout(wc) : null;
  const textures: GpuTexture[] = [];
  try {
    if (layout && wLayout) {
      const t = texOf(x, layout);
      textures.push(t);
      const tw = texOf(wc, wLayout);
      textures.push(tw);
      gpu().run({
        name: "conv2d",
        key: `direct v4|${geometryKey(g)}|${layout.height}|${wLayout.height}`,
        source: () => convDirectV4Source(g, layout.height, wLayout.height),
        bindings: [
          { texture: t, access: "read" },
          { texture: tw, access: "read" },
          { buffer: y.storage.buffer!, access: "read_write" },
        ],
        uniforms: new Uniforms().u32(n, x.offset).build(),
        workgroups: grid(n, CONV_WG),
      });
    } else if (n > 0) {
      gpu().run({
        name: "conv2d",
        key: `direct v2|${x.dtype}|${geometryKey(g)}`,
        source: () => convDirectSource(x.dtype, g),
        inputs: [x.storage.buffer!, wc.storage.buffer!],
        outputs: [y.storage.buffer!],
        uniforms: new Uniforms().u32(n, x.offset, ...x.strides).build(),
        workgroups: grid(n, CONV_WG),
      });
    }
  } catch (e) {
    y.dispose();
    throw e;
  } finally {
    wc.dispose();
    for (const t of textures) t.release();
  }

  const wShape = w.shape;
  return record("conv2d", y, [x, w], [x, w], (gy, [xs, ws]) =>
    noGrad(() =>
      tidy(() => {
        const wk = ws.reshape([G, 1, K]); // (G, 1, K)
        const dxs: Tensor[] = [];
        let dw: Tensor | null = null;
        for (let n0 = 0; n0 < N; n0 += per) {
          const n1 = Math.min(N, n0 + per), Nc = n1 - n0;
          const gc = { ...g, N: Nc };
          const M = Nc * OH * OW;
          const gyc = Nc === N ? gy : gy.slice([[n0, n1]]);
          const gyg = gyc.transpose(0, 1).contiguous().reshape([G, M, 1]); // (G, M, 1)
          const cols = im2col(Nc === N ? xs : xs.slice([[n0, n1]]), gc); // (G, M, K)
          const part = sum(mul(gyg, cols), 1); // (G, K)
          dw = dw ? add(dw, part) : part;
          dxs.push(col2im(mul(gyg, wk), gc)); // (Nc, C, H, W)
        }
        return [dxs.length === 1 ? dxs[0] : concat(dxs, 0), dw!.reshape(wShape)];
      })
    ));
}
