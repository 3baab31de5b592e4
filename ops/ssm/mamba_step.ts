/**
 * One token of a residual Mamba layer, x + Mamba(RMSNorm x), for recurrent decoding: composed from the
 * ops (the reference, either device, differentiable) or fused on WebGPU into two dispatches (the in-step,
 * then x_proj, the ssm update and the out-projection in one) of `mamba_step_wgsl.ts`; and the LM head's final norm and projection
 * for one token in one dispatch (`normHeadStep`).
 * @module
 */

import { gpu } from "../../runtime/device.ts";
import { isGradEnabled } from "../../runtime/autograd.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { type Binding, grid } from "../../runtime/webgpu.ts";
import { add, exp, neg } from "../core/elementwise.ts";
import { matmul } from "../core/matmul.ts";
import { rmsNorm } from "../core/rowwise.ts";
import { empty, Uniforms } from "../core/util.ts";
import { causalConv1dStep } from "./conv1d.ts";
import { selectiveScanStep } from "./selective_scan_step.ts";
import {
  inStepV1,
  inStepV2,
  MSTEP_WG,
  MSTEP_WG2,
  outStepV1,
  projStepV2,
  type ProjStepVariant,
  SSM_OUT_BUFFERS,
  ssmOutStepV1,
  ssmStepV1,
  ssmStepV2,
  ssmStepV3,
  ssmStepV3Fits,
} from "./mamba_step_wgsl.ts";

/** The parameters of one selective Mamba layer (seqlab's Linear layout: weights (in, out)). */
export interface MambaStepParams {
  /** RMSNorm weight (D) before the block, or null for no norm. */
  normWeight: Tensor | null;
  /** RMSNorm epsilon. */
  eps: number;
  /** In-projection (D, 2 ED): x then the gate z. */
  inW: Tensor;
  /** Conv weight (ED, W). */
  convW: Tensor;
  /** Conv bias (ED), or null. */
  convB: Tensor | null;
  /** x_proj (ED, R + 2N): delta's low-rank input, B, C. */
  xProjW: Tensor;
  /** dt_proj weight (R, ED). */
  dtW: Tensor;
  /** dt_proj bias (ED). */
  dtB: Tensor;
  /** ALog (ED, N): A = -exp(ALog). */
  ALog: Tensor;
  /** The skip (ED). */
  D: Tensor;
  /** Out-projection (ED, D). */
  outW: Tensor;
  /**
   * Jamba's RMSNorms after x_proj (the Mamba block's `innerNorm`): weights of delta's low-rank input (R), of
   * B (N) and of C (N), and their epsilon; absent or null for Mamba's block.
   */
  inner?: { dt: Tensor; B: Tensor; C: Tensor; eps: number } | null;
}

/** A layer's recurrent state: conv (B, ED, W - 1), ssm (B, ED, N). */
export interface MambaStepState {
  /** The last W - 1 conv inputs (B, ED, W - 1). */
  conv: Tensor;
  /** The SSM state (B, ED, N). */
  ssm: Tensor;
}

/** The composition (reference): the unfused ops, each token as `Mamba.step` computes it. */
function composed(x: Tensor, p: MambaStepParams, st: MambaStepState): { y: Tensor; state: MambaStepState } {
  const ED = p.D.shape[0], N = p.ALog.shape[1], R = p.dtW.shape[0];
  return tidy(() => {
    const xn = p.normWeight ? rmsNorm(x, p.normWeight, p.eps) : x;
    const xz = matmul(xn, p.inW); // (B, 2 ED)
    const c = causalConv1dStep(st.conv, xz.slice([null, [0, ED]]), p.convW, {
      bias: p.convB,
      activation: "silu",
      version: "composed",
    });
    const xdbl = matmul(c.y, p.xProjW); // (B, R + 2N)
    let [dtIn, Bm, Cm] = [
      xdbl.slice([null, [0, R]]),
      xdbl.slice([null, [R, R + N]]),
      xdbl.slice([null, [R + N, R + 2 * N]]),
    ];
    if (p.inner) {
      const { dt: wd, B: wb, C: wc, eps } = p.inner;
      [dtIn, Bm, Cm] = [rmsNorm(dtIn, wd, eps), rmsNorm(Bm, wb, eps), rmsNorm(Cm, wc, eps)];
    }
    const dt = matmul(dtIn, p.dtW); // (B, ED)
    const s = selectiveScanStep(
      st.ssm,
      c.y,
      dt,
      neg(exp(p.ALog)),
      Bm,
      Cm,
      {
        D: p.D,
        z: xz.slice([null, [ED, 2 * ED]]),
        deltaBias: p.dtB,
        deltaSoftplus: true,
        version: "composed",
      },
    );
    return { y: add(x, matmul(s.y, p.outW)), state: { conv: c.state, ssm: s.state } };
  });
}

/**
 * One token of x + Mamba(RMSNorm x): x (B, D), the layer's parameters and state -> `{ y (B, D), state }`
 * (a new state). `version`: "composed" (the ops one by one: the reference, any device, differentiable),
 * "fused" (WebGPU, f32, no gradient recorded, dense operands: "v5" where D, ED, N and the dt rank are
 * divisible by 4, else "v1"), or one fused version (see mamba_step_wgsl.ts): "v1" 4 dispatches, one
 * invocation per channel; "v2" 4, four channels per invocation; "v3" 3, x_proj in the ssm-step; "v5" 2, in-step v2 then ssm-out-step. "auto" (default): fused where it can run.
 *
 * @example
 * ```ts
 * import { Mamba, mambaLayerStep, randn } from "seqlab";
 * const m = new Mamba({ dModel: 8, seed: 1 });
 * const st = m.initialState(1);
 * const r = mambaLayerStep(randn([1, 8], { seed: 2 }), m.stepParams(null, 1e-5), st);
 * console.log(r.y.shape, r.state.ssm.shape); // [1, 8] [1, 16, 16]
 * ```
 */
export function mambaLayerStep(
  x: Tensor,
  p: MambaStepParams,
  state: MambaStepState,
  opts: { version?: "auto" | "fused" | "composed" | "v1" | "v2" | "v3" | "v5" } = {},
): { y: Tensor; state: MambaStepState } {
  const op = "mambaLayerStep";
  const version = opts.version ?? "auto";
  if (!["auto", "fused", "composed", "v1", "v2", "v3", "v5"].includes(version)) {
    throw new Error(
      `${op}: version must be "auto", "fused", "composed", "v1", "v2", "v3" or "v5", got ${
        JSON.stringify(version)
      }`,
    );
  }
  const [Bn, D] = x.shape;
  const ED = p.D.shape[0], N = p.ALog.shape[1], R = p.dtW.shape[0], W = p.convW.shape[1];
  if (x.rank !== 2 || p.inW.shape[0] !== D || p.inW.shape[1] !== 2 * ED) {
    throw new Error(`${op}: x must be (B, D) with D = ${p.inW.shape[0]}, got ${x.describe()}`);
  }
  const all = [
    x,
    state.conv,
    state.ssm,
    ...Object.values(p).filter((t): t is Tensor => typeof t === "object" && !!t && t !== p.inner),
    ...(p.inner ? [p.inner.dt, p.inner.B, p.inner.C] : []),
  ];
  const graph = isGradEnabled() && all.some((t) => t.requiresGrad);
  const dense = all.every((t) => t.isContiguous && t.offset === 0 && t.dtype === "f32");
  const fusable = x.device === "webgpu" && dense && !graph && W > 1 && state.ssm.shape[0] === Bn;
  if (version !== "auto" && version !== "composed" && !fusable) {
    throw new Error(
      `${op}: version "${version}" runs on webgpu with dense f32 operands, W > 1 and no gradient recorded; ` +
        `got ${x.describe()}${graph ? " with inputs that require grad" : ""}`,
    );
  }
  if (!fusable || version === "composed") return composed(x, p, state);
  const aligned = [D, ED, N, R].every((n) => n % 4 === 0);
  if (version !== "fused" && version !== "auto" && version !== "v1" && !aligned) {
    throw new Error(
      `${op}: version "${version}" needs D, ED, N and the dt rank divisible by 4, got D ${D}, ED ${ED}, N ${N}, ` +
        `R ${R}`,
    );
  }
  const two = ssmStepV3Fits((R + 2 * N) / 4) &&
    gpu().limits.maxStorageBuffersPerShaderStage >= SSM_OUT_BUFFERS + (p.inner ? 3 : 0);
  if (p.inner) {
    // only v5 takes the inner norms; elsewhere they are composed
    if (version !== "auto" && version !== "fused" && version !== "v5") {
      throw new Error(
        `${op}: version "${version}" has no inner norms (Jamba's block); use "v5", "auto" or "composed"`,
      );
    }
    if (!aligned || !two) {
      if (version === "v5") {
        throw new Error(
          `${op}: version "v5" with inner norms needs D, ED, N, R divisible by 4, x_proj rows of at most 256 ` +
            `values and ${SSM_OUT_BUFFERS + 3} storage buffers`,
        );
      }
      return composed(x, p, state);
    }
    return fusedV5(x, p, state);
  }
  if (version === "v1" || !aligned) return fusedV1(x, p, state);
  const fits = ssmStepV3Fits((R + 2 * N) / 4);
  if ((version === "v3" || version === "v5") && !fits) {
    throw new Error(
      `${op}: version "${version}" reduces x_proj rows of at most 256 values in workgroup memory, got ${
        R + 2 * N
      }`,
    );
  }
  if (version === "v5" && !two) {
    throw new Error(
      `${op}: version "v5" binds ${SSM_OUT_BUFFERS} storage buffers, over this adapter's limit`,
    );
  }
  if (version === "v5" || ((version === "auto" || version === "fused") && two)) return fusedV5(x, p, state);
  return fusedV2(x, p, state, version !== "v2" && fits);
}

/** The v1 dispatches: in-step, the x_proj matmul, ssm-step, out-step, one invocation per channel. */
function fusedV1(x: Tensor, p: MambaStepParams, state: MambaStepState): { y: Tensor; state: MambaStepState } {
  const op = "mambaLayerStep";
  const [Bn, D] = x.shape;
  const ED = p.D.shape[0], N = p.ALog.shape[1], R = p.dtW.shape[0], W = p.convW.shape[1];
  const ctx = gpu();
  const f = (name: string, shape: number[]) => empty(`${op} ${name}`, shape, "f32", "webgpu");
  const xc = f("xc", [Bn, ED]), z = f("z", [Bn, ED]), conv = f("conv state", [Bn, ED, W - 1]);
  const y = f("y", [Bn, ED]), ssm = f("ssm state", [Bn, ED, N]), out = f("out", [Bn, D]);
  let xdbl: Tensor | null = null;
  try {
    ctx.run({
      name: op,
      key: `in v1|${W}|${!!p.normWeight}|${!!p.convB}`,
      source: () => inStepV1(W, !!p.normWeight, !!p.convB),
      inputs: [x, p.normWeight, p.inW, state.conv, p.convW, p.convB].flatMap(buf),
      outputs: [xc, z, conv].flatMap(buf),
      uniforms: new Uniforms().u32(Bn, D, ED).f32(p.eps).build(),
      workgroups: grid(Bn * ED, MSTEP_WG),
    });
    xdbl = matmul(xc, p.xProjW); // (B, R + 2N)
    ctx.run({
      name: op,
      key: `ssm v1|${N}|${R}`,
      source: () => ssmStepV1(N, R),
      inputs: [state.ssm, xc, z, xdbl, p.dtW, p.dtB, p.ALog, p.D].flatMap(buf),
      outputs: [y, ssm].flatMap(buf),
      uniforms: new Uniforms().u32(Bn, ED).build(),
      workgroups: grid(Bn * ED, MSTEP_WG),
    });
    ctx.run({
      name: op,
      key: "out v1",
      source: outStepV1,
      inputs: [y, p.outW, x].flatMap(buf),
      outputs: [out.storage.buffer!],
      uniforms: new Uniforms().u32(Bn, D, ED).build(),
      workgroups: grid(Bn * D, MSTEP_WG),
    });
  } catch (e) {
    for (const t of [conv, ssm, out]) t.dispose();
    throw e;
  } finally {
    for (const t of [xc, z, y, xdbl]) t?.dispose();
  }
  return { y: out, state: { conv, ssm } };
}

const buf = (t: Tensor | null) => (t ? [t.storage.buffer!] : []);

/** Records proj-step v2: out (B, Nout) = [res +] [bias +] RMSNorm?(x) @ w. */
function projStep(
  name: string,
  x: Tensor,
  w: Tensor,
  out: Tensor,
  o: { norm?: Tensor | null; eps?: number; bias?: Tensor | null; residual?: Tensor | null },
): void {
  const v: ProjStepVariant = { norm: !!o.norm, bias: !!o.bias, residual: !!o.residual };
  const [Bn, K] = x.shape, Nout = w.shape[1];
  gpu().run({
    name,
    key: `proj v2|${v.norm}|${v.bias}|${v.residual}`,
    source: () => projStepV2(v),
    inputs: [x, o.norm ?? null, w, o.bias ?? null, o.residual ?? null].flatMap(buf),
    outputs: buf(out),
    uniforms: new Uniforms().u32(Bn, K, Nout).f32(o.eps ?? 0).build(),
    workgroups: grid((Bn * Nout) / 4, MSTEP_WG2),
  });
}

/**
 * The v2 dispatches (in-step, x_proj as a proj-step, ssm-step, out-step as a proj-step, four channels each)
 * or, with `v3`, x_proj folded into ssm-step v3 (three dispatches).
 */
function fusedV2(
  x: Tensor,
  p: MambaStepParams,
  state: MambaStepState,
  v3: boolean,
): { y: Tensor; state: MambaStepState } {
  const op = "mambaLayerStep";
  const [Bn, D] = x.shape;
  const ED = p.D.shape[0], N = p.ALog.shape[1], R = p.dtW.shape[0], W = p.convW.shape[1];
  const f = (name: string, shape: number[]) => empty(`${op} ${name}`, shape, "f32", "webgpu");
  const xc = f("xc", [Bn, ED]), z = f("z", [Bn, ED]), conv = f("conv state", [Bn, ED, W - 1]);
  let xdbl: Tensor | null = null;
  const y = f("y", [Bn, ED]), ssm = f("ssm state", [Bn, ED, N]), out = f("out", [Bn, D]);
  const ctx = gpu();
  const groups = grid((Bn * ED) / 4, MSTEP_WG2);
  try {
    ctx.run({
      name: `${op} in-step`,
      key: `in v2|${W}|${!!p.normWeight}|${!!p.convB}`,
      source: () => inStepV2(W, !!p.normWeight, !!p.convB),
      inputs: [x, p.normWeight, p.inW, state.conv, p.convW, p.convB].flatMap(buf),
      outputs: [xc, z, conv].flatMap(buf),
      uniforms: new Uniforms().u32(Bn, D, ED).f32(p.eps).build(),
      workgroups: groups,
    });
    if (v3) {
      // batch 1: two workgroups (both cores), each repeating x_proj
      const S = Bn === 1 ? 2 : 1;
      ctx.run({
        name: `${op} ssm-step`,
        key: `ssm v3|${N}|${R}`,
        source: () => ssmStepV3(N, R),
        inputs: [state.ssm, xc, z, p.xProjW, p.dtW, p.dtB, p.ALog, p.D].flatMap(buf),
        outputs: [y, ssm].flatMap(buf),
        uniforms: new Uniforms().u32(Bn, ED, S).build(),
        workgroups: [S, Bn, 1],
      });
    } else {
      xdbl = f("x_proj", [Bn, R + 2 * N]);
      projStep(`${op} x_proj`, xc, p.xProjW, xdbl, {});
      ctx.run({
        name: `${op} ssm-step`,
        key: `ssm v2|${N}|${R}`,
        source: () => ssmStepV2(N, R),
        inputs: [state.ssm, xc, z, xdbl, p.dtW, p.dtB, p.ALog, p.D].flatMap(buf),
        outputs: [y, ssm].flatMap(buf),
        uniforms: new Uniforms().u32(Bn, ED).build(),
        workgroups: groups,
      });
    }
    projStep(`${op} out-step`, y, p.outW, out, { residual: x });
  } catch (e) {
    for (const t of [conv, ssm, out]) t.dispose();
    throw e;
  } finally {
    for (const t of [xc, z, y, xdbl]) t?.dispose();
  }
  return { y: out, state: { conv, ssm } };
}

/**
 * One token of an LM head after its final norm: x (B, D), the RMSNorm weight (D) and epsilon, the head
 * weight (D, V) -> logits (B, V) = RMSNorm(x) @ w. On WebGPU without a gradient to record, with dense f32
 * operands and D, V divisible by 4, one proj-step v2 dispatch (instead of a norm, two pack copies and a
 * matmul); else the composed ops.
 *
 * @example
 * ```ts
 * import { ones, randn } from "seqlab";
 * import { normHeadStep } from "./mamba_step.ts";
 * const logits = normHeadStep(randn([1, 8], { seed: 1 }), ones([8]), 1e-5, randn([8, 12], { seed: 2 }));
 * console.log(logits.shape); // [1, 12]
 * ```
 */
export function normHeadStep(x: Tensor, normWeight: Tensor, eps: number, w: Tensor): Tensor {
  const op = "normHeadStep";
  const [Bn, D] = x.shape, V = w.shape[1];
  if (x.rank !== 2 || w.rank !== 2 || w.shape[0] !== D || normWeight.shape.join() !== `${D}`) {
    throw new Error(
      `${op}: x must be (B, D), the norm weight (D) and the head (D, V); got ${x.describe()}, ` +
        `${normWeight.describe()}, ${w.describe()}`,
    );
  }
  const all = [x, normWeight, w];
  const graph = isGradEnabled() && all.some((t) => t.requiresGrad);
  const dense = all.every((t) => t.isContiguous && t.offset === 0 && t.dtype === "f32");
  if (x.device !== "webgpu" || graph || !dense || D % 4 !== 0 || V % 4 !== 0) {
    return tidy(() => matmul(rmsNorm(x, normWeight, eps), w));
  }
  const out = empty(op, [Bn, V], "f32", "webgpu");
  try {
    projStep(op, x, w, out, { norm: normWeight, eps });
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}

/** in-step v2 over every core, then ssm-out-step v1: two dispatches. */
function fusedV5(x: Tensor, p: MambaStepParams, state: MambaStepState): { y: Tensor; state: MambaStepState } {
  const op = "mambaLayerStep";
  const [Bn, D] = x.shape;
  const ED = p.D.shape[0], N = p.ALog.shape[1], R = p.dtW.shape[0], W = p.convW.shape[1];
  const f = (name: string, shape: number[]) => empty(`${op} ${name}`, shape, "f32", "webgpu");
  const xc = f("xc", [Bn, ED]), z = f("z", [Bn, ED]), conv = f("conv state", [Bn, ED, W - 1]);
  const y = f("y", [Bn, ED]), ssm = f("ssm state", [Bn, ED, N]), out = f("out", [Bn, D]);
  const r = (t: Tensor | null): Binding[] => (t ? [{ buffer: t.storage.buffer!, access: "read" }] : []);
  const w = (t: Tensor): Binding => ({ buffer: t.storage.buffer!, access: "read_write" });
  try {
    gpu().run({
      name: `${op} in-step`,
      key: `in v2|${W}|${!!p.normWeight}|${!!p.convB}`,
      source: () => inStepV2(W, !!p.normWeight, !!p.convB),
      inputs: [x, p.normWeight, p.inW, state.conv, p.convW, p.convB].flatMap(buf),
      outputs: [xc, z, conv].flatMap(buf),
      uniforms: new Uniforms().u32(Bn, D, ED).f32(p.eps).build(),
      workgroups: grid((Bn * ED) / 4, MSTEP_WG2),
    });
    gpu().run({
      name: `${op} ssm-out-step`,
      key: `ssm-out v1|${N}|${R}|${!!p.inner}`,
      source: () => ssmOutStepV1(N, R, !!p.inner),
      bindings: [
        ...[x, xc, z, state.ssm, p.xProjW, p.dtW, p.dtB, p.ALog, p.D].flatMap(r),
        w(y),
        w(ssm),
        ...r(p.outW),
        w(out),
        ...(p.inner ? [p.inner.dt, p.inner.B, p.inner.C].flatMap(r) : []),
      ],
      uniforms: new Uniforms().u32(Bn, D, ED).f32(p.eps).f32(p.inner?.eps ?? 0).build(),
      workgroups: [1, Bn, 1],
    });
  } catch (e) {
    for (const t of [conv, ssm, out]) t.dispose();
    throw e;
  } finally {
    for (const t of [xc, z, y]) t.dispose();
  }
  return { y: out, state: { conv, ssm } };
}
