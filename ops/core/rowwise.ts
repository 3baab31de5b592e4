/**
 * Row-wise ops: softmax and logSumExp along an axis (stable: the row maximum is subtracted), layerNorm and
 * rmsNorm over the last dimension.
 * @module
 */

import { isFloat } from "../../runtime/dtype.ts";
import { gpu } from "../../runtime/device.ts";
import { fmt, normAxis, numel } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { grid, MAX_LOOP } from "../../runtime/webgpu.ts";
import { record } from "../../runtime/autograd.ts";
import { add, contiguous, div, exp, log, mul, rsqrt, sub } from "./elementwise.ts";
import { max, mean, sum } from "./reduce.ts";
import { noGrad } from "../../runtime/autograd.ts";
import { tidy } from "../../runtime/tensor.ts";
import { registerOps } from "../../runtime/tensor_ops.ts";
import { normRef, softmaxRef } from "./rowwise_ref.ts";
import { normSource, ROW_WG, softmaxSource } from "./rowwise_wgsl.ts";
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

/**
 * Records layerNorm / rmsNorm backward, recomputing the statistics from x (nothing but the inputs saved).
 * With xhat the normalised input, r = 1/sigma and gw = g * weight:
 * layerNorm dx = r (gw - mean(gw) - xhat mean(gw xhat)); rmsNorm dx = r (gw - xhat mean(gw xhat)).
 */
function recordNorm(
  op: string,
  x: Tensor,
  w: Tensor | null,
  b: Tensor | null,
  eps: number,
  rms: boolean,
  out: Tensor,
): Tensor {
  const inputs = [x, ...(w ? [w] : []), ...(b ? [b] : [])];
  return record(op, out, inputs, inputs, (g, saved) => {
    const [xs, ws] = [saved[0], w ? saved[1] : null];
    const centred = rms ? xs : sub(xs, mean(xs, -1, true));
    const r = rsqrt(add(mean(mul(centred, centred), -1, true), eps));
    const xhat = mul(centred, r);
    const gw = ws ? mul(g, ws) : g;
    let inner = sub(gw, mul(xhat, mean(mul(gw, xhat), -1, true)));
    if (!rms) inner = sub(inner, mean(gw, -1, true));
    const dx = mul(inner, r);
    const lead = [...Array(x.rank - 1).keys()];
    const dw = w ? sum(mul(g, xhat), lead) : null;
    const db = b ? sum(g, lead) : null;
    return [dx, ...(w ? [dw] : []), ...(b ? [db] : [])];
  });
}

/** layerNorm / rmsNorm for rows too long for one invocation, from split reductions (differentiable). */
function normComposed(
  x: Tensor,
  w: Tensor | null | undefined,
  b: Tensor | null | undefined,
  eps: number,
  rms: boolean,
) {
  return tidy(() => {
    const c = rms ? x : sub(x, mean(x, -1, true));
    let y = mul(c, rsqrt(add(mean(mul(c, c), -1, true), eps)));
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
  try {
    src = contiguous(x);
    wc = w ? contiguous(w) : null;
    bc = b ? contiguous(b) : null;
    const out = recordNorm(op, x, w ?? null, b ?? null, eps, rms, empty(op, x.shape, x.dtype, device));
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
    const u = new Uniforms().u32(rows, D, src.offset, wc?.offset ?? 0, bc?.offset ?? 0).f32(eps).padTo(8);
    return disposeOnThrow([out], () => {
      gpu().run({
        name: op,
        key: `${x.dtype}|${rms}|${!!wc}|${!!bc}`,
        source: () => normSource(x.dtype, rms, !!wc, !!bc),
        inputs,
        outputs: [out.storage.buffer!],
        uniforms: u.build(),
        workgroups: grid(rows, ROW_WG),
      });
      return out;
    });
  } finally {
    src?.dispose();
    wc?.dispose();
    bc?.dispose();
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
