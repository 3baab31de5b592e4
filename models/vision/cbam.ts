/**
 * Channel and spatial attention (Guo et al., arXiv 2111.07624, Section 3.5): {@link CBAM} (Woo et al.,
 * ECCV 2018) applies a channel map then a spatial map in sequence; {@link BAM} (Park et al., BMVC 2018)
 * combines a channel branch and a spatial branch into one 3-D map applied as a residual.
 *
 * The papers put BatchNorm in BAM's branches and after CBAM's 7x7 convolution in the official code; these
 * modules leave it out (seqlab's batch norm is not in this tree yet) and keep the convolutions' biases.
 * @module
 */

import type { Tensor } from "../../runtime/tensor.ts";
import { tidy } from "../../runtime/tensor.ts";
import { add, mul, relu, sigmoid } from "../../ops/core/elementwise.ts";
import { concat } from "../../ops/core/layout.ts";
import { max, mean } from "../../ops/core/reduce.ts";
import { type LayerOptions, Linear, Module } from "../nn.ts";
import { checkFeatureMap, checkInt, checkShape, linearFlops, reducedWidth, VisionError } from "./common.ts";
import { Conv2d } from "./conv.ts";

/** What {@link CBAM} computed. */
export interface CBAMOutput {
  /** (N, C, H, W): Ms ⊙ (Mc ⊙ x). */
  y: Tensor;
  /** (N, C) in (0, 1): the channel map Mc. */
  channel: Tensor;
  /** (N, 1, H, W) in (0, 1): the spatial map Ms, computed on the channel-refined x. */
  spatial: Tensor;
}

/**
 * Convolutional Block Attention Module. Channel: one MLP (C -> C / r, ReLU, C / r -> C) shared by the
 * average- and max-pooled descriptors (N, C), the two outputs summed, sigmoid: Mc. Spatial, on
 * x' = Mc ⊙ x: the channel-wise average and max maps concatenated in that order ([avg; max] as the
 * paper's Eq. 3; the official code stacks [max; avg]), a 7x7 convolution (padding 3) to one map,
 * sigmoid: Ms; y = Ms ⊙ x'. In the survey's form each step is Attention = f(g(x), x): g_c(x) = Mc,
 * f_c = Mc ⊙ x, then g_s(x') = Ms, f_s = Ms ⊙ x'. r = 16 and kernel 7 by default.
 *
 * @example
 * ```ts
 * import { CBAM, randn } from "seqlab";
 * const cbam = new CBAM(16, { r: 4, seed: 1 });
 * const { y, channel, spatial } = cbam.forwardWithAttention(randn([2, 16, 9, 9]));
 * console.log(y.shape, channel.shape, spatial.shape); // [2, 16, 9, 9] [2, 16] [2, 1, 9, 9]
 * console.log(cbam.numParameters()); // 16*4+4 + 4*16+16 + 2*49+1 = 247
 * cbam.dispose();
 * ```
 */
export class CBAM extends Module {
  /** C -> C / r, shared by both descriptors. */
  fc1: Linear;
  /** C / r -> C. */
  fc2: Linear;
  /** 2 -> 1 channels, kernel x kernel. */
  spatialConv: Conv2d;
  /** The reduction ratio. */
  readonly r: number;
  /** C / r. */
  readonly hidden: number;

  /** Creates the MLP (seeds seed, seed + 2) and the spatial convolution (seed + 4). */
  constructor(readonly channels: number, o: LayerOptions & { r?: number; kernel?: number } = {}) {
    super();
    this.r = o.r ?? 16;
    this.hidden = reducedWidth("CBAM", channels, this.r);
    const k = o.kernel ?? 7;
    if (!(Number.isInteger(k) && k > 0 && k % 2 === 1)) {
      throw new VisionError(`CBAM: the spatial kernel must be a positive odd integer, got ${k}`);
    }
    const base = { device: o.device, dtype: o.dtype };
    const seed = (i: number) => o.seed === undefined ? undefined : o.seed + i;
    this.fc1 = new Linear(channels, this.hidden, { ...base, seed: seed(0) });
    this.fc2 = new Linear(this.hidden, channels, { ...base, seed: seed(2) });
    this.spatialConv = new Conv2d(2, 1, k, { ...base, seed: seed(4), padding: (k - 1) / 2 });
  }

  /** x (N, C, H, W) -> the output, the channel map (N, C) and the spatial map (N, 1, H, W). */
  forwardWithAttention(x: Tensor): CBAMOutput {
    checkFeatureMap("CBAM", x, this.channels, this.fc1.weight.device);
    const [N, C] = x.shape;
    return tidy(() => {
      const both = concat([mean(x, [2, 3]), max(x, [2, 3])], 0); // (2N, C): avg rows, then max rows
      const z = this.fc2.forward(this.fc1.forward(both, "relu")); // (2N, C): one pass of the shared MLP
      const channel = sigmoid(add(z.slice([[0, N]]), z.slice([[N, 2 * N]]))); // (N, C)
      const x1 = mul(x, channel.reshape([N, C, 1, 1])); // (N, C, H, W)
      const pooled = concat([mean(x1, 1, true), max(x1, 1, true)], 1); // (N, 2, H, W)
      const spatial = sigmoid(this.spatialConv.forward(pooled)); // (N, 1, H, W)
      return { y: mul(x1, spatial), channel, spatial };
    });
  }

  /** x (N, C, H, W) -> (N, C, H, W). */
  forward(x: Tensor): Tensor {
    const { y, channel, spatial } = this.forwardWithAttention(x);
    channel.dispose();
    spatial.dispose();
    return y;
  }

  /**
   * FLOPs on an input of `shape` (N, C, H, W): two pools (2 N C H W), the shared MLP on 2N rows, the sum
   * and sigmoid (2 N C), the channel scale (N C H W), two channel pools (2 N C H W), the conv, the
   * sigmoid (N H W) and the spatial scale (N C H W).
   */
  flops(shape: readonly number[]): number {
    const [N, C, H, W] = checkShape("CBAM", shape, this.channels);
    const R = this.hidden, M = N * C * H * W;
    const mlp = linearFlops(2 * N, C, R, true) + 2 * N * R + linearFlops(2 * N, R, C, true);
    return 2 * M + mlp + 2 * N * C + M + 2 * M + this.spatialConv.flops([N, 2, H, W]) + N * H * W + M;
  }
}

/** How {@link BAM} combines its channel map Mc (N, C) and spatial map Ms (N, 1, H, W). */
export type BAMCombine = "sum" | "product";

/** What {@link BAM} computed. */
export interface BAMOutput {
  /** (N, C, H, W): x + x ⊙ M. */
  y: Tensor;
  /** (N, C, H, W) in (0, 1): the combined map M = sigmoid(Mc + Ms) or sigmoid(Mc Ms). */
  attention: Tensor;
  /** (N, C): the channel branch's Mc (before the sigmoid). */
  channel: Tensor;
  /** (N, 1, H, W): the spatial branch's Ms (before the sigmoid). */
  spatial: Tensor;
}

/**
 * Bottleneck Attention Module. Channel branch: the global average pool through an MLP (C -> C / r, ReLU,
 * C / r -> C): Mc (N, C). Spatial branch: a 1x1 convolution to C / r, two 3x3 convolutions of dilation d
 * (padding d), a 1x1 convolution to one map, ReLUs between: Ms (N, 1, H, W). Both broadcast to
 * (N, C, H, W) and combine into M; y = x + x ⊙ M. In the survey's form, g(x) = M and f(g(x), x) =
 * x + g(x) ⊙ x.
 *
 * `combine: "sum"` (default) is the paper's M = sigmoid(Mc + Ms) (Park et al., Eq. 2); `"product"` is
 * the official code's `1 + sigmoid(Mc * Ms)` multiplier, i.e. M = sigmoid(Mc Ms). r = 16, d = 4 by
 * default; BatchNorm in the branches is left out.
 *
 * @example
 * ```ts
 * import { BAM, randn } from "seqlab";
 * const bam = new BAM(16, { r: 4, seed: 1 });
 * const { y, attention } = bam.forwardWithAttention(randn([1, 16, 12, 12]));
 * console.log(y.shape, attention.shape, bam.combine); // [1, 16, 12, 12] [1, 16, 12, 12] "sum"
 * bam.dispose();
 * ```
 */
export class BAM extends Module {
  /** C -> C / r. */
  fc1: Linear;
  /** C / r -> C. */
  fc2: Linear;
  /** 1x1, C -> C / r. */
  reduce: Conv2d;
  /** 3x3 of dilation d, C / r -> C / r. */
  dilated1: Conv2d;
  /** 3x3 of dilation d, C / r -> C / r. */
  dilated2: Conv2d;
  /** 1x1, C / r -> 1. */
  out: Conv2d;
  /** The reduction ratio. */
  readonly r: number;
  /** C / r. */
  readonly hidden: number;
  /** The dilation of the 3x3 convolutions. */
  readonly dilation: number;
  /** The combination formula. */
  readonly combine: BAMCombine;

  /** Creates the branches (seeds seed, seed + 2, ... in field order). */
  constructor(
    readonly channels: number,
    o: LayerOptions & { r?: number; dilation?: number; combine?: BAMCombine } = {},
  ) {
    super();
    this.r = o.r ?? 16;
    this.hidden = reducedWidth("BAM", channels, this.r);
    this.dilation = o.dilation ?? 4;
    checkInt("BAM", "dilation", this.dilation);
    this.combine = o.combine ?? "sum";
    if (this.combine !== "sum" && this.combine !== "product") {
      throw new VisionError(
        `BAM: combine must be "sum" (the paper's sigmoid(Mc + Ms)) or "product" (the official code's ` +
          `sigmoid(Mc * Ms)), got ${JSON.stringify(o.combine)}`,
      );
    }
    const base = { device: o.device, dtype: o.dtype };
    const seed = (i: number) => o.seed === undefined ? undefined : o.seed + i;
    const R = this.hidden, d = this.dilation;
    this.fc1 = new Linear(channels, R, { ...base, seed: seed(0) });
    this.fc2 = new Linear(R, channels, { ...base, seed: seed(2) });
    this.reduce = new Conv2d(channels, R, 1, { ...base, seed: seed(4) });
    this.dilated1 = new Conv2d(R, R, 3, { ...base, seed: seed(6), padding: d, dilation: d });
    this.dilated2 = new Conv2d(R, R, 3, { ...base, seed: seed(8), padding: d, dilation: d });
    this.out = new Conv2d(R, 1, 1, { ...base, seed: seed(10) });
  }

  /** x (N, C, H, W) -> the output, the combined map and the two branches' maps. */
  forwardWithAttention(x: Tensor): BAMOutput {
    checkFeatureMap("BAM", x, this.channels, this.fc1.weight.device);
    const [N, C] = x.shape;
    return tidy(() => {
      const channel = this.fc2.forward(this.fc1.forward(mean(x, [2, 3]), "relu")); // (N, C)
      const s1 = relu(this.reduce.forward(x)); // (N, C / r, H, W)
      const s2 = relu(this.dilated2.forward(relu(this.dilated1.forward(s1)))); // (N, C / r, H, W)
      const spatial = this.out.forward(s2); // (N, 1, H, W)
      const mc = channel.reshape([N, C, 1, 1]);
      const attention = sigmoid(this.combine === "sum" ? add(mc, spatial) : mul(mc, spatial)); // (N, C, H, W)
      return { y: add(x, mul(x, attention)), attention, channel, spatial };
    });
  }

  /** x (N, C, H, W) -> (N, C, H, W). */
  forward(x: Tensor): Tensor {
    const { y, attention, channel, spatial } = this.forwardWithAttention(x);
    for (const t of [attention, channel, spatial]) t.dispose();
    return y;
  }

  /**
   * FLOPs on an input of `shape` (N, C, H, W): the pool and MLP, the four convolutions with their ReLUs,
   * then per element of (N, C, H, W) the combination, the sigmoid, the product and the residual sum.
   */
  flops(shape: readonly number[]): number {
    const [N, C, H, W] = checkShape("BAM", shape, this.channels);
    const R = this.hidden, M = N * C * H * W, S = N * R * H * W;
    const mlp = M + linearFlops(N, C, R, true) + N * R + linearFlops(N, R, C, true);
    const convs = this.reduce.flops([N, C, H, W]) + this.dilated1.flops([N, R, H, W]) +
      this.dilated2.flops([N, R, H, W]) + this.out.flops([N, R, H, W]) + 3 * S;
    return mlp + convs + 4 * M;
  }
}
