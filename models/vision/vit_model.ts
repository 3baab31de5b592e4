/**
 * A tiny Vision Transformer (Dosovitskiy et al., ICLR 2021) for small images: a p x p stride-p conv as the
 * patch embedding, a class token first, learned positions, pre-norm encoder blocks (LayerNorm,
 * {@link ViTAttention}, LayerNorm, GELU MLP), a final LayerNorm and a linear head on the class token.
 * `forwardWithAttention` also returns every layer's attention maps for {@link attentionRollout}.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import type { DeviceName } from "../../runtime/device.ts";
import { param } from "../../runtime/autograd.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { add } from "../../ops/core/elementwise.ts";
import { concat } from "../../ops/core/layout.ts";
import { conv2d } from "../../ops/vision/conv2d.ts";
import { init, LayerNorm, Linear, Module } from "../nn.ts";
import { checkInt, VisionError } from "./common.ts";
import { ViTAttention } from "./vit.ts";

/** Sizes and options of a {@link ViT}. */
export interface ViTConfig {
  /** Input image side (square) or [height, width]. */
  imageSize: number | [number, number];
  /** Patch side p (a p x p conv with stride p). */
  patchSize: number;
  /** Input channels (1 for MNIST). */
  inChannels?: number;
  /** Classes of the head. */
  numClasses: number;
  /** Token width D. */
  dModel: number;
  /** Encoder blocks. */
  nLayer: number;
  /** Attention heads (D a multiple of it). */
  nHead: number;
  /** MLP hidden width / D (default 4). */
  mlpRatio?: number;
  /** Seed of the first parameter. */
  seed?: number;
  /** Device of the parameters. */
  device?: DeviceName;
  /** Float dtype of the parameters (default f32). */
  dtype?: DType;
}

/** A pre-norm encoder block: x + MHSA(LN x), then + MLP(LN x) with GELU. */
export class ViTBlock extends Module {
  /** Before attention. */
  norm1: LayerNorm;
  /** Multi-head self-attention. */
  attn: ViTAttention;
  /** Before the MLP. */
  norm2: LayerNorm;
  /** D -> hidden, GELU. */
  fc1: Linear;
  /** hidden -> D. */
  fc2: Linear;
  /** Creates a block of width D with H heads and an MLP of `hidden`. */
  constructor(
    D: number,
    H: number,
    hidden: number,
    o: { seed?: number; device?: DeviceName; dtype?: DType },
  ) {
    super();
    const lo = { device: o.device, dtype: o.dtype };
    const seed = (k: number) => (o.seed === undefined ? undefined : o.seed + 10 * k);
    this.norm1 = new LayerNorm(D, { ...lo, eps: 1e-6 });
    this.attn = new ViTAttention(D, H, { ...lo, seed: seed(0) });
    this.norm2 = new LayerNorm(D, { ...lo, eps: 1e-6 });
    this.fc1 = new Linear(D, hidden, { ...lo, seed: seed(1) });
    this.fc2 = new Linear(hidden, D, { ...lo, seed: seed(2) });
  }
  /** x (B, T, D) -> (B, T, D). */
  forward(x: Tensor): Tensor {
    return this.forwardWithAttention(x).y;
  }
  /** The output and this block's attention maps (B, H, T, T). */
  forwardWithAttention(x: Tensor): { y: Tensor; attention: Tensor } {
    return tidy(() => {
      const a = this.attn.forwardWithAttention(this.norm1.forward(x));
      const h = add(x, a.y);
      const y = add(h, this.fc2.forward(this.fc1.forward(this.norm2.forward(h), "gelu")));
      return { y, attention: a.attention };
    });
  }
}

/**
 * ViT: images (B, C, H, W) -> logits (B, classes); see the module doc.
 *
 * @example
 * ```ts
 * import { randn, ViT } from "seqlab";
 * const m = new ViT({ imageSize: 8, patchSize: 4, numClasses: 3, dModel: 16, nLayer: 1, nHead: 2, seed: 1 });
 * console.log(m.forward(randn([2, 1, 8, 8], { seed: 2 })).shape, m.tokens); // [2, 3] 5
 * m.dispose();
 * ```
 */
export class ViT extends Module {
  /** Resolved configuration. */
  readonly config: Required<Omit<ViTConfig, "seed" | "device" | "dtype" | "imageSize">> & {
    imageSize: [number, number];
  };
  /** (D, C, p, p) patch embedding. */
  patchWeight: Tensor;
  /** (D). */
  patchBias: Tensor;
  /** (1, 1, D). */
  cls: Tensor;
  /** (1, T, D), T = patches + 1. */
  pos: Tensor;
  /** The encoder. */
  blocks: ViTBlock[];
  /** Final LayerNorm. */
  normF: LayerNorm;
  /** D -> classes. */
  head: Linear;

  /** Creates the model; throws naming a size that does not fit. */
  constructor(cfg: ViTConfig) {
    super();
    const [Hi, Wi] = typeof cfg.imageSize === "number" ? [cfg.imageSize, cfg.imageSize] : cfg.imageSize;
    const p = cfg.patchSize, D = cfg.dModel, C = cfg.inChannels ?? 1, r = cfg.mlpRatio ?? 4;
    for (
      const [n, v] of [
        ["imageSize", Hi],
        ["imageSize", Wi],
        ["patchSize", p],
        ["dModel", D],
        ["nLayer", cfg.nLayer],
        [
          "nHead",
          cfg.nHead,
        ],
        ["numClasses", cfg.numClasses],
        ["inChannels", C],
      ] as const
    ) checkInt("ViT", n, v);
    if (Hi % p !== 0 || Wi % p !== 0) {
      throw new VisionError(`ViT: patchSize ${p} does not divide the image ${Hi}x${Wi}`);
    }
    if (D % cfg.nHead !== 0) {
      throw new VisionError(`ViT: dModel ${D} is not a multiple of nHead ${cfg.nHead}`);
    }
    if (!(r > 0) || !Number.isInteger(r * D)) {
      throw new VisionError(`ViT: mlpRatio ${r} must give an integer hidden width for dModel ${D}`);
    }
    this.config = {
      imageSize: [Hi, Wi],
      patchSize: p,
      inChannels: C,
      numClasses: cfg.numClasses,
      dModel: D,
      nLayer: cfg.nLayer,
      nHead: cfg.nHead,
      mlpRatio: r,
    };
    const lo = { device: cfg.device, dtype: cfg.dtype };
    const seed = (k: number) => (cfg.seed === undefined ? undefined : cfg.seed + 1000 * k);
    const b = 1 / Math.sqrt(C * p * p);
    this.patchWeight = param(init.uniform([D, C, p, p], { ...lo, low: -b, high: b, seed: seed(0) }));
    this.patchBias = param(init.uniform([D], { ...lo, low: -b, high: b, seed: seed(1) }));
    this.cls = param(init.normal([1, 1, D], { ...lo, std: 0.02, seed: seed(2) }));
    this.pos = param(init.normal([1, (Hi / p) * (Wi / p) + 1, D], { ...lo, std: 0.02, seed: seed(3) }));
    this.blocks = Array.from(
      { length: cfg.nLayer },
      (_, i) => new ViTBlock(D, cfg.nHead, r * D, { ...lo, seed: seed(10 + i) }),
    );
    this.normF = new LayerNorm(D, { ...lo, eps: 1e-6 });
    this.head = new Linear(D, cfg.numClasses, { ...lo, seed: seed(4) });
  }

  /** Tokens per image: patches plus the class token. */
  get tokens(): number {
    const [H, W] = this.config.imageSize, p = this.config.patchSize;
    return (H / p) * (W / p) + 1;
  }

  /** The token sequence (B, T, D) before the blocks. */
  embed(x: Tensor): Tensor {
    const { inChannels: C, imageSize: [H, W], patchSize: p, dModel: D } = this.config;
    if (x.rank !== 4 || x.shape[1] !== C || x.shape[2] !== H || x.shape[3] !== W) {
      throw new VisionError(`ViT: images must be (B, ${C}, ${H}, ${W}), got ${x.describe()}`);
    }
    return tidy(() => {
      const Bn = x.shape[0];
      const e = conv2d(x, this.patchWeight, { stride: p, bias: this.patchBias }); // (B, D, H/p, W/p)
      const t = e.reshape([Bn, D, -1]).transpose(1, 2); // (B, P, D)
      return add(concat([this.cls.expand([Bn, 1, D]), t], 1), this.pos); // (B, T, D)
    });
  }

  /** Images -> logits (B, classes). */
  forward(x: Tensor): Tensor {
    return this.forwardWithAttention(x).logits;
  }

  /** Images -> logits and every block's attention maps (B, H, T, T), first block first. */
  forwardWithAttention(x: Tensor): { logits: Tensor; attention: Tensor[] } {
    return tidy(() => {
      let h = this.embed(x);
      const maps: Tensor[] = [];
      for (const b of this.blocks) {
        const r = b.forwardWithAttention(h);
        h = r.y;
        maps.push(r.attention);
      }
      const logits = this.head.forward(this.normF.forward(h).slice([null, 0]));
      return { logits, attention: maps };
    });
  }

  /** Forward FLOPs for a batch of `batch` images (patch conv, blocks, head). */
  flops(batch = 1): number {
    const { dModel: D, inChannels: C, patchSize: p, numClasses, mlpRatio } = this.config;
    const T = this.tokens;
    const block = this.blocks[0].attn.flops([1, T, D]) + 2 * 2 * T * D * mlpRatio * D;
    return batch * (2 * (T - 1) * D * C * p * p + this.config.nLayer * block + 2 * D * numClasses);
  }
}
