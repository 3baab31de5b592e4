/**
 * WGSL for elementwise ops: one generator for any number of inputs and an expression.
 *
 * Versions:
 * - v1 strided: one invocation per output element; each input's index is decoded from the output position
 *   through shape/strides in the uniform block (rank <= 8 after coalescing). Serves views and broadcasts.
 * - v2 contiguous: the same with `offset + gid` indexing for inputs already laid out like the output
 *   (the common case), chosen per input, so no div/mod per element.
 * - v3 vec4: one invocation per 4 consecutive output elements, stored as one vec4 (storage loads cost
 *   about the same per lane whatever their width on lavapipe, so this halves elementwise time). Needs
 *   the innermost coalesced dim to be a multiple of 4 (then the 4 elements share every index but the
 *   innermost), or a flat op whose last, partial vec4 is stored lane by lane. Each input is loaded by
 *   its kind (see {@link V3Kind}): a vec4 for contiguous runs, one value splatted for broadcasts (a
 *   scalar, a column), four scalars otherwise.
 * - v4 transposed tiles: one input read across its storage order (a transpose: the two innermost dims
 *   (R, C) of the output are (C, R) in storage, both multiples of 4): one invocation per 4 x 4 tile reads
 *   4 vec4 columns and stores 4 vec4 rows, where v3 reads 16 scalars (a transpose then costs about a
 *   contiguous copy).
 * @module
 */

import { type DType, wgslType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, computeType, enables, uniformDecl, WGSL_MATH } from "./util.ts";

/** Max rank after coalescing. */
export const MAX_RANK = 8;
/** Uniform layout: [n, rank, off0..off2, outOff], shape at 8, strides of input k at 16 + 8k, out strides at 40. */
export const EW_WORDS = 16 + 8 * 4;
export const EW_WG = 64;

/**
 * Switches the elementwise ops' shader choice; tests turn `vec4` off to run v1/v2 over the same grid, and
 * `tiles` off to run v3 where v4 would serve.
 */
export const ewOptions = { vec4: true, tiles: true };

/**
 * How v3 loads 4 consecutive output elements from an input (or stores them to the output):
 * - `c` contiguous like the output at an offset divisible by 4: the vec4 at `offset / 4 + gid`;
 * - `k` the same element for all (every stride 0): one scalar at `offset`, splatted;
 * - `v` innermost stride 1, offset and outer strides divisible by 4: the vec4 at the decoded index / 4;
 * - `s` innermost stride 0 (a broadcast column): one scalar at the decoded index, splatted;
 * - `g` any other layout: four scalars at the decoded index + j * innermost stride;
 * - `r` a row repeated over the outer dims (a bias: innermost stride 1, the others 0): the vec4 at
 *   (offset + e mod C) / 4 for element e and innermost dim C, no decode;
 * - `q` a column over 2-D (strides [1, 0]: a per-row scale): one scalar at offset + e / C, splatted.
 *
 * `r` and `q` exist because decoding through the uniform block costs more than the loads it saves (on
 * lavapipe the block is a storage buffer, read per lane).
 */
export type V3Kind = "c" | "k" | "v" | "s" | "g" | "r" | "q";

/** WGSL expressions of the unary ops over `a` (compute type f32, or the int type for int-safe ops). */
export const unaryWgsl: Record<string, string> = {
  neg: "-a",
  abs: "abs(a)",
  exp: "exp(a)",
  log: "log_(a)",
  sqrt: "sqrt_(a)",
  rsqrt: "rsqrt_(a)",
  relu: "select(a, 0, a < 0)",
  gelu: "gelu_(a)",
  silu: "silu_(a)",
  sigmoid: "1.0 / (1.0 + exp(-a))",
  tanh: "tanh_(a)",
  softplus: "max(a, 0.0) + log(1.0 + exp(-abs(a)))",
  erf: "erf_(a)",
  copy: "a",
};

/**
 * Fused backward passes of the unary ops: the input gradient in one dispatch from `a` = the incoming
 * gradient and `b` = the op's input x or its output y (as {@link unaryGradFrom} says). Each keeps the
 * association of the composed chain it replaces, so the two round alike.
 */
export const unaryGradWgsl: Record<string, string> = {
  abs: "select(select(0.0, -a, b < 0.0), a, b > 0.0)",
  sqrt: "a / (b * 2.0)",
  rsqrt: "a * (b * b * b * -0.5)",
  relu: "relu_bwd(a, b)",
  gelu: "gelu_bwd(a, b)",
  silu: "silu_bwd(a, b)",
  sigmoid: "a * (b * (1.0 - b))",
  tanh: "a * (1.0 - b * b)",
  softplus: "a * (1.0 / (1.0 + exp(-b)))",
  erf: "a * (exp(-(b * b)) * 1.1283791670955126)",
};

/** Which tensor a fused backward of {@link unaryGradWgsl} reads: the op's input x or its output y. */
export const unaryGradFrom: Record<string, "x" | "y"> = {
  abs: "x",
  sqrt: "y",
  rsqrt: "y",
  relu: "x",
  gelu: "x",
  silu: "x",
  sigmoid: "y",
  tanh: "y",
  softplus: "x",
  erf: "x",
};

/** The activations of `biasAct`, each with WGSL functions `<act>_(h)` and `<act>_bwd(g, h)`. */
export const ACTIVATIONS: readonly string[] = ["gelu", "silu", "relu"];

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
// erf: Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7); erf_e takes exp(-x^2) from a caller that shares it
fn erf_e(x: f32, e: f32) -> f32 {
  let t = 1.0 / (1.0 + 0.3275911 * abs(x));
  let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * e;
  return select(y, -y, x < 0.0);
}
fn erf_(x: f32) -> f32 { return erf_e(x, exp(-x * x)); }
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
// activations and their fused backward g * act'(x) (gelu' = Phi(x) + x phi(x), silu' = s (1 + x (1 - s))
// with s = sigmoid(x)); the derivatives take their limits at +-inf, where the product forms give inf * 0
fn relu_(x: f32) -> f32 { return select(x, 0.0, x < 0.0); }
fn relu_bwd(g: f32, x: f32) -> f32 { return select(0.0, g, x > 0.0); }
fn gelu_(x: f32) -> f32 { return 0.5 * x * (1.0 + erf_(x * 0.70710678118654752)); }
fn gelu_bwd(g: f32, x: f32) -> f32 {
  let z = x * 0.70710678118654752;
  let e = exp(-z * z); // exp(-x^2 / 2): erf's and phi's, one exp for both
  let xphi = select(x * (e * 0.3989422804014327), 0.0, abs(x) > 20.0);
  return g * (0.5 * (1.0 + erf_e(z, e)) + xphi);
}
fn silu_(x: f32) -> f32 { return x / (1.0 + exp(-x)); }
fn silu_bwd(g: f32, x: f32) -> f32 {
  let s = 1.0 / (1.0 + exp(-x));
  let d = s * (1.0 + x * (1.0 - s));
  return g * select(select(d, 0.0, x < -100.0), 1.0, x > 100.0);
}
fn max_(a: f32, b: f32) -> f32 { return select(max(a, b), a + b, is_nan(a) || is_nan(b)); }
fn min_(a: f32, b: f32) -> f32 { return select(min(a, b), a + b, is_nan(a) || is_nan(b)); }
`;

/**
 * WGSL that decodes flat element `e` through the coalesced shape (words 8..) into index increments: each
 * target `[variable, word of its strides]` gains coordinate x stride per dim. Unrolled over `rank` (part of
 * every key): constant uniform indices, one division per dim, none for the outermost (what remains of `e`
 * is its coordinate); a loop over the rank read from the uniform block cost a third more on lavapipe.
 */
function decodeSource(rank: number, e: string, targets: [string, number][]): string {
  const step = (d: number, c: string) => targets.map(([v, w]) => `${v} += ${c} * U(${w + d}u);`).join(" ");
  const lines = [`var rem = ${e};`];
  for (let d = rank - 1; d >= 1; d--) {
    lines.push(`{ let n = U(${8 + d}u); let q = rem / n; let c = rem - q * n; ${step(d, "c")} rem = q; }`);
  }
  if (rank > 0) lines.push(step(0, "rem"));
  return lines.join("\n  ");
}

/** Builds the shader for an elementwise op. `contig[k]` marks inputs indexed as `offset + gid`. */
export function elementwiseSource(
  inputs: DType[],
  out: DType,
  expr: string,
  contig: boolean[],
  computeTypes: string[],
  hasDst: boolean,
  outStrided: boolean,
  rank: number,
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
  const targets: [string, number][] = inputs.flatMap((_, k): [string, number][] =>
    contig[k] ? [] : [[`i${k}`, 16 + 8 * k]]
  );
  if (outStrided) targets.push(["io", 40]);
  const decode = needStrided ? decodeSource(rank, "gid", targets) : "";
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

/**
 * Builds the v3 (vec4) shader. Uniforms as v1/v2 (element offsets and strides, word 0 the number of
 * invocations), plus the element count at word 6 for the `tail` variant, where the last vec4 is partial
 * and is stored lane by lane. `out` is `c` or `v`.
 */
export function elementwiseVec4Source(
  inputs: DType[],
  out: DType,
  expr: string,
  kinds: V3Kind[],
  outKind: "c" | "v",
  computeTypes: string[],
  tail: boolean,
  rank: number,
): string {
  const names = ["a", "b", "c"];
  const vecIn = (k: number) => kinds[k] === "c" || kinds[k] === "v" || kinds[k] === "r";
  const binds = inputs.map((d, k) =>
    `@group(0) @binding(${k + 1}) var<storage, read> in${k}: array<${
      vecIn(k) ? `vec4<${wgslType(d)}>` : wgslType(d)
    }>;`
  ).join("\n");
  const ot = out === "f16" ? "f16" : out;
  const oct = computeType(out);
  const intMax = computeTypes.every((t) => t !== "f32")
    ? "fn max_(a: " + computeTypes[0] + ", b: " + computeTypes[0] + ") -> " + computeTypes[0] +
      " { return max(a, b); }\nfn min_(a: " + computeTypes[0] + ", b: " + computeTypes[0] + ") -> " +
      computeTypes[0] + " { return min(a, b); }"
    : "";
  const params = inputs.map((_, k) => `${names[k]}: ${computeTypes[k]}`).join(", ");
  const decoded = (k: number) => kinds[k] === "v" || kinds[k] === "s" || kinds[k] === "g";
  const needDecode = inputs.some((_, k) => decoded(k)) || outKind === "v";
  const inner = kinds.some((k) => k === "r" || k === "q")
    ? `let inner = U(${8 + rank - 1}u);
  let col = (gid * 4u) % inner;
  let row = (gid * 4u) / inner;`
    : "";
  const index = inputs.map((_, k) => decoded(k) ? `var i${k} = U(${2 + k}u);` : "").join(" ");
  const targets: [string, number][] = inputs.flatMap((_, k): [string, number][] =>
    decoded(k) ? [[`i${k}`, 16 + 8 * k]] : []
  );
  if (outKind === "v") targets.push(["io", 40]);
  const decode = needDecode
    ? `${index}
  ${outKind === "v" ? "var io = U(5u);" : ""}
  ${decodeSource(rank, "gid * 4u", targets)}`
    : "";
  const load = (k: number): string => {
    const ct = computeTypes[k], v = `vec4<${ct}>`;
    switch (kinds[k]) {
      case "c":
        return `${v}(in${k}[(U(${2 + k}u) >> 2u) + gid])`;
      case "v":
        return `${v}(in${k}[i${k} >> 2u])`;
      case "k":
        return `${v}(${ct}(in${k}[U(${2 + k}u)]))`;
      case "s":
        return `${v}(${ct}(in${k}[i${k}]))`;
      case "r":
        return `${v}(in${k}[(U(${2 + k}u) + col) >> 2u])`;
      case "q":
        return `${v}(${ct}(in${k}[U(${2 + k}u) + row]))`;
      case "g": {
        const st = `U(${16 + 8 * k + rank - 1}u)`;
        return `${v}(${[0, 1, 2, 3].map((j) => `${ct}(in${k}[i${k} + ${j}u * ${st}])`).join(", ")})`;
      }
    }
  };
  const loads = inputs.map((_, k) => `let ${names[k].toUpperCase()} = ${load(k)};`).join("\n  ");
  const lane = (j: string) => `f(${inputs.map((_, k) => `${names[k].toUpperCase()}[${j}]`).join(", ")})`;
  const at = outKind === "c" ? "(U(5u) >> 2u) + gid" : "io >> 2u";
  const store = tail
    ? `if (gid * 4u + 4u > U(6u)) {
    for (var j = 0u; j < 4u; j++) {
      if (gid * 4u + j < U(6u)) { out[${at}][j] = ${ot}(${lane("j")}); }
    }
    return;
  }
  `
    : "";
  return `${enables(...inputs, out)}${uniformDecl(EW_WORDS)}
${binds}
@group(0) @binding(${inputs.length + 1}) var<storage, read_write> out: array<vec4<${ot}>>;
${WGSL_MATH}
${computeTypes.includes("f32") ? FLOAT_FNS : intMax}
fn f(${params}) -> ${oct} { return ${oct}(${expr}); }
${flatId(EW_WG)}
  if (gid >= U(0u)) { return; }
  ${inner}
  ${decode}
  ${loads}
  ${store}out[${at}] = vec4<${ot}>(vec4<${oct}>(${[0, 1, 2, 3].map((j) => lane(`${j}`)).join(", ")}));
}`;
}

/**
 * Builds the v4 (4 x 4 transposed tiles) shader for one input whose coalesced strides are 1 over dim
 * rank - 2 and a multiple of 4 over rank - 1 (and the outer dims), with an aligned offset; the output is
 * contiguous from element offset word 5 (a multiple of 4). Word 0 counts tiles.
 */
export function elementwiseTileSource(
  input: DType,
  out: DType,
  expr: string,
  computeType_: string,
  rank: number,
): string {
  const ot = out === "f16" ? "f16" : out;
  const oct = computeType(out);
  const intMax = computeType_ !== "f32"
    ? `fn max_(a: ${computeType_}, b: ${computeType_}) -> ${computeType_} { return max(a, b); }
fn min_(a: ${computeType_}, b: ${computeType_}) -> ${computeType_} { return min(a, b); }`
    : "";
  const R = `U(${8 + rank - 2}u)`, C = `U(${8 + rank - 1}u)`;
  const outer: string[] = [];
  for (let d = rank - 3; d >= 1; d--) {
    outer.push(`{ let n = U(${8 + d}u); let q = rem / n; i0 += (rem - q * n) * U(${16 + d}u); rem = q; }`);
  }
  if (rank > 2) outer.push(`i0 += rem * U(16u);`);
  const vt = `vec4<${computeType_}>`;
  return `${enables(input, out)}${uniformDecl(EW_WORDS)}
@group(0) @binding(1) var<storage, read> in0: array<vec4<${wgslType(input)}>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<${ot}>>;
${WGSL_MATH}
${computeType_ === "f32" ? FLOAT_FNS : intMax}
fn f(a: ${computeType_}) -> ${oct} { return ${oct}(${expr}); }
fn row(v: ${vt}) -> vec4<${ot}> { return vec4<${ot}>(vec4<${oct}>(f(v.x), f(v.y), f(v.z), f(v.w))); }
${flatId(EW_WG)}
  if (gid >= U(0u)) { return; }
  let c4 = ${C} / 4u;
  let r4 = ${R} / 4u;
  let tc = gid % c4;
  var rem = gid / c4;
  let tr = rem % r4;
  rem = rem / r4;
  let plane = rem; // flat index over the outer dims
  // input element (outer, row 4 tr, col 4 tc): rows are contiguous in storage, columns stride apart
  let stride = U(${16 + rank - 1}u);
  var i0 = U(2u) + tr * 4u + tc * 4u * stride;
  ${outer.join("\n  ")}
  let a0 = ${vt}(in0[i0 >> 2u]);
  let a1 = ${vt}(in0[(i0 + stride) >> 2u]);
  let a2 = ${vt}(in0[(i0 + 2u * stride) >> 2u]);
  let a3 = ${vt}(in0[(i0 + 3u * stride) >> 2u]);
  // a_j holds output column 4 tc + j of rows 4 tr .. 4 tr + 3: transposed into output rows
  let o = (U(5u) >> 2u) + (plane * ${R} + tr * 4u) * c4 + tc;
  out[o] = row(${vt}(a0.x, a1.x, a2.x, a3.x));
  out[o + c4] = row(${vt}(a0.y, a1.y, a2.y, a3.y));
  out[o + 2u * c4] = row(${vt}(a0.z, a1.z, a2.z, a3.z));
  out[o + 3u * c4] = row(${vt}(a0.w, a1.w, a2.w, a3.w));
}`;
}

export { computeType };
