/**
 * Reference 2-D convolution, in plain loops accumulating in float64: the oracle for the WebGPU versions
 * in `conv2d.ts` / `conv2d_wgsl.ts`, and the im2col / col2im rearrangements the cpu path runs.
 *
 * Shapes (NCHW, PyTorch's): x (N, C, H, W), w (O, C / groups, KH, KW), bias (O), y (N, O, OH, OW) with
 * OH = floor((H + 2 ph - dh (KH - 1) - 1) / sh) + 1 (likewise OW). Group g maps input channels
 * g C/groups .. (g + 1) C/groups - 1 to output channels g O/groups .. (g + 1) O/groups - 1.
 * @module
 */

import type { TypedArray } from "../../runtime/dtype.ts";

/** The geometry of one convolution (all sizes resolved). */
export interface ConvGeometry {
  /** Images. */
  N: number;
  /** Input channels. */
  C: number;
  /** Input height. */
  H: number;
  /** Input width. */
  W: number;
  /** Output channels. */
  O: number;
  /** Kernel height. */
  KH: number;
  /** Kernel width. */
  KW: number;
  /** Stride along the height. */
  sh: number;
  /** Stride along the width. */
  sw: number;
  /** Zero padding on each side, along the height. */
  ph: number;
  /** Zero padding on each side, along the width. */
  pw: number;
  /** Dilation along the height. */
  dh: number;
  /** Dilation along the width. */
  dw: number;
  /** Channel groups (C and O multiples of it). */
  groups: number;
  /** Output height, floor((H + 2 ph - dh (KH - 1) - 1) / sh) + 1. */
  OH: number;
  /** Output width. */
  OW: number;
}

/** A strided (N, C, H, W) source: element (n, c, h, w) at off + n s[0] + c s[1] + h s[2] + w s[3]. */
export interface Strided4 {
  /** The storage. */
  data: TypedArray;
  /** Element offset of (0, 0, 0, 0). */
  off: number;
  /** Strides in elements. */
  s: readonly number[];
}

/**
 * y (N, O, OH, OW) = conv2d(x, w) + bias, direct loops in float64: y[n, o, i, j] = bias[o] + sum over c in
 * o's group, kh, kw of x[n, c, i sh - ph + kh dh, j sw - pw + kw dw] w[o, c - g Cg, kh, kw], x zero
 * outside (padding).
 */
export function conv2dRef(
  g: ConvGeometry,
  x: Strided4,
  w: Strided4,
  bias: { data: TypedArray; off: number; s: number } | null,
): Float64Array {
  const { N, C, H, W, O, KH, KW, sh, sw, ph, pw, dh, dw, groups, OH, OW } = g;
  const Cg = C / groups, Og = O / groups;
  const y = new Float64Array(N * O * OH * OW);
  for (let n = 0; n < N; n++) {
    for (let o = 0; o < O; o++) {
      const c0 = Math.floor(o / Og) * Cg;
      const b = bias ? bias.data[bias.off + o * bias.s] : 0;
      for (let i = 0; i < OH; i++) {
        for (let j = 0; j < OW; j++) {
          let acc = b;
          for (let c = 0; c < Cg; c++) {
            for (let kh = 0; kh < KH; kh++) {
              const ih = i * sh - ph + kh * dh;
              if (ih < 0 || ih >= H) continue;
              for (let kw = 0; kw < KW; kw++) {
                const iw = j * sw - pw + kw * dw;
                if (iw < 0 || iw >= W) continue;
                acc += x.data[x.off + n * x.s[0] + (c0 + c) * x.s[1] + ih * x.s[2] + iw * x.s[3]] *
                  w.data[w.off + o * w.s[0] + c * w.s[1] + kh * w.s[2] + kw * w.s[3]];
              }
            }
          }
          y[((n * O + o) * OH + i) * OW + j] = acc;
        }
      }
    }
  }
  return y;
}

/**
 * The gradients of {@link conv2dRef} for dy (N, O, OH, OW), contiguous: dx (N, C, H, W), dw (O, Cg, KH,
 * KW), db (O), each contiguous, in float64.
 */
export function conv2dBackwardRef(
  g: ConvGeometry,
  x: Strided4,
  w: Strided4,
  dy: ArrayLike<number>,
): { dx: Float64Array; dw: Float64Array; db: Float64Array } {
  const { N, C, H, W, O, KH, KW, sh, sw, ph, pw, dh, dw: dwl, groups, OH, OW } = g;
  const Cg = C / groups, Og = O / groups;
  const dx = new Float64Array(N * C * H * W), dw = new Float64Array(O * Cg * KH * KW);
  const db = new Float64Array(O);
  for (let n = 0; n < N; n++) {
    for (let o = 0; o < O; o++) {
      const c0 = Math.floor(o / Og) * Cg;
      for (let i = 0; i < OH; i++) {
        for (let j = 0; j < OW; j++) {
          const gy = dy[((n * O + o) * OH + i) * OW + j];
          db[o] += gy;
          for (let c = 0; c < Cg; c++) {
            for (let kh = 0; kh < KH; kh++) {
              const ih = i * sh - ph + kh * dh;
              if (ih < 0 || ih >= H) continue;
              for (let kw = 0; kw < KW; kw++) {
                const iw = j * sw - pw + kw * dwl;
                if (iw < 0 || iw >= W) continue;
                const xi = x.data[x.off + n * x.s[0] + (c0 + c) * x.s[1] + ih * x.s[2] + iw * x.s[3]];
                const wi = w.data[w.off + o * w.s[0] + c * w.s[1] + kh * w.s[2] + kw * w.s[3]];
                dx[((n * C + c0 + c) * H + ih) * W + iw] += gy * wi;
                dw[((o * Cg + c) * KH + kh) * KW + kw] += gy * xi;
              }
            }
          }
        }
      }
    }
  }
  return { dx, dw, db };
}

/**
 * im2col: cols (groups, N OH OW, Cg KH KW), row (n, i, j), column (c, kh, kw), = x[n, g Cg + c, i sh - ph +
 * kh dh, j sw - pw + kw dw] (0 in the padding), written into `out` (contiguous).
 */
export function im2colRef(g: ConvGeometry, x: Strided4, out: TypedArray): void {
  const { N, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, groups, OH, OW } = g;
  const Cg = C / groups, K = Cg * KH * KW, M = N * OH * OW;
  for (let gr = 0; gr < groups; gr++) {
    for (let n = 0; n < N; n++) {
      for (let i = 0; i < OH; i++) {
        for (let j = 0; j < OW; j++) {
          const row = (gr * M + (n * OH + i) * OW + j) * K;
          for (let c = 0; c < Cg; c++) {
            for (let kh = 0; kh < KH; kh++) {
              const ih = i * sh - ph + kh * dh;
              for (let kw = 0; kw < KW; kw++) {
                const iw = j * sw - pw + kw * dw;
                const inside = ih >= 0 && ih < H && iw >= 0 && iw < W;
                out[row + (c * KH + kh) * KW + kw] = inside
                  ? x.data[x.off + n * x.s[0] + (gr * Cg + c) * x.s[1] + ih * x.s[2] + iw * x.s[3]]
                  : 0;
              }
            }
          }
        }
      }
    }
  }
}

/**
 * col2im, the adjoint of {@link im2colRef}: dx (N, C, H, W) contiguous, each element the sum (in float64,
 * kernel positions in order) of the cols entries that read it.
 */
export function col2imRef(g: ConvGeometry, cols: Strided4, out: TypedArray): void {
  const { N, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, groups, OH, OW } = g;
  const Cg = C / groups;
  // cols.s: (group, row, column) strides in s[0], s[1], s[2]
  for (let n = 0; n < N; n++) {
    for (let ch = 0; ch < C; ch++) {
      const gr = Math.floor(ch / Cg), c = ch - gr * Cg;
      for (let ih = 0; ih < H; ih++) {
        for (let iw = 0; iw < W; iw++) {
          let acc = 0;
          for (let kh = 0; kh < KH; kh++) {
            const ti = ih + ph - kh * dh;
            if (ti < 0 || ti % sh !== 0) continue;
            const i = ti / sh;
            if (i >= OH) continue;
            for (let kw = 0; kw < KW; kw++) {
              const tj = iw + pw - kw * dw;
              if (tj < 0 || tj % sw !== 0) continue;
              const j = tj / sw;
              if (j >= OW) continue;
              const r = (n * OH + i) * OW + j, k = (c * KH + kh) * KW + kw;
              acc += cols.data[cols.off + gr * cols.s[0] + r * cols.s[1] + k * cols.s[2]];
            }
          }
          out[((n * C + ch) * H + ih) * W + iw] = acc;
        }
      }
    }
  }
}
