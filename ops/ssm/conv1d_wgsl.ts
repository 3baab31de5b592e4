/**
 * WGSL causal depthwise conv1d over (B, D, L) with weight (D, W), optional bias (D) and initial state
 * (B, D, W - 1).
 *
 * Versions (numbers are never reused):
 * - fwd v1 any width: one invocation per output, a loop over the W taps. Also the S4 convolution mode,
 *   where W = L (a kernel as long as the sequence). Taps past CONV_MAX_LOOP go to further dispatches that
 *   accumulate (lavapipe's loop limit), as do the backward's long loops.
 * - fwd v2 small width (W <= 8; Mamba's is 4): one invocation per 4 consecutive outputs of a channel with
 *   the W weights in registers and the W + 3 inputs loaded once: (W + 3) + W loads per 4 outputs against
 *   8 W for v1. Storage-buffer loads dominate on lavapipe (a per-lane loop each), so this is what counts.
 * - fwd v3 small width (W <= 8), strided: one invocation per (b, 4 channels, chunk of steps) slides a
 *   window through its chunk; x and out go through their strides (a vec4 per step when channels are
 *   contiguous), SiLU fused. Exists for Mamba's channels-last activations: the in-projection split and the
 *   (B, L, D) output without transposing copies.
 * - bwd v2 small width (W <= 8), strided, SiLU fused (the pre-activation recomputed from x): dx, dstate and
 *   per-chunk partial sums of dweight and dbias in one pass, a fixed-order reduce of the partials in a
 *   second (deterministic). Replaces dx v1 + dw v1 (scalar loads per tap, D (W + 1) long sums) there.
 * - bwd dx v1: one invocation per input position s in [-(W - 1), L): dx[s] = sum_k w[k] g[s + W - 1 - k],
 *   into dx (s >= 0) or the initial state's gradient (s < 0).
 * - bwd dw v1: one invocation per (d, k) (k = W: the bias), summing over b and t: D * (W + 1) long sums,
 *   no atomics.
 * @module
 */

import { flatId } from "../../runtime/webgpu.ts";
import { uniformDecl } from "../core/util.ts";

/** Invocations per workgroup. */
export const CONV_WG = 64;

/** Widths up to this use fwd v2. */
export const CONV_V2_MAX_W = 8;

function decl(names: [string, boolean][]): string {
  return names.map(([n, w], i) =>
    `@group(0) @binding(${i + 1}) var<storage, ${w ? "read_write" : "read"}> ${n}: array<f32>;`
  ).join("\n");
}

/** Reads x at time s (< 0: from the state) of row (b, d) = bd; `S` = W - 1. */
function readX(hasState: boolean): string {
  return `fn rx(bd: u32, s: i32) -> f32 {
  if (s >= 0) { return X[U(4u) + bd * U(2u) + u32(s)]; }
  ${hasState ? "return ST[U(6u) + bd * (U(3u) - 1u) + u32(i32(U(3u)) - 1 + s)];" : "return 0.0;"}
}`;
}

/**
 * Taps (or steps) one dispatch of a loop over W (or L) covers: lavapipe stops an invocation's loops after
 * 65535 iterations in total, so longer loops are split over dispatches that accumulate into the output.
 */
export const CONV_MAX_LOOP = 32768;

/**
 * fwd v1. Uniforms: [Bn*D, D, L, W, xOff, wOff, stOff, bOff, k0, k1, acc]: taps k0 .. k1 - 1, added to
 * the output when acc = 1 (else bias first). Bindings: x, weight, bias?, state?, out.
 */
export function convFwdV1(hasBias: boolean, hasState: boolean): string {
  const names: [string, boolean][] = [["X", false], ["WT", false]];
  if (hasBias) names.push(["BI", false]);
  if (hasState) names.push(["ST", false]);
  names.push(["OUT", true]);
  return `// causal conv1d fwd v1
${uniformDecl(12)}
${decl(names)}
${readX(hasState)}
${flatId(CONV_WG)}
  let BD = U(0u); let L = U(2u); let W = U(3u);
  if (gid >= BD * L) { return; }
  let bd = gid / L; let t = gid - bd * L; let d = bd % U(1u);
  var acc = ${hasBias ? "BI[U(7u) + d]" : "0.0"};
  if (U(10u) != 0u) { acc = OUT[gid]; }
  for (var k = U(8u); k < U(9u); k++) {
    acc += WT[U(5u) + d * W + k] * rx(bd, i32(t) - i32(W) + 1 + i32(k));
  }
  OUT[gid] = acc;
}`;
}

/** fwd v2 for width W (unrolled). Uniforms and bindings as v1; one invocation per 4 outputs. */
export function convFwdV2(W: number, hasBias: boolean, hasState: boolean): string {
  const names: [string, boolean][] = [["X", false], ["WT", false]];
  if (hasBias) names.push(["BI", false]);
  if (hasState) names.push(["ST", false]);
  names.push(["OUT", true]);
  const taps = [...Array(W).keys()], xs = [...Array(W + 3).keys()];
  const outs = [0, 1, 2, 3];
  return `// causal conv1d fwd v2 W=${W}
${uniformDecl(8)}
${decl(names)}
${readX(hasState)}
${flatId(CONV_WG)}
  let BD = U(0u); let L = U(2u);
  let L4 = (L + 3u) / 4u;
  if (gid >= BD * L4) { return; }
  let bd = gid / L4; let t0 = (gid - bd * L4) * 4u; let d = bd % U(1u);
  ${taps.map((k) => `let w${k} = WT[U(5u) + d * ${W}u + ${k}u];`).join("\n  ")}
  let b0 = ${hasBias ? "BI[U(7u) + d]" : "0.0"};
  // inputs t0 - (W - 1) .. t0 + 3, clamped to L - 1 (a tail output past L is not stored)
  ${xs.map((j) => `let x${j} = rx(bd, min(i32(t0) - ${W - 1} + ${j}, i32(L) - 1));`).join("\n  ")}
  let o = bd * L + t0;
  ${
    outs.map((i) =>
      `if (t0 + ${i}u < L) { OUT[o + ${i}u] = b0 + ${taps.map((k) => `w${k} * x${i + k}`).join(" + ")}; }`
    ).join("\n  ")
  }
}`;
}

/**
 * bwd dx v1. Uniforms: [Bn*D, D, L, W, gOff, wOff, k0, k1, acc] (taps k0 .. k1 - 1, accumulated when
 * acc = 1). Bindings: g, weight, dx, dstate. One invocation per (bd, s) with s + W - 1 in [0, L + W - 1).
 */
export function convBwdDxV1(): string {
  return `// causal conv1d bwd dx v1
${uniformDecl(12)}
${decl([["G", false], ["WT", false], ["DX", true], ["DS", true]])}
${flatId(CONV_WG)}
  let BD = U(0u); let L = U(2u); let W = U(3u);
  let S = W - 1u;
  let span = L + S;
  if (gid >= BD * span) { return; }
  let bd = gid / span; let p = gid - bd * span; let d = bd % U(1u);
  let s = i32(p) - i32(S);
  var acc = 0.0;
  if (U(8u) != 0u) { if (s >= 0) { acc = DX[bd * L + u32(s)]; } else { acc = DS[bd * S + p]; } }
  for (var k = U(6u); k < U(7u); k++) {
    let t = s + i32(S) - i32(k);
    if (t >= 0 && t < i32(L)) { acc += WT[U(5u) + d * W + k] * G[U(4u) + bd * L + u32(t)]; }
  }
  if (s >= 0) { DX[bd * L + u32(s)] = acc; } else { DS[bd * S + p] = acc; }
}`;
}

/**
 * bwd dw v1. Uniforms: [Bn, D, L, W, gOff, xOff, stOff, t0, t1, acc] (steps t0 .. t1 - 1 of every batch,
 * accumulated when acc = 1). Bindings: g, x, state?, dw (D, W + 1: the last column is dbias). One
 * invocation per (d, k), k in [0, W].
 */
export function convBwdDwV1(hasState: boolean): string {
  const names: [string, boolean][] = [["G", false], ["X", false]];
  if (hasState) names.push(["ST", false]);
  names.push(["DW", true]);
  return `// causal conv1d bwd dw v1
${uniformDecl(12)}
${decl(names)}
${flatId(CONV_WG)}
  let Bn = U(0u); let D = U(1u); let L = U(2u); let W = U(3u);
  if (gid >= D * (W + 1u)) { return; }
  let d = gid / (W + 1u); let k = gid - d * (W + 1u);
  let S = W - 1u;
  var acc = 0.0;
  if (U(9u) != 0u) { acc = DW[gid]; }
  for (var b = 0u; b < Bn; b++) {
    let bd = b * D + d;
    for (var t = U(7u); t < U(8u); t++) {
      let g = G[U(4u) + bd * L + t];
      if (k == W) { acc += g; continue; }
      let s = i32(t) - i32(S) + i32(k);
      if (s >= 0) { acc += g * X[U(5u) + bd * L + u32(s)]; }
      ${hasState ? "else { acc += g * ST[U(6u) + bd * S + u32(i32(S) + s)]; }" : ""}
    }
  }
  DW[gid] = acc;
}`;
}

// ---------------------------------------------------------------------------------------------------------
// v3 (forward) and bwd v2: 4 channels per invocation, strided operands, fused SiLU

/**
 * A sequence operand of fwd v3 / bwd v2: element (b, d, t) of a (B, D, L) view at
 * off + b sb + d sd + t st, the four words from uniform word `w`. With `vec4` (host-checked: sd = 1 and
 * off, sb, st multiples of 4, D a multiple of 4) the 4 channels of an invocation are one vec4 access:
 * channels-last operands (Mamba's (B, L, D) activations) cost one storage access per step, not four.
 */
export interface SeqOperand {
  /** The binding's WGSL name. */
  name: string;
  /** First uniform word of (off, sb, sd, st). */
  w: number;
  vec4: boolean;
}

function seqIndex(o: SeqOperand, b: string, d: string, t: string): string {
  return `U(${o.w}u) + ${b} * U(${o.w + 1}u) + ${d} * U(${o.w + 2}u) + ${t} * U(${o.w + 3}u)`;
}

/** `fn l<name>(b, d4, t) -> vec4<f32>`: the 4 channels 4 d4 .. 4 d4 + 3 at step t (zero past D). */
function seqLoadFn(o: SeqOperand): string {
  if (o.vec4) {
    return `fn l${o.name}(b: u32, d4: u32, t: u32) -> vec4<f32> {
  return ${o.name}[(${seqIndex(o, "b", "0u", "t")}) / 4u + d4];
}`;
  }
  const lane = (i: number) =>
    `select(0.0, ${o.name}[${
      seqIndex(o, "b", `min(4u * d4 + ${i}u, U(1u) - 1u)`, "t")
    }], 4u * d4 + ${i}u < U(1u))`;
  return `fn l${o.name}(b: u32, d4: u32, t: u32) -> vec4<f32> {
  return vec4<f32>(${[0, 1, 2, 3].map(lane).join(", ")});
}`;
}

/** `fn s<name>(b, d4, t, v)`: stores the 4 channels (those below D). */
function seqStoreFn(o: SeqOperand): string {
  if (o.vec4) {
    return `fn s${o.name}(b: u32, d4: u32, t: u32, v: vec4<f32>) {
  ${o.name}[(${seqIndex(o, "b", "0u", "t")}) / 4u + d4] = v;
}`;
  }
  return `fn s${o.name}(b: u32, d4: u32, t: u32, v: vec4<f32>) {
  for (var i = 0u; i < 4u; i++) {
    let d = 4u * d4 + i;
    if (d < U(1u)) { ${o.name}[${seqIndex(o, "b", "d", "t")}] = v[i]; }
  }
}`;
}

function seqDecl(binding: number, o: SeqOperand, write: boolean): string {
  return `@group(0) @binding(${binding}) var<storage, ${write ? "read_write" : "read"}> ${o.name}: array<${
    o.vec4 ? "vec4<f32>" : "f32"
  }>;`;
}

/** The 4 channels' value of a (D, W) or (D) parameter row at column k (zero past D). */
function chanVec(arr: string, base: string, stride: string, k: string): string {
  const lane = (i: number) =>
    `select(0.0, ${arr}[${base} + min(d + ${i}u, U(1u) - 1u) * ${stride} + ${k}], d + ${i}u < U(1u))`;
  return `vec4<f32>(${[0, 1, 2, 3].map(lane).join(", ")})`;
}

/** The state's 4 channels at position S + s (s in [-(W - 1), 0)) of (B, D, W - 1) at stOff. */
function stateVec(W: number): string {
  return `fn lST(b: u32, d: u32, j: u32) -> vec4<f32> {
  let row = b * U(1u);
  return ${chanVec("ST", `U(8u) + row * ${W - 1}u`, `${W - 1}u`, "j")};
}`;
}

/** Flags of a fwd v3 / bwd v2 variant (all part of the pipeline key). */
export interface ConvV3Variant {
  W: number;
  hasBias: boolean;
  hasState: boolean;
  silu: boolean;
}

/** Key of a variant and its operands' vec4 flags. */
export function convV3Key(v: ConvV3Variant, ...vec4: boolean[]): string {
  return `W${v.W}|${v.hasBias}|${v.hasState}|${v.silu}|${vec4.map((f) => (f ? 4 : 1)).join("")}`;
}

/** Loads x at step t (i32) of the window: the state before t = 0, zeros before it without one. */
function windowLoad(v: ConvV3Variant, t: string): string {
  const S = v.W - 1;
  return `select(${
    v.hasState ? `lST(b, d, u32(max(${t} + ${S}, 0)))` : "vec4<f32>(0.0)"
  }, lX(b, d4, u32(max(${t}, 0))), ${t} >= 0)`;
}

const CONV_V3_COMMON = `let Bn = U(0u); let L = U(2u); let D4 = U(3u); let chunks = U(4u); let TC = U(5u);`;

/**
 * fwd v3 for width W <= CONV_V2_MAX_W: one invocation per (b, 4 channels, chunk of TC steps) slides a
 * window of the last W inputs (vec4s over the channels) through its chunk: one x load and one store per
 * step, with x and out read and written through their strides (Mamba's in-projection split and
 * channels-last output need no copies) and SiLU fused. Uniforms: [Bn, D, L, D4, chunks, TC, wOff, bOff,
 * stOff, x (off, sb, sd, st), out (off, sb, sd, st)]. Bindings: x, weight, bias?, state?, out.
 */
export function convFwdV3(v: ConvV3Variant, xVec4: boolean, outVec4: boolean): string {
  const { W } = v, S = W - 1;
  const X: SeqOperand = { name: "X", w: 9, vec4: xVec4 },
    O: SeqOperand = { name: "OUT", w: 13, vec4: outVec4 };
  let b = 1;
  const decl = [seqDecl(b++, X, false), `@group(0) @binding(${b++}) var<storage, read> WT: array<f32>;`];
  if (v.hasBias) decl.push(`@group(0) @binding(${b++}) var<storage, read> BI: array<f32>;`);
  if (v.hasState) decl.push(`@group(0) @binding(${b++}) var<storage, read> ST: array<f32>;`);
  decl.push(seqDecl(b++, O, true));
  const taps = [...Array(W).keys()], win = [...Array(S).keys()];
  const sum = taps.map((k) => `w${k} * ${k < S ? `x${k}` : "xn"}`).join(" + ");
  return `// causal conv1d fwd v3 W=${W}${v.silu ? " silu" : ""}
${uniformDecl(20)}
${decl.join("\n")}
${seqLoadFn(X)}
${seqStoreFn(O)}
${v.hasState ? stateVec(W) : ""}
${flatId(CONV_WG)}
  ${CONV_V3_COMMON}
  if (gid >= Bn * D4 * chunks) { return; }
  let d4 = gid % D4; let r = gid / D4; let c = r % chunks; let b = r / chunks;
  let d = 4u * d4;
  ${taps.map((k) => `let w${k} = ${chanVec("WT", "U(6u)", `${W}u`, `${k}u`)};`).join("\n  ")}
  let b0 = ${v.hasBias ? chanVec("BI", "U(7u)", "1u", "0u") : "vec4<f32>(0.0)"};
  let t0 = c * TC; let t1 = min(L, t0 + TC);
  ${win.map((j) => `var x${j} = ${windowLoad(v, `i32(t0) - ${S - j}`)};`).join("\n  ")}
  for (var t = t0; t < t1; t++) {
    let xn = lX(b, d4, t);
    var o = b0 + ${sum};
    ${v.silu ? "o = o / (vec4<f32>(1.0) + exp(-o));" : ""}
    sOUT(b, d4, t, o);
    ${win.map((j) => `x${j} = ${j + 1 < S ? `x${j + 1}` : "xn"};`).join(" ")}
  }
}`;
}

/**
 * bwd v2 for width W <= CONV_V2_MAX_W (any layout, optional fused SiLU): one invocation per (b, 4
 * channels, chunk) walks t = t0 .. t1 + W - 2 keeping windows of the last W inputs and the last W
 * pre-activation gradients gp = g silu'(pre) (pre recomputed from x: nothing saved but x): dx[t - W + 1]
 * = sum_k w_k gp[t - k] (into the initial state's gradient for t - W + 1 < 0), and the chunk's partial
 * sums of dweight (gp x) and dbias (gp) stay in registers, stored once per invocation as W + 1 vec4s; the
 * reduce pass sums them in a fixed order (deterministic, no atomics). Uniforms: [Bn, D, L, D4, chunks, TC,
 * wOff, bOff, stOff, x (4), g (4), dx (4)]. Bindings: x, g, weight, bias?, state?, dx, dstate, partials
 * ((Bn, chunks, W + 1, D4) vec4s).
 */
export function convBwdV2(v: ConvV3Variant, xVec4: boolean, gVec4: boolean, dxVec4: boolean): string {
  const { W } = v, S = W - 1;
  const X: SeqOperand = { name: "X", w: 9, vec4: xVec4 }, G: SeqOperand = { name: "G", w: 13, vec4: gVec4 };
  const DX: SeqOperand = { name: "DX", w: 17, vec4: dxVec4 };
  let b = 1;
  const decl = [
    seqDecl(b++, X, false),
    seqDecl(b++, G, false),
    `@group(0) @binding(${b++}) var<storage, read> WT: array<f32>;`,
  ];
  if (v.hasBias) decl.push(`@group(0) @binding(${b++}) var<storage, read> BI: array<f32>;`);
  if (v.hasState) decl.push(`@group(0) @binding(${b++}) var<storage, read> ST: array<f32>;`);
  decl.push(seqDecl(b++, DX, true));
  decl.push(`@group(0) @binding(${b++}) var<storage, read_write> DS: array<f32>;`);
  decl.push(`@group(0) @binding(${b++}) var<storage, read_write> PART: array<vec4<f32>>;`);
  const taps = [...Array(W).keys()], win = [...Array(S).keys()];
  // x window x0 .. x{S-1} = x[t - S .. t - 1], xn = x[t]; gp window q0 .. q{S-1} = gp[t - S .. t - 1]
  const xk = (k: number) => (k < S ? `x${k}` : "xn");
  const qk = (k: number) => (k < S ? `q${k}` : "gp");
  return `// causal conv1d bwd v2 W=${W}${v.silu ? " silu" : ""}
${uniformDecl(24)}
${decl.join("\n")}
${seqLoadFn(X)}
${seqLoadFn(G)}
${seqStoreFn(DX)}
${v.hasState ? stateVec(W) : ""}
${flatId(CONV_WG)}
  ${CONV_V3_COMMON}
  if (gid >= Bn * D4 * chunks) { return; }
  let d4 = gid % D4; let r = gid / D4; let c = r % chunks; let b = r / chunks;
  let d = 4u * d4;
  ${taps.map((k) => `let w${k} = ${chanVec("WT", "U(6u)", `${W}u`, `${k}u`)};`).join("\n  ")}
  let b0 = ${v.hasBias ? chanVec("BI", "U(7u)", "1u", "0u") : "vec4<f32>(0.0)"};
  let t0 = c * TC; let t1 = min(L, t0 + TC);
  // the first dx this invocation writes: chunk 0 also covers the state's positions
  let lo = select(i32(t0), -${S}, c == 0u);
  ${win.map((j) => `var x${j} = ${windowLoad(v, `i32(t0) - ${S - j}`)};`).join("\n  ")}
  ${win.map((j) => `var q${j} = vec4<f32>(0.0);`).join("\n  ")}
  ${taps.map((k) => `var dw${k} = vec4<f32>(0.0);`).join(" ")}
  var db = vec4<f32>(0.0);
  for (var t = t0; t < t1 + ${S}u; t++) {
    var xn = vec4<f32>(0.0); var gp = vec4<f32>(0.0);
    if (t < L) {
      xn = lX(b, d4, t);
      gp = lG(b, d4, t);
      ${
    v.silu
      ? `let pre = b0 + ${taps.map((k) => `w${k} * ${xk(k)}`).join(" + ")};
      let sg = vec4<f32>(1.0) / (vec4<f32>(1.0) + exp(-pre));
      gp = gp * sg * (vec4<f32>(1.0) + pre * (vec4<f32>(1.0) - sg));`
      : ""
  }
      if (t < t1) {
        ${taps.map((k) => `dw${k} += gp * ${xk(k)};`).join(" ")}
        db += gp;
      }
    }
    let s = i32(t) - ${S};
    if (s >= lo && s < i32(t1)) {
      let dxs = ${taps.map((k) => `w${k} * ${qk(S - k)}`).join(" + ")};
      if (s >= 0) { sDX(b, d4, u32(s), dxs); }
      else {
        for (var i = 0u; i < 4u; i++) {
          if (d + i < U(1u)) { DS[((b * U(1u) + d + i) * ${S}u) + u32(s + ${S})] = dxs[i]; }
        }
      }
    }
    ${win.map((j) => `x${j} = ${xk(j + 1)};`).join(" ")}
    ${win.map((j) => `q${j} = ${qk(j + 1)};`).join(" ")}
  }
  let pb = (b * chunks + c) * ${W + 1}u;
  ${taps.map((k) => `PART[(pb + ${k}u) * D4 + d4] = dw${k};`).join("\n  ")}
  PART[(pb + ${W}u) * D4 + d4] = db;
}`;
}

/**
 * bwd v2 reduce: dweight (D, W) and dbias (D) from the partials of {@link convBwdV2}, one invocation per
 * (k, 4 channels) summing rows r0 .. r1 - 1 of the (Bn chunks) partial rows in order (slices over
 * dispatches accumulate, lavapipe's loop limit). Uniforms: [D, D4, W, r0, r1, acc]. Bindings: partials,
 * dweight, dbias.
 */
export function convBwdReduceV2(): string {
  return `// causal conv1d bwd v2 reduce
${uniformDecl(8)}
@group(0) @binding(1) var<storage, read> PART: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> DW: array<f32>;
@group(0) @binding(3) var<storage, read_write> DB: array<f32>;
${flatId(CONV_WG)}
  let D = U(0u); let D4 = U(1u); let W = U(2u);
  if (gid >= (W + 1u) * D4) { return; }
  let k = gid / D4; let d4 = gid - k * D4;
  var acc = vec4<f32>(0.0);
  for (var r = U(3u); r < U(4u); r++) { acc += PART[(r * (W + 1u) + k) * D4 + d4]; }
  for (var i = 0u; i < 4u; i++) {
    let d = 4u * d4 + i;
    if (d >= D) { break; }
    if (k < W) {
      let o = d * W + k;
      DW[o] = select(0.0, DW[o], U(5u) != 0u) + acc[i];
    } else {
      DB[d] = select(0.0, DB[d], U(5u) != 0u) + acc[i];
    }
  }
}`;
}
