/**
 * VMamba (Liu et al., arXiv 2401.10166) at toy scale: a patch stem, stages of VSS blocks whose SS2D mixer
 * scans the feature map in four directions, patch merging between stages, and a pooled linear head.
 *
 * SS2D(x), x (B, H, W, C) channels-last: xz = in_proj(x) (2E); x' = SiLU(depthwise 3x3 conv(x)) (B, E, H,
 * W); cross-scan into 4 sequences (row-major, column-major, both reversed: {@link crossScan}), each with its
 * own x_proj (E -> R + 2N), dt_proj (R -> E), A and D: one selective scan over the 4 E channels with B and
 * C grouped per direction (the scan's (B, G = 4, N, L) layout); cross-merge back ({@link crossMerge}),
 * LayerNorm, gate by SiLU(z), out_proj. A VSS block is x + SS2D(LayerNorm(x)) (VMamba v1's block, no MLP).
 * Patch merging: each 2 x 2 neighbourhood's 4 C channels, LayerNorm, a linear map to 2 C (Swin's).
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import type { DeviceName } from "../../runtime/device.ts";
import { param } from "../../runtime/autograd.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { init, LayerNorm, Linear, Module } from "../nn.ts";
import { mambaDtBiasInit, s4dRealALog } from "../mamba.ts";
import { add, exp, mul, neg } from "../../ops/core/elementwise.ts";
import { concat } from "../../ops/core/layout.ts";
import { matmul } from "../../ops/core/matmul.ts";
import { scanCost, selectiveScan } from "../../ops/ssm/selective_scan.ts";
import { crossMerge, crossScan } from "../../ops/ssm/vision.ts";
import { conv2d } from "../../ops/vision/conv2d.ts";

type Lo = { device?: DeviceName; dtype?: DType };

/** Sizes and options of a {@link VMamba}. */
export interface VMambaConfig {
  /** Input image side (square) or [height, width]. */
  imageSize: number | [number, number];
  /** Stem patch side (default 4, VMamba's). */
  patchSize?: number;
  /** Input channels (1 for MNIST). */
  inChannels?: number;
  /** Classes of the head. */
  numClasses: number;
  /** Channels per stage (each twice the last; VMamba-T: 96, 192, 384, 768). */
  dims: number[];
  /** VSS blocks per stage (VMamba-T: 2, 2, 9, 2). */
  depths: number[];
  /** SSM state size N (default 16). */
  dState?: number;
  /** Expansion E / C (default 2). */
  expand?: number;
  /** Delta rank R (default ceil(C / 16)). */
  dtRank?: number;
  /** Seed of the first parameter. */
  seed?: number;
  /** Device of the parameters. */
  device?: DeviceName;
  /** Float dtype of the parameters (default f32). */
  dtype?: DType;
}

/** The 2-D selective scan mixer (see the module doc). x (B, H, W, C) -> (B, H, W, C). */
export class SS2D extends Module {
  /** C -> 2E, no bias. */
  inProj: Linear;
  /** (E, 1, 3, 3) depthwise conv and its bias (E). */
  convWeight: Tensor;
  /** (E). */
  convBias: Tensor;
  /** (4, E, R + 2N): each direction's x_proj. */
  xProj: Tensor;
  /** (4, R, E): each direction's dt_proj weight. */
  dtProj: Tensor;
  /** (4 E): the dt_projs' biases. */
  dtBias: Tensor;
  /** (4 E, N). */
  ALog: Tensor;
  /** (4 E). */
  D: Tensor;
  /** LayerNorm (E) before the gate. */
  outNorm: LayerNorm;
  /** E -> C, no bias. */
  outProj: Linear;
  /** Resolved sizes. */
  readonly dims: { C: number; E: number; N: number; R: number };

  /** Creates the mixer for C channels. */
  constructor(C: number, o: Lo & { seed?: number; dState?: number; expand?: number; dtRank?: number }) {
    super();
    const N = o.dState ?? 16, E = (o.expand ?? 2) * C, R = o.dtRank ?? Math.ceil(C / 16);
    this.dims = { C, E, N, R };
    const lo = { device: o.device, dtype: o.dtype };
    const seed = (k: number) => (o.seed === undefined ? undefined : o.seed + k);
    this.inProj = new Linear(C, 2 * E, { ...lo, bias: false, seed: seed(0) });
    const cb = 1 / 3; // fan_in of a depthwise 3x3: 9
    this.convWeight = param(init.uniform([E, 1, 3, 3], { ...lo, low: -cb, high: cb, seed: seed(1) }));
    this.convBias = param(init.uniform([E], { ...lo, low: -cb, high: cb, seed: seed(2) }));
    const xb = 1 / Math.sqrt(E), wb = 1 / Math.sqrt(R);
    this.xProj = param(init.uniform([4, E, R + 2 * N], { ...lo, low: -xb, high: xb, seed: seed(3) }));
    this.dtProj = param(init.uniform([4, R, E], { ...lo, low: -wb, high: wb, seed: seed(4) }));
    this.dtBias = param(mambaDtBiasInit()([4 * E], { ...lo, seed: seed(5) }));
    this.ALog = param(s4dRealALog(4 * E, N, lo));
    this.D = param(init.ones([4 * E], lo));
    this.outNorm = new LayerNorm(E, lo);
    this.outProj = new Linear(E, C, { ...lo, bias: false, seed: seed(6) });
  }

  /** x (B, H, W, C) -> (B, H, W, C). */
  forward(x: Tensor): Tensor {
    const { E, N, R } = this.dims;
    const [Bn, H, W] = x.shape;
    const L = H * W;
    return tidy(() => {
      const xz = this.inProj.forward(x); // (B, H, W, 2E)
      const xi = xz.slice([null, null, null, [0, E]]).permute([0, 3, 1, 2]); // (B, E, H, W)
      const z = xz.slice([null, null, null, [E, 2 * E]]); // (B, H, W, E)
      const xc = conv2d(xi, this.convWeight, { padding: 1, groups: E, bias: this.convBias }).silu(); // (B, E, H, W)
      const xs = crossScan(xc); // (B, 4, E, L)
      const dbl = matmul(xs.transpose(2, 3), this.xProj); // (B, 4, L, R + 2N)
      const dt = matmul(dbl.slice([null, null, null, [0, R]]), this.dtProj); // (B, 4, L, E)
      const Bm = dbl.slice([null, null, null, [R, R + N]]).transpose(2, 3); // (B, 4, N, L)
      const Cm = dbl.slice([null, null, null, [R + N, R + 2 * N]]).transpose(2, 3); // (B, 4, N, L)
      const y = selectiveScan(
        xs.reshape([Bn, 4 * E, L]),
        dt.transpose(2, 3).reshape([Bn, 4 * E, L]),
        neg(exp(this.ALog)),
        Bm,
        Cm,
        { D: this.D, deltaBias: this.dtBias, deltaSoftplus: true },
      ); // (B, 4E, L)
      const m = crossMerge(y.reshape([Bn, 4, E, L]), H, W).permute([0, 2, 3, 1]); // (B, H, W, E)
      return this.outProj.forward(mul(this.outNorm.forward(m), z.silu())); // (B, H, W, C)
    });
  }

  /** Forward FLOPs for one image of H x W. */
  flops(H: number, W: number): number {
    const { C, E, N, R } = this.dims;
    const L = H * W;
    return 2 * L * C * 2 * E + 2 * L * E * 9 + 4 * (2 * L * E * (R + 2 * N) + 2 * L * R * E) +
      scanCost({ Bn: 1, D: 4 * E, N, L }).flops + 2 * L * E * C;
  }
}

/** A VSS block: x + SS2D(LayerNorm(x)), x (B, H, W, C). */
export class VSSBlock extends Module {
  /** Pre-norm. */
  norm: LayerNorm;
  /** The mixer. */
  ss2d: SS2D;
  /** Creates a block of C channels. */
  constructor(C: number, o: Lo & { seed?: number; dState?: number; expand?: number; dtRank?: number }) {
    super();
    this.norm = new LayerNorm(C, { device: o.device, dtype: o.dtype });
    this.ss2d = new SS2D(C, o);
  }
  /** x (B, H, W, C) -> (B, H, W, C). */
  forward(x: Tensor): Tensor {
    return tidy(() => add(x, this.ss2d.forward(this.norm.forward(x))));
  }
}

/** One stage: its VSS blocks in order. */
export class VSSStage extends Module {
  /** The blocks. */
  blocks: VSSBlock[];
  /** Creates `depth` blocks of C channels (seeds seed, seed + 1, ...). */
  constructor(
    C: number,
    depth: number,
    o: Lo & { seed?: number; dState?: number; expand?: number; dtRank?: number },
  ) {
    super();
    this.blocks = Array.from(
      { length: depth },
      (_, j) => new VSSBlock(C, { ...o, seed: o.seed === undefined ? undefined : o.seed + 10 * j }),
    );
  }
  /** x (B, H, W, C) -> (B, H, W, C). */
  forward(x: Tensor): Tensor {
    let h = x;
    for (const b of this.blocks) h = b.forward(h);
    return h;
  }
}

/** Patch merging: (B, H, W, C) -> (B, H / 2, W / 2, 2 C) by each 2 x 2 neighbourhood, LayerNorm, linear. */
export class PatchMerging extends Module {
  /** LayerNorm (4 C). */
  norm: LayerNorm;
  /** 4 C -> 2 C, no bias. */
  reduction: Linear;
  /** Creates the layer for C channels. */
  constructor(readonly channels: number, o: Lo & { seed?: number }) {
    super();
    this.norm = new LayerNorm(4 * channels, { device: o.device, dtype: o.dtype });
    this.reduction = new Linear(4 * channels, 2 * channels, { ...o, bias: false });
  }
  /** x (B, H, W, C), H and W even -> (B, H / 2, W / 2, 2 C). */
  forward(x: Tensor): Tensor {
    const [Bn, H, W, C] = x.shape;
    if (H % 2 !== 0 || W % 2 !== 0) {
      throw new Error(`PatchMerging: the map ${H}x${W} must have even sides`);
    }
    return tidy(() => {
      const v = x.reshape([Bn, H / 2, 2, W / 2, 2, C]); // (B, H/2, dy, W/2, dx, C)
      const at = (dy: number, dx: number) => v.slice([null, null, dy, null, dx]); // (B, H/2, W/2, C)
      // Swin's order: (0, 0), (1, 0), (0, 1), (1, 1)
      const m = concat([at(0, 0), at(1, 0), at(0, 1), at(1, 1)], 3); // (B, H/2, W/2, 4C)
      return this.reduction.forward(this.norm.forward(m));
    });
  }
}

/**
 * VMamba: image (B, C, H, W) -> logits (B, classes). A p x p stride-p conv stem to dims[0] channels and a
 * LayerNorm, then per stage `depths[i]` {@link VSSBlock}s, with {@link PatchMerging} between stages (each
 * stage's map is half the last's and its channels twice: dims[i + 1] = 2 dims[i]); a final LayerNorm, the
 * mean over positions, and a linear head.
 *
 * @example
 * ```ts
 * import { randn, VMamba } from "seqlab";
 * const m = new VMamba({ imageSize: 8, patchSize: 2, numClasses: 3, dims: [8, 16], depths: [1, 1], dState: 4, seed: 1 });
 * console.log(m.forward(randn([2, 1, 8, 8], { seed: 2 })).shape); // [2, 3]
 * m.dispose();
 * ```
 */
export class VMamba extends Module {
  /** Resolved configuration. */
  readonly config: Required<Omit<VMambaConfig, "seed" | "device" | "dtype" | "imageSize" | "dtRank">> & {
    imageSize: [number, number];
  };
  /** (dims[0], C, p, p) stem conv weight. */
  stemWeight: Tensor;
  /** (dims[0]). */
  stemBias: Tensor;
  /** LayerNorm after the stem. */
  stemNorm: LayerNorm;
  /** The stages. */
  stages: VSSStage[];
  /** Between stages. */
  merges: PatchMerging[];
  /** Final LayerNorm. */
  normF: LayerNorm;
  /** dims[-1] -> classes. */
  head: Linear;

  /** Creates the model; throws naming a size that does not fit. */
  constructor(cfg: VMambaConfig) {
    super();
    const [Hi, Wi] = typeof cfg.imageSize === "number" ? [cfg.imageSize, cfg.imageSize] : cfg.imageSize;
    const p = cfg.patchSize ?? 4, Cin = cfg.inChannels ?? 1;
    const { dims, depths } = cfg;
    if (!dims.length || dims.length !== depths.length) {
      throw new Error(
        `VMamba: dims and depths must be non-empty and of one length, got ${dims} and ${depths}`,
      );
    }
    for (
      const [n, v] of [
        ["patchSize", p],
        ["inChannels", Cin],
        ["numClasses", cfg.numClasses],
        ...dims.map((d) => ["dims", d] as const),
        ...depths.map((d) => ["depths", d] as const),
      ] as const
    ) {
      if (!Number.isInteger(v) || v < 1) {
        throw new Error(`VMamba: ${n} must hold positive integers, got ${v}`);
      }
    }
    dims.forEach((d, i) => {
      if (i > 0 && d !== 2 * dims[i - 1]) {
        throw new Error(`VMamba: each stage has twice the last's channels (patch merging), got dims ${dims}`);
      }
    });
    if (Hi % p !== 0 || Wi % p !== 0) {
      throw new Error(`VMamba: patchSize ${p} does not divide the image ${Hi}x${Wi}`);
    }
    const f = 2 ** (dims.length - 1);
    if ((Hi / p) % f !== 0 || (Wi / p) % f !== 0) {
      throw new Error(
        `VMamba: the ${Hi / p}x${Wi / p} map after the stem cannot be halved ${
          dims.length - 1
        } times (patch merging)`,
      );
    }
    this.config = {
      imageSize: [Hi, Wi],
      patchSize: p,
      inChannels: Cin,
      numClasses: cfg.numClasses,
      dims: [...dims],
      depths: [...depths],
      dState: cfg.dState ?? 16,
      expand: cfg.expand ?? 2,
    };
    const lo = { device: cfg.device, dtype: cfg.dtype };
    const seed = (k: number) => (cfg.seed === undefined ? undefined : cfg.seed + 1000 * k);
    const b = 1 / Math.sqrt(Cin * p * p);
    this.stemWeight = param(init.uniform([dims[0], Cin, p, p], { ...lo, low: -b, high: b, seed: seed(0) }));
    this.stemBias = param(init.uniform([dims[0]], { ...lo, low: -b, high: b, seed: seed(1) }));
    this.stemNorm = new LayerNorm(dims[0], lo);
    const so = { ...lo, dState: cfg.dState, expand: cfg.expand, dtRank: cfg.dtRank };
    this.stages = dims.map((d, i) => new VSSStage(d, depths[i], { ...so, seed: seed(10 + i) }));
    this.merges = dims.slice(0, -1).map((d, i) => new PatchMerging(d, { ...lo, seed: seed(100 + i) }));
    this.normF = new LayerNorm(dims[dims.length - 1], lo);
    this.head = new Linear(dims[dims.length - 1], cfg.numClasses, { ...lo, seed: seed(2) });
  }

  /** Images (B, C, H, W) -> logits (B, classes). */
  forward(x: Tensor): Tensor {
    const { inChannels: C, imageSize: [H, W], patchSize: p } = this.config;
    if (x.rank !== 4 || x.shape[1] !== C || x.shape[2] !== H || x.shape[3] !== W) {
      throw new Error(`VMamba: images must be (B, ${C}, ${H}, ${W}), got ${x.describe()}`);
    }
    return tidy(() => {
      const e = conv2d(x, this.stemWeight, { stride: p, bias: this.stemBias }); // (B, C0, H/p, W/p)
      let h = this.stemNorm.forward(e.permute([0, 2, 3, 1])); // (B, H/p, W/p, C0)
      this.stages.forEach((stage, i) => {
        if (i > 0) h = this.merges[i - 1].forward(h);
        h = stage.forward(h);
      });
      const pooled = this.normF.forward(h).mean([1, 2]); // (B, C_last)
      return this.head.forward(pooled);
    });
  }

  /** Forward FLOPs for a batch of `batch` images (SS2D's projections, conv and scans; stem, merges, head). */
  flops(batch = 1): number {
    const { imageSize: [H0, W0], patchSize: p, inChannels: Cin, dims, numClasses } = this.config;
    let H = H0 / p, W = W0 / p;
    let total = 2 * H * W * dims[0] * Cin * p * p;
    this.stages.forEach((stage, i) => {
      if (i > 0) {
        H /= 2;
        W /= 2;
        total += 2 * H * W * 4 * dims[i - 1] * dims[i];
      }
      for (const b of stage.blocks) total += b.ss2d.flops(H, W);
    });
    return batch * (total + 2 * dims[dims.length - 1] * numClasses);
  }
}
