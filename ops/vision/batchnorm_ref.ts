/**
 * Reference 2-D batch normalisation, in plain loops accumulating in float64: the oracle for `batchnorm.ts`
 * / `batchnorm_wgsl.ts`, and what the cpu path runs.
 *
 * Shapes (NCHW, PyTorch's `batch_norm`): x (N, C, H, W), weight / bias / running mean / running variance
 * (C). Per channel c, over the M = N H W values x[:, c, :, :]:
 * - training: mean and the biased variance var = sum (x - mean)^2 / M normalise,
 *   y = (x - mean) / sqrt(var + eps) weight + bias, and the running statistics move towards the batch's:
 *   runningMean = (1 - momentum) runningMean + momentum mean, runningVar = (1 - momentum) runningVar +
 *   momentum var M / (M - 1) (the unbiased variance);
 * - evaluation: the running statistics normalise, and nothing is updated.
 * @module
 */

import type { Strided4 } from "./conv2d_ref.ts";

/** Per-channel statistics: mean and biased variance (C), float64 (two passes over the data). */
export function batchNormStatsRef(
  x: Strided4,
  shape: readonly number[],
): { mean: Float64Array; variance: Float64Array } {
  const [N, C, H, W] = shape;
  const mean = new Float64Array(C), variance = new Float64Array(C);
  const M = N * H * W;
  for (let c = 0; c < C; c++) {
    let s = 0;
    for (let n = 0; n < N; n++) {
      for (let h = 0; h < H; h++) {
        for (let w = 0; w < W; w++) s += x.data[x.off + n * x.s[0] + c * x.s[1] + h * x.s[2] + w * x.s[3]];
      }
    }
    const m = s / M;
    let q = 0;
    for (let n = 0; n < N; n++) {
      for (let h = 0; h < H; h++) {
        for (let w = 0; w < W; w++) {
          const d = x.data[x.off + n * x.s[0] + c * x.s[1] + h * x.s[2] + w * x.s[3]] - m;
          q += d * d;
        }
      }
    }
    mean[c] = m;
    variance[c] = q / M;
  }
  return { mean, variance };
}

/**
 * y (N, C, H, W), contiguous: (x - mean[c]) / sqrt(variance[c] + eps) weight[c] + bias[c] (weight 1 and
 * bias 0 where null), for the statistics given (the batch's in training, the running ones in evaluation).
 */
export function batchNorm2dRef(
  x: Strided4,
  shape: readonly number[],
  mean: ArrayLike<number>,
  variance: ArrayLike<number>,
  weight: ArrayLike<number> | null,
  bias: ArrayLike<number> | null,
  eps: number,
): Float64Array {
  const [N, C, H, W] = shape;
  const y = new Float64Array(N * C * H * W);
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) {
      const r = 1 / Math.sqrt(variance[c] + eps), a = weight ? weight[c] : 1, b = bias ? bias[c] : 0;
      for (let h = 0; h < H; h++) {
        for (let w = 0; w < W; w++) {
          const v = x.data[x.off + n * x.s[0] + c * x.s[1] + h * x.s[2] + w * x.s[3]];
          y[((n * C + c) * H + h) * W + w] = (v - mean[c]) * r * a + b;
        }
      }
    }
  }
  return y;
}

/**
 * The gradients of {@link batchNorm2dRef} for dy (N, C, H, W): dx (N, C, H, W) and dweight, dbias (C),
 * contiguous float64. With xhat = (x - mean) r, r = 1 / sqrt(var + eps), a = weight r, and sums over the
 * channel's M values: dbias = sum dy, dweight = sum dy xhat; training (through the batch statistics):
 * dx = a (dy - sum dy / M - xhat sum(dy xhat) / M); evaluation (constant statistics): dx = a dy.
 */
export function batchNorm2dBackwardRef(
  x: Strided4,
  shape: readonly number[],
  dy: Strided4,
  mean: ArrayLike<number>,
  variance: ArrayLike<number>,
  weight: ArrayLike<number> | null,
  eps: number,
  training: boolean,
): { dx: Float64Array; dweight: Float64Array; dbias: Float64Array } {
  const [N, C, H, W] = shape;
  const M = N * H * W;
  const dx = new Float64Array(N * C * H * W), dweight = new Float64Array(C), dbias = new Float64Array(C);
  const xi = (n: number, c: number, h: number, w: number) =>
    x.data[x.off + n * x.s[0] + c * x.s[1] + h * x.s[2] + w * x.s[3]];
  const gi = (n: number, c: number, h: number, w: number) =>
    dy.data[dy.off + n * dy.s[0] + c * dy.s[1] + h * dy.s[2] + w * dy.s[3]];
  for (let c = 0; c < C; c++) {
    const r = 1 / Math.sqrt(variance[c] + eps), a = (weight ? weight[c] : 1) * r;
    let sg = 0, sgx = 0;
    for (let n = 0; n < N; n++) {
      for (let h = 0; h < H; h++) {
        for (let w = 0; w < W; w++) {
          const g = gi(n, c, h, w);
          sg += g;
          sgx += g * (xi(n, c, h, w) - mean[c]) * r;
        }
      }
    }
    dbias[c] = sg;
    dweight[c] = sgx;
    for (let n = 0; n < N; n++) {
      for (let h = 0; h < H; h++) {
        for (let w = 0; w < W; w++) {
          const g = gi(n, c, h, w), xhat = (xi(n, c, h, w) - mean[c]) * r;
          dx[((n * C + c) * H + h) * W + w] = training ? a * (g - sg / M - xhat * sgx / M) : a * g;
        }
      }
    }
  }
  return { dx, dweight, dbias };
}

/**
 * The running statistics' update, in place: running = (1 - momentum) running + momentum batch, the
 * variance unbiased (var M / (M - 1)). `run*` are (data, offset, stride) of 1-D (C) tensors.
 */
export function runningUpdateRef(
  runMean: { data: { [i: number]: number }; off: number; s: number },
  runVar: { data: { [i: number]: number }; off: number; s: number },
  mean: ArrayLike<number>,
  variance: ArrayLike<number>,
  M: number,
  momentum: number,
): void {
  for (let c = 0; c < mean.length; c++) {
    const im = runMean.off + c * runMean.s, iv = runVar.off + c * runVar.s;
    runMean.data[im] = (1 - momentum) * runMean.data[im] + momentum * mean[c];
    runVar.data[iv] = (1 - momentum) * runVar.data[iv] + momentum * variance[c] * M / (M - 1);
  }
}
