/**
 * Channel attention (Guo et al., arXiv 2111.07624, Section 3.1), in the survey's form
 * Attention = f(g(x), x): g pools each channel to one number and learns a weight per channel from those
 * numbers, f rescales every channel of x by its weight.
 *
 * - {@link SE} (Squeeze-and-Excitation, Hu et al.): g = sigmoid(W2 relu(W1 GAP(x))), reduction r.
 * - {@link ECA} (Efficient Channel Attention, Wang et al.): g = sigmoid(conv1d_k(GAP(x))) over the channel
 *   axis, no dimensionality reduction, k from the channel count ({@link ecaKernelSize}).
 * @module
 */

import type { Tensor } from "../../runtime/tensor.ts";
import { tidy } from "../../runtime/tensor.ts";
import { mul, sigmoid } from "../../ops/core/elementwise.ts";
import { mean } from "../../ops/core/reduce.ts";
import { type LayerOptions, Linear, Module } from "../nn.ts";
import { checkFeatureMap, checkInt, checkShape, linearFlops, reducedWidth, VisionError } from "./common.ts";
import { Conv2d } from "./conv.ts";

/** What a channel-attention module computed: the output and its weight per channel. */
export interface ChannelAttentionOutput {
  /** (N, C, H, W): x scaled per channel. */
  y: Tensor;
  /** (N, C) in (0, 1): the weight of each channel of each image. */
  weights: Tensor;
}

/**
 * Squeeze-and-Excitation: squeeze by global average pooling over H, W to (N, C); excite by
 * FC(C -> C / r), ReLU, FC(C / r -> C), sigmoid; scale x per channel. In the survey's form,
 * g(x) = sigmoid(W2 relu(W1 GAP(x))) (the channel weights) and f(g(x), x) = g(x) ⊙ x. r = 16 by default;
 * the FCs carry biases and PyTorch's Linear init.
 *
 * @example
 * ```ts
 * import { randn, SE } from "seqlab";
 * const se = new SE(32, { r: 4, seed: 1 });
 * const { y, weights } = se.forwardWithAttention(randn([2, 32, 8, 8]));
 * console.log(y.shape, weights.shape, se.numParameters()); // [2, 32, 8, 8] [2, 32] 552
 * console.log(se.flops([2, 32, 8, 8])); // pool + FCs + relu + sigmoid + scale
 * se.dispose();
 * ```
 */
export class SE extends Module {
  /** C -> C / r. */
  fc1: Linear;
  /** C / r -> C. */
  fc2: Linear;
  /** The reduction ratio. */
  readonly r: number;
  /** C / r. */
  readonly hidden: number;

  /** Creates the two FCs (fc1 seeded with `seed`, fc2 with `seed + 2`). */
  constructor(readonly channels: number, o: LayerOptions & { r?: number } = {}) {
    super();
    this.r = o.r ?? 16;
    this.hidden = reducedWidth("SE", channels, this.r);
    const base = { device: o.device, dtype: o.dtype };
    this.fc1 = new Linear(channels, this.hidden, { ...base, seed: o.seed });
    this.fc2 = new Linear(this.hidden, channels, {
      ...base,
      seed: o.seed === undefined ? undefined : o.seed + 2,
    });
  }

  /** x (N, C, H, W) -> the output and the channel weights (N, C). */
  forwardWithAttention(x: Tensor): ChannelAttentionOutput {
    checkFeatureMap("SE", x, this.channels, this.fc1.weight.device);
    const [N, C] = x.shape;
    return tidy(() => {
      const s = mean(x, [2, 3]); // (N, C): squeeze
      const weights = sigmoid(this.fc2.forward(this.fc1.forward(s, "relu"))); // (N, C): excitation
      return { y: mul(x, weights.reshape([N, C, 1, 1])), weights };
    });
  }

  /** x (N, C, H, W) -> (N, C, H, W). */
  forward(x: Tensor): Tensor {
    const { y, weights } = this.forwardWithAttention(x);
    weights.dispose();
    return y;
  }

  /** FLOPs on an input of `shape` (N, C, H, W): pool N C H W, the FCs, N C / r relu, N C sigmoid, N C H W scale. */
  flops(shape: readonly number[]): number {
    const [N, C, H, W] = checkShape("SE", shape, this.channels);
    const R = this.hidden;
    return N * C * H * W + linearFlops(N, C, R, true) + N * R + linearFlops(N, R, C, true) + N * C +
      N * C * H * W;
  }
}

/**
 * ECA's kernel size for C channels: k = |log2(C) / gamma + b / gamma| rounded to the nearest odd integer,
 * ties (an even t) rounded up, as the official code computes it (t = floor(t), +1 if even). gamma = 2 and
 * b = 1 by default: C = 64 -> 3, 256 -> 5, 2048 -> 7.
 *
 * @example
 * ```ts
 * import { ecaKernelSize } from "seqlab";
 * console.log([64, 128, 256, 512, 1024, 2048].map((c) => ecaKernelSize(c))); // [3, 5, 5, 5, 5, 7]
 * ```
 */
export function ecaKernelSize(channels: number, gamma = 2, b = 1): number {
  checkInt("ecaKernelSize", "channels", channels);
  if (!(gamma > 0) || !Number.isFinite(b)) {
    throw new VisionError(`ecaKernelSize: gamma must be positive and b finite, got gamma ${gamma}, b ${b}`);
  }
  const t = Math.floor(Math.abs(Math.log2(channels) / gamma + b / gamma));
  return t % 2 === 1 ? t : t + 1;
}

/**
 * Efficient Channel Attention: global average pool to (N, C), a 1-D convolution of kernel k over the
 * channel axis (zero padding (k - 1) / 2, no bias, no dimensionality reduction: k parameters), sigmoid,
 * scale x per channel. In the survey's form, g(x) = sigmoid(conv1d_k(GAP(x))) and f(g(x), x) = g(x) ⊙ x.
 * k defaults to {@link ecaKernelSize}(C) (gamma 2, b 1); an explicit k must be odd and positive. The
 * 1-D convolution runs as `conv2d` on (N, 1, 1, C) with a (1, 1, 1, k) weight, initialised as PyTorch's
 * Conv1d (U(-1 / sqrt(k), 1 / sqrt(k))).
 *
 * @example
 * ```ts
 * import { ECA, randn } from "seqlab";
 * const eca = new ECA(64, { seed: 1 });
 * const { y, weights } = eca.forwardWithAttention(randn([2, 64, 7, 7]));
 * console.log(eca.k, eca.numParameters(), y.shape, weights.shape); // 3 3 [2, 64, 7, 7] [2, 64]
 * eca.dispose();
 * ```
 */
export class ECA extends Module {
  /** The channel-axis convolution, weight (1, 1, 1, k). */
  conv: Conv2d;
  /** The kernel size. */
  readonly k: number;

  /** Creates the convolution; `k` explicit, or from `gamma` and `b`. */
  constructor(
    readonly channels: number,
    o: LayerOptions & { k?: number; gamma?: number; b?: number } = {},
  ) {
    super();
    checkInt("ECA", "channels", channels);
    if (o.k !== undefined && !(Number.isInteger(o.k) && o.k > 0 && o.k % 2 === 1)) {
      throw new VisionError(
        `ECA: the kernel size k must be a positive odd integer (a centred 1-D convolution), got ${o.k}`,
      );
    }
    this.k = o.k ?? ecaKernelSize(channels, o.gamma, o.b);
    const pad = (this.k - 1) / 2;
    this.conv = new Conv2d(1, 1, [1, this.k], {
      padding: [0, pad],
      bias: false,
      seed: o.seed,
      device: o.device,
      dtype: o.dtype,
    });
  }

  /** x (N, C, H, W) -> the output and the channel weights (N, C). */
  forwardWithAttention(x: Tensor): ChannelAttentionOutput {
    checkFeatureMap("ECA", x, this.channels, this.conv.weight.device);
    const [N, C] = x.shape;
    return tidy(() => {
      const s = mean(x, [2, 3]).reshape([N, 1, 1, C]); // (N, 1, 1, C): channels along the width
      const weights = sigmoid(this.conv.forward(s)).reshape([N, C]); // (N, C)
      return { y: mul(x, weights.reshape([N, C, 1, 1])), weights };
    });
  }

  /** x (N, C, H, W) -> (N, C, H, W). */
  forward(x: Tensor): Tensor {
    const { y, weights } = this.forwardWithAttention(x);
    weights.dispose();
    return y;
  }

  /** FLOPs on an input of `shape` (N, C, H, W): pool N C H W, the conv 2 k N C, N C sigmoid, N C H W scale. */
  flops(shape: readonly number[]): number {
    const [N, C, H, W] = checkShape("ECA", shape, this.channels);
    return N * C * H * W + 2 * this.k * N * C + N * C + N * C * H * W;
  }
}
