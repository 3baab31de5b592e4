/**
 * Causal depthwise conv1d (Mamba's short convolution, and the S4 convolution mode with a kernel as long as
 * the sequence) on both backends, differentiable, with a carried state for stepping.
 * @module
 */

import { isFloat } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { fmt } from "../../runtime/shape.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { grid } from "../../runtime/webgpu.ts";
import { isGradEnabled, noGrad, record } from "../../runtime/autograd.ts";
import { zeros } from "../core/creation.ts";
import { add, contiguous, copyInto, mul, sigmoid, silu, sub } from "../core/elementwise.ts";
import { concat } from "../core/layout.ts";
import { sum } from "../core/reduce.ts";
import { empty, fromArray, Uniforms } from "../core/util.ts";
import { causalConv1dBackwardRef, causalConv1dRef } from "./conv1d_ref.ts";
import {
  CONV_MAX_LOOP,
  CONV_V2_MAX_W,
  CONV_WG,
  convBwdDwV1,
  convBwdDxV1,
  convBwdReduceV2,
  convBwdV2,
  convFwdV1,
  convFwdV2,
  convFwdV3,
  convV3Key,
} from "./conv1d_wgsl.ts";
import { convStepV1, STEP_WG } from "./step_wgsl.ts";
import { channelsLastView, newSeq, seqVec4, seqWords, toLayout } from "./seq_layout.ts";

/** Options of {@link causalConv1d}. */
export interface CausalConv1dOptions {
  /** Bias (D). */
  bias?: Tensor | null;
  /** The W - 1 inputs before t = 0 (B, D, W - 1); zeros when absent. */
  initialState?: Tensor | null;
  /** Apply SiLU to the output (Mamba's conv branch). Default none. */
  activation?: "silu" | null;
  /** Also return the state after the last input (B, D, W - 1), to continue with {@link causalConv1dStep}. */
  returnFinalState?: boolean;
  /**
   * Store the output (and x's gradient) channels-last: (B, D, L) views of (B, L, D) buffers, whose
   * `.transpose(1, 2)` is contiguous (Mamba's (B, L, D) activations need no transposing copy). Default false.
   * x itself may be any strided view in either case: it is read through its strides.
   */
  channelsLast?: boolean;
  /**
   * WebGPU forward version: "v1" any width, "v2" unrolled for W <= 8, "v3" W <= 8 with strided operands
   * and the SiLU fused, "auto" (default) v3 when it can, else v1. The backward runs bwd v2 for W <= 8.
   */
  version?: "auto" | "v1" | "v2" | "v3";
}

function check(op: string, x: Tensor, w: Tensor, bias?: Tensor | null, state?: Tensor | null) {
  const all = [x, w, ...(bias ? [bias] : []), ...(state ? [state] : [])];
  for (const t of all) {
    t.check(op);
    if (!isFloat(t.dtype)) throw new Error(`${op}: needs float tensors, got ${t.describe()}`);
    if (t.device !== x.device) {
      throw new Error(`${op}: tensors are on different devices: ${all.map((t) => t.describe()).join(", ")}`);
    }
    if (t.dtype !== x.dtype) {
      throw new Error(`${op}: dtypes differ: ${all.map((t) => t.describe()).join(", ")}`);
    }
  }
  if (x.rank !== 3) throw new Error(`${op}: x must be (B, D, L), got ${x.describe()}`);
  const [Bn, D, L] = x.shape;
  if (w.rank !== 2 || w.shape[0] !== D || w.shape[1] < 1) {
    throw new Error(
      `${op}: weight must be (D, W) with D = ${D} (from x ${fmt(x.shape)}), got ${fmt(w.shape)}`,
    );
  }
  const W = w.shape[1];
  if (bias && (bias.rank !== 1 || bias.shape[0] !== D)) {
    throw new Error(`${op}: bias must be (D) = [${D}] (from x ${fmt(x.shape)}), got ${fmt(bias.shape)}`);
  }
  if (
    state && (state.rank !== 3 || state.shape[0] !== Bn || state.shape[1] !== D || state.shape[2] !== W - 1)
  ) {
    throw new Error(
      `${op}: the state must be (B, D, W - 1) = [${Bn}, ${D}, ${W - 1}] (x ${fmt(x.shape)}, weight ` +
        `${fmt(w.shape)}), got ${fmt(state.shape)}`,
    );
  }
  return { Bn, D, L, W };
}

const host = (t: Tensor | null | undefined) => {
  if (!t) return null;
  const c = contiguous(t);
  const a = c.storage.data!.slice(c.offset, c.offset + c.size);
  c.dispose();
  return a;
};

/** Steps per chunk of fwd v3 / bwd v2 at most: (TC + W) steps with 4-lane stores stay under the loop limit. */
const CONV_V3_MAX_T = 4096;

/** (chunks, TC) of fwd v3 / bwd v2: ~2048 invocations (16 steps or more each) to keep lavapipe busy. */
function v3Chunks(Bn: number, D: number, L: number): { chunks: number; TC: number; D4: number } {
  const D4 = Math.ceil(D / 4);
  let chunks = Math.max(1, Math.min(Math.ceil(L / 16), Math.ceil(2048 / Math.max(1, Bn * D4))));
  chunks = Math.max(chunks, Math.ceil(L / CONV_V3_MAX_T));
  const TC = Math.max(1, Math.ceil(L / chunks));
  return { chunks: Math.max(1, Math.ceil(L / TC)), TC, D4 };
}

/** A float64 (B, D, L) host result as a tensor, channels-last (see {@link newSeq}) or contiguous. */
function hostSeq(
  a: Float64Array,
  [Bn, D, L]: readonly number[],
  dtype: Tensor["dtype"],
  cl: boolean,
): Tensor {
  if (!cl) return fromArray(a, [Bn, D, L], dtype, "cpu");
  const t = new Float64Array(a.length);
  for (let b = 0; b < Bn; b++) {
    for (let d = 0; d < D; d++) for (let l = 0; l < L; l++) t[(b * L + l) * D + d] = a[(b * D + d) * L + l];
  }
  return channelsLastView(fromArray(t, [Bn, L, D], dtype, "cpu"));
}

/** What {@link forward} and {@link backward} take beyond the tensors. */
interface ConvPlan {
  version: string;
  silu: boolean;
  channelsLast: boolean;
}

/**
 * The forward without recording: silu(conv) when `silu` (fwd v3 fuses it; v1 and v2 apply it after),
 * in the layout asked for.
 */
function forward(x: Tensor, w: Tensor, b: Tensor | null, st: Tensor | null, p: ConvPlan): Tensor {
  const { Bn, D, L, W } = check("causalConv1d", x, w, b, st);
  if (x.device === "cpu") {
    const r = causalConv1dRef(host(x)!, x.shape, host(w)!, W, host(b), host(st), p.silu ? "silu" : null);
    return hostSeq(r, x.shape, x.dtype, p.channelsLast);
  }
  if (x.dtype !== "f32") throw new Error(`causalConv1d: WebGPU computes in f32, got ${x.describe()}`);
  const version = p.version === "auto" ? (W <= CONV_V2_MAX_W ? "v3" : "v1") : p.version;
  if (version === "v3") {
    const out = newSeq("causalConv1d", x.shape, p.channelsLast);
    // W = 1: the state is empty, and a binding the shader never reads would be left out of its layout
    const [wc, bc, sc] = [w, b, W > 1 ? st : null].map((t) => (t ? contiguous(t) : null));
    try {
      const { chunks, TC, D4 } = v3Chunks(Bn, D, L);
      const v = { W, hasBias: !!b, hasState: !!sc, silu: p.silu };
      const xv = seqVec4(x), ov = seqVec4(out);
      gpu().run({
        name: "causalConv1d",
        key: `v3|${convV3Key(v, xv, ov)}`,
        source: () => convFwdV3(v, xv, ov),
        inputs: [x, wc, bc, sc].filter((t): t is Tensor => !!t).map((t) => t.storage.buffer!),
        outputs: [out.storage.buffer!],
        uniforms: new Uniforms().u32(Bn, D, L, D4, chunks, TC, wc!.offset, bc?.offset ?? 0, sc?.offset ?? 0)
          .u32(...seqWords(x), ...seqWords(out)).padTo(20).build(),
        workgroups: grid(Bn * D4 * chunks, CONV_WG),
      });
    } catch (e) {
      out.dispose();
      throw e;
    } finally {
      for (const t of [wc, bc, sc]) t?.dispose();
    }
    return out;
  }
  const v2 = version === "v2";
  const out = empty("causalConv1d", x.shape, "f32", "webgpu");
  const [xc, wc, bc, sc] = [x, w, b, st].map((t) => (t ? contiguous(t) : null));
  try {
    const threads = v2 ? Bn * D * Math.ceil(L / 4) : Bn * D * L;
    // v1: taps in slices of CONV_MAX_LOOP, accumulated (lavapipe's loop limit); v2 has no loop
    for (let k0 = 0; k0 < W; k0 += v2 ? W : CONV_MAX_LOOP) {
      gpu().run({
        name: "causalConv1d",
        key: v2 ? `v2|${W}|${!!b}|${!!st}` : `v1|${!!b}|${!!st}`,
        source: () => (v2 ? convFwdV2(W, !!b, !!st) : convFwdV1(!!b, !!st)),
        inputs: [xc, wc, bc, sc].filter((t): t is Tensor => !!t).map((t) => t.storage.buffer!),
        outputs: [out.storage.buffer!],
        uniforms: new Uniforms().u32(
          Bn * D,
          D,
          L,
          W,
          xc!.offset,
          wc!.offset,
          sc?.offset ?? 0,
          bc?.offset ?? 0,
        )
          .u32(k0, Math.min(W, k0 + CONV_MAX_LOOP), k0 > 0 ? 1 : 0).padTo(12).build(),
        workgroups: grid(threads, CONV_WG),
      });
    }
  } finally {
    for (const t of [xc, wc, bc, sc]) t?.dispose();
  }
  if (!p.silu) return toLayout(out, p.channelsLast);
  const a = noGrad(() => silu(out));
  out.dispose();
  return toLayout(a, p.channelsLast);
}

/**
 * Gradients (dx, dweight, dbias, dstate) for the output gradient g (of silu(conv) when `silu`); dx in
 * the layout asked for.
 */
function backward(
  g: Tensor,
  x: Tensor,
  w: Tensor,
  b: Tensor | null,
  st: Tensor | null,
  p: ConvPlan,
): Tensor[] {
  const [Bn, D] = x.shape, W = w.shape[1];
  if (x.device === "cpu") {
    const act = p.silu ? "silu" : null;
    const r = causalConv1dBackwardRef(host(g)!, host(x)!, x.shape, host(w)!, W, host(st), host(b), act);
    return [
      hostSeq(r.dx, x.shape, x.dtype, p.channelsLast),
      fromArray(r.dweight, w.shape, w.dtype, "cpu"),
      fromArray(r.dbias, [D], w.dtype, "cpu"),
      fromArray(r.dstate, [Bn, D, W - 1], x.dtype, "cpu"),
    ];
  }
  if (W <= CONV_V2_MAX_W) return backwardV2(g, x, w, b, st, p);
  let gp = g;
  if (p.silu) {
    // silu'(pre) = sg (1 + pre (1 - sg)), pre recomputed (the forward saved only x)
    gp = noGrad(() =>
      tidy(() => {
        const pre = forward(x, w, b, st, { version: "v1", silu: false, channelsLast: false });
        const sg = sigmoid(pre);
        return mul(g, mul(sg, add(mul(pre, sub(1, sg)), 1)));
      })
    );
  }
  try {
    const [dx, dw, db, ds] = backwardV1(gp, x, w, st);
    return [toLayout(dx, p.channelsLast), dw, db, ds];
  } finally {
    if (gp !== g) gp.dispose();
  }
}

/**
 * The conv's gradients (dx, dweight, dbias, dstate) without a recorded node, for fused blocks that record
 * their own; with `dxInto` (a (B, D, L) view) dx is stored there (by bwd v2 itself for W <= 8 on WebGPU).
 * Internal: not exported from the package.
 */
export function convGrads(
  g: Tensor,
  x: Tensor,
  w: Tensor,
  b: Tensor | null,
  p: { silu: boolean; channelsLast: boolean; dxInto?: Tensor | null },
): Tensor[] {
  const plan = { version: "auto", silu: p.silu, channelsLast: p.channelsLast };
  if (x.device === "webgpu" && w.shape[1] <= CONV_V2_MAX_W) {
    return backwardV2(g, x, w, b, null, plan, p.dxInto);
  }
  const r = backward(g, x, w, b, null, plan);
  if (p.dxInto) {
    noGrad(() => copyInto(p.dxInto!, r[0]));
    r[0].dispose();
    r[0] = p.dxInto.view(p.dxInto.shape, p.dxInto.strides, p.dxInto.offset);
  }
  return r;
}

/** bwd v2 (W <= CONV_V2_MAX_W): the dx pass (dstate, dweight and dbias partials) and the reduce pass. */
function backwardV2(
  g: Tensor,
  x: Tensor,
  w: Tensor,
  b: Tensor | null,
  st: Tensor | null,
  p: ConvPlan,
  dxInto: Tensor | null = null,
): Tensor[] {
  const op = "causalConv1d backward";
  const [Bn, D, L] = x.shape, W = w.shape[1];
  const ctx = gpu();
  const { chunks, TC, D4 } = v3Chunks(Bn, D, L);
  const dx = dxInto
    ? dxInto.view(dxInto.shape, dxInto.strides, dxInto.offset)
    : newSeq(`${op} dx`, x.shape, p.channelsLast);
  const ds = empty(`${op} dstate`, [Bn, D, W - 1], "f32", "webgpu");
  const dw = empty(`${op} dweight`, [D, W], "f32", "webgpu");
  const db = empty(`${op} dbias`, [D], "f32", "webgpu");
  const part = empty(`${op} partials`, [Bn * chunks * (W + 1) * D4 * 4], "f32", "webgpu");
  const [wc, bc, sc] = [w, b, W > 1 ? st : null].map((t) => (t ? contiguous(t) : null)); // as the forward
  try {
    const v = { W, hasBias: !!b, hasState: !!sc, silu: p.silu };
    const xv = seqVec4(x), gv = seqVec4(g), dv = seqVec4(dx);
    ctx.run({
      name: op,
      key: `v2|${convV3Key(v, xv, gv, dv)}`,
      source: () => convBwdV2(v, xv, gv, dv),
      inputs: [x, g, wc, bc, sc].filter((t): t is Tensor => !!t).map((t) => t.storage.buffer!),
      outputs: [dx, ds, part].map((t) => t.storage.buffer!), // an empty dstate (W = 1) still has a buffer
      uniforms: new Uniforms().u32(Bn, D, L, D4, chunks, TC, wc!.offset, bc?.offset ?? 0, sc?.offset ?? 0)
        .u32(...seqWords(x), ...seqWords(g), ...seqWords(dx)).padTo(24).build(),
      workgroups: grid(Bn * D4 * chunks, CONV_WG),
    });
    const rows = Bn * chunks;
    // rows in slices that accumulate (lavapipe's loop limit)
    for (let r0 = 0; r0 < rows; r0 += CONV_MAX_LOOP) {
      ctx.run({
        name: op,
        key: "v2 reduce",
        source: convBwdReduceV2,
        inputs: [part.storage.buffer!],
        outputs: [dw.storage.buffer!, db.storage.buffer!],
        uniforms: new Uniforms().u32(D, D4, W, r0, Math.min(rows, r0 + CONV_MAX_LOOP), r0 > 0 ? 1 : 0)
          .build(),
        workgroups: grid((W + 1) * D4, CONV_WG),
      });
    }
  } catch (e) {
    for (const t of [dx, ds, dw, db]) t.dispose();
    throw e;
  } finally {
    for (const t of [wc, bc, sc, part]) t?.dispose();
  }
  return [dx, dw, db, ds];
}

/** bwd v1 (any width): contiguous (B, D, L) dx, dweight, dbias, dstate. */
function backwardV1(g: Tensor, x: Tensor, w: Tensor, st: Tensor | null): Tensor[] {
  const [Bn, D, L] = x.shape, W = w.shape[1];
  const ctx = gpu();
  const dx = empty("causalConv1d dx", x.shape, "f32", "webgpu");
  const ds = empty("causalConv1d dstate", [Bn, D, W - 1], "f32", "webgpu");
  const dwb = empty("causalConv1d dweight", [D, W + 1], "f32", "webgpu");
  const [gc, xc, wc, sc] = [g, x, w, st].map((t) => (t ? contiguous(t) : null));
  try {
    // long loops in slices that accumulate (lavapipe's loop limit, see CONV_MAX_LOOP)
    for (let k0 = 0; k0 < W; k0 += CONV_MAX_LOOP) {
      ctx.run({
        name: "causalConv1d backward",
        key: "dx v1",
        source: convBwdDxV1,
        inputs: [gc!, wc!].map((t) => t.storage.buffer!),
        outputs: [dx.storage.buffer!, ds.storage.buffer!], // an empty dstate (W = 1) still has a buffer
        uniforms: new Uniforms().u32(Bn * D, D, L, W, gc!.offset, wc!.offset)
          .u32(k0, Math.min(W, k0 + CONV_MAX_LOOP), k0 > 0 ? 1 : 0).padTo(12).build(),
        workgroups: grid(Bn * D * (L + W - 1), CONV_WG),
      });
    }
    const span = Math.max(1, Math.floor(CONV_MAX_LOOP / Bn) - 1); // steps per slice: Bn * span iterations
    for (let t0 = 0; t0 < L; t0 += span) {
      ctx.run({
        name: "causalConv1d backward",
        key: `dw v1|${!!sc}`,
        source: () => convBwdDwV1(!!sc),
        inputs: [gc, xc, sc].filter((t): t is Tensor => !!t).map((t) => t.storage.buffer!),
        outputs: [dwb.storage.buffer!],
        uniforms: new Uniforms().u32(Bn, D, L, W, gc!.offset, xc!.offset, sc?.offset ?? 0)
          .u32(t0, Math.min(L, t0 + span), t0 > 0 ? 1 : 0).padTo(12).build(),
        workgroups: grid(D * (W + 1), CONV_WG),
      });
    }
  } finally {
    for (const t of [gc, xc, wc, sc]) t?.dispose();
  }
  return tidy(() => [dx, contiguous(dwb.slice([null, [0, W]])), contiguous(dwb.slice([null, W])), ds]);
}

/**
 * Causal depthwise conv1d: x (B, D, L), weight (D, W) -> (B, D, L) with
 * out[b, d, t] = bias[d] + sum_k weight[d, k] x[b, d, t - (W - 1) + k] (PyTorch's `conv1d(x, w[:, None],
 * groups=D, padding=W-1)[..., :L]`, as in Mamba), inputs before t = 0 from `initialState` (B, D, W - 1) or
 * zero; optionally SiLU after. With `returnFinalState`, returns `[out, state]` where state (B, D, W - 1)
 * holds the last W - 1 inputs, to continue with {@link causalConv1dStep}. Differentiable in x, weight,
 * bias and the initial state. On WebGPU: v2 (registers, W <= 8) or v1 (any W); on cpu the float64
 * reference {@link causalConv1dRef}.
 *
 * @example
 * ```ts
 * import { causalConv1d, tensor } from "seqlab";
 * const x = tensor([[[1, 2, 3, 4]]]), w = tensor([[0, 0, 1, 1]]); // out_t = x_t-1 + x_t
 * console.log(await causalConv1d(x, w).toArray()); // Float32Array [1, 3, 5, 7]
 * ```
 */
export function causalConv1d(
  x: Tensor,
  weight: Tensor,
  opts: CausalConv1dOptions & { returnFinalState: true },
): [Tensor, Tensor];
/** Causal depthwise conv1d returning only the output (see the overload above). */
export function causalConv1d(x: Tensor, weight: Tensor, opts?: CausalConv1dOptions): Tensor;
export function causalConv1d(
  x: Tensor,
  weight: Tensor,
  opts: CausalConv1dOptions = {},
): Tensor | [Tensor, Tensor] {
  const op = "causalConv1d";
  const version = opts.version ?? "auto";
  if (!["auto", "v1", "v2", "v3"].includes(version)) {
    throw new Error(`${op}: version must be "auto", "v1", "v2" or "v3", got ${JSON.stringify(version)}`);
  }
  if (opts.activation && opts.activation !== "silu") {
    throw new Error(`${op}: activation must be "silu" or none, got ${JSON.stringify(opts.activation)}`);
  }
  const b = opts.bias ?? null, st = opts.initialState ?? null;
  const { Bn, D, W } = check(op, x, weight, b, st);
  // checked here, on every backend: what webgpu refuses, cpu refuses too
  if ((version === "v2" || version === "v3") && W > CONV_V2_MAX_W) {
    throw new Error(
      `${op}: version "${version}" takes widths up to ${CONV_V2_MAX_W}, got weight ${
        fmt(weight.shape)
      } (W = ${W}); ` +
        `use "v1" or "auto"`,
    );
  }
  const plan: ConvPlan = { version, silu: opts.activation === "silu", channelsLast: !!opts.channelsLast };
  const inputs = [x, weight, ...(b ? [b] : []), ...(st ? [st] : [])];
  // one node for conv and SiLU: the backward recomputes the pre-activation from x (bwd v2 fuses it)
  const out = record(
    op,
    forward(x, weight, b, st, plan),
    inputs,
    inputs,
    (g, s) => {
      const [dx, dw, db, ds] = backward(g, s[0], s[1], b ? s[2] : null, st ? s[b ? 3 : 2] : null, plan);
      if (!b) db.dispose();
      if (!st) ds.dispose();
      return [dx, dw, ...(b ? [db] : []), ...(st ? [ds] : [])];
    },
  );
  if (!opts.returnFinalState) return out;
  const final = tidy(() => {
    const past = st ?? zeros([Bn, D, W - 1], { dtype: x.dtype, device: x.device });
    const all = concat([past, x], 2); // (B, D, W - 1 + L)
    const n = all.shape[2];
    return contiguous(all.slice([null, null, [n - (W - 1), n]]));
  });
  return [out, final];
}

/**
 * One step of {@link causalConv1d} for decoding: state (B, D, W - 1) (the previous W - 1 inputs), x (B, D)
 * -> `{ y (B, D), state }` with the window shifted by one; `activation: "silu"` as in the full conv.
 * Composed from core ops (differentiable, either device; the reference) or, on WebGPU in f32 with no
 * gradient recorded (decoding), one fused kernel (conv step v1) reading x through its strides.
 * `version`: "auto" (default) fused where it can run, "fused", "composed".
 *
 * @example
 * ```ts
 * import { causalConv1dStep, tensor, zeros } from "seqlab";
 * const w = tensor([[0, 0, 1, 1]]);
 * let state = zeros([1, 1, 3]);
 * for (const v of [1, 2, 3]) {
 *   const r = causalConv1dStep(state, tensor([[v]]), w);
 *   console.log(await r.y.item()); // 1, 3, 5
 *   state = r.state;
 * }
 * ```
 */
export function causalConv1dStep(
  state: Tensor,
  x: Tensor,
  weight: Tensor,
  opts: { bias?: Tensor | null; activation?: "silu" | null; version?: "auto" | "fused" | "composed" } = {},
): { y: Tensor; state: Tensor } {
  const op = "causalConv1dStep";
  if (x.rank !== 2) throw new Error(`${op}: x must be (B, D), got ${x.describe()}`);
  tidy(() => check(op, x.unsqueeze(-1), weight, opts.bias, state)); // the view is freed at once
  if (opts.activation && opts.activation !== "silu") {
    throw new Error(`${op}: activation must be "silu" or none, got ${JSON.stringify(opts.activation)}`);
  }
  const version = opts.version ?? "auto";
  if (!["auto", "fused", "composed"].includes(version)) {
    throw new Error(`${op}: version must be "auto", "fused" or "composed", got ${JSON.stringify(version)}`);
  }
  const W = weight.shape[1];
  const all = [state, x, weight, ...(opts.bias ? [opts.bias] : [])];
  const graph = isGradEnabled() && all.some((t) => t.requiresGrad);
  const fusable = x.device === "webgpu" && x.dtype === "f32" && !graph && W > 1;
  if (version === "fused" && !fusable) {
    throw new Error(
      `${op}: version "fused" runs on webgpu in f32 with W > 1 and no gradient recorded; got ` +
        `${x.describe()}, weight ${fmt(weight.shape)}${graph ? " with inputs that require grad" : ""}`,
    );
  }
  if (fusable && version !== "composed") return convStepFused(state, x, weight, opts);
  return tidy(() => {
    const win = concat([state, x.unsqueeze(-1)], 2); // (B, D, W)
    let y = sum(mul(win, weight), -1); // (B, D)
    if (opts.bias) y = add(y, opts.bias);
    if (opts.activation === "silu") y = silu(y);
    return { y, state: contiguous(win.slice([null, null, [1, W]])) };
  });
}

/** conv step v1: one dispatch. */
function convStepFused(
  state: Tensor,
  x: Tensor,
  weight: Tensor,
  opts: { bias?: Tensor | null; activation?: "silu" | null },
): { y: Tensor; state: Tensor } {
  const [Bn, D] = x.shape, W = weight.shape[1];
  const st = contiguous(state), w = contiguous(weight), b = opts.bias ? contiguous(opts.bias) : null;
  const y = empty("causalConv1dStep", [Bn, D], "f32", "webgpu");
  const next = empty("causalConv1dStep state", [Bn, D, W - 1], "f32", "webgpu");
  try {
    const silu = opts.activation === "silu";
    gpu().run({
      name: "causalConv1dStep",
      key: `step v1|${W}|${!!b}|${silu}`,
      source: () => convStepV1(W, !!b, silu),
      inputs: [st, x, w, b].filter((t): t is Tensor => !!t).map((t) => t.storage.buffer!),
      outputs: [y.storage.buffer!, next.storage.buffer!],
      uniforms: new Uniforms().u32(Bn, D, x.offset, x.strides[0], x.strides[1], st.offset, w.offset)
        .u32(b?.offset ?? 0).build(),
      workgroups: grid(Bn * D, STEP_WG),
    });
  } catch (e) {
    y.dispose();
    next.dispose();
    throw e;
  } finally {
    for (const t of [st, w, b]) t?.dispose();
  }
  return { y, state: next };
}
