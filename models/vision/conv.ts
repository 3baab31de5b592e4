/**
 * `Conv2d`, a {@link Module} over the `conv2d` op (NCHW).
 *
 * FLOPs here follow seqlab's convention (ops' `stats`): a multiply-add is 2 FLOPs, and an elementwise op,
 * a comparison or one element entering a reduction is 1. The vision papers' "GFLOPs" (ResNet-50's 3.86)
 * count multiply-adds, so divide ours by 2 to compare.
 * @module
 */

import { param } from "../../runtime/autograd.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { conv2d, conv2dGeometry } from "../../ops/vision/conv2d.ts";
import { init, type LayerOptions, Module } from "../nn.ts";
import { checkFeatureMap, checkInt, checkShape, VisionError } from "./common.ts";

/** Options of {@link Conv2d}. */
export interface Conv2dLayerOptions extends LayerOptions {
  /** Step between output positions (default 1). */
  stride?: number | [number, number];
  /** Zeros added on each side (default 0). */
  padding?: number | [number, number];
  /** Spacing of the kernel's taps (default 1). */
  dilation?: number | [number, number];
  /** Channel groups (default 1): inChannels and outChannels must be multiples. */
  groups?: number;
  /** Learn a bias per output channel (default true). */
  bias?: boolean;
}

const pairOf = (v: number | [number, number]): [number, number] => typeof v === "number" ? [v, v] : v;

/**
 * A 2-D convolution layer, NCHW: weight (O, C / groups, KH, KW) and an optional bias (O), initialised as
 * PyTorch's `nn.Conv2d`: kaiming-uniform with a = sqrt(5), i.e. U(-b, b) with b = 1 / sqrt(fanIn), and the
 * bias U(-1 / sqrt(fanIn), 1 / sqrt(fanIn)), where fanIn = C / groups KH KW. Options are checked when the
 * layer is built; an input with the wrong channel count throws a {@link VisionError}.
 *
 * @example
 * ```ts
 * import { Conv2d, randn } from "seqlab";
 * const conv = new Conv2d(3, 8, 3, { padding: 1, stride: 2, seed: 1 });
 * console.log(conv.forward(randn([2, 3, 28, 28])).shape, conv.numParameters()); // [2, 8, 14, 14] 224
 * console.log(conv.flops([2, 3, 28, 28])); // 2 * 2*8*14*14 * 27 + 2*8*14*14 = 172480
 * conv.dispose();
 * ```
 */
export class Conv2d extends Module {
  /** (O, C / groups, KH, KW). */
  weight: Tensor;
  /** (O) or null. */
  bias: Tensor | null;
  /** [KH, KW]. */
  readonly kernel: [number, number];
  /** [sh, sw]. */
  readonly stride: [number, number];
  /** [ph, pw]. */
  readonly padding: [number, number];
  /** [dh, dw]. */
  readonly dilation: [number, number];
  /** Channel groups. */
  readonly groups: number;

  /** Creates the weight and bias; `kernel` is one size or [KH, KW]. */
  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    kernel: number | [number, number],
    o: Conv2dLayerOptions = {},
  ) {
    super();
    this.kernel = pairOf(kernel);
    this.stride = pairOf(o.stride ?? 1);
    this.padding = pairOf(o.padding ?? 0);
    this.dilation = pairOf(o.dilation ?? 1);
    this.groups = o.groups ?? 1;
    checkInt("Conv2d", "inChannels", inChannels);
    checkInt("Conv2d", "outChannels", outChannels);
    checkInt("Conv2d", "groups", this.groups);
    for (
      const [n, v, min] of [["kernel", this.kernel, 1], ["stride", this.stride, 1], [
        "dilation",
        this.dilation,
        1,
      ], ["padding", this.padding, 0]] as const
    ) {
      if (v.length !== 2) {
        throw new VisionError(`Conv2d: ${n} must be a number or two, got ${JSON.stringify(v)}`);
      }
      for (const x of v) checkInt("Conv2d", n, x, min);
    }
    if (inChannels % this.groups !== 0 || outChannels % this.groups !== 0) {
      throw new VisionError(
        `Conv2d: groups = ${this.groups} must divide inChannels (${inChannels}) and outChannels (${outChannels})`,
      );
    }
    const [KH, KW] = this.kernel;
    const fanIn = (inChannels / this.groups) * KH * KW;
    const base = { device: o.device, dtype: o.dtype };
    const seed = (k: number) => o.seed === undefined ? undefined : o.seed + k;
    this.weight = param(init.kaimingUniform([outChannels, inChannels / this.groups, KH, KW], {
      ...base,
      seed: seed(0),
      fanIn,
      nonlinearity: "leakyRelu",
      a: Math.sqrt(5),
    }));
    const b = 1 / Math.sqrt(fanIn);
    this.bias = o.bias === false
      ? null
      : param(init.uniform([outChannels], { ...base, seed: seed(1), low: -b, high: b }));
  }

  /** The conv2d options of this layer (bias excluded). */
  #opts() {
    return { stride: this.stride, padding: this.padding, dilation: this.dilation, groups: this.groups };
  }

  /** x (N, C, H, W) -> (N, O, OH, OW). */
  forward(x: Tensor): Tensor {
    checkFeatureMap("Conv2d", x, this.inChannels, this.weight.device);
    conv2dGeometry(x.shape, this.weight.shape, this.#opts(), "Conv2d"); // errors named after the layer
    return conv2d(x, this.weight, { ...this.#opts(), bias: this.bias });
  }

  /** The output shape (N, O, OH, OW) for an input shape (N, C, H, W); throws if it does not fit. */
  outputShape(shape: readonly number[]): [number, number, number, number] {
    checkShape("Conv2d", shape, this.inChannels);
    const g = conv2dGeometry(shape, this.weight.shape, this.#opts(), "Conv2d");
    return [g.N, g.O, g.OH, g.OW];
  }

  /** FLOPs of `forward` on an input of `shape`: 2 (C / groups) KH KW per output element, +1 with a bias. */
  flops(shape: readonly number[]): number {
    const [N, O, OH, OW] = this.outputShape(shape);
    const [KH, KW] = this.kernel;
    const perOut = 2 * (this.inChannels / this.groups) * KH * KW + (this.bias ? 1 : 0);
    return N * O * OH * OW * perOut;
  }
}
