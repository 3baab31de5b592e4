/**
 * Spatial attention by self-attention over pixels: the non-local block (Wang et al., CVPR 2018; Guo et
 * al., arXiv 2111.07624, Section 3.3), embedded-Gaussian form.
 * @module
 */

import type { Tensor } from "../../runtime/tensor.ts";
import { tidy } from "../../runtime/tensor.ts";
import { add } from "../../ops/core/elementwise.ts";
import { matmul } from "../../ops/core/matmul.ts";
import { softmax } from "../../ops/core/rowwise.ts";
import { attention } from "../../ops/attention/attention.ts";
import { param } from "../../runtime/autograd.ts";
import { init, type LayerOptions, Module } from "../nn.ts";
import { checkFeatureMap, checkInt, checkShape, VisionError } from "./common.ts";
import { Conv2d } from "./conv.ts";

/** What {@link NonLocal} computed: the output and the attention map of one query pixel. */
export interface NonLocalOutput {
  /** (N, C, H, W): W_z y + x. */
  y: Tensor;
  /** (N, H, W): softmax over all positions j of theta(x_q) . phi(x_j) for the query pixel q; sums to 1. */
  map: Tensor;
}

/** Options of {@link NonLocal}. */
export interface NonLocalOptions extends LayerOptions {
  /** Channels of theta, phi and g (default floor(C / 2), at least 1). */
  inter?: number;
  /**
   * Initialise W_z (weight and bias) to zero, so the block starts as the identity, as the paper does
   * through its zero-initialised BatchNorm after W_z (default false: PyTorch's Conv2d init; with zeros
   * no gradient reaches theta, phi or g until W_z has moved).
   */
  zeroInit?: boolean;
}

/**
 * The non-local block, embedded Gaussian: theta, phi and g are 1x1 convolutions to C / 2 channels,
 * y_i = sum_j softmax_j(theta(x_i)^T phi(x_j)) g(x_j) over all H W positions (no 1 / sqrt(d) scale), and
 * z = W_z y + x with W_z a 1x1 convolution back to C. In the survey's form Attention = f(g(x), x):
 * g(x) = softmax(theta(x)^T phi(x)) (the (HW, HW) attention over positions) and f(g(x), x) = W_z (g(x)
 * g_emb(x)) + x. The pixel-to-pixel product runs through seqlab's `attention` op (one head of width
 * C / 2, layout "bthd", scale 1: FlashAttention on WebGPU, never materialising HW x HW there); the map of
 * one query pixel is computed beside it. The paper's BatchNorm after W_z is left out (see `zeroInit`).
 *
 * @example
 * ```ts
 * import { NonLocal, randn } from "seqlab";
 * const nl = new NonLocal(8, { seed: 1 });
 * const { y, map } = nl.forwardWithAttention(randn([2, 8, 5, 6]), [2, 3]);
 * console.log(y.shape, map.shape, nl.numParameters()); // [2, 8, 5, 6] [2, 5, 6] 148
 * nl.dispose();
 * ```
 */
export class NonLocal extends Module {
  /** C -> C / 2, the queries. */
  theta: Conv2d;
  /** C -> C / 2, the keys. */
  phi: Conv2d;
  /** C -> C / 2, the values. */
  g: Conv2d;
  /** C / 2 -> C. */
  wz: Conv2d;
  /** Channels of theta, phi, g. */
  readonly inter: number;

  /** Creates the four 1x1 convolutions (seeds seed, seed + 2, seed + 4, seed + 6). */
  constructor(readonly channels: number, o: NonLocalOptions = {}) {
    super();
    checkInt("NonLocal", "channels", channels);
    this.inter = o.inter ?? Math.max(1, Math.floor(channels / 2));
    checkInt("NonLocal", "inter", this.inter);
    const base = { device: o.device, dtype: o.dtype };
    const seed = (k: number) => o.seed === undefined ? undefined : o.seed + k;
    this.theta = new Conv2d(channels, this.inter, 1, { ...base, seed: seed(0) });
    this.phi = new Conv2d(channels, this.inter, 1, { ...base, seed: seed(2) });
    this.g = new Conv2d(channels, this.inter, 1, { ...base, seed: seed(4) });
    this.wz = new Conv2d(this.inter, channels, 1, { ...base, seed: seed(6) });
    if (o.zeroInit) {
      this.wz.weight.dispose();
      this.wz.bias!.dispose();
      this.wz.weight = param(init.zeros([channels, this.inter, 1, 1], base));
      this.wz.bias = param(init.zeros([channels], base));
    }
  }

  /**
   * x (N, C, H, W) -> the output and the attention map (N, H, W) of the query pixel [row, col]
   * (default the centre).
   */
  forwardWithAttention(x: Tensor, query?: readonly [number, number]): NonLocalOutput {
    checkFeatureMap("NonLocal", x, this.channels, this.theta.weight.device);
    const [N, , H, W] = x.shape, Ci = this.inter, P = H * W;
    const [qi, qj] = query ?? [Math.floor(H / 2), Math.floor(W / 2)];
    if (!Number.isInteger(qi) || !Number.isInteger(qj) || qi < 0 || qi >= H || qj < 0 || qj >= W) {
      throw new VisionError(
        `NonLocal: the query pixel [${qi}, ${qj}] is outside the ${H}x${W} feature map (x ${x.describe()})`,
      );
    }
    return tidy(() => {
      const th = this.theta.forward(x).reshape([N, Ci, P]); // (N, Ci, P)
      const ph = this.phi.forward(x).reshape([N, Ci, P]); // (N, Ci, P)
      const gx = this.g.forward(x).reshape([N, Ci, P]); // (N, Ci, P)
      // one head of width Ci: (N, P, 1, Ci) views in the "bthd" layout
      const asTokens = (t: Tensor) => t.transpose(1, 2).unsqueeze(2); // (N, P, 1, Ci)
      const { o } = attention(asTokens(th), asTokens(ph), asTokens(gx), { layout: "bthd", scale: 1 });
      const yi = o.reshape([N, P, Ci]).transpose(1, 2).reshape([N, Ci, H, W]); // (N, Ci, H, W)
      const y = add(this.wz.forward(yi), x); // (N, C, H, W)
      const q = th.slice([null, null, [qi * W + qj, qi * W + qj + 1]]).transpose(1, 2); // (N, 1, Ci)
      const map = softmax(matmul(q, ph), -1).reshape([N, H, W]); // (N, H, W)
      return { y, map };
    });
  }

  /** x (N, C, H, W) -> (N, C, H, W). */
  forward(x: Tensor): Tensor {
    const { y, map } = this.forwardWithAttention(x);
    map.dispose();
    return y;
  }

  /**
   * FLOPs on an input of `shape` (N, C, H, W), P = H W: theta, phi, g (3 P (2 C Ci + Ci) per image),
   * scores 2 P^2 Ci, softmax 5 P^2, weighted sum 2 P^2 Ci, W_z P (2 Ci C + C), residual P C.
   */
  flops(shape: readonly number[]): number {
    const [N, C, H, W] = checkShape("NonLocal", shape, this.channels);
    const P = H * W, Ci = this.inter;
    return N * (3 * P * (2 * C * Ci + Ci) + 4 * P * P * Ci + 5 * P * P + P * (2 * Ci * C + C) + P * C);
  }
}
