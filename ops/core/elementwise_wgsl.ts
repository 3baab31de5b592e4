/**
 * WGSL for elementwise ops: one generator for any number of inputs and an expression.
 *
 * Versions:
 * - v1 strided: one invocation per output element; each input's index is decoded from the output position
 *   through shape/strides in the uniform block (rank <= 8 after coalescing). Serves views and broadcasts.
 * - v2 contiguous: the same with `offset + gid` indexing for inputs already laid out like the output
 *   (the common case), chosen per input, so no div/mod per element.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, computeType, enables, uniformDecl, WGSL_MATH } from "./util.ts";

/** Max rank after coalescing. */
export const MAX_RANK = 8;
/** Uniform layout: [n, rank, off0..off2, outOff], shape at 8, strides of input k at 16 + 8k, out strides at 40. */
export const EW_WORDS = 16 + 8 * 4;
export const EW_WG = 64;

/** WGSL expressions of the unary ops over `a` (compute type f32, or the int type for int-safe ops). */
export const unaryWgsl: Record<string, string> = {
  neg: "-a",
  abs: "abs(a)",
  exp: "exp(a)",
  log: "log_(a)",
  sqrt: "sqrt_(a)",
  rsqrt: "rsqrt_(a)",
  relu: "select(a, 0, a < 0)",
  gelu: "0.5 * a * (1.0 + erf_(a * 0.70710678118654752))",
  silu: "a / (1.0 + exp(-a))",
  sigmoid: "1.0 / (1.0 + exp(-a))",
  tanh: "tanh_(a)",
  softplus: "max(a, 0.0) + log(1.0 + exp(-abs(a)))",
  erf: "erf_(a)",
  copy: "a",
};

/** WGSL expressions of the binary ops over `a`, `b`. */
export const binaryWgsl: Record<string, string> = {
  add: "a + b",
  sub: "a - b",
  mul: "a * b",
  div: "a / b",
  pow: "pow_(a, b)",
  maximum: "max_(a, b)",
  minimum: "min_(a, b)",
  eq: "select(0u, 1u, a == b)",
  ne: "select(0u, 1u, !(a == b))", // true for NaN whatever the driver's != does
  lt: "select(0u, 1u, a < b)",
  le: "select(0u, 1u, a <= b)",
  gt: "select(0u, 1u, a > b)",
  ge: "select(0u, 1u, a >= b)",
};

// log, sqrt and inverseSqrt are undefined for negative (and zero) inputs in SPIR-V's GLSL.std.450, so
// the IEEE answers are pinned explicitly rather than left to the driver.
const FLOAT_FNS = `
fn log_(x: f32) -> f32 {
  if (is_nan(x) || x < 0.0) { return nan(); }
  if (x == 0.0) { return -inf(); }
  return log(x);
}
fn sqrt_(x: f32) -> f32 { return select(sqrt(x), nan(), is_nan(x) || x < 0.0); }
fn rsqrt_(x: f32) -> f32 {
  if (is_nan(x) || x < 0.0) { return nan(); }
  if (x == 0.0) { return select(inf(), -inf(), (bitcast<u32>(x) & 0x80000000u) != 0u); } // 1/sqrt(-0) = -inf
  return inverseSqrt(x);
}
// erf: Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7)
fn erf_(x: f32) -> f32 {
  let t = 1.0 / (1.0 + 0.3275911 * abs(x));
  let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-x * x);
  return select(y, -y, x < 0.0);
}
// tanh without overflow for large |x|
fn tanh_(x: f32) -> f32 {
  if (is_nan(x)) { return x; }
  let e = exp(-2.0 * abs(x));
  let y = (1.0 - e) / (1.0 + e);
  return select(y, -y, x < 0.0);
}
// pow with the IEEE/JavaScript special cases (SPIR-V's pow is undefined for x < 0 and for x = 0, y <= 0)
fn pow_(a: f32, b: f32) -> f32 {
  if (b == 0.0) { return 1.0; }
  if (is_nan(a) || is_nan(b)) { return nan(); }
  if (b == 1.0) { return a; }
  if (b == 2.0) { return a * a; }
  let m = abs(a);
  let neg = (bitcast<u32>(a) & 0x80000000u) != 0u;
  let integral = abs(b) != inf() && fract(b) == 0.0;
  let odd = integral && fract(b * 0.5) != 0.0;
  var r: f32;
  if (m == 0.0) { r = select(0.0, inf(), b < 0.0); }
  else if (m == inf()) { r = select(inf(), 0.0, b < 0.0); }
  else if (abs(b) == inf()) {
    if (m == 1.0) { return nan(); }
    r = select(0.0, inf(), (m > 1.0) == (b > 0.0));
  } else {
    if (neg && !integral) { return nan(); }
    r = pow(m, b);
  }
  return select(r, -r, neg && odd);
}
fn max_(a: f32, b: f32) -> f32 { return select(max(a, b), a + b, is_nan(a) || is_nan(b)); }
fn min_(a: f32, b: f32) -> f32 { return select(min(a, b), a + b, is_nan(a) || is_nan(b)); }
`;

/** Builds the shader for an elementwise op. `contig[k]` marks inputs indexed as `offset + gid`. */
export function elementwiseSource(
  inputs: DType[],
  out: DType,
  expr: string,
  contig: boolean[],
  computeTypes: string[],
  hasDst = false,
  outStrided = false,
): string {
  const names = ["a", "b", "c"];
  const binds = inputs.map((d, k) => binding(k + 1, `in${k}`, d)).join("\n");
  const intMax = computeTypes.every((t) => t !== "f32")
    ? "fn max_(a: " + computeTypes[0] + ", b: " + computeTypes[0] + ") -> " + computeTypes[0] +
      " { return max(a, b); }\nfn min_(a: " + computeTypes[0] + ", b: " + computeTypes[0] + ") -> " +
      computeTypes[0] + " { return min(a, b); }"
    : "";
  const needStrided = contig.some((c) => !c) || outStrided;
  const index = inputs.map((_, k) =>
    contig[k] ? `let i${k} = U(${2 + k}u) + gid;` : `var i${k} = U(${2 + k}u);`
  )
    .join("\n  ");
  const decode = needStrided
    ? `var rem = gid;
  for (var d = i32(U(1u)) - 1; d >= 0; d--) {
    let n = U(8u + u32(d));
    let c = rem % n;
    rem = rem / n;
    ${inputs.map((_, k) => contig[k] ? "" : `i${k} += c * U(${16 + 8 * k}u + u32(d));`).join(" ")}
    ${outStrided ? "io += c * U(40u + u32(d));" : ""}
  }`
    : "";
  const loads = inputs.map((_, k) => `let ${names[k]} = ${computeTypes[k]}(in${k}[i${k}]);`).join("\n  ");
  return `${enables(...inputs, out)}${uniformDecl(EW_WORDS)}
${binds}
${binding(inputs.length + 1, "out", out, true)}
${WGSL_MATH}
${computeTypes.includes("f32") ? FLOAT_FNS : intMax}
${flatId(EW_WG)}
  if (gid >= U(0u)) { return; }
  ${index}
  ${outStrided ? "var io = U(5u);" : `let io = ${hasDst ? "U(5u) + " : ""}gid;`}
  ${decode}
  ${loads}
  out[io] = ${out === "f16" ? "f16" : out}(${expr});
}`;
}

export { computeType };
