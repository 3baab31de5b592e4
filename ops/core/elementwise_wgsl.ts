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
 * - v4 transposed tiles: for inputs read across their storage order (a transpose: the two innermost
 *   dims (R, C) of the output are (C, R) in storage, both multiples of 4): one invocation per 4 x 4 tile
 *   reads 4 vec4 columns of each transposed input (4 vec4 rows of the others) and stores 4 vec4 rows,
 *   where v3 reads 16 scalars (a transpose then costs about a contiguous copy).
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
 * How v4 reads a 4 x 4 tile of an input: `t` transposed (stride 1 down the output's rows: 4 vec4 columns,
 * transposed in registers) or `w` row-major (stride 1 along them: 4 vec4 rows as they are).
 */
export type V4Kind = "t" | "w";

/**
 * Builds the v4 (4 x 4 tiles) shader: one invocation per tile of the two innermost dims (R, C) of the
 * output, inputs read by their {@link V4Kind}, the output written as 4 vec4 rows (contiguous, or a `dst`
 * whose innermost stride is 1). Offsets and the strides of every dim but the unit-stride one are multiples
 * of 4 (the op checks). Word 0 counts tiles.
 */
export function elementwiseTileSource(
  inputs: DType[],
  out: DType,
  expr: string,
  kinds: V4Kind[],
  computeTypes: string[],
  rank: number,
  hasDst: boolean,
): string {
  const names = ["a", "b", "c"];
  const ot = out === "f16" ? "f16" : out;
  const oct = computeType(out);
  const intMax = computeTypes.every((t) => t !== "f32")
    ? "fn max_(a: " + computeTypes[0] + ", b: " + computeTypes[0] + ") -> " + computeTypes[0] +
      " { return max(a, b); }\nfn min_(a: " + computeTypes[0] + ", b: " + computeTypes[0] + ") -> " +
      computeTypes[0] + " { return min(a, b); }"
    : "";
  const binds = inputs.map((d, k) =>
    `@group(0) @binding(${k + 1}) var<storage, read> in${k}: array<vec4<${wgslType(d)}>>;`
  ).join("\n");
  const params = inputs.map((_, k) => `${names[k]}: ${computeTypes[k]}`).join(", ");
  // strides of input k (and of the output, words 40..) over the tile's rows and columns
  const sw = (k: number | "o", d: number) => `U(${(k === "o" ? 40 : 16 + 8 * k) + d}u)`;
  const targets: [string, number][] = inputs.map((_, k) => [`i${k}`, 16 + 8 * k]);
  if (hasDst) targets.push(["io", 40]);
  const tileAt = (v: string, k: number | "o") =>
    `${v} += tr * 4u * ${sw(k, rank - 2)} + tc * 4u * ${sw(k, rank - 1)};`;
  const loads = inputs.map((_, k) => {
    const vt = `vec4<${computeTypes[k]}>`;
    const step = sw(k, kinds[k] === "t" ? rank - 1 : rank - 2);
    const v = [0, 1, 2, 3].map((j) => `${vt}(in${k}[(i${k} + ${j}u * ${step}) >> 2u])`);
    if (kinds[k] === "w") return v.map((x, j) => `let ${names[k]}${j} = ${x};`).join("\n  ");
    // columns t0..t3 of the tile: output row j is (t0[j], t1[j], t2[j], t3[j])
    const cols = v.map((x, j) => `let ${names[k]}t${j} = ${x};`).join("\n  ");
    const rows = [0, 1, 2, 3].map((j) =>
      `let ${names[k]}${j} = ${vt}(${[0, 1, 2, 3].map((c) => `${names[k]}t${c}[${j}]`).join(", ")});`
    ).join("\n  ");
    return `${cols}\n  ${rows}`;
  }).join("\n  ");
  const lane = (j: number, c: number) => `f(${inputs.map((_, k) => `${names[k]}${j}[${c}]`).join(", ")})`;
  const rowOut = (j: number) =>
    `vec4<${ot}>(vec4<${oct}>(${[0, 1, 2, 3].map((c) => lane(j, c)).join(", ")}))`;
  const outStride = hasDst ? sw("o", rank - 2) : "C";
  return `${enables(...inputs, out)}${uniformDecl(EW_WORDS)}
${binds}
@group(0) @binding(${inputs.length + 1}) var<storage, read_write> out: array<vec4<${ot}>>;
${WGSL_MATH}
${computeTypes.includes("f32") ? FLOAT_FNS : intMax}
fn f(${params}) -> ${oct} { return ${oct}(${expr}); }
${flatId(EW_WG)}
  if (gid >= U(0u)) { return; }
  let R = U(${8 + rank - 2}u);
  let C = U(${8 + rank - 1}u);
  let tc = gid % (C / 4u);
  let tr = (gid / (C / 4u)) % (R / 4u);
  let plane = gid / (C / 4u) / (R / 4u); // flat index over the outer dims
  ${inputs.map((_, k) => `var i${k} = U(${2 + k}u);`).join(" ")}
  ${hasDst ? "var io = U(5u);" : "let io = U(5u) + (plane * R + tr * 4u) * C + tc * 4u;"}
  ${decodeSource(rank - 2, "plane", targets)}
  ${inputs.map((_, k) => tileAt(`i${k}`, k)).join(" ")} ${hasDst ? tileAt("io", "o") : ""}
  ${loads}
  ${[0, 1, 2, 3].map((j) => `out[(io + ${j}u * ${outStride}) >> 2u] = ${rowOut(j)};`).join("\n  ")}
}`;
}

export { computeType };
