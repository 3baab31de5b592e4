/**
 * WGSL of the 2-D pooling ops (`pool.ts`). Every shader bakes its geometry in as constants (a pipeline per
 * geometry, as conv2d's im2col v2): lavapipe splits an integer division by a runtime value into eight scalar
 * divisions, and decoding (n, c, i, j) takes several. Inputs are read through their strides (uniforms), so
 * a transposed or broadcast operand (sum's gradient) needs no copy. Sums run in f32 in a fixed order.
 *
 * Versions (numbers are never reused):
 * - max v1: one invocation per output: the max over its taps (NaN wins, ties to the first tap) and,
 *   when a gradient is wanted, the argmax as h W + w (i32) for the backward.
 * - max bwd v1: one invocation per element of dx: gathers, in tap order, the dy of every window that
 *   holds it and chose it (the saved argmax); deterministic, no atomics.
 * - avg v1: one invocation per output: the sum over its taps inside x / the divisor (count_include_pad:
 *   KH KW; else the taps inside).
 * - avg bwd v1: one invocation per element of dx: dy / divisor of every window that holds it.
 * - adaptive v1: one invocation per output: the mean of its bin. `adaptiveAvgPool2d` runs it twice
 *   (columns, then rows: the mean is separable) when a bin's area is over MAX_LOOP (global pooling of a
 *   large image).
 * - adaptive bwd v1: one invocation per element of dx: dy / area of every bin that holds it (rows
 *   floor(ih OH / H) .. ceil((ih + 1) OH / H) - 1, likewise columns).
 * @module
 */

import { type DType, wgslType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl, WGSL_MATH } from "../core/util.ts";
import type { AdaptiveGeometry, PoolGeometry } from "./pool_ref.ts";
import { VISION_WG } from "./common.ts";

/** Invocations per workgroup of the pooling shaders. */
export const POOL_WG = VISION_WG;

function consts(values: Record<string, number>): string {
  return Object.entries(values).map(([n, v]) => `const ${n} = ${v}i;`).join("\n");
}

const poolConsts = (g: PoolGeometry) =>
  consts({
    N: g.N,
    C: g.C,
    H: g.H,
    W: g.W,
    KH: g.KH,
    KW: g.KW,
    SH: g.sh,
    SW: g.sw,
    PH: g.ph,
    PW: g.pw,
    DH: g.dh,
    DW: g.dw,
    OH: g.OH,
    OW: g.OW,
  });

const adaptiveConsts = (g: AdaptiveGeometry) =>
  consts({ N: g.N, C: g.C, H: g.H, W: g.W, OH: g.OH, OW: g.OW });

/** The pipeline key of a window pooling's geometry (the shaders bake it in). */
export function poolKey(g: PoolGeometry): string {
  return [g.N, g.C, g.H, g.W, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw].join(",");
}

/** The pipeline key of an adaptive pooling's geometry. */
export function adaptiveKey(g: AdaptiveGeometry): string {
  return [g.N, g.C, g.H, g.W, g.OH, g.OW].join(",");
}

// the prelude of every shader: uniforms [total, offset, 4 strides] of the strided operand A
function prelude(dtype: DType, version: string, body: string[]): string {
  return `// ${version}
${enables(dtype)}${uniformDecl(6)}
${body.join("\n")}
${WGSL_MATH}`;
}

const strided = `  if (gid >= U(0u)) { return; }
  let so = i32(U(1u)); let s0 = i32(U(2u)); let s1 = i32(U(3u)); let s2 = i32(U(4u)); let s3 = i32(U(5u));
  let id = i32(gid);`;

/** Decodes an output index (n, c, i, j) of (N, C, OH, OW). */
const outIndex =
  `  let j = id % OW; let r1 = id / OW; let i = r1 % OH; let r2 = r1 / OH; let c = r2 % C; let n = r2 / C;`;

/** Decodes an input index (n, c, ih, iw) of (N, C, H, W). */
const inIndex =
  `  let iw = id % W; let r1 = id / W; let ih = r1 % H; let r2 = r1 / H; let c = r2 % C; let n = r2 / C;`;

/**
 * max v1. Uniforms: [outputs, xOff, x strides]. Bindings: X (strided), Y (contiguous (N, C, OH, OW)) and,
 * with `withIdx`, IDX (i32, same shape).
 */
export function maxPoolSource(dtype: DType, g: PoolGeometry, withIdx: boolean): string {
  const T = wgslType(dtype);
  return `${
    prelude(dtype, "maxPool2d v1", [
      binding(1, "X", dtype),
      binding(2, "Y", dtype, true),
      ...(withIdx ? ["@group(0) @binding(3) var<storage, read_write> IDX: array<i32>;"] : []),
    ])
  }
${poolConsts(g)}
${flatId(POOL_WG)}
${strided}
${outIndex}
  let xb = so + n * s0 + c * s1;
  var m = -inf();
  var best = -1i;
  for (var kh = 0i; kh < KH; kh++) {
    let ih = i * SH - PH + kh * DH;
    if (ih < 0 || ih >= H) { continue; }
    for (var kw = 0i; kw < KW; kw++) {
      let iw = j * SW - PW + kw * DW;
      if (iw < 0 || iw >= W) { continue; }
      let v = f32(X[xb + ih * s2 + iw * s3]);
      if (best < 0 || v > m || (is_nan(v) && !is_nan(m))) { m = v; best = ih * W + iw; }
    }
  }
  Y[gid] = ${T}(m);
  ${withIdx ? "IDX[gid] = best;" : ""}
}`;
}

/**
 * max bwd v1. Uniforms: [inputs, dyOff, dy strides]. Bindings: DY (strided (N, C, OH, OW)), IDX (i32,
 * contiguous), DX (contiguous (N, C, H, W)).
 */
export function maxPoolBackwardSource(dtype: DType, g: PoolGeometry): string {
  const T = wgslType(dtype);
  return `${
    prelude(dtype, "maxPool2d bwd v1", [
      binding(1, "DY", dtype),
      "@group(0) @binding(2) var<storage, read> IDX: array<i32>;",
      binding(3, "DX", dtype, true),
    ])
  }
${poolConsts(g)}
${flatId(POOL_WG)}
${strided}
${inIndex}
  let me = ih * W + iw;
  let ob = (n * C + c) * OH * OW;
  let gb = so + n * s0 + c * s1;
  var acc = 0.0;
  for (var kh = 0i; kh < KH; kh++) {
    let ti = ih + PH - kh * DH;
    if (ti < 0 || ti % SH != 0) { continue; }
    let i = ti / SH;
    if (i >= OH) { continue; }
    for (var kw = 0i; kw < KW; kw++) {
      let tj = iw + PW - kw * DW;
      if (tj < 0 || tj % SW != 0) { continue; }
      let j = tj / SW;
      if (j >= OW) { continue; }
      if (IDX[ob + i * OW + j] == me) { acc += f32(DY[gb + i * s2 + j * s3]); }
    }
  }
  DX[gid] = ${T}(acc);
}`;
}

// WGSL: the divisor of window (i, j), as avgPoolDivisor in pool_ref.ts
const divisor = (include: boolean) =>
  include
    ? `fn divisor(i: i32, j: i32) -> f32 { return f32(KH * KW); }`
    : `fn divisor(i: i32, j: i32) -> f32 {
  let h0 = i * SH - PH; let w0 = j * SW - PW;
  return f32((min(h0 + KH, H) - max(h0, 0)) * (min(w0 + KW, W) - max(w0, 0)));
}`;

/** avg v1. Uniforms: [outputs, xOff, x strides]. Bindings: X (strided), Y (contiguous (N, C, OH, OW)). */
export function avgPoolSource(dtype: DType, g: PoolGeometry, countIncludePad: boolean): string {
  const T = wgslType(dtype);
  return `${prelude(dtype, "avgPool2d v1", [binding(1, "X", dtype), binding(2, "Y", dtype, true)])}
${poolConsts(g)}
${divisor(countIncludePad)}
${flatId(POOL_WG)}
${strided}
${outIndex}
  let xb = so + n * s0 + c * s1;
  var acc = 0.0;
  for (var kh = 0i; kh < KH; kh++) {
    let ih = i * SH - PH + kh;
    if (ih < 0 || ih >= H) { continue; }
    for (var kw = 0i; kw < KW; kw++) {
      let iw = j * SW - PW + kw;
      if (iw >= 0 && iw < W) { acc += f32(X[xb + ih * s2 + iw * s3]); }
    }
  }
  Y[gid] = ${T}(acc / divisor(i, j));
}`;
}

/** avg bwd v1. Uniforms: [inputs, dyOff, dy strides]. Bindings: DY (strided), DX (contiguous (N, C, H, W)). */
export function avgPoolBackwardSource(dtype: DType, g: PoolGeometry, countIncludePad: boolean): string {
  const T = wgslType(dtype);
  return `${prelude(dtype, "avgPool2d bwd v1", [binding(1, "DY", dtype), binding(2, "DX", dtype, true)])}
${poolConsts(g)}
${divisor(countIncludePad)}
${flatId(POOL_WG)}
${strided}
${inIndex}
  let gb = so + n * s0 + c * s1;
  var acc = 0.0;
  for (var kh = 0i; kh < KH; kh++) {
    let ti = ih + PH - kh;
    if (ti < 0 || ti % SH != 0) { continue; }
    let i = ti / SH;
    if (i >= OH) { continue; }
    for (var kw = 0i; kw < KW; kw++) {
      let tj = iw + PW - kw;
      if (tj < 0 || tj % SW != 0) { continue; }
      let j = tj / SW;
      if (j >= OW) { continue; }
      acc += f32(DY[gb + i * s2 + j * s3]) / divisor(i, j);
    }
  }
  DX[gid] = ${T}(acc);
}`;
}

/** adaptive v1. Uniforms: [outputs, xOff, x strides]. Bindings: X (strided), Y (contiguous (N, C, OH, OW)). */
export function adaptiveAvgSource(dtype: DType, g: AdaptiveGeometry): string {
  const T = wgslType(dtype);
  return `${prelude(dtype, "adaptiveAvgPool2d v1", [binding(1, "X", dtype), binding(2, "Y", dtype, true)])}
${adaptiveConsts(g)}
${flatId(POOL_WG)}
${strided}
${outIndex}
  let h0 = (i * H) / OH; let h1 = ((i + 1) * H + OH - 1) / OH;
  let w0 = (j * W) / OW; let w1 = ((j + 1) * W + OW - 1) / OW;
  let xb = so + n * s0 + c * s1;
  var acc = 0.0;
  for (var h = h0; h < h1; h++) {
    for (var w = w0; w < w1; w++) { acc += f32(X[xb + h * s2 + w * s3]); }
  }
  Y[gid] = ${T}(acc / f32((h1 - h0) * (w1 - w0)));
}`;
}

/** adaptive bwd v1. Uniforms: [inputs, dyOff, dy strides]. Bindings: DY (strided), DX (contiguous). */
export function adaptiveAvgBackwardSource(dtype: DType, g: AdaptiveGeometry): string {
  const T = wgslType(dtype);
  return `${
    prelude(dtype, "adaptiveAvgPool2d bwd v1", [binding(1, "DY", dtype), binding(2, "DX", dtype, true)])
  }
${adaptiveConsts(g)}
${flatId(POOL_WG)}
${strided}
${inIndex}
  let gb = so + n * s0 + c * s1;
  let i0 = (ih * OH) / H; let i1 = ((ih + 1) * OH + H - 1) / H;
  let j0 = (iw * OW) / W; let j1 = ((iw + 1) * OW + W - 1) / W;
  var acc = 0.0;
  for (var i = i0; i < i1; i++) {
    let h0 = (i * H) / OH; let h1 = ((i + 1) * H + OH - 1) / OH;
    for (var j = j0; j < j1; j++) {
      let w0 = (j * W) / OW; let w1 = ((j + 1) * W + OW - 1) / OW;
      acc += f32(DY[gb + i * s2 + j * s3]) / f32((h1 - h0) * (w1 - w0));
    }
  }
  DX[gid] = ${T}(acc);
}`;
}
