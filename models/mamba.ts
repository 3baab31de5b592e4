/**
 * The Mamba block (Gu and Dao, arXiv 2312.00752; docs/papers.md, Mamba): in_proj, a short causal depthwise
 * conv with SiLU, the input-dependent projections of delta, B and C, the selective scan, the gate and
 * out_proj. `forward` runs the whole sequence (the scan's parallel version on WebGPU); `step` advances one
 * token from a (conv state, ssm state) pair for recurrent decoding; `prefill` runs a prompt and returns
 * the state to continue from. With `selective: false` the same block holds an LTI S4D-Real layer instead
 * (delta, B and C fixed over time), for the paper's S6-versus-S4 comparisons. With `innerNorm: true` the
 * block normalises delta's low-rank input, B and C with RMSNorms as Jamba does (arXiv 2403.19887).
 * @module
 */

import type { DType } from "../runtime/dtype.ts";
import type { DeviceName } from "../runtime/device.ts";
import { param } from "../runtime/autograd.ts";
import { type Tensor, tidy } from "../runtime/tensor.ts";
import { arange, rand, tensor, zeros } from "../ops/core/creation.ts";
import { exp, log, matmul, neg, rmsNorm } from "../ops/core/mod.ts";
import {
  causalConv1d,
  causalConv1dStep,
  mambaInner,
  type MambaInnerParams,
  mambaLayerStep,
  type MambaStepParams,
  selectiveScan,
  type SelectiveScanGpuOptions,
  selectiveScanStep,
} from "../ops/ssm/mod.ts";
import { init, type Initializer, Linear, Module, RMSNorm } from "./nn.ts";

/** Configuration of a {@link Mamba} block; defaults are the paper's. `S` types the `selective` flag. */
export interface MambaConfig<S extends boolean = boolean> {
  /** Model width D. */
  dModel: number;
  /** State size N (default 16). */
  dState?: number;
  /** Width of the causal depthwise conv (default 4). */
  dConv?: number;
  /** Expansion E: the inner width is E * D (default 2). */
  expand?: number;
  /** Rank of delta's projection (default ceil(D / 16)). */
  dtRank?: number;
  /** dt at init is log-uniform in [dtMin, dtMax] (defaults 1e-3, 0.1), floored at dtInitFloor (1e-4). */
  dtMin?: number;
  /** Upper end of dt's initial range. */
  dtMax?: number;
  /** Floor of the initial dt. */
  dtInitFloor?: number;
  /** Scale of dt_proj's initial weights U(+-dtScale / sqrt(dtRank)) (default 1). */
  dtScale?: number;
  /** Layers of the model this block sits in: out_proj's init is scaled by 1 / sqrt(nLayer) (default 1). */
  nLayer?: number;
  /** Bias in the conv (default true). */
  convBias?: boolean;
  /** Seed of the first parameter (the others follow). */
  seed?: number;
  /** Device of the parameters. */
  device?: DeviceName;
  /** Float dtype of the parameters (default f32). */
  dtype?: DType;
  /** Options passed to the selective scan (e.g. version, chunkSize). */
  scan?: Pick<SelectiveScanGpuOptions, "version" | "chunkSize" | "carry">;
  /**
   * Input-dependent delta, B and C (S6, default true). False makes the SSM linear time-invariant, S4D-Real
   * in Mamba's block: delta = softplus(dtBias) per channel, B and C learned (ED, N) parameters shared over
   * time (B init 1, C init N(0, 1), as S4D), no xProj or dtProj. The conv, gate and projections stay.
   */
  selective?: S;
  /**
   * Jamba's RMSNorms inside the block (default false): x_proj's three outputs, delta's low-rank input
   * (dtRank), B (N) and C (N), each pass through their own RMSNorm (`dtNorm`, `BNorm`, `CNorm`, weights
   * init 1) right after x_proj, before dt_proj and the scan. Selective blocks only. The fused paths
   * ({@link mambaInner} for `forward`, {@link mambaLayerStep} for `stepResidual`) have no such norms, so a
   * block with them runs the composed conv / scan path in both.
   */
  innerNorm?: boolean;
  /** Epsilon of the inner RMSNorms (default 1e-6, Jamba's `rms_norm_eps`). */
  innerNormEps?: number;
}

/** The recurrent state of a {@link Mamba} block: conv (B, ED, dConv - 1) and ssm (B, ED, N). */
export interface MambaState {
  /** The last dConv - 1 inputs of the conv, (B, ED, dConv - 1). */
  conv: Tensor;
  /** The selective scan's state, (B, ED, N). */
  ssm: Tensor;
}

/**
 * Mamba's initializer of dt_proj's bias: dt = exp(U (log dtMax - log dtMin) + log dtMin) floored at
 * `floor`, stored as softplus^-1(dt) = dt + log(-expm1(-dt)), so that softplus(bias) starts in [dtMin, dtMax].
 *
 * @example
 * ```ts
 * import { mambaDtBiasInit, softplus } from "seqlab";
 * const b = mambaDtBiasInit(1e-3, 0.1, 1e-4)([4], { seed: 1 });
 * console.log((await softplus(b).toArray()).every((d) => d >= 1e-3 && d <= 0.1)); // true
 * ```
 */
export function mambaDtBiasInit(dtMin = 1e-3, dtMax = 0.1, floor = 1e-4): Initializer {
  return (s, io) =>
    tidy(() => {
      const u = rand(s, { ...io, device: "cpu", dtype: "f64" }).storage.data as Float64Array;
      const inv = Float64Array.from(u, (x) => {
        const dt = Math.max(Math.exp(x * (Math.log(dtMax) - Math.log(dtMin)) + Math.log(dtMin)), floor);
        return dt + Math.log(-Math.expm1(-dt));
      });
      return tensor(inv, { shape: s, device: io.device, dtype: io.dtype ?? "f32" });
    });
}

/**
 * S4D-Real's A as Mamba stores it: ALog (ED, N) with row n = log(n + 1), so A = -exp(ALog) = -(1 .. N).
 *
 * @example
 * ```ts
 * import { s4dRealALog } from "seqlab";
 * console.log(await s4dRealALog(2, 3).toArray()); // log 1, log 2, log 3 per row
 * ```
 */
export function s4dRealALog(ED: number, N: number, o: { device?: DeviceName; dtype?: DType } = {}): Tensor {
  return tidy(() => log(arange(1, N + 1, 1, o).reshape([1, N]).expand([ED, N]).contiguous()));
}

/**
 * A Mamba block: x (B, L, D) -> (B, L, D).
 *
 * Parameters (seqlab's Linear layout: weight (in, out)): inProj (D, 2 ED) no bias; convWeight (ED, dConv),
 * convBias (ED); xProj (ED, dtRank + 2N) no bias; dtProj (dtRank, ED) with weight U(+-dtScale /
 * sqrt(dtRank)) and bias softplus^-1(dt), dt log-uniform in [dtMin, dtMax] floored at dtInitFloor;
 * ALog (ED, N) = log(1 .. N) per channel (S4D-Real: A = -exp(ALog)); D (ED) = 1; outProj (ED, D) no bias.
 * With `selective: false` (type parameter S = false) xProj and dtProj are null and the block has dtBias
 * (ED), B and C (ED, N) instead. With `innerNorm` (Jamba) the block also has dtNorm (dtRank), BNorm (N)
 * and CNorm (N), named after dtProj.
 *
 * @example
 * ```ts
 * import { Mamba, randn } from "seqlab";
 * const m = new Mamba({ dModel: 16, seed: 1 });
 * const x = randn([2, 10, 16], { seed: 2 });
 * console.log(m.forward(x).shape); // [2, 10, 16]
 * let state = m.initialState(2);
 * const r = m.step(x.slice([null, 0]), state); // one token
 * console.log(r.y.shape, r.state.ssm.shape); // [2, 16] [2, 32, 16]
 * m.dispose();
 * ```
 */
export class Mamba<S extends boolean = true> extends Module {
  /** D -> 2 ED (x and the gate z), no bias. */
  inProj: Linear;
  /** (ED, dConv). */
  convWeight: Tensor;
  /** (ED), or null. */
  convBias: Tensor | null;
  /** ED -> dtRank + 2N (delta's low-rank input, B, C), no bias; null in an LTI block. */
  xProj: S extends false ? null : Linear;
  /** dtRank -> ED; its bias is the scan's deltaBias; null in an LTI block. */
  dtProj: S extends false ? null : Linear;
  /** With `innerNorm`: RMSNorm (dtRank) of delta's low-rank input, after x_proj; else null. */
  dtNorm: RMSNorm | null;
  /** With `innerNorm`: RMSNorm (N) of B, after x_proj; else null. */
  BNorm: RMSNorm | null;
  /** With `innerNorm`: RMSNorm (N) of C, after x_proj; else null. */
  CNorm: RMSNorm | null;
  /** LTI block only (else null): delta = softplus(dtBias), (ED), dt's init as dtProj's bias. */
  dtBias: S extends false ? Tensor : null;
  /** LTI block only (else null): B (ED, N), shared over time. */
  B: S extends false ? Tensor : null;
  /** LTI block only (else null): C (ED, N), shared over time. */
  C: S extends false ? Tensor : null;
  /** (ED, N): A = -exp(ALog). */
  ALog: Tensor;
  /** (ED): the skip. */
  D: Tensor;
  /** ED -> D, no bias. */
  outProj: Linear;
  /** Resolved sizes. */
  readonly dims: { D: number; ED: number; N: number; W: number; R: number };
  readonly #scan: MambaConfig["scan"];
  /** Whether delta, B and C depend on the input (S6) or not (LTI S4D). */
  readonly selective: S;

  /** Creates the block's parameters. */
  constructor(cfg: MambaConfig<S>) {
    super();
    const D = cfg.dModel, N = cfg.dState ?? 16, W = cfg.dConv ?? 4, E = cfg.expand ?? 2;
    const ED = E * D, R = cfg.dtRank ?? Math.ceil(D / 16);
    for (
      const [n, v] of [["dModel", D], ["dState", N], ["dConv", W], ["expand", E], ["dtRank", R]] as const
    ) {
      if (!Number.isInteger(v) || v < 1) throw new Error(`Mamba: ${n} must be a positive integer, got ${v}`);
    }
    if (cfg.innerNorm && cfg.selective === false) {
      throw new Error("Mamba: innerNorm needs a selective block (selective: true)");
    }
    this.dims = { D, ED, N, W, R };
    this.#scan = cfg.scan;
    this.selective = (cfg.selective ?? true) as S;
    const { dtMin = 1e-3, dtMax = 0.1, dtInitFloor = 1e-4, dtScale = 1, nLayer = 1 } = cfg;
    const o = { device: cfg.device, dtype: cfg.dtype };
    const seed = (k: number) => (cfg.seed === undefined ? undefined : cfg.seed + 10 * k);
    this.inProj = new Linear(D, 2 * ED, { ...o, bias: false, seed: seed(0) });
    // PyTorch's Conv1d init: U(+-1/sqrt(fan_in)), fan_in = dConv for a depthwise conv
    const cb = 1 / Math.sqrt(W);
    this.convWeight = param(init.uniform([ED, W], { ...o, low: -cb, high: cb, seed: seed(1) }));
    this.convBias = cfg.convBias === false
      ? null
      : param(init.uniform([ED], { ...o, low: -cb, high: cb, seed: (seed(1) ?? 0) + 1 }));
    const wb = dtScale / Math.sqrt(R);
    const dtBiasInit = mambaDtBiasInit(dtMin, dtMax, dtInitFloor);
    type Sel = Mamba<S>;
    if (this.selective) {
      this.xProj = new Linear(ED, R + 2 * N, { ...o, bias: false, seed: seed(2) }) as Sel["xProj"];
      this.dtProj = new Linear(R, ED, {
        ...o,
        seed: seed(3),
        weightInit: (s, io) => init.uniform(s, { ...io, low: -wb, high: wb }),
        biasInit: dtBiasInit,
      }) as Sel["dtProj"];
      this.dtBias = this.B = this.C = null as Sel["B"];
    } else {
      this.xProj = this.dtProj = null as Sel["xProj"];
      // the same streams as the selective block's dtProj bias, so both variants start from the same dt
      this.dtBias = param(dtBiasInit([ED], { ...o, seed: (seed(3) ?? 0) + 1 })) as Sel["B"];
      this.B = param(init.ones([ED, N], o)) as Sel["B"];
      this.C = param(init.normal([ED, N], { ...o, seed: seed(2) })) as Sel["C"];
    }
    const ne = cfg.innerNormEps ?? 1e-6;
    const norm = (n: number) => (cfg.innerNorm ? new RMSNorm(n, { ...o, eps: ne }) : null);
    this.dtNorm = norm(R);
    this.BNorm = norm(N);
    this.CNorm = norm(N);
    this.ALog = param(s4dRealALog(ED, N, o));
    this.D = param(init.ones([ED], o));
    const ob = 1 / Math.sqrt(ED) / Math.sqrt(nLayer);
    this.outProj = new Linear(ED, D, {
      ...o,
      bias: false,
      seed: seed(4),
      weightInit: (s, io) => init.uniform(s, { ...io, low: -ob, high: ob }),
    });
  }

  /** A = -exp(ALog), (ED, N). */
  A(): Tensor {
    return neg(exp(this.ALog));
  }

  /** The whole sequence: x (B, L, D) -> (B, L, D). */
  forward(x: Tensor): Tensor {
    return this.#run(x, false).y;
  }

  /** Runs a prompt x (B, L, D): the output (B, L, D) and the state after its last token. */
  prefill(x: Tensor): { y: Tensor; state: MambaState } {
    const r = this.#run(x, true);
    return { y: r.y, state: r.state! };
  }

  #run(x: Tensor, withState: boolean): { y: Tensor; state?: MambaState } {
    const { D, ED, N, R } = this.dims;
    if (x.rank !== 3 || x.shape[2] !== D) {
      throw new Error(`Mamba: x must be (B, L, D) with D = ${D}, got ${x.describe()}`);
    }
    if (!withState && this.xProj && this.dtProj && !this.dtNorm) {
      // training and plain forward: the inner part as one node (no split copies in the backward either)
      return tidy(() => {
        const y = mambaInner(this.inProj.forward(x), this.innerParams(), { scan: this.#scan }); // (B, L, ED)
        return { y: this.outProj.forward(y) }; // (B, L, D)
      });
    }
    return tidy(() => {
      // (B, L, 2 ED) activations stay channels-last: the conv and the scan read x, z, delta, B and C
      // through their strides and store xc and y as (B, L, ED), so no transposing or splitting copies
      // sliced before the transpose: the slices' gradients land in a (B, L, 2 ED) buffer in_proj reads as is
      const xz = this.inProj.forward(x); // (B, L, 2 ED)
      const xi = xz.slice([null, null, [0, ED]]).transpose(1, 2); // (B, ED, L), a view
      const z = xz.slice([null, null, [ED, 2 * ED]]).transpose(1, 2); // (B, ED, L), a view
      const co = { bias: this.convBias, activation: "silu" as const, channelsLast: true };
      const conv = withState
        ? causalConv1d(xi, this.convWeight, { ...co, returnFinalState: true })
        : [causalConv1d(xi, this.convWeight, co)];
      const xc = conv[0]; // (B, ED, L), channels-last
      let dt: Tensor, Bm: Tensor, Cm: Tensor, dtBias: Tensor | null;
      if (this.xProj && this.dtProj) {
        const xdbl = this.xProj.forward(xc.transpose(1, 2)); // (B, L, R + 2N)
        const [dtIn, b, c] = this.#innerNorms(
          xdbl.slice([null, null, [0, R]]), // (B, L, R)
          xdbl.slice([null, null, [R, R + N]]), // (B, L, N)
          xdbl.slice([null, null, [R + N, R + 2 * N]]), // (B, L, N)
        );
        dt = matmul(dtIn, this.dtProj.weight).transpose(1, 2); // (B, ED, L)
        Bm = b.transpose(1, 2); // (B, N, L)
        Cm = c.transpose(1, 2); // (B, N, L)
        dtBias = this.dtProj.bias;
      } else {
        // LTI: delta = softplus(0 + dtBias) at every step; B and C (ED, N) are the scan's shared layout
        dt = zeros(xc.shape, { device: xc.device, dtype: xc.dtype }); // (B, ED, L)
        [Bm, Cm, dtBias] = [this.B!, this.C!, this.dtBias];
      }
      const so = { ...this.#scan, D: this.D, z, deltaBias: dtBias, deltaSoftplus: true, channelsLast: true };
      const [y, last] = withState
        ? selectiveScan(xc, dt, this.A(), Bm, Cm, { ...so, returnLastState: true })
        : [selectiveScan(xc, dt, this.A(), Bm, Cm, so), null]; // (B, ED, L) channels-last, (B, ED, N)
      const out = this.outProj.forward(y.transpose(1, 2)); // (B, L, D)
      return withState ? { y: out, state: { conv: conv[1], ssm: last! } } : { y: out };
    });
  }

  /** Jamba's inner RMSNorms on x_proj's outputs (delta's input, B, C), or the identity without `innerNorm`. */
  #innerNorms(dtIn: Tensor, b: Tensor, c: Tensor): [Tensor, Tensor, Tensor] {
    if (!this.dtNorm || !this.BNorm || !this.CNorm) return [dtIn, b, c];
    return [this.dtNorm.forward(dtIn), this.BNorm.forward(b), this.CNorm.forward(c)];
  }

  /** The parameters {@link mambaInner} takes for this (selective) block (not one with `innerNorm`). */
  innerParams(): MambaInnerParams {
    if (!this.xProj || !this.dtProj) {
      throw new Error("Mamba.innerParams: an LTI block has no xProj or dtProj");
    }
    if (this.dtNorm) throw new Error("Mamba.innerParams: mambaInner has no inner norms (innerNorm: true)");
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

  /**
   * The parameters {@link mambaLayerStep} takes for this (selective) block, with the RMSNorm weight (or
   * null) and epsilon that come before it; with `innerNorm`, the inner norms' weights too.
   */
  stepParams(normWeight: Tensor | null, eps: number): MambaStepParams {
    if (!this.xProj || !this.dtProj) throw new Error("Mamba.stepParams: an LTI block has no xProj or dtProj");
    const inner = this.dtNorm && this.BNorm && this.CNorm
      ? { dt: this.dtNorm.weight, B: this.BNorm.weight, C: this.CNorm.weight, eps: this.dtNorm.eps }
      : null;
    return {
      inner,
      normWeight,
      eps,
      inW: this.inProj.weight,
      convW: this.convWeight,
      convB: this.convBias,
      xProjW: this.xProj.weight,
      dtW: this.dtProj.weight,
      dtB: this.dtProj.bias!,
      ALog: this.ALog,
      D: this.D,
      outW: this.outProj.weight,
    };
  }

  /**
   * One token of the residual layer x + Mamba(norm x) (`norm` an RMSNorm's weight and epsilon, or null):
   * x (B, D) -> `{ y (B, D), state }`. A selective block runs {@link mambaLayerStep} (2 dispatches on
   * WebGPU when no gradient is recorded; with `innerNorm` too); an LTI block composes {@link Mamba.step}.
   */
  stepResidual(
    x: Tensor,
    state: MambaState,
    norm: { weight: Tensor; eps: number } | null,
  ): { y: Tensor; state: MambaState } {
    if (this.selective) {
      return mambaLayerStep(x, this.stepParams(norm?.weight ?? null, norm?.eps ?? 0), state);
    }
    return tidy(() => {
      const r = this.step(norm ? rmsNorm(x, norm.weight, norm.eps) : x, state);
      return { y: x.add(r.y), state: r.state };
    });
  }

  /** The state before any token: zeros, for a batch of `batch`. */
  initialState(batch: number): MambaState {
    const { ED, N, W } = this.dims;
    const o = { device: this.D.device, dtype: this.D.dtype };
    return { conv: zeros([batch, ED, W - 1], o), ssm: zeros([batch, ED, N], o) };
  }

  /**
   * One token: x (B, D) and the state -> `{ y (B, D), state }` (a new state; the old one is left to the
   * caller). Stepping through a sequence equals {@link Mamba.forward} on it.
   */
  step(x: Tensor, state: MambaState): { y: Tensor; state: MambaState } {
    const { D, ED, N, R } = this.dims;
    if (x.rank !== 2 || x.shape[1] !== D) {
      throw new Error(`Mamba.step: x must be (B, D) with D = ${D}, got ${x.describe()}`);
    }
    return tidy(() => {
      const xz = this.inProj.forward(x); // (B, 2 ED)
      const xi = xz.slice([null, [0, ED]]), z = xz.slice([null, [ED, 2 * ED]]);
      const c = causalConv1dStep(state.conv, xi, this.convWeight, {
        bias: this.convBias,
        activation: "silu",
      });
      let dt: Tensor, Bm: Tensor, Cm: Tensor, dtBias: Tensor | null;
      if (this.xProj && this.dtProj) {
        const xdbl = this.xProj.forward(c.y); // (B, R + 2N)
        const [dtIn, b, cc] = this.#innerNorms(
          xdbl.slice([null, [0, R]]), // (B, R)
          xdbl.slice([null, [R, R + N]]), // (B, N)
          xdbl.slice([null, [R + N, R + 2 * N]]), // (B, N)
        );
        dt = matmul(dtIn, this.dtProj.weight); // (B, ED)
        [Bm, Cm] = [b, cc]; // (B, N) x 2
        dtBias = this.dtProj.bias;
      } else {
        // LTI: the shared (ED, N) B and C as the step's grouped layout (B, G = ED, N)
        const Bn = x.shape[0];
        dt = zeros([Bn, ED], { device: x.device, dtype: x.dtype }); // (B, ED)
        Bm = this.B!.unsqueeze(0).expand([Bn, ED, N]); // (B, ED, N)
        Cm = this.C!.unsqueeze(0).expand([Bn, ED, N]); // (B, ED, N)
        dtBias = this.dtBias;
      }
      const s = selectiveScanStep(state.ssm, c.y, dt, this.A(), Bm, Cm, {
        D: this.D,
        z,
        deltaBias: dtBias,
        deltaSoftplus: true,
      });
      return { y: this.outProj.forward(s.y), state: { conv: c.state, ssm: s.state } };
    });
  }
}
