/**
 * WGSL row-wise ops.
 *
 * Versions:
 * - softmax v1: one invocation per (outer, inner) line: max pass, sum-of-exp pass, write pass (f32).
 * - norm v1: one invocation per row: mean, then variance of deviations (two passes, stable), then write;
 *   in units of a power of two near max |x| (found in the first pass), so rows of any finite scale
 *   normalise without the sum of squares overflowing f32.
 *   No workgroup reductions: barriers are costly on the software adapter and rows are many. With
 *   `stats` it also writes each row's (mean, 1 / sigma, 1 / unit) in those units for the backward.
 * - norm v2: v1 with vec4 loads and stores, where D and every offset are multiples of 4 (a vec4 load
 *   costs what a scalar one does on the software adapter: about 3x faster at D 64).
 * - norm backward v1: dx, one invocation per row from the saved statistics: a pass for mean(gw) and
 *   mean(gw xhat), a pass writing dx; vec4 loads where D and every offset are multiples of 4 (a vec4
 *   load costs what a scalar one does on the software adapter). xhat is O(1) in any unit, so nothing
 *   overflows at any finite scale.
 * - norm param grads v1: dw = sum g xhat and db = sum g over rows in two stages (partial sums per chunk of
 *   rows and column, then one invocation per column sums the chunks in order): deterministic, no atomics.
 * - norm unit v1: the power-of-two unit of a row from its max |x|, for rows too long for one invocation.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl, WGSL_MATH } from "./util.ts";
import { wgslType } from "../../runtime/dtype.ts";

export const ROW_WG = 64;

/** Uniforms: [outer, R, inner, offset]. */
export function softmaxSource(dtype: DType, lse: boolean): string {
  return `${enables(dtype)}${uniformDecl(4)}
${binding(1, "x", dtype)}
${binding(2, "out", dtype, true)}
${WGSL_MATH}
${flatId(ROW_WG)}
  let outer = U(0u); let R = U(1u); let inner = U(2u);
  if (gid >= outer * inner) { return; }
  let o = gid / inner; let i = gid % inner;
  let base = o * R * inner + i;
  var m = -inf();
  for (var r = 0u; r < R; r++) {
    let v = f32(x[U(3u) + base + r * inner]);
    if (is_nan(v)) { m = v; break; }
    m = max(m, v);
  }
  var s = 0.0;
  for (var r = 0u; r < R; r++) { s += exp(f32(x[U(3u) + base + r * inner]) - m); }
  ${
    lse ? `out[gid] = ${dtype}(select(m + log(s), m, m == -inf()));` : `for (var r = 0u; r < R; r++) {
    out[base + r * inner] = ${dtype}(exp(f32(x[U(3u) + base + r * inner]) - m) / s);
  }`
  }
}`;
}

/**
 * norm v1 (`v4` false) and v2 (`v4`: vec4 loads and stores, for D and every offset multiples of 4).
 * Uniforms: [rows, DV, xOff, wOff, bOff, eps(f32), unit0(f32), D] with DV = D / 4 and offsets in vec4s for
 * v2; unit0 is the smallest unit (a power of two, 0 for none: see normUnitFloor). With `stats`, the
 * binding after `out` receives (mean, 1 / sigma, 1 / unit, 0) per row, where
 * xhat = (x / unit - mean) / sigma.
 */
export function normSource(
  dtype: DType,
  rms: boolean,
  hasW: boolean,
  hasB: boolean,
  stats = false,
  v4 = false,
): string {
  const T = v4 ? "vec4<f32>" : "f32", O = v4 ? `vec4<${wgslType(dtype)}>` : wgslType(dtype);
  let b = 2;
  const wBind = hasW ? vbinding(b++, "w", dtype, v4) : "";
  const bBind = hasB ? vbinding(b++, "bias", dtype, v4) : "";
  const sBind = stats ? `@group(0) @binding(${b + 1}) var<storage, read_write> stats: array<vec4<f32>>;` : "";
  return `${enables(dtype)}${uniformDecl(8)}
${vbinding(1, "x", dtype, v4)}
${wBind}
${bBind}
${vbinding(b, "out", dtype, v4, true)}
${sBind}
fn hsum(v: ${T}) -> f32 { return ${v4 ? "v.x + v.y + v.z + v.w" : "v"}; }
fn hmax(v: ${T}) -> f32 { return ${v4 ? "max(max(v.x, v.y), max(v.z, v.w))" : "v"}; }
${flatId(ROW_WG)}
  let rows = U(0u); let DV = U(1u); let D = f32(U(7u));
  if (gid >= rows) { return; }
  let base = U(2u) + gid * DV;
  // Everything in units of m, a power of two at most max |x| kept while reading (a larger element
  // rescales what was summed, exactly): x / m is in (-8, 8), so no sum of squares overflows f32, and the
  // normalised output is the same in any unit.
  // m starts at unit0: eps in units of m stays finite for rows tiny next to sqrt(eps)
  var m = UF(6u);
  var rm = select(1.0, 1.0 / m, m > 0.0); // 1 / m, exact: m is a power of two in [2^-100, 2^125]
  var acc = ${T}(0.0);
  for (var d = 0u; d < DV; d++) {
    let xd = ${T}(x[base + d]);
    // the largest finite |x| of the group (an inf or NaN one leaves the unit alone)
    let fa = abs(xd);
    let a = hmax(select(${T}(0.0), fa, fa <= ${T}(3.4028235e38)));
    if (a >= 2.0 * m && a > 0.0 && m < 4.2535296e37) {
      let m2 = exp2(clamp(floor(log2(a)), -100.0, 125.0));
      let r = m * (1.0 / m2);
      acc *= ${rms ? "r * r" : "r"};
      m = m2;
      rm = 1.0 / m2;
    }
    let t = xd * rm;
    acc += ${rms ? "t * t" : "t"};
  }
  let unit = select(1.0, m, m > 0.0);
  let runit = rm;
  ${
    rms ? "let mean = 0.0; let v = hsum(acc) / D;" : `let mean0 = hsum(acc) / D;
  // the corrected two-pass form: the deviations' own sum corrects the rounded mean (a row of equal
  // values has variance 0, not the rounding error, which no eps would hide at large scale)
  var st = ${T}(0.0);
  var sq = ${T}(0.0);
  for (var d = 0u; d < DV; d++) { let t = ${T}(x[base + d]) * runit - mean0; st += t; sq += t * t; }
  let c = hsum(st) / D;
  let mean = mean0 + c;
  let v = max(hsum(sq) / D - c * c, 0.0);`
  }
  // eps in units of m (it underflows to 0 at large scale, where it does not matter); a zero row stays 0
  let den = v + min(UF(5u) / unit / unit, 3.4028235e38);
  let inv = select(0.0, inverseSqrt(den), den > 0.0);
  ${stats ? `stats[gid] = vec4<f32>(mean${rms ? "" : "0 + c"}, inv, runit, 0.0);` : ""}
  for (var d = 0u; d < DV; d++) {
    var y = (${T}(x[base + d]) * runit - mean${rms ? "" : "0 - c"}) * inv;
    ${hasW ? `y *= ${T}(w[U(3u) + d]);` : ""}
    ${hasB ? `y += ${T}(bias[U(4u) + d]);` : ""}
    out[gid * DV + d] = ${O}(y);
  }
}`;
}

/** Storage binding of `dtype` elements, as vec4s when `v4`. */
function vbinding(index: number, name: string, dtype: DType, v4: boolean, write = false): string {
  const t = v4 ? `vec4<${wgslType(dtype)}>` : wgslType(dtype);
  return `@group(0) @binding(${index}) var<storage, ${write ? "read_write" : "read"}> ${name}: array<${t}>;`;
}

/**
 * The bindings of norm backward v1 and v2 (x, g, (w), stats, dx, and v2's `part`) and their hsum helper.
 */
function normBackwardHead(dtype: DType, hasW: boolean, v4: boolean, part: string): string {
  const T = v4 ? "vec4<f32>" : "f32";
  let b = 3;
  const wBind = hasW ? vbinding(b++, "w", dtype, v4) : "";
  const partBind = part ? `@group(0) @binding(${b + 2}) var<storage, read_write> ${part}: array<${T}>;` : "";
  return `${enables(dtype)}${uniformDecl(8)}
${vbinding(1, "x", dtype, v4)}
${vbinding(2, "g", dtype, v4)}
${wBind}
@group(0) @binding(${b}) var<storage, read> stats: array<vec4<f32>>;
${vbinding(b + 1, "dx", dtype, v4, true)}
${partBind}
fn hsum(v: ${T}) -> f32 { return ${v4 ? "v.x + v.y + v.z + v.w" : "v"}; }`;
}

/**
 * WGSL of one row's element d in norm backward (row bases xb, gb and stats st in scope): xhat `xh`, g `g0`
 * and g times the weight `gw`.
 */
function xhGw(T: string, hasW: boolean): string {
  return `let xh = (${T}(x[xb + d]) * st.z - st.x) * st.y;
    let g0 = ${T}(g[gb + d]);
    let gw = g0${hasW ? ` * ${T}(w[U(5u) + d])` : ""};`;
}

/** WGSL of a row's means in norm backward over its n column vectors: mg = mean(g w) (0 for RMS), mgx. */
function rowMeans(T: string, hasW: boolean, rms: boolean, n: string): string {
  return `var sg = ${T}(0.0);
  var sgx = ${T}(0.0);
  for (var d = 0u; d < ${n}; d++) {
    ${xhGw(T, hasW)}
    sg += gw;
    sgx += gw * xh;
  }
  let mg = ${rms ? "0.0" : "hsum(sg) / D"};
  let mgx = hsum(sgx) / D;`;
}

/**
 * norm backward v1 (dx). Uniforms: [rows, DV, D, xOff, gOff, wOff] with DV = D / 4 and offsets in vec4s
 * when `v4`, else DV = D and offsets in elements. Bindings: x, g, (w), stats, dx.
 */
export function normBackwardSource(dtype: DType, rms: boolean, hasW: boolean, v4: boolean): string {
  const T = v4 ? "vec4<f32>" : "f32";
  return `${normBackwardHead(dtype, hasW, v4, "")}
${flatId(ROW_WG)}
  let rows = U(0u); let DV = U(1u); let D = f32(U(2u));
  if (gid >= rows) { return; }
  let st = stats[gid];
  let xb = U(3u) + gid * DV; let gb = U(4u) + gid * DV;
  ${rowMeans(T, hasW, rms, "DV")}
  for (var d = 0u; d < DV; d++) {
    ${xhGw(T, hasW)}
    // 1 / sigma in x's units is st.y * st.z: applied in two steps, so the first keeps the value normal
    dx[gid * DV + d] = ${
    v4 ? `vec4<${wgslType(dtype)}>` : wgslType(dtype)
  }(((gw - mg - xh * mgx) * st.y) * st.z);
  }
}`;
}

/**
 * norm backward v2 (dx and the param grads' stage 1 in one pass): one invocation per chunk of CR rows
 * computes each row's dx as v1 does and adds the row's g xhat and g into per-column sums kept in private
 * arrays of DV entries (DV is compiled in), then writes the chunk's partials as stage 1 does (part[k * 2 DV
 * + c] and part[k * 2 DV + DV + c]). x and g are read once for both, where v1 and stage 1 read them twice.
 * Uniforms: [rows, DV, D, xOff, gOff, wOff, CR]; bindings: x, g, (w), stats, dx, part.
 */
export function normBackwardFusedSource(
  dtype: DType,
  rms: boolean,
  hasW: boolean,
  v4: boolean,
  DV: number,
): string {
  const T = v4 ? "vec4<f32>" : "f32";
  const O = v4 ? `vec4<${wgslType(dtype)}>` : wgslType(dtype);
  return `${normBackwardHead(dtype, hasW, v4, "part")}
${flatId(ROW_WG)}
  let rows = U(0u); let D = f32(U(2u)); let CR = U(6u);
  let chunks = (rows + CR - 1u) / CR;
  if (gid >= chunks) { return; }
  var aw: array<${T}, ${DV}>;
  var ab: array<${T}, ${DV}>;
  for (var d = 0u; d < ${DV}u; d++) { aw[d] = ${T}(0.0); ab[d] = ${T}(0.0); }
  let r1 = min(rows, (gid + 1u) * CR);
  for (var r = gid * CR; r < r1; r++) {
    let st = stats[r];
    let xb = U(3u) + r * ${DV}u; let gb = U(4u) + r * ${DV}u;
    ${rowMeans(T, hasW, rms, `${DV}u`)}
    for (var d = 0u; d < ${DV}u; d++) {
      ${xhGw(T, hasW)}
      dx[r * ${DV}u + d] = ${O}(((gw - mg - xh * mgx) * st.y) * st.z);
      aw[d] += g0 * xh;
      ab[d] += g0;
    }
  }
  for (var d = 0u; d < ${DV}u; d++) {
    part[gid * ${2 * DV}u + d] = aw[d];
    part[gid * ${2 * DV}u + ${DV}u + d] = ab[d];
  }
}`;
}

/**
 * norm param grads v1, stage 1: one invocation per (chunk of CR rows, column vector) writes the chunk's
 * partial sums of g xhat (at part[k * 2 DV + c]) and g (at part[k * 2 DV + DV + c]).
 * Uniforms: [rows, DV, CR, xOff, gOff]; bindings: x, g, stats, part (f32 or vec4<f32>).
 */
export function normParamPartialSource(dtype: DType, hasW: boolean, hasB: boolean, v4: boolean): string {
  const T = v4 ? "vec4<f32>" : "f32";
  return `${enables(dtype)}${uniformDecl(8)}
${vbinding(1, "x", dtype, v4)}
${vbinding(2, "g", dtype, v4)}
@group(0) @binding(3) var<storage, read> stats: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> part: array<${T}>;
${flatId(ROW_WG)}
  let rows = U(0u); let DV = U(1u); let CR = U(2u);
  let chunks = (rows + CR - 1u) / CR;
  if (gid >= chunks * DV) { return; }
  let c = gid % DV; let k = gid / DV;
  let r1 = min(rows, (k + 1u) * CR);
  var aw = ${T}(0.0);
  var ab = ${T}(0.0);
  for (var r = k * CR; r < r1; r++) {
    let gv = ${T}(g[U(4u) + r * DV + c]);
    ${
    hasW
      ? `let st = stats[r];
    aw += gv * ((${T}(x[U(3u) + r * DV + c]) * st.z - st.x) * st.y);`
      : ""
  }
    ${hasB ? "ab += gv;" : ""}
  }
  part[k * 2u * DV + c] = aw;
  part[k * 2u * DV + DV + c] = ab;
}`;
}

/**
 * norm param grads v1, stage 2: one invocation per column vector sums the chunks' partials in order
 * (Kahan-compensated: there may be thousands). Uniforms: [chunks, DV]; bindings: part, (dw), (db).
 */
export function normParamFinishSource(dtype: DType, hasW: boolean, hasB: boolean, v4: boolean): string {
  const T = v4 ? "vec4<f32>" : "f32";
  const O = v4 ? `vec4<${wgslType(dtype)}>` : wgslType(dtype);
  let b = 2;
  const wBind = hasW ? vbinding(b++, "dw", dtype, v4, true) : "";
  const bBind = hasB ? vbinding(b++, "db", dtype, v4, true) : "";
  return `${enables(dtype)}${uniformDecl(4)}
@group(0) @binding(1) var<storage, read> part: array<${T}>;
${wBind}
${bBind}
${flatId(ROW_WG)}
  let chunks = U(0u); let DV = U(1u);
  if (gid >= DV) { return; }
  var sw = ${T}(0.0); var cw = ${T}(0.0);
  var sb = ${T}(0.0); var cb = ${T}(0.0);
  for (var k = 0u; k < chunks; k++) {
    let yw = part[k * 2u * DV + gid] - cw;
    let tw = sw + yw;
    cw = (tw - sw) - yw;
    sw = tw;
    let yb = part[k * 2u * DV + DV + gid] - cb;
    let tb = sb + yb;
    cb = (tb - sb) - yb;
    sb = tb;
  }
  ${hasW ? `dw[gid] = ${O}(sw);` : ""}
  ${hasB ? `db[gid] = ${O}(sb);` : ""}
}`;
}

/**
 * norm unit v1: per row, r = 1 / 2^k with k = floor(log2(max |x|)) clamped to [lo, hi] (k = 0 for a zero or
 * non-finite max) and eps r^2 capped at `big`. Uniforms: [rows, eps(f32), lo(f32), hi(f32), big(f32)].
 */
export function normUnitSource(dtype: DType): string {
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "amax", dtype)}
${binding(2, "r", dtype, true)}
${binding(3, "epsU", dtype, true)}
${flatId(ROW_WG)}
  if (gid >= U(0u)) { return; }
  let a = f32(amax[gid]);
  let k = select(0.0, clamp(floor(log2(a)), UF(2u), UF(3u)), a > 0.0 && a <= 3.4028235e38);
  let rr = exp2(-k);
  r[gid] = ${dtype}(rr);
  epsU[gid] = ${dtype}(min(UF(1u) * rr * rr, UF(4u)));
}`;
}
