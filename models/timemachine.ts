/**
 * TimeMachine (Ahamed and Cheng, arXiv 2403.09898; docs/papers.md, Vision and time-series Mamba): a
 * long-term forecaster from four Mamba blocks at two scales. The lookback window is normalised per
 * instance (RevIN), embedded by Linear(L -> n1) (the fine scale) and Linear(n1 -> n2) (the coarse scale);
 * at each scale one Mamba reads the tokens as they are and one reads the transposed tensor; a
 * Linear(2 n1 -> horizon) head maps both scales to the forecast, which is de-normalised.
 * @module
 */

import type { DType } from "../runtime/dtype.ts";
import type { DeviceName } from "../runtime/device.ts";
import { param } from "../runtime/autograd.ts";
import { type Tensor, tidy } from "../runtime/tensor.ts";
import { add, concat, div, mul, sqrt, sub } from "../ops/core/mod.ts";
import { Dropout, init, Linear, Module } from "./nn.ts";
import { Mamba, type MambaConfig } from "./mamba.ts";

/** Configuration of a {@link TimeMachine}; defaults are a small version of the paper's ETTh1 setup. */
export interface TimeMachineConfig {
  /** Lookback length L. */
  seqLen: number;
  /** Forecast horizon H. */
  predLen: number;
  /** Channels (variates) M of the series. */
  channels: number;
  /** Width of the fine scale (default 128; the paper's ETTh1 runs use 512). */
  n1?: number;
  /** Width of the coarse scale (default 32). */
  n2?: number;
  /** State size of the Mamba blocks (default 16; the paper's ETTh1 runs use 256). */
  dState?: number;
  /** Conv width of the Mamba blocks (default 2, as the paper). */
  dConv?: number;
  /** Expansion of the Mamba blocks (default 1, as the paper). */
  expand?: number;
  /** Dropout after each embedding (default 0; the paper's ETTh1 runs use 0.7). */
  dropout?: number;
  /**
   * Channel independence (default true): every channel is its own sample (B M, 1, L) and the transposed
   * branches scan the n1 (or n2) embedded positions as a one-wide sequence. With false (channel mixing)
   * the untransposed branches scan the M channels as tokens of width n1 (n2), and the transposed branches
   * the embedded positions as tokens of width M.
   */
  channelIndependent?: boolean;
  /**
   * RevIN's learnable affine map per channel after the instance normalisation (default true). The
   * normalisation itself (statistics over the lookback, without gradient) is always applied, as in the
   * reference code.
   */
  revin?: boolean;
  /** The residual connections around the coarse scale (default true). */
  residual?: boolean;
  /** Seed of the first parameter (the others follow). */
  seed?: number;
  /** Device of the parameters. */
  device?: DeviceName;
  /** Float dtype of the parameters (default f32). */
  dtype?: DType;
  /** Options of the selective scans (see {@link MambaConfig}). */
  scan?: MambaConfig["scan"];
}

const EPS = 1e-5;

/**
 * The TimeMachine forecaster: x (B, L, M) -> (B, H, M).
 *
 * Blocks (names as the reference code): lin1 (L -> n1), lin2 (n1 -> n2), lin3 (n2 -> n1),
 * lin4 (2 n1 -> H); mamba3 / mamba4 at the fine scale and mamba2 / mamba1 at the coarse scale, the
 * second of each pair on the transposed tensor. The instance normalisation makes the forecast of `a x + b`
 * (a > 0, per channel) equal to `a` times the forecast of x plus b.
 *
 * @example
 * ```ts
 * import { randn } from "seqlab";
 * import { TimeMachine } from "./timemachine.ts"; // also "seqlab" once models/mod.ts exports it
 * const tm = new TimeMachine({ seqLen: 24, predLen: 8, channels: 3, n1: 16, n2: 8, dState: 4, seed: 1 });
 * console.log(tm.forward(randn([2, 24, 3], { seed: 2 })).shape); // [2, 8, 3]
 * tm.dispose();
 * ```
 */
export class TimeMachine extends Module {
  /** L -> n1, the fine-scale embedding. */
  lin1: Linear;
  /** n1 -> n2, the coarse-scale embedding. */
  lin2: Linear;
  /** n2 -> n1, back from the coarse scale. */
  lin3: Linear;
  /** 2 n1 -> H, the head. */
  lin4: Linear;
  /** Coarse scale, transposed view. */
  mamba1: Mamba;
  /** Coarse scale, tokens of width n2. */
  mamba2: Mamba;
  /** Fine scale, tokens of width n1. */
  mamba3: Mamba;
  /** Fine scale, transposed view. */
  mamba4: Mamba;
  /** Dropout after lin1. */
  drop1: Dropout;
  /** Dropout after lin2. */
  drop2: Dropout;
  /** RevIN's affine weight (M), or null without RevIN. */
  revinWeight: Tensor | null;
  /** RevIN's affine bias (M), or null. */
  revinBias: Tensor | null;
  /** Resolved sizes and switches. */
  readonly dims: {
    L: number;
    H: number;
    M: number;
    n1: number;
    n2: number;
    ci: boolean;
    revin: boolean;
    residual: boolean;
  };

  /** Creates the model's parameters. */
  constructor(cfg: TimeMachineConfig) {
    super();
    const L = cfg.seqLen, H = cfg.predLen, M = cfg.channels;
    const n1 = cfg.n1 ?? 128, n2 = cfg.n2 ?? 32;
    for (
      const [n, v] of [["seqLen", L], ["predLen", H], ["channels", M], ["n1", n1], ["n2", n2]] as const
    ) {
      if (!Number.isInteger(v) || v < 1) {
        throw new Error(`TimeMachine: ${n} must be a positive integer, got ${v}`);
      }
    }
    const p = cfg.dropout ?? 0;
    if (!(p >= 0 && p < 1)) throw new Error(`TimeMachine: dropout must be in [0, 1), got ${p}`);
    const ci = cfg.channelIndependent ?? true;
    this.dims = { L, H, M, n1, n2, ci, revin: cfg.revin ?? true, residual: cfg.residual ?? true };
    const o = { device: cfg.device, dtype: cfg.dtype };
    const seed = (k: number) => (cfg.seed === undefined ? undefined : cfg.seed + 100 * k);
    this.lin1 = new Linear(L, n1, { ...o, seed: seed(0) });
    this.lin2 = new Linear(n1, n2, { ...o, seed: seed(1) });
    this.lin3 = new Linear(n2, n1, { ...o, seed: seed(2) });
    this.lin4 = new Linear(2 * n1, H, { ...o, seed: seed(3) });
    const width = ci ? 1 : M; // the transposed views' token width
    const block = (dModel: number, k: number) =>
      new Mamba({
        ...o,
        dModel,
        dState: cfg.dState ?? 16,
        dConv: cfg.dConv ?? 2,
        expand: cfg.expand ?? 1,
        seed: seed(k),
        scan: cfg.scan,
      });
    this.mamba1 = block(width, 4);
    this.mamba2 = block(n2, 5);
    this.mamba3 = block(n1, 6);
    this.mamba4 = block(width, 7);
    this.drop1 = new Dropout(p, { seed: seed(8) });
    this.drop2 = new Dropout(p, { seed: seed(9) });
    this.revinWeight = this.dims.revin ? param(init.ones([M], o)) : null;
    this.revinBias = this.dims.revin ? param(init.zeros([M], o)) : null;
  }

  /** x (B, L, M) -> the forecast (B, H, M). */
  forward(x: Tensor): Tensor {
    const { L, H, M, ci, residual } = this.dims;
    if (x.rank !== 3 || x.shape[1] !== L || x.shape[2] !== M) {
      throw new Error(`TimeMachine: x must be (B, L, M) with L = ${L}, M = ${M}, got ${x.describe()}`);
    }
    const Bn = x.shape[0];
    return tidy(() => {
      // per-instance statistics over time, without gradient (as RevIN)
      const mean = x.mean(1, true).detach(); // (B, 1, M)
      const centred = sub(x, mean);
      const std = sqrt(add(mul(centred, centred).mean(1, true), EPS)).detach(); // (B, 1, M)
      let h = div(centred, std);
      if (this.revinWeight) h = add(mul(h, this.revinWeight), this.revinBias!);
      h = h.transpose(1, 2); // (B, M, L)
      if (ci) h = h.reshape([Bn * M, 1, L]); // (B M, 1, L)
      const x1 = this.lin1.forward(h); // (B', C, n1), C = 1 (independent) or M (mixing)
      const d1 = this.drop1.forward(x1);
      const fine = add(this.mamba3.forward(d1), this.mamba4.forward(d1.transpose(1, 2)).transpose(1, 2));
      const x2 = this.lin2.forward(d1); // (B', C, n2)
      const d2 = this.drop2.forward(x2);
      let coarse = add(this.mamba1.forward(d2.transpose(1, 2)).transpose(1, 2), this.mamba2.forward(d2));
      if (residual) coarse = add(coarse, x2);
      let up = this.lin3.forward(coarse); // (B', C, n1)
      if (residual) up = add(up, x1);
      let y = this.lin4.forward(concat([up, fine], 2)); // (B', C, H)
      if (ci) y = y.reshape([Bn, M, H]);
      y = y.transpose(1, 2); // (B, H, M)
      if (this.revinWeight) y = div(sub(y, this.revinBias!), add(this.revinWeight, EPS * EPS));
      return add(mul(y, std), mean);
    });
  }
}
