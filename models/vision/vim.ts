/**
 * Vision Mamba (Vim, Zhu et al., arXiv 2401.09417) at toy scale: patch embedding, a class token in the
 * middle of the sequence, learned positions, and bidirectional Mamba blocks; the head reads the class token.
 *
 * A Vim block's mixer (Vim's "bimamba v2"): xz = in_proj(h) (B, L, 2E); each direction runs Mamba's inner
 * part (conv1d + SiLU, x_proj, dt_proj, the selective scan gated by SiLU(z): seqlab's {@link mambaInner})
 * with its own conv, x_proj, dt_proj, A and D, the backward one over the flipped sequence; the two outputs
 * (the backward one flipped back) are averaged and go through one shared out_proj. The residual stream is
 * pre-norm (RMSNorm), as Vim-Ti's.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import type { DeviceName } from "../../runtime/device.ts";
import { param } from "../../runtime/autograd.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { init, Linear, Module, RMSNorm } from "../nn.ts";
import { mambaDtBiasInit, s4dRealALog } from "../mamba.ts";
import { add, mul } from "../../ops/core/elementwise.ts";
import { concat } from "../../ops/core/layout.ts";
import { mambaInner, type MambaInnerParams } from "../../ops/ssm/mamba_inner.ts";
import { scanCost } from "../../ops/ssm/selective_scan.ts";
import { flip } from "../../ops/ssm/vision.ts";
import { conv2d } from "../../ops/vision/conv2d.ts";

/** Sizes and options of a {@link Vim}. */
export interface VimConfig {
  /** Input image side (square) or [height, width]. */
  imageSize: number | [number, number];
  /** Patch side p: the image is cut into (H / p) x (W / p) patches (a p x p conv with stride p). */
  patchSize: number;
  /** Input channels (1 for MNIST). */
  inChannels?: number;
  /** Classes of the head. */
  numClasses: number;
  /** Token width D. */
  dModel: number;
  /** Vim blocks. */
  nLayer: number;
  /** SSM state size N (default 16). */
  dState?: number;
  /** Expansion E / D (default 2). */
  expand?: number;
  /** Causal conv width (default 4). */
  dConv?: number;
  /** Delta rank R (default ceil(D / 16)). */
  dtRank?: number;
  /** Where the class token sits: "middle" (Vim's choice, default), "first", or "none" (mean of the tokens). */
  clsPosition?: "middle" | "first" | "none";
  /** Seed of the first parameter (the others follow). */
  seed?: number;
  /** Device of the parameters. */
  device?: DeviceName;
  /** Float dtype of the parameters (default f32). */
  dtype?: DType;
}

/** One direction's inner parameters (conv1d, x_proj, dt_proj, A, D), initialised as Mamba's. */
export class MambaDirection extends Module {
  /** (E, W). */
  convWeight: Tensor;
  /** (E). */
  convBias: Tensor;
  /** E -> R + 2N, no bias. */
  xProj: Linear;
  /** R -> E, with the softplus-inverse dt bias. */
  dtProj: Linear;
  /** (E, N): A = -exp(ALog). */
  ALog: Tensor;
  /** (E): the skip. */
  D: Tensor;

  /** Creates the parameters for inner width E, state N, conv width W, delta rank R. */
  constructor(
    E: number,
    N: number,
    W: number,
    R: number,
    o: { seed?: number; device?: DeviceName; dtype?: DType },
  ) {
    super();
    const lo = { device: o.device, dtype: o.dtype };
    const seed = (k: number) => (o.seed === undefined ? undefined : o.seed + k);
    const cb = 1 / Math.sqrt(W);
    this.convWeight = param(init.uniform([E, W], { ...lo, low: -cb, high: cb, seed: seed(0) }));
    this.convBias = param(init.uniform([E], { ...lo, low: -cb, high: cb, seed: seed(1) }));
    this.xProj = new Linear(E, R + 2 * N, { ...lo, bias: false, seed: seed(2) });
    const wb = 1 / Math.sqrt(R);
    this.dtProj = new Linear(R, E, {
      ...lo,
      seed: seed(3),
      weightInit: (s, io) => init.uniform(s, { ...io, low: -wb, high: wb }),
      biasInit: mambaDtBiasInit(),
    });
    this.ALog = param(s4dRealALog(E, N, lo));
    this.D = param(init.ones([E], lo));
  }

  /** xz (B, L, 2E), the in-projection's output -> (B, L, E): {@link mambaInner} with these parameters. */
  forward(xz: Tensor): Tensor {
    return mambaInner(xz, this.params());
  }

  /** The parameters {@link mambaInner} takes. */
  params(): MambaInnerParams {
    return {
      convWeight: this.convWeight,
      convBias: this.convBias,
      xProjWeight: this.xProj.weight,
      dtProjWeight: this.dtProj.weight,
      dtProjBias: this.dtProj.bias!,
      ALog: this.ALog,
      D: this.D,
    };
  }
}

/** A Vim block: x + out_proj((inner_fwd(xz) + flip(inner_bwd(flip(xz)))) / 2), xz = in_proj(RMSNorm x). */
export class VimBlock extends Module {
  /** Pre-norm. */
  norm: RMSNorm;
  /** D -> 2E (x and the gate z), no bias. */
  inProj: Linear;
  /** The forward direction. */
  fwd: MambaDirection;
  /** The backward direction. */
  bwd: MambaDirection;
  /** E -> D, no bias, shared by the directions. */
  outProj: Linear;

  /** Creates a block of width D, inner width E. */
  constructor(
    D: number,
    E: number,
    N: number,
    W: number,
    R: number,
    o: { seed?: number; device?: DeviceName; dtype?: DType; nLayer: number },
  ) {
    super();
    const lo = { device: o.device, dtype: o.dtype };
    const seed = (k: number) => (o.seed === undefined ? undefined : o.seed + 10 * k);
    this.norm = new RMSNorm(D, { ...lo, eps: 1e-5 });
    this.inProj = new Linear(D, 2 * E, { ...lo, bias: false, seed: seed(0) });
    this.fwd = new MambaDirection(E, N, W, R, { ...lo, seed: seed(1) });
    this.bwd = new MambaDirection(E, N, W, R, { ...lo, seed: seed(2) });
    const ob = 1 / Math.sqrt(E) / Math.sqrt(o.nLayer);
    this.outProj = new Linear(E, D, {
      ...lo,
      bias: false,
      seed: seed(3),
      weightInit: (s, io) => init.uniform(s, { ...io, low: -ob, high: ob }),
    });
  }

  /** x (B, L, D) -> (B, L, D). */
  forward(x: Tensor): Tensor {
    return tidy(() => {
      const xz = this.inProj.forward(this.norm.forward(x)); // (B, L, 2E)
      const yf = this.fwd.forward(xz); // (B, L, E)
      const yb = flip(this.bwd.forward(flip(xz, 1)), 1); // (B, L, E)
      return add(x, this.outProj.forward(mul(add(yf, yb), 0.5)));
    });
  }
}

/**
 * Vision Mamba: image (B, C, H, W) -> logits (B, classes). Patches by a p x p conv with stride p (its
 * weight (D, C, p, p) and bias), a class token (middle by default), learned positions (T + 1, D), `nLayer`
 * {@link VimBlock}s, a final RMSNorm and a linear head on the class token (or on the mean of the tokens
 * with `clsPosition: "none"`).
 *
 * @example
 * ```ts
 * import { randn, Vim } from "seqlab";
 * const m = new Vim({ imageSize: 8, patchSize: 4, numClasses: 3, dModel: 16, nLayer: 1, seed: 1 });
 * console.log(m.forward(randn([2, 1, 8, 8], { seed: 2 })).shape, m.tokens); // [2, 3] 5
 * m.dispose();
 * ```
 */
export class Vim extends Module {
  /** Resolved configuration. */
  readonly config: Required<Omit<VimConfig, "seed" | "device" | "dtype" | "imageSize">> & {
    imageSize: [number, number];
  };
  /** (D, C, p, p) patch-embedding weight. */
  patchWeight: Tensor;
  /** (D). */
  patchBias: Tensor;
  /** (1, 1, D) class token, or null with `clsPosition: "none"`. */
  cls: Tensor | null;
  /** (1, T (+ 1), D) learned positions. */
  pos: Tensor;
  /** The blocks. */
  blocks: VimBlock[];
  /** Final norm. */
  normF: RMSNorm;
  /** D -> classes. */
  head: Linear;

  /** Creates the model; throws naming a size that does not fit. */
  constructor(cfg: VimConfig) {
    super();
    const [Hi, Wi] = typeof cfg.imageSize === "number" ? [cfg.imageSize, cfg.imageSize] : cfg.imageSize;
    const p = cfg.patchSize, D = cfg.dModel, C = cfg.inChannels ?? 1;
    const N = cfg.dState ?? 16,
      E = (cfg.expand ?? 2) * D,
      W = cfg.dConv ?? 4,
      R = cfg.dtRank ?? Math.ceil(D / 16);
    for (
      const [n, v] of [
        ["imageSize", Hi],
        ["imageSize", Wi],
        ["patchSize", p],
        ["dModel", D],
        ["nLayer", cfg.nLayer],
        [
          "numClasses",
          cfg.numClasses,
        ],
        ["inChannels", C],
        ["dState", N],
        ["dConv", W],
        ["dtRank", R],
      ] as const
    ) {
      if (!Number.isInteger(v) || v < 1) throw new Error(`Vim: ${n} must be a positive integer, got ${v}`);
    }
    if (Hi % p !== 0 || Wi % p !== 0) {
      throw new Error(`Vim: patchSize ${p} does not divide the image ${Hi}x${Wi}`);
    }
    const clsPosition = cfg.clsPosition ?? "middle";
    if (!["middle", "first", "none"].includes(clsPosition)) {
      throw new Error(
        `Vim: clsPosition must be "middle", "first" or "none", got ${JSON.stringify(clsPosition)}`,
      );
    }
    this.config = {
      imageSize: [Hi, Wi],
      patchSize: p,
      inChannels: C,
      numClasses: cfg.numClasses,
      dModel: D,
      nLayer: cfg.nLayer,
      dState: N,
      expand: E / D,
      dConv: W,
      dtRank: R,
      clsPosition,
    };
    const lo = { device: cfg.device, dtype: cfg.dtype };
    const seed = (k: number) => (cfg.seed === undefined ? undefined : cfg.seed + 1000 * k);
    const fan = C * p * p, b = 1 / Math.sqrt(fan);
    this.patchWeight = param(init.uniform([D, C, p, p], { ...lo, low: -b, high: b, seed: seed(0) }));
    this.patchBias = param(init.uniform([D], { ...lo, low: -b, high: b, seed: seed(1) }));
    const T = (Hi / p) * (Wi / p) + (clsPosition === "none" ? 0 : 1);
    this.cls = clsPosition === "none"
      ? null
      : param(init.normal([1, 1, D], { ...lo, std: 0.02, seed: seed(2) }));
    this.pos = param(init.normal([1, T, D], { ...lo, std: 0.02, seed: seed(3) }));
    this.blocks = Array.from(
      { length: cfg.nLayer },
      (_, i) => new VimBlock(D, E, N, W, R, { ...lo, seed: seed(10 + i), nLayer: cfg.nLayer }),
    );
    this.normF = new RMSNorm(D, { ...lo, eps: 1e-5 });
    this.head = new Linear(D, cfg.numClasses, { ...lo, seed: seed(4) });
  }

  /** Tokens per image: patches plus the class token. */
  get tokens(): number {
    const [H, W] = this.config.imageSize, p = this.config.patchSize;
    return (H / p) * (W / p) + (this.cls ? 1 : 0);
  }

  /** The class token's index in the sequence. */
  get clsIndex(): number {
    const P = this.tokens - (this.cls ? 1 : 0);
    return this.config.clsPosition === "middle" ? Math.floor(P / 2) : 0;
  }

  /** The token sequence (B, T, D) before the blocks: patches, class token, positions. */
  embed(x: Tensor): Tensor {
    const { inChannels: C, imageSize: [H, W], patchSize: p, dModel: D } = this.config;
    if (x.rank !== 4 || x.shape[1] !== C || x.shape[2] !== H || x.shape[3] !== W) {
      throw new Error(`Vim: images must be (B, ${C}, ${H}, ${W}), got ${x.describe()}`);
    }
    return tidy(() => {
      const Bn = x.shape[0];
      const e = conv2d(x, this.patchWeight, { stride: p, bias: this.patchBias }); // (B, D, H/p, W/p)
      let t = e.reshape([Bn, D, -1]).transpose(1, 2); // (B, P, D)
      if (this.cls) {
        const c = this.cls.expand([Bn, 1, D]);
        const m = this.clsIndex;
        t = m === 0
          ? concat([c, t], 1)
          : concat([t.slice([null, [0, m]]), c, t.slice([null, [m, t.shape[1]]])], 1);
      }
      return add(t, this.pos); // (B, T, D)
    });
  }

  /** Images (B, C, H, W) -> logits (B, classes). */
  forward(x: Tensor): Tensor {
    return tidy(() => {
      let h = this.embed(x);
      for (const b of this.blocks) h = b.forward(h);
      h = this.normF.forward(h);
      const feat = this.cls ? h.slice([null, this.clsIndex]) : h.mean(1); // (B, D)
      return this.head.forward(feat);
    });
  }

  /**
   * Forward FLOPs for a batch of `batch` images: 2 x the multiply-adds of the patch conv, projections,
   * convs and head, plus the selective scans' ~7 flops per (token, channel, state) ({@link scanCost}).
   */
  flops(batch = 1): number {
    const { dModel: D, expand, dState: N, dConv: W, dtRank: R, inChannels: C, patchSize: p, numClasses } =
      this.config;
    const E = expand * D, T = this.tokens, P = T - (this.cls ? 1 : 0);
    const patch = 2 * P * D * C * p * p;
    const dir = 2 * T * E * W + 2 * T * E * (R + 2 * N) + 2 * T * R * E +
      scanCost({ Bn: 1, D: E, N, L: T }).flops;
    const block = 2 * T * D * 2 * E + 2 * dir + 2 * T * E * D;
    return batch * (patch + this.config.nLayer * block + 2 * D * numClasses);
  }
}
