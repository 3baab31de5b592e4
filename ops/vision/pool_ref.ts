/**
 * Reference 2-D pooling, in plain loops accumulating in float64: the oracle for the WebGPU versions in
 * `pool.ts` / `pool_wgsl.ts`, and what the cpu path runs.
 *
 * Shapes (NCHW, PyTorch's conventions, floor mode): x (N, C, H, W) -> y (N, C, OH, OW) with, for a window
 * op, OH = floor((H + 2 ph - dh (KH - 1) - 1) / sh) + 1 (likewise OW); output (i, j) reads the taps
 * (i sh - ph + kh dh, j sw - pw + kw dw), kh < KH, kw < KW; taps in the padding are -inf for max pooling
 * and 0 for average pooling. For adaptive average pooling, output row i averages input rows
 * floor(i H / OH) .. ceil((i + 1) H / OH) - 1 (likewise columns).
 * @module
 */

import type { ConvGeometry, Strided4 } from "./conv2d_ref.ts";

/**
 * The geometry of one window pooling (all sizes resolved): a convolution's without output channels and
 * groups (C channels in, C out; dilation 1 for average pooling).
 */
export type PoolGeometry = Omit<ConvGeometry, "O" | "groups">;

/** The geometry of one adaptive pooling: x (N, C, H, W) -> (N, C, OH, OW). */
export interface AdaptiveGeometry {
  /** Images. */
  N: number;
  /** Channels. */
  C: number;
  /** Input height. */
  H: number;
  /** Input width. */
  W: number;
  /** Output height. */
  OH: number;
  /** Output width. */
  OW: number;
}

const at = (x: Strided4, n: number, c: number, h: number, w: number) =>
  x.data[x.off + n * x.s[0] + c * x.s[1] + h * x.s[2] + w * x.s[3]];

/**
 * Max pooling: y (N, C, OH, OW) and idx (N, C, OH, OW), the argmax as h W + w within its (H, W) plane.
 * Ties go to the first tap in (kh, kw) order; a NaN wins over numbers (the first NaN); a window of padding
 * only (possible with dilation) gives -inf and idx -1.
 */
export function maxPool2dRef(g: PoolGeometry, x: Strided4): { y: Float64Array; idx: Int32Array } {
  const { N, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW } = g;
  const y = new Float64Array(N * C * OH * OW), idx = new Int32Array(y.length);
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) {
      for (let i = 0; i < OH; i++) {
        for (let j = 0; j < OW; j++) {
          let m = -Infinity, best = -1;
          for (let kh = 0; kh < KH; kh++) {
            const ih = i * sh - ph + kh * dh;
            if (ih < 0 || ih >= H) continue;
            for (let kw = 0; kw < KW; kw++) {
              const iw = j * sw - pw + kw * dw;
              if (iw < 0 || iw >= W) continue;
              const v = at(x, n, c, ih, iw);
              if (best < 0 || v > m || (Number.isNaN(v) && !Number.isNaN(m))) {
                m = v;
                best = ih * W + iw;
              }
            }
          }
          const o = ((n * C + c) * OH + i) * OW + j;
          y[o] = m;
          idx[o] = best;
        }
      }
    }
  }
  return { y, idx };
}

/**
 * The gradient of {@link maxPool2dRef}: dx (N, C, H, W), each output's dy added at its argmax (`idx`,
 * contiguous (N, C, OH, OW)); dy (N, C, OH, OW) strided.
 */
export function maxPool2dBackwardRef(g: PoolGeometry, idx: ArrayLike<number>, dy: Strided4): Float64Array {
  const { N, C, H, W, OH, OW } = g;
  const dx = new Float64Array(N * C * H * W);
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) {
      for (let i = 0; i < OH; i++) {
        for (let j = 0; j < OW; j++) {
          const k = idx[((n * C + c) * OH + i) * OW + j];
          if (k >= 0) dx[(n * C + c) * H * W + k] += at(dy, n, c, i, j);
        }
      }
    }
  }
  return dx;
}

/**
 * The divisor of average-pooling window (i, j): KH KW with `countIncludePad`, else the number of taps
 * inside the input (at least 1: the padding is at most half the kernel).
 */
export function avgPoolDivisor(g: PoolGeometry, i: number, j: number, countIncludePad: boolean): number {
  if (countIncludePad) return g.KH * g.KW;
  const h0 = i * g.sh - g.ph, w0 = j * g.sw - g.pw;
  const rows = Math.min(h0 + g.KH, g.H) - Math.max(h0, 0), cols = Math.min(w0 + g.KW, g.W) - Math.max(w0, 0);
  return rows * cols;
}

/** Average pooling (no dilation): y (N, C, OH, OW), each window's sum over its taps inside x / its divisor. */
export function avgPool2dRef(g: PoolGeometry, x: Strided4, countIncludePad: boolean): Float64Array {
  const { N, C, H, W, KH, KW, sh, sw, ph, pw, OH, OW } = g;
  const y = new Float64Array(N * C * OH * OW);
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) {
      for (let i = 0; i < OH; i++) {
        for (let j = 0; j < OW; j++) {
          let acc = 0;
          for (let kh = 0; kh < KH; kh++) {
            const ih = i * sh - ph + kh;
            if (ih < 0 || ih >= H) continue;
            for (let kw = 0; kw < KW; kw++) {
              const iw = j * sw - pw + kw;
              if (iw >= 0 && iw < W) acc += at(x, n, c, ih, iw);
            }
          }
          y[((n * C + c) * OH + i) * OW + j] = acc / avgPoolDivisor(g, i, j, countIncludePad);
        }
      }
    }
  }
  return y;
}

/** The gradient of {@link avgPool2dRef}: dx (N, C, H, W), each window's dy / divisor spread over its taps. */
export function avgPool2dBackwardRef(g: PoolGeometry, dy: Strided4, countIncludePad: boolean): Float64Array {
  const { N, C, H, W, KH, KW, sh, sw, ph, pw, OH, OW } = g;
  const dx = new Float64Array(N * C * H * W);
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) {
      for (let i = 0; i < OH; i++) {
        for (let j = 0; j < OW; j++) {
          const v = at(dy, n, c, i, j) / avgPoolDivisor(g, i, j, countIncludePad);
          for (let kh = 0; kh < KH; kh++) {
            const ih = i * sh - ph + kh;
            if (ih < 0 || ih >= H) continue;
            for (let kw = 0; kw < KW; kw++) {
              const iw = j * sw - pw + kw;
              if (iw >= 0 && iw < W) dx[((n * C + c) * H + ih) * W + iw] += v;
            }
          }
        }
      }
    }
  }
  return dx;
}

/** Adaptive bin i of `size` inputs into `out` bins: [floor(i size / out), ceil((i + 1) size / out)). */
export function adaptiveBin(i: number, size: number, out: number): [number, number] {
  return [Math.floor((i * size) / out), Math.ceil(((i + 1) * size) / out)];
}

/** Adaptive average pooling: y (N, C, OH, OW), each output the mean of its bin (PyTorch's bins). */
export function adaptiveAvgPool2dRef(g: AdaptiveGeometry, x: Strided4): Float64Array {
  const { N, C, H, W, OH, OW } = g;
  const y = new Float64Array(N * C * OH * OW);
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) {
      for (let i = 0; i < OH; i++) {
        const [h0, h1] = adaptiveBin(i, H, OH);
        for (let j = 0; j < OW; j++) {
          const [w0, w1] = adaptiveBin(j, W, OW);
          let acc = 0;
          for (let h = h0; h < h1; h++) for (let w = w0; w < w1; w++) acc += at(x, n, c, h, w);
          y[((n * C + c) * OH + i) * OW + j] = acc / ((h1 - h0) * (w1 - w0));
        }
      }
    }
  }
  return y;
}

/** The gradient of {@link adaptiveAvgPool2dRef}: dx (N, C, H, W), each bin's dy / its area spread over it. */
export function adaptiveAvgPool2dBackwardRef(g: AdaptiveGeometry, dy: Strided4): Float64Array {
  const { N, C, H, W, OH, OW } = g;
  const dx = new Float64Array(N * C * H * W);
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) {
      for (let i = 0; i < OH; i++) {
        const [h0, h1] = adaptiveBin(i, H, OH);
        for (let j = 0; j < OW; j++) {
          const [w0, w1] = adaptiveBin(j, W, OW);
          const v = at(dy, n, c, i, j) / ((h1 - h0) * (w1 - w0));
          for (let h = h0; h < h1; h++) for (let w = w0; w < w1; w++) dx[((n * C + c) * H + h) * W + w] += v;
        }
      }
    }
  }
  return dx;
}
