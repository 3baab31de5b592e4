/**
 * Row-wise ops: softmax and logSumExp along an axis (stable: the row maximum is subtracted), layerNorm and
 * rmsNorm over the last dimension.
 * @module
 */

import { type DType, isFloat } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { fmt, normAxis, numel } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { grid, MAX_LOOP } from "../../runtime/webgpu.ts";
import { record } from "../../runtime/autograd.ts";
import { abs, add, contiguous, div, exp, log, mul, rsqrt, sub } from "./elementwise.ts";
import { max, mean, sum } from "./reduce.ts";
import { isGradEnabled, noGrad } from "../../runtime/autograd.ts";
import { tidy } from "../../runtime/tensor.ts";
import { registerOps } from "../../runtime/tensor_ops.ts";
import { normBackwardRef, normRef, normUnitRef, softmaxRef } from "./rowwise_ref.ts";
import {
  normBackwardFusedSource,
  normBackwardSource,
  normParamFinishSource,
  normParamPartialSource,
  normSource,
  normUnitSource,
  ROW_WG,
  softmaxSource,
} from "./rowwise_wgsl.ts";
import { disposeOnThrow, empty, sameDevice, Uniforms } from "./util.ts";

/** Records softmax / logSumExp backward: dx = y (g - sum(g y)) and dx = g softmax(x). */
function recordSoftmax(
  op: string,
  x: Tensor,
  out: Tensor,
  a: number,
  lse: boolean,
  keepdims: boolean,
): Tensor {
  if (lse) {
    return record(op, out, [x], [x, out], (g, [xs, o]) => {
      const gk = keepdims ? g : g.unsqueeze(a), ok = keepdims ? o : o.unsqueeze(a);
      return [mul(gk, exp(sub(xs, ok)))];
    });
  }
  return record(op, out, [x], [out], (g, [y]) => [mul(y, sub(g, sum(mul(g, y), a, true)))]);
}

/** softmax / logSumExp for rows too long for one invocation, from split reductions (differentiable). */
function softmaxComposed(x: Tensor, a: number, lse: boolean, keepdims: boolean): Tensor {
  return tidy(() => {
    const m = noGrad(() => max(x, a, true)); // a constant shift: no gradient needed through it
    const e = exp(sub(x, m));
    const s = sum(e, a, true);
    if (!lse) return div(e, s);
    const l = add(log(s), m);
    return keepdims ? l : l.squeeze(a);
  });
}

function softmaxLike(op: string, x: Tensor, axis: number, lse: boolean, keepdims: boolean): Tensor {
  x.check(op);
  if (!isFloat(x.dtype)) throw new Error(`${op}: needs a float tensor, got ${x.describe()}`);
  if (x.rank === 0) throw new Error(`${op}: ${x.describe()} is a scalar; it has no axis ${axis}`);
  const a = normAxis(op, axis, x.rank);
  const outer = numel(x.shape.slice(0, a)), R = x.shape[a], inner = numel(x.shape.slice(a + 1));
  const outShape = !lse
    ? x.shape
    : keepdims
    ? x.shape.map((d, i) => (i === a ? 1 : d))
    : x.shape.filter((_, i) => i !== a);
  // v1 loops three times over R per invocation: longer rows are composed from chunked reductions
  if (x.device === "webgpu" && 3 * R > MAX_LOOP) return softmaxComposed(x, a, lse, keepdims);
  const src = contiguous(x);
  try {
    const out = recordSoftmax(op, x, empty(op, outShape, x.dtype, x.device), a, lse, keepdims);
    if (out.size === 0) return out;
    if (x.device === "cpu") {
      softmaxRef(src.storage.data!, src.offset, outer, R, inner, out.storage.data!, lse);
      return out;
    }
    return disposeOnThrow([out], () => {
      gpu().run({
        name: op,
        key: `${x.dtype}|${lse}`,
        source: () => softmaxSource(x.dtype, lse),
        inputs: [src.storage.buffer!],
        outputs: [out.storage.buffer!],
        uniforms: new Uniforms().u32(outer, R, inner, src.offset).build(),
        workgroups: grid(outer * inner, ROW_WG),
      });
      return out;
    });
  } finally {
    src.dispose();
  }
}

/**
 * Softmax along `axis` (default last), computed as exp(x - max) / sum, so inputs like 1e4 stay finite.
 *
 * @example
 * ```ts
 * import { softmax, tensor } from "seqlab";
 * console.log(await softmax(tensor([1e4, 1e4])).toArray()); // [0.5, 0.5]
 * ```
 */
export function softmax(x: Tensor, axis = -1): Tensor {
  return softmaxLike("softmax", x, axis, false, false);
}

/**
 * log(sum(exp(x))) along `axis` (default last), computed as max + log(sum(exp(x - max))).
 *
 * @example
 * ```ts
 * import { logSumExp, tensor } from "seqlab";
 * console.log(await logSumExp(tensor([1e4, 1e4])).item()); // 10000.693...
 * ```
 */
export function logSumExp(x: Tensor, axis = -1, keepdims = false): Tensor {
  return softmaxLike("logSumExp", x, axis, true, keepdims);
}

/** Whether a norm's backward can use vec4 loads: D and every offset it reads are multiples of 4. */
function fitsVec4(D: number, ...offsets: number[]): boolean {
  return D % 4 === 0 && offsets.every((o) => o % 4 === 0);
}

/**
 * layerNorm / rmsNorm backward on webgpu from the forward's saved statistics (see normBackwardSource):
 * one dispatch for dx, two for dw and db (partial column sums per chunk of rows, then per column); or,
 * for rows of up to normBackwardLimits.fusedMaxDV column vectors, dx and the partial sums in one pass
 * (normBackwardFusedSource), then the column sums.
 */
function normBackwardGpu(
  op: string,
  xs: Tensor,
  gs: Tensor,
  ws: Tensor | null,
  stats: Tensor,
  rms: boolean,
  need: { x: boolean; w: boolean; b: boolean },
): [Tensor | null, Tensor | null, Tensor | null] {
  const name = `${op} backward`;
  const D = xs.shape[xs.rank - 1], rows = xs.size / D, dtype = xs.dtype;
  const x = contiguous(xs), g = contiguous(gs), w = ws && need.x ? contiguous(ws) : null;
  const owned: (Tensor | null)[] = [];
  try {
    const v4 = fitsVec4(D, x.offset, g.offset, w?.offset ?? 0);
    const V = v4 ? 4 : 1, DV = D / V;
    const ctx = gpu();
    let dx: Tensor | null = null, dw: Tensor | null = null, db: Tensor | null = null;
    // dx and the param grads' partial sums in one pass (v2) when a chunk's loops stay within the loop
    // limit and its per-column sums fit in registers: chunks of CR rows, 256 of them where rows allow
    const CRf = Math.max(1, Math.ceil(rows / 256));
    if (
      need.x && (need.w || need.b) && DV <= normBackwardLimits.fusedMaxDV && CRf * (2 * DV + 2) <= MAX_LOOP
    ) {
      const chunks = Math.ceil(rows / CRf);
      dx = empty(name, xs.shape, dtype, "webgpu");
      owned.push(dx);
      const part = empty(name, [chunks, 2, D], "f32", "webgpu");
      try {
        ctx.run({
          name,
          key: `dx+part|${dtype}|${rms}|${!!w}|${v4}|${DV}`,
          source: () => normBackwardFusedSource(dtype, rms, !!w, v4, DV),
          inputs: [x, g, ...(w ? [w] : []), stats].map((t) => t.storage.buffer!),
          outputs: [dx.storage.buffer!, part.storage.buffer!],
          uniforms: new Uniforms()
            .u32(rows, DV, D, x.offset / V, g.offset / V, (w?.offset ?? 0) / V, CRf)
            .build(),
          workgroups: grid(chunks, ROW_WG),
        });
        [dw, db] = finishParams(name, part, chunks, D, DV, dtype, need, v4, owned);
      } finally {
        part.dispose(); // freed while queued: the pool reuses it only after the submit
      }
      return [dx, dw, db];
    }
    if (need.x) {
      dx = empty(name, xs.shape, dtype, "webgpu");
      owned.push(dx);
      ctx.run({
        name,
        key: `dx|${dtype}|${rms}|${!!w}|${v4}`,
        source: () => normBackwardSource(dtype, rms, !!w, v4),
        inputs: [x, g, ...(w ? [w] : []), stats].map((t) => t.storage.buffer!),
        outputs: [dx.storage.buffer!],
        uniforms: new Uniforms().u32(rows, DV, D, x.offset / V, g.offset / V, (w?.offset ?? 0) / V).build(),
        workgroups: grid(rows, ROW_WG),
      });
    }
    if (need.w || need.b) {
      // chunks of CR rows: enough invocations to fill the adapter, at most MAX_LOOP chunks for stage 2
      const CR = Math.max(16, Math.ceil(rows / MAX_LOOP)), chunks = Math.ceil(rows / CR);
      const part = empty(name, [chunks, 2, D], "f32", "webgpu");
      try {
        ctx.run({
          name,
          key: `part|${dtype}|${need.w}|${need.b}|${v4}`,
          source: () => normParamPartialSource(dtype, need.w, need.b, v4),
          inputs: [x, g, stats].map((t) => t.storage.buffer!),
          outputs: [part.storage.buffer!],
          uniforms: new Uniforms().u32(rows, DV, CR, x.offset / V, g.offset / V).build(),
          workgroups: grid(chunks * DV, ROW_WG),
        });
        [dw, db] = finishParams(name, part, chunks, D, DV, dtype, need, v4, owned);
      } finally {
        part.dispose(); // freed while queued: the pool reuses it only after the submit
      }
    }
    return [dx, dw, db];
  } catch (e) {
    for (const t of owned) t?.dispose();
    throw e;
  } finally {
    x.dispose();
    g.dispose();
    w?.dispose();
  }
}

/**
 * The widest rows (in column vectors: D / 4 with vec4 loads, else D) whose norm backward runs dx and the
 * param grads' partials in one pass (v2); wider rows take v1's three dispatches. `deno task bench rowwise`
 * measured (load ~1.9) v1 / v2 at 1.02-1.04x for 2048 rows of 32-128 floats and 1.29x for 16384 of 64,
 * but 0.67x for 4096 rows of 256 (64 vectors: the per-column sums no longer fit in registers, and 256
 * invocations are too few), hence 32. A knob for tests and the bench (0 forces v1).
 *
 * @example
 * ```ts
 * import { normBackwardLimits } from "./rowwise.ts";
 * console.log(normBackwardLimits.fusedMaxDV); // 32
 * ```
 */
export const normBackwardLimits: { fusedMaxDV: number } = { fusedMaxDV: 32 };

/** Stage 2 of the param grads: dw and db (as `need` asks) from the chunks' partial sums. */
function finishParams(
  name: string,
  part: Tensor,
  chunks: number,
  D: number,
  DV: number,
  dtype: DType,
  need: { w: boolean; b: boolean },
  v4: boolean,
  owned: (Tensor | null)[],
): [Tensor | null, Tensor | null] {
  const dw = need.w ? empty(name, [D], dtype, "webgpu") : null;
  const db = need.b ? empty(name, [D], dtype, "webgpu") : null;
  owned.push(dw, db);
  gpu().run({
    name,
    key: `sum|${dtype}|${need.w}|${need.b}|${v4}`,
    source: () => normParamFinishSource(dtype, need.w, need.b, v4),
    inputs: [part.storage.buffer!],
    outputs: [dw, db].filter((t) => t !== null).map((t) => t.storage.buffer!),
    uniforms: new Uniforms().u32(chunks, DV).build(),
    workgroups: grid(DV, ROW_WG),
  });
  return [dw, db];
}

/** layerNorm / rmsNorm backward on cpu: the float64 reference (normBackwardRef). */
function normBackwardCpu(
  xs: Tensor,
  gs: Tensor,
  ws: Tensor | null,
  eps: number,
  rms: boolean,
  need: { x: boolean; w: boolean; b: boolean },
): [Tensor | null, Tensor | null, Tensor | null] {
  const D = xs.shape[xs.rank - 1], rows = xs.size / D, dtype = xs.dtype, op = "norm backward";
  const x = contiguous(xs), g = contiguous(gs), w = ws ? contiguous(ws) : null;
  try {
    const dx = need.x ? empty(op, xs.shape, dtype, "cpu") : null;
    const dw = need.w ? empty(op, [D], dtype, "cpu") : null;
    const db = need.b ? empty(op, [D], dtype, "cpu") : null;
    normBackwardRef(
      x.storage.data!,
      x.offset,
      g.storage.data!,
      g.offset,
      rows,
      D,
      w?.storage.data ?? null,
      w?.offset ?? 0,
      eps,
      rms,
      dx?.storage.data ?? null,
      dw?.storage.data ?? null,
      db?.storage.data ?? null,
    );
    return [dx, dw, db];
  } finally {
    x.dispose();
    g.dispose();
    w?.dispose();
  }
}

/**
 * Records layerNorm / rmsNorm backward as fused kernels: on webgpu from the statistics the forward saved
 * (`stats`, (rows, 4) f32), on cpu from the float64 reference (statistics recomputed). With xhat the
 * normalised input, r = 1/sigma and gw = g * weight:
 * layerNorm dx = r (gw - mean(gw) - xhat mean(gw xhat)); rmsNorm dx = r (gw - xhat mean(gw xhat));
 * dweight = sum over rows of g xhat, dbias = sum over rows of g.
 */
function recordNorm(
  op: string,
  x: Tensor,
  w: Tensor | null,
  b: Tensor | null,
  eps: number,
  rms: boolean,
  out: Tensor,
  stats: Tensor | null,
): Tensor {
  const inputs = [x, ...(w ? [w] : []), ...(b ? [b] : [])];
  const need = { x: x.requiresGrad, w: !!w?.requiresGrad, b: !!b?.requiresGrad };
  const save = [x, ...(w ? [w] : []), ...(stats ? [stats] : [])];
  return record(op, out, inputs, save, (g, saved) => {
    const [xs, ws, st] = [saved[0], w ? saved[1] : null, stats ? saved[saved.length - 1] : null];
    const [dx, dw, db] = st
      ? normBackwardGpu(op, xs, g, ws, st, rms, need)
      : normBackwardCpu(xs, g, ws, eps, rms, need);
    return [dx, ...(w ? [dw] : []), ...(b ? [db] : [])];
  });
}

/**
 * The exponent of the smallest unit a norm row is computed in: eps / unit^2 must stay finite (f32: below
 * 2^120; f16: near 2^14), else eps in units saturates and 1 / sigma comes out wrong for rows far smaller
 * than sqrt(eps) (found: layerNorm of [1e-30, 2e-30, -1e-30] with eps 1e-5 gave 1.1e-20, 4.6e-20, -5.7e-20
 * instead of 1.05e-28, 4.2e-28, -5.3e-28; hidden by an atol of 1e-5).
 * -Infinity when eps is 0 (no floor).
 */
function normUnitFloor(eps: number, dtype: DType): number {
  if (!(eps > 0)) return -Infinity;
  const [lo, hi, margin] = dtype === "f16" ? [-14, 14, 7] : [-100, 125, 60];
  return Math.min(Math.max(Math.ceil(Math.log2(eps) / 2) - margin, lo), hi);
}

/**
 * Per row of `x` (..., D): r = 1 / 2^k for a power of two 2^k near max |x|, and eps r^2 (eps in those units),
 * both (..., 1) with no gradient. Scaling a row by r is exact and changes no normalised value, and keeps
 * its sum of squares finite.
 */
function normUnit(x: Tensor, eps: number): [Tensor, Tensor] {
  return noGrad(() => {
    const ax = abs(x);
    const amax = max(ax, -1, true);
    ax.dispose();
    const op = "normUnit", rows = amax.size, dtype = x.dtype;
    // the exponent range keeps r and 1 / r normal in the dtype (f16: 2^-14 .. 2^15)
    const [lo0, hi, big] = dtype === "f16" ? [-14, 14, 65504] : [-100, 125, 3.4028234663852886e38];
    const lo = Math.max(lo0, normUnitFloor(eps, dtype));
    const r = empty(op, amax.shape, dtype, x.device), e = empty(op, amax.shape, dtype, x.device);
    try {
      if (rows > 0 && x.device === "cpu") {
        normUnitRef(amax.storage.data!, rows, eps, lo, hi, big, r.storage.data!, e.storage.data!);
      } else if (rows > 0) {
        gpu().run({
          name: op,
          key: dtype,
          source: () => normUnitSource(dtype),
          inputs: [amax.storage.buffer!],
          outputs: [r.storage.buffer!, e.storage.buffer!],
          uniforms: new Uniforms().u32(rows).f32(eps, lo, hi, big).build(),
          workgroups: grid(rows, ROW_WG),
        });
      }
    } catch (err) {
      r.dispose();
      e.dispose();
      throw err;
    } finally {
      amax.dispose();
    }
    return [r, e];
  });
}

/**
 * layerNorm / rmsNorm composed from split reductions and elementwise ops (differentiable by autograd): the
 * path for rows too long for one invocation, and the unfused composition the fused kernels are tested
 * against. Each row is first scaled by a power of two near its max |x| (exact), so no sum of squares
 * overflows at any finite scale.
 *
 * @example
 * ```ts
 * import { normComposed } from "./rowwise.ts";
 * import { tensor } from "seqlab";
 * console.log(await normComposed(tensor([[2e19, -2e19, 1e19]]), null, null, 1e-6, true).toArray());
 * // [1.1547, -1.1547, 0.5774]
 * ```
 */
export function normComposed(
  x: Tensor,
  w: Tensor | null | undefined,
  b: Tensor | null | undefined,
  eps: number,
  rms: boolean,
): Tensor {
  return tidy(() => {
    const [r, epsU] = normUnit(x, eps);
    const xs = mul(x, r);
    const c = rms ? xs : sub(xs, mean(xs, -1, true));
    let y = mul(c, rsqrt(add(mean(mul(c, c), -1, true), epsU)));
    if (w) y = mul(y, w);
    if (b) y = add(y, b);
    return y;
  });
}

function norm(
  op: string,
  x: Tensor,
  w: Tensor | null | undefined,
  b: Tensor | null | undefined,
  eps: number,
  rms: boolean,
) {
  const device = sameDevice(op, x, ...(w ? [w] : []), ...(b ? [b] : []));
  if (!isFloat(x.dtype)) throw new Error(`${op}: needs a float tensor, got ${x.describe()}`);
  if (x.rank === 0) {
    throw new Error(`${op}: ${x.describe()} is a scalar; it needs a last dimension to normalise`);
  }
  if (!(eps >= 0)) throw new Error(`${op}: eps must be a non-negative number, got ${eps}`);
  const D = x.shape[x.rank - 1];
  for (const [label, p] of [["weight", w], ["bias", b]] as const) {
    if (p && (p.rank !== 1 || p.shape[0] !== D)) {
      throw new Error(
        `${op}: ${label} must have shape [${D}] (the last dim of x ${fmt(x.shape)}), got ${fmt(p.shape)}`,
      );
    }
    if (p && p.dtype !== x.dtype) throw new Error(`${op}: ${label} is ${p.dtype} but x is ${x.dtype}`);
  }
  const rows = x.size / Math.max(D, 1);
  if (device === "webgpu" && 4 * D > MAX_LOOP) return normComposed(x, w, b, eps, rms);
  let src: Tensor | null = null, wc: Tensor | null = null, bc: Tensor | null = null;
  let stats: Tensor | null = null;
  try {
    src = contiguous(x);
    wc = w ? contiguous(w) : null;
    bc = b ? contiguous(b) : null;
    // the backward reads the forward's statistics (webgpu): saved only when a gradient will be taken
    const grads = isGradEnabled() && [x, w, b].some((t) => t?.requiresGrad);
    stats = device === "webgpu" && grads && x.size > 0 ? empty(op, [rows, 4], "f32", device) : null;
    const out = recordNorm(op, x, w ?? null, b ?? null, eps, rms, empty(op, x.shape, x.dtype, device), stats);
    if (out.size === 0) return out;
    if (device === "cpu") {
      normRef(
        src.storage.data!,
        src.offset,
        rows,
        D,
        wc?.storage.data ?? null,
        wc?.offset ?? 0,
        bc?.storage.data ?? null,
        bc?.offset ?? 0,
        eps,
        rms,
        out.storage.data!,
      );
      return out;
    }
    const inputs = [src, ...(wc ? [wc] : []), ...(bc ? [bc] : [])].map((t) => t.storage.buffer!);
    // v2 (vec4) where D and every offset allow it, else v1
    const v4 = fitsVec4(D, src.offset, wc?.offset ?? 0, bc?.offset ?? 0), V = v4 ? 4 : 1;
    const u = new Uniforms().u32(rows, D / V, src.offset / V, (wc?.offset ?? 0) / V, (bc?.offset ?? 0) / V)
      .f32(eps, 2 ** normUnitFloor(eps, "f32")).u32(D);
    return disposeOnThrow([out], () => {
      gpu().run({
        name: op,
        key: `${x.dtype}|${rms}|${!!wc}|${!!bc}|${!!stats}|${v4}`,
        source: () => normSource(x.dtype, rms, !!wc, !!bc, !!stats, v4),
        inputs,
        outputs: [out.storage.buffer!, ...(stats ? [stats.storage.buffer!] : [])],
        uniforms: u.build(),
        workgroups: grid(rows, ROW_WG),
      });
      return out;
    });
  } finally {
    src?.dispose();
    wc?.dispose();
    bc?.dispose();
    stats?.dispose(); // the graph keeps its own handle
  }
}

/**
 * Layer normalisation over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias
 * (biased variance, as in PyTorch). `weight` and `bias` are optional, shape [D].
 *
 * @example
 * ```ts
 * import { layerNorm, tensor } from "seqlab";
 * console.log(await layerNorm(tensor([[1, 2, 3]])).toArray()); // [-1.2247, 0, 1.2247]
 * ```
 */
export function layerNorm(x: Tensor, weight?: Tensor | null, bias?: Tensor | null, eps = 1e-5): Tensor {
  return norm("layerNorm", x, weight, bias, eps, false);
}

/**
 * RMS normalisation over the last dimension: x / sqrt(mean(x^2) + eps) * weight.
 *
 * @example
 * ```ts
 * import { rmsNorm, tensor } from "seqlab";
 * console.log(await rmsNorm(tensor([[3, 4]])).toArray()); // [0.8485, 1.1314]
 * ```
 */
export function rmsNorm(x: Tensor, weight?: Tensor | null, eps = 1e-6): Tensor {
  return norm("rmsNorm", x, weight, null, eps, true);
}

registerOps({ softmax, logSumExp, layerNorm, rmsNorm });
