/**
 * WGSL softmax cross-entropy over rows of logits (rows, C) with class-index targets.
 *
 * Versions:
 * - forward v1: one invocation per row, one pass over the row (online max and sum of exp, rescaled when
 *   the max grows; the sum of logits for label smoothing): the row's loss and its log-sum-exp (saved for
 *   the backward); vec4 loads where C and the offset are multiples of 4. A target outside [0, C) that is
 *   not ignoreIndex raises a diagnostic (the next readback throws naming crossEntropy).
 * - reduce v1: one workgroup sums the row losses (Kahan per lane, then a tree) and counts the targets
 *   that are not ignored: the "mean" or "sum" loss and the count the backward divides by.
 * - backward v1: one invocation per row: dlogits = (exp(x - lse) - q) g / count with
 *   q = (1 - eps) onehot(t) + eps / C, from the saved lse; 0 for ignored rows.
 * - check v1: one invocation per target, raising the forward's diagnostic (for the composed path of rows
 *   too long for the forward's loop).
 * @module
 */

import { type DType, wgslType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl, WGSL_MATH } from "./util.ts";

export const CE_WG = 64;
/** Invocations of the reduce workgroup (rows up to CE_REDUCE_WG x MAX_LOOP). */
export const CE_REDUCE_WG = 256;

/** The diagnostic codes crossEntropy raises for a target out of range, per target dtype. */
export const CE_TARGET_OOB = { i32: 71, u32: 72 } as const;

function xBinding(index: number, name: string, dtype: DType, v4: boolean, write = false): string {
  const t = v4 ? `vec4<${wgslType(dtype)}>` : wgslType(dtype);
  return `@group(0) @binding(${index}) var<storage, ${write ? "read_write" : "read"}> ${name}: array<${t}>;`;
}

/** The target of row `gid` as `tr` (its own type) and `ti` (as i32, compared with ignoreIndex U(5)). */
function readTarget(tType: DType): string {
  return `let tr = tg[U(4u) + gid];
  let ti = ${tType === "i32" ? "tr" : "bitcast<i32>(tr)"};
  let ignored = ti == bitcast<i32>(U(5u));`;
}

/** The out-of-range check of a target (a statement raising the diagnostic), `onBad` run after it. */
function checkTarget(tType: DType, onBad: string): string {
  return `if (${tType === "i32" ? "tr < 0 || " : ""}u32(tr) >= C) {
    atomicStore(&diag[1], bitcast<u32>(tr));
    atomicStore(&diag[2], C);
    atomicStore(&diag[0], ${CE_TARGET_OOB[tType as "i32" | "u32"]}u);
    ${onBad}
  }`;
}

/** check v1. Uniforms: [rows, 0, C, 0, tOff, ignoreIndex(i32)]. Bindings: targets, diagnostics. */
export function crossEntropyCheckSource(tType: DType): string {
  return `${uniformDecl(8)}
${binding(1, "tg", tType)}
@group(0) @binding(2) var<storage, read_write> diag: array<atomic<u32>, 4>;
${flatId(CE_WG)}
  let C = U(2u);
  if (gid >= U(0u)) { return; }
  ${readTarget(tType)}
  if (!ignored) {
    ${checkTarget(tType, "")}
  }
}`;
}

/**
 * forward v1. Uniforms: [rows, CV, C, xOff, tOff, ignoreIndex(i32), eps(f32)] (CV = C / 4 and xOff in
 * vec4s when `v4`). Bindings: x, targets, loss (`lossType`), lse (f32), diagnostics.
 */
export function crossEntropySource(dtype: DType, tType: DType, lossType: DType, v4: boolean): string {
  const T = v4 ? "vec4<f32>" : "f32";
  return `${enables(dtype, lossType)}${uniformDecl(8)}
${xBinding(1, "x", dtype, v4)}
${binding(2, "tg", tType)}
${binding(3, "loss", lossType, true)}
${binding(4, "lse", "f32", true)}
@group(0) @binding(5) var<storage, read_write> diag: array<atomic<u32>, 4>;
${WGSL_MATH}
fn hsum(v: ${T}) -> f32 { return ${v4 ? "v.x + v.y + v.z + v.w" : "v"}; }
fn hmax(v: ${T}) -> f32 { return ${v4 ? "max(max(v.x, v.y), max(v.z, v.w))" : "v"}; }
fn anynan(v: ${T}) -> bool {
  return ${v4 ? "is_nan(v.x) || is_nan(v.y) || is_nan(v.z) || is_nan(v.w)" : "is_nan(v)"};
}
${flatId(CE_WG)}
  let rows = U(0u); let CV = U(1u); let C = U(2u);
  if (gid >= rows) { return; }
  ${readTarget(tType)}
  if (ignored) {
    loss[gid] = ${lossType}(0.0);
    lse[gid] = 0.0;
    return;
  }
  ${
    checkTarget(
      tType,
      `loss[gid] = ${lossType}(nan());
    lse[gid] = nan();
    return;`,
    )
  }
  let base = U(3u) + gid * CV;
  var m = -inf();
  var s = 0.0;
  var sx = 0.0;
  var bad = false;
  for (var c = 0u; c < CV; c++) {
    let v = ${T}(x[base + c]);
    sx += hsum(v);
    bad = bad || anynan(v);
    let mv = hmax(v);
    if (mv > m) {
      s *= exp(m - mv);
      m = mv;
    }
    if (m > -inf()) { s += hsum(exp(v - m)); }
  }
  var l = select(m + log(s), m, m == -inf());
  if (bad) { l = nan(); }
  lse[gid] = l;
  let t = u32(tr);
  let xt = f32(x[base + ${v4 ? "t / 4u][t % 4u]" : "t]"});
  var r = l - xt;
  let eps = UF(6u);
  if (eps > 0.0) { r = r * (1.0 - eps) + (l - sx / f32(C)) * eps; }
  loss[gid] = ${lossType}(r);
}`;
}

/**
 * reduce v1, one workgroup. Uniforms: [rows, mean(1) or sum(0), 0, 0, tOff, ignoreIndex(i32)].
 * Bindings: loss (f32, rows), targets, out (`dtype`, 1), count (f32, 1).
 */
export function crossEntropyReduceSource(dtype: DType, tType: DType): string {
  const W = CE_REDUCE_WG;
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "loss", "f32")}
${binding(2, "tg", tType)}
${binding(3, "out", dtype, true)}
${binding(4, "cnt", "f32", true)}
var<workgroup> ps: array<f32, ${W}>;
var<workgroup> pc: array<f32, ${W}>;
@compute @workgroup_size(${W})
fn main(@builtin(local_invocation_index) lid: u32) {
  let rows = U(0u);
  var s = 0.0;
  var comp = 0.0;
  var n = 0.0;
  for (var gid = lid; gid < rows; gid += ${W}u) {
    ${readTarget(tType)}
    if (!ignored) {
      n += 1.0;
      let y = loss[gid] - comp;
      let t = s + y;
      comp = (t - s) - y;
      s = t;
    }
  }
  ps[lid] = s;
  pc[lid] = n;
  workgroupBarrier();
  for (var k = ${W / 2}u; k > 0u; k >>= 1u) {
    if (lid < k) {
      ps[lid] += ps[lid + k];
      pc[lid] += pc[lid + k];
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    cnt[0] = pc[0];
    out[0] = ${dtype}(select(ps[0], ps[0] / max(pc[0], 1.0), U(1u) == 1u));
  }
}`;
}

/**
 * backward v1. Uniforms: [rows, CV, C, xOff, tOff, ignoreIndex(i32), eps(f32), gOff, mode] with mode
 * 0: g per row ("none"), 1: g[0] / count ("mean"), 2: g[0] ("sum"). Bindings: x, targets, lse, g, count
 * (f32; unread for mode 0), dx.
 */
export function crossEntropyBackwardSource(dtype: DType, tType: DType, v4: boolean): string {
  const T = v4 ? "vec4<f32>" : "f32";
  const O = v4 ? `vec4<${wgslType(dtype)}>` : wgslType(dtype);
  return `${enables(dtype)}${uniformDecl(12)}
${xBinding(1, "x", dtype, v4)}
${binding(2, "tg", tType)}
${binding(3, "lse", "f32")}
${binding(4, "g", dtype)}
${binding(5, "cnt", "f32")}
${xBinding(6, "dx", dtype, v4, true)}
${flatId(CE_WG)}
  let rows = U(0u); let CV = U(1u); let C = U(2u);
  if (gid >= rows) { return; }
  ${readTarget(tType)}
  let ob = gid * CV;
  if (ignored) {
    for (var c = 0u; c < CV; c++) { dx[ob + c] = ${O}(0.0); }
    return;
  }
  let mode = U(8u);
  var scale = f32(g[U(7u) + select(0u, gid, mode == 0u)]);
  if (mode == 1u) { scale /= max(cnt[0], 1.0); }
  let l = lse[gid];
  let eps = UF(6u);
  let q0 = eps / f32(C);
  let q1 = 1.0 - eps + q0;
  let t = u32(tr);
  let base = U(3u) + gid * CV;
  for (var c = 0u; c < CV; c++) {
    let p = exp(${T}(x[base + c]) - l);
    ${
    v4
      ? "let q = select(vec4<f32>(q0), vec4<f32>(q1), vec4<u32>(4u * c) + vec4<u32>(0u, 1u, 2u, 3u) == vec4<u32>(t));"
      : "let q = select(q0, q1, c == t);"
  }
    dx[ob + c] = ${O}((p - q) * scale);
  }
}`;
}
