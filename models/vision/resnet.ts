/**
 * A small ResNet for 28 x 28 images (He et al., CVPR 2016, the CIFAR variant's shape) into which the vision
 * survey's attention modules plug, as their papers place them: SE, ECA and CBAM on each basic block's
 * residual branch before the addition (SE-ResNet, ECA-Net, CBAM); BAM at the end of each stage but the last
 * (the "bottlenecks" between stages); one NonLocal block after the second stage (the paper's res4 place).
 * Also `BatchNorm2d`, the module over seqlab's `batchNorm2d` op (running statistics as buffers).
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import type { DeviceName } from "../../runtime/device.ts";
import { param } from "../../runtime/autograd.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { add } from "../../ops/core/elementwise.ts";
import { mean } from "../../ops/core/reduce.ts";
import { batchNorm2d } from "../../ops/vision/batchnorm.ts";
import { init, Linear, Module } from "../nn.ts";
import { BAM, CBAM } from "./cbam.ts";
import { ECA, SE } from "./channel.ts";
import { checkInt, VisionError } from "./common.ts";
import { Conv2d } from "./conv.ts";
import { NonLocal } from "./nonlocal.ts";

type Lo = { device?: DeviceName; dtype?: DType; seed?: number };

/**
 * Batch normalisation over (N, H, W) per channel: weight and bias parameters (C), running mean and variance
 * buffers updated in training mode (momentum 0.1, PyTorch's) and used in evaluation mode.
 *
 * @example
 * ```ts
 * import { BatchNorm2d, randn } from "seqlab";
 * const bn = new BatchNorm2d(3);
 * const y = bn.forward(randn([4, 3, 5, 5], { seed: 1 }));
 * console.log(y.shape, bn.eval().forward(randn([1, 3, 5, 5], { seed: 2 })).shape); // [4, 3, 5, 5] [1, 3, 5, 5]
 * bn.dispose();
 * ```
 */
export class BatchNorm2d extends Module {
  /** (C), gamma. */
  weight: Tensor;
  /** (C), beta. */
  bias: Tensor;
  /** (C) buffer. */
  runningMean: Tensor;
  /** (C) buffer (unbiased). */
  runningVar: Tensor;
  /** Creates gamma = 1, beta = 0, running mean 0 and variance 1 for C channels. */
  constructor(readonly channels: number, o: Lo & { momentum?: number; eps?: number } = {}) {
    super();
    checkInt("BatchNorm2d", "channels", channels);
    const lo = { device: o.device, dtype: o.dtype };
    this.momentum = o.momentum ?? 0.1;
    this.eps = o.eps ?? 1e-5;
    this.weight = param(init.ones([channels], lo));
    this.bias = param(init.zeros([channels], lo));
    this.runningMean = init.zeros([channels], lo);
    this.runningVar = init.ones([channels], lo);
  }
  /** Weight of a batch in the running statistics. */
  readonly momentum: number;
  /** Added to the variance. */
  readonly eps: number;
  /** x (N, C, H, W) -> (N, C, H, W): batch statistics in training mode, running ones in evaluation. */
  forward(x: Tensor): Tensor {
    return batchNorm2d(x, {
      weight: this.weight,
      bias: this.bias,
      runningMean: this.runningMean,
      runningVar: this.runningVar,
      training: this.training,
      momentum: this.momentum,
      eps: this.eps,
    });
  }
}

/** Which attention module a {@link ResNet} carries. */
export type VisionAttention = "none" | "se" | "eca" | "cbam" | "bam" | "nonlocal";

/** An attention module a {@link ResNet} plugs in: output of its input's shape, and a FLOP count. */
export type Plug = Module & { forward(x: Tensor): Tensor; flops(shape: readonly number[]): number };

/** The basic block: relu(bn2(conv2(relu(bn1(conv1 x)))) [attention] + shortcut(x)). */
export class BasicBlock extends Module {
  /** 3x3, stride s. */
  conv1: Conv2d;
  /** After conv1. */
  bn1: BatchNorm2d;
  /** 3x3. */
  conv2: Conv2d;
  /** After conv2. */
  bn2: BatchNorm2d;
  /** 1x1 stride-s projection and its norm when the shape changes, else null. */
  down: Conv2d | null;
  /** Its norm. */
  downBn: BatchNorm2d | null;
  /** SE, ECA or CBAM on the residual branch, or null. */
  attn: Plug | null;
  /** Creates a block from `cin` to `cout` channels with stride `stride`. */
  constructor(cin: number, cout: number, stride: number, attention: VisionAttention, o: Lo) {
    super();
    const lo = { device: o.device, dtype: o.dtype };
    const seed = (k: number) => (o.seed === undefined ? undefined : o.seed + 10 * k);
    this.conv1 = new Conv2d(cin, cout, 3, { ...lo, stride, padding: 1, bias: false, seed: seed(0) });
    this.bn1 = new BatchNorm2d(cout, lo);
    this.conv2 = new Conv2d(cout, cout, 3, { ...lo, padding: 1, bias: false, seed: seed(1) });
    this.bn2 = new BatchNorm2d(cout, lo);
    const proj = stride !== 1 || cin !== cout;
    this.down = proj ? new Conv2d(cin, cout, 1, { ...lo, stride, bias: false, seed: seed(2) }) : null;
    this.downBn = proj ? new BatchNorm2d(cout, lo) : null;
    this.attn = attention === "se"
      ? new SE(cout, { ...lo, seed: seed(3) })
      : attention === "eca"
      ? new ECA(cout, { ...lo, seed: seed(3) })
      : attention === "cbam"
      ? new CBAM(cout, { ...lo, seed: seed(3) })
      : null;
  }
  /** x (N, cin, H, W) -> (N, cout, H / s, W / s). */
  forward(x: Tensor): Tensor {
    return tidy(() => {
      let h = this.bn1.forward(this.conv1.forward(x)).relu();
      h = this.bn2.forward(this.conv2.forward(h));
      if (this.attn) h = this.attn.forward(h);
      const sc = this.down ? this.downBn!.forward(this.down.forward(x)) : x;
      return add(h, sc).relu();
    });
  }
  /** Forward FLOPs on an input of `shape` (N, cin, H, W) (convolutions and the attention module). */
  flops(shape: readonly number[]): number {
    const s1 = this.conv1.outputShape(shape);
    return this.conv1.flops(shape) + this.conv2.flops(s1) + (this.down?.flops(shape) ?? 0) +
      (this.attn?.flops(s1) ?? 0);
  }
}

/** One stage: its blocks, then BAM or NonLocal when the model places one here. */
export class ResNetStage extends Module {
  /** The blocks. */
  blocks: BasicBlock[];
  /** BAM or NonLocal after the blocks, or null. */
  after: Plug | null;
  /** Creates `depth` blocks from cin to cout (the first with stride `stride`). */
  constructor(
    cin: number,
    cout: number,
    depth: number,
    stride: number,
    attention: VisionAttention,
    after: "bam" | "nonlocal" | null,
    o: Lo,
  ) {
    super();
    const lo = { device: o.device, dtype: o.dtype };
    const seed = (k: number) => (o.seed === undefined ? undefined : o.seed + 100 * k);
    this.blocks = Array.from(
      { length: depth },
      (_, j) =>
        new BasicBlock(j === 0 ? cin : cout, cout, j === 0 ? stride : 1, attention, { ...lo, seed: seed(j) }),
    );
    this.after = after === "bam"
      ? new BAM(cout, { ...lo, seed: seed(50) })
      : after === "nonlocal"
      ? new NonLocal(cout, { ...lo, seed: seed(50) })
      : null;
  }
  /** x -> the stage's output. */
  forward(x: Tensor): Tensor {
    return tidy(() => {
      let h = x;
      for (const b of this.blocks) h = b.forward(h);
      return this.after ? this.after.forward(h) : h;
    });
  }
}

/** Sizes and options of a {@link ResNet}. */
export interface ResNetConfig {
  /** Input channels (1 for MNIST). */
  inChannels?: number;
  /** Classes. */
  numClasses: number;
  /** Channels of the three stages (default [16, 32, 64]; stages 2 and 3 halve the map). */
  widths?: number[];
  /** Basic blocks per stage (default [1, 1, 1]). */
  depths?: number[];
  /** The attention module and where it goes (see the module doc; default "none"). */
  attention?: VisionAttention;
  /** Seed of the first parameter. */
  seed?: number;
  /** Device of the parameters. */
  device?: DeviceName;
  /** Float dtype of the parameters (default f32). */
  dtype?: DType;
}

/**
 * The ResNet: a 3x3 stem (conv, BN, ReLU) to widths[0], the stages, global average pooling, a linear head.
 *
 * @example
 * ```ts
 * import { randn, ResNet } from "seqlab";
 * const m = new ResNet({ numClasses: 10, widths: [16, 32], depths: [1, 1], attention: "se", seed: 1 });
 * console.log(m.forward(randn([2, 1, 28, 28], { seed: 2 })).shape); // [2, 10]
 * m.dispose();
 * ```
 */
export class ResNet extends Module {
  /** Resolved configuration. */
  readonly config: Required<Omit<ResNetConfig, "seed" | "device" | "dtype">>;
  /** 3x3 stem. */
  stem: Conv2d;
  /** Its norm. */
  stemBn: BatchNorm2d;
  /** The stages. */
  stages: ResNetStage[];
  /** widths[-1] -> classes. */
  head: Linear;

  /** Creates the model; throws naming a size or option that does not fit. */
  constructor(cfg: ResNetConfig) {
    super();
    const widths = cfg.widths ?? [16, 32, 64], depths = cfg.depths ?? [1, 1, 1];
    const attention = cfg.attention ?? "none", Cin = cfg.inChannels ?? 1;
    if (!widths.length || widths.length !== depths.length) {
      throw new VisionError(
        `ResNet: widths and depths must be non-empty and of one length, got ${widths} and ${depths}`,
      );
    }
    for (const v of [...widths, ...depths, Cin, cfg.numClasses]) checkInt("ResNet", "sizes", v);
    if (!["none", "se", "eca", "cbam", "bam", "nonlocal"].includes(attention)) {
      throw new VisionError(
        `ResNet: attention must be "none", "se", "eca", "cbam", "bam" or "nonlocal", got ${
          JSON.stringify(attention)
        }`,
      );
    }
    if (attention === "se" && Math.min(...widths) < 16) {
      throw new VisionError(`ResNet: SE's reduction r = 16 needs widths of at least 16, got ${widths}`);
    }
    this.config = {
      inChannels: Cin,
      numClasses: cfg.numClasses,
      widths: [...widths],
      depths: [...depths],
      attention,
    };
    const lo = { device: cfg.device, dtype: cfg.dtype };
    const seed = (k: number) => (cfg.seed === undefined ? undefined : cfg.seed + 1000 * k);
    this.stem = new Conv2d(Cin, widths[0], 3, { ...lo, padding: 1, bias: false, seed: seed(0) });
    this.stemBn = new BatchNorm2d(widths[0], lo);
    const plug = attention === "se" || attention === "eca" || attention === "cbam" ? attention : "none";
    this.stages = widths.map((w, i) => {
      const after = attention === "bam" && i < widths.length - 1
        ? "bam"
        : attention === "nonlocal" && i === Math.min(1, widths.length - 1)
        ? "nonlocal"
        : null;
      return new ResNetStage(
        i === 0 ? widths[0] : widths[i - 1],
        w,
        depths[i],
        i === 0 ? 1 : 2,
        plug,
        after,
        {
          ...lo,
          seed: seed(1 + i),
        },
      );
    });
    this.head = new Linear(widths[widths.length - 1], cfg.numClasses, { ...lo, seed: seed(9) });
  }

  /** Images (N, C, H, W) -> logits (N, classes). */
  forward(x: Tensor): Tensor {
    if (x.rank !== 4 || x.shape[1] !== this.config.inChannels) {
      throw new VisionError(
        `ResNet: images must be (N, ${this.config.inChannels}, H, W), got ${x.describe()}`,
      );
    }
    return tidy(() => {
      let h = this.stemBn.forward(this.stem.forward(x)).relu();
      for (const s of this.stages) h = s.forward(h);
      return this.head.forward(mean(h, [2, 3])); // global average pool (N, C)
    });
  }

  /** Forward FLOPs for `batch` images of H x W (convolutions, attention modules, head). */
  flops(batch = 1, H = 28, W = 28): number {
    let shape = [batch, this.config.inChannels, H, W];
    let total = this.stem.flops(shape);
    shape = this.stem.outputShape(shape);
    for (const s of this.stages) {
      for (const b of s.blocks) {
        total += b.flops(shape);
        shape = b.conv1.outputShape(shape);
      }
      if (s.after) total += s.after.flops(shape);
    }
    return total + 2 * batch * this.config.widths[this.config.widths.length - 1] * this.config.numClasses;
  }
}
