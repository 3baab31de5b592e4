/**
 * WGSL of the fused Mamba decoding layer (`mamba_step.ts`): one token of x + Mamba(RMSNorm x) in two
 * dispatches (in-step v2, ssm-out-step v1; v1 of the layer took four, x_proj a matmul) instead of ~10. Decoding at batch 1 is bound by
 * the number of dispatches (each costs ~0.1 ms to record and ~0.1 ms to run on lavapipe), not by work.
 *
 * Versions (numbers are never reused):
 * - in-step v1: one invocation per (b, e) of the inner width: RMSNorm of the row (optional), the
 *   in-projection's two columns e (x) and ED + e (z), the conv window shifted by the new x, W taps, bias,
 *   SiLU. The row's sum of squares is recomputed per invocation (D loads): cheaper than a dispatch.
 * - ssm-step v1: one invocation per (b, e): delta = x_proj's first R outputs times dt_proj's column e plus
 *   its bias, softplus, A = -exp(ALog), the state update, C readout, D skip and the SiLU(z) gate; the
 *   state in registers as ceil(N / 4) vec4s.
 * - out-step v1: one invocation per (b, j): the residual plus the out-projection's column j.
 * - in-step v2: in-step v1 with four channels per invocation: the input row is read once for four x and
 *   four z columns, weights, conv state and taps as vec4s (each storage load is a per-lane loop on
 *   lavapipe, a vec4 costing about a scalar), the norm folded in as one scale of the dot products.
 * - ssm-step v2: ssm-step v1 with four channels per invocation: x_proj's row (delta, B, C) read once as
 *   vec4s for four channels, dt_proj, ALog, the state and D as vec4s.
 * - proj-step v2: a row-vector times matrix, four outputs per invocation from vec4 weight rows, with an
 *   optional RMSNorm of the row folded in, bias and residual: x_proj, the out-projection plus residual, and
 *   the LM head's final norm plus head. Replaces the matmul call (two pack copies and a dispatch) for
 *   x_proj.
 * - ssm-step v3: x_proj and ssm-step v2 in one dispatch (one workgroup, or two at batch 1, per batch row:
 *   x_proj's partial sums tree-reduced in workgroup memory); three dispatches per layer instead of four.
 * - ssm-out-step v1: x_proj, the ssm update and the out-projection plus residual in one workgroup per batch
 *   row, after in-step v2 (the largest projection) over every core. The layer's default where it fits; it
 *   also takes Jamba's inner RMSNorms of delta's input, B and C (3 more bindings).
 *   (The whole layer in one workgroup was tried: at batch 1 it runs on one core, no faster.)
 * v2, v3 and ssm-out-step need D, ED, N and the dt rank R divisible by 4 (vec4 rows); other shapes run v1.
 * Weights packed into textures per call (cheap texture loads) were tried: less device time, but the copies
 * cost more.
 * @module
 */

import { flatId } from "../../runtime/webgpu.ts";
import { uniformDecl } from "../core/util.ts";

/** Invocations per workgroup. */
export const MSTEP_WG = 64;

function decl(names: [string, boolean][]): string {
  return names.map(([n, w], i) =>
    `@group(0) @binding(${i + 1}) var<storage, ${w ? "read_write" : "read"}> ${n}: array<f32>;`
  ).join("\n");
}

/**
 * in-step v1. Uniforms: [Bn, D, ED, eps (f32 bits)]. Bindings: x (B, D), norm weight (D, if `norm`),
 * in-projection weight (D, 2 ED), conv state (B, ED, W - 1), conv weight (ED, W), conv bias (ED, if any);
 * out xc (B, ED), z (B, ED), the new conv state.
 */
export function inStepV1(W: number, norm: boolean, convBias: boolean): string {
  const names: [string, boolean][] = [["X", false]];
  if (norm) names.push(["NW", false]);
  names.push(["WI", false], ["ST", false], ["CW", false]);
  if (convBias) names.push(["CB", false]);
  names.push(["XC", true], ["Z", true], ["NS", true]);
  const S = W - 1;
  const ks = [...Array(W).keys()];
  return `// mamba in-step v1 W=${W}
${uniformDecl(4)}
${decl(names)}
${flatId(MSTEP_WG)}
  let Bn = U(0u); let D = U(1u); let ED = U(2u);
  if (gid >= Bn * ED) { return; }
  let b = gid / ED; let e = gid - b * ED;
  let xr = b * D;
  var r = 1.0;
  ${
    norm
      ? `var ss = 0.0;
  for (var i = 0u; i < D; i++) { let v = X[xr + i]; ss += v * v; }
  r = inverseSqrt(ss / f32(D) + UF(3u));`
      : ""
  }
  var ax = 0.0; var az = 0.0;
  for (var i = 0u; i < D; i++) {
    let v = X[xr + i] * r${norm ? " * NW[i]" : ""};
    ax += v * WI[i * 2u * ED + e];
    az += v * WI[i * 2u * ED + ED + e];
  }
  ${ks.map((k) => (k < S ? `let w${k} = ST[gid * ${S}u + ${k}u];` : `let w${k} = ax;`)).join("\n  ")}
  let pre = ${convBias ? "CB[e]" : "0.0"} + ${ks.map((k) => `CW[e * ${W}u + ${k}u] * w${k}`).join(" + ")};
  XC[gid] = pre / (1.0 + exp(-pre));
  Z[gid] = az;
  ${[...Array(S).keys()].map((k) => `NS[gid * ${S}u + ${k}u] = w${k + 1};`).join("\n  ")}
}`;
}

/**
 * ssm-step v1 for state size N and dt rank R. Uniforms: [Bn, ED]. Bindings: ssm state (B, ED, N),
 * xc (B, ED), z (B, ED), x_proj output (B, R + 2N), dt_proj weight (R, ED), dt_proj bias (ED), ALog
 * (ED, N), D (ED); out y (B, ED), the new state.
 */
export function ssmStepV1(N: number, R: number): string {
  const names: [string, boolean][] = [["ST", false], ["XC", false], ["Z", false], ["XD", false]];
  names.push(["DW", false], ["DB", false], ["AL", false], ["DS", false], ["Y", true], ["NS", true]);
  const K = [...Array(Math.ceil(N / 4)).keys()];
  const P = R + 2 * N;
  const vec = (f: (n: number) => string, k: number) =>
    `vec4<f32>(${[0, 1, 2, 3].map((i) => (4 * k + i < N ? f(4 * k + i) : "0.0")).join(", ")})`;
  const comp = ["x", "y", "z", "w"];
  const body = K.map((k) =>
    `{
    let a = -exp(${vec((n) => `AL[e * ${N}u + ${n}u]`, k)});
    let h = ${vec((n) => `ST[gid * ${N}u + ${n}u]`, k)};
    let bv = ${vec((n) => `XD[xd + ${R + n}u]`, k)};
    let cv = ${vec((n) => `XD[xd + ${R + N + n}u]`, k)};
    let hn = exp(dt * a) * h + (dt * uu) * bv;
    y += dot(hn, cv);
    ${
      [0, 1, 2, 3].filter((i) => 4 * k + i < N).map((i) => `NS[gid * ${N}u + ${4 * k + i}u] = hn.${comp[i]};`)
        .join(" ")
    }
  }`
  );
  return `// mamba ssm-step v1 N=${N} R=${R}
${uniformDecl(2)}
${decl(names)}
fn softplus(x: f32) -> f32 {
  if (x > 20.0) { return x; }
  let e = exp(x);
  let w = 1.0 + e;
  if (w == 1.0) { return e; }
  return log(w) * e / (w - 1.0);
}
${flatId(MSTEP_WG)}
  let Bn = U(0u); let ED = U(1u);
  if (gid >= Bn * ED) { return; }
  let b = gid / ED; let e = gid - b * ED;
  let xd = b * ${P}u;
  var pre = DB[e];
  ${[...Array(R).keys()].map((r) => `pre += XD[xd + ${r}u] * DW[${r}u * ED + e];`).join("\n  ")}
  let dt = softplus(pre);
  let uu = XC[gid];
  var y = DS[e] * uu;
  ${body.join("\n  ")}
  let zz = Z[gid];
  Y[gid] = y * zz / (1.0 + exp(-zz));
}`;
}

/**
 * out-step v1. Uniforms: [Bn, D, ED]. Bindings: y (B, ED), out-projection weight (ED, D), residual
 * (B, D); out (B, D) = residual + y @ weight.
 */
export function outStepV1(): string {
  return `// mamba out-step v1
${uniformDecl(3)}
${decl([["Y", false], ["WO", false], ["RS", false], ["OUT", true]])}
${flatId(MSTEP_WG)}
  let Bn = U(0u); let D = U(1u); let ED = U(2u);
  if (gid >= Bn * D) { return; }
  let b = gid / D; let j = gid - b * D;
  var acc = 0.0;
  for (var e = 0u; e < ED; e++) { acc += Y[b * ED + e] * WO[e * D + j]; }
  OUT[gid] = RS[gid] + acc;
}`;
}

/** Invocations per workgroup of the v2 programs: few invocations at batch 1, so small groups spread them. */
export const MSTEP_WG2 = 16;

function decl4(names: [string, boolean][]): string {
  return names.map(([n, w], i) =>
    `@group(0) @binding(${i + 1}) var<storage, ${w ? "read_write" : "read"}> ${n}: array<vec4<f32>>;`
  ).join("\n");
}

const COMP = ["x", "y", "z", "w"];
/** Component j of a flat run held in vec4 registers named `${name}0`, `${name}1`, ... */
const at = (name: string, j: number) => `${name}${j >> 2}.${COMP[j & 3]}`;

/**
 * in-step v2: one invocation per (b, four channels 4q..4q+3). Uniforms: [Bn, D, ED, eps (f32 bits)].
 * Bindings (all vec4 arrays): x (B, D), norm weight (D, if `norm`), in-projection (D, 2 ED), conv state
 * (B, ED, W - 1), conv weight (ED, W), conv bias (ED, if any); out xc (B, ED), z (B, ED), the new conv
 * state. The four channels' conv state is 4 (W - 1) consecutive floats: W - 1 vec4s.
 */
export function inStepV2(W: number, norm: boolean, convBias: boolean): string {
  const names: [string, boolean][] = [["X", false]];
  if (norm) names.push(["NW", false]);
  names.push(["WI", false], ["ST", false], ["CW", false]);
  if (convBias) names.push(["CB", false]);
  names.push(["XC", true], ["Z", true], ["NS", true]);
  const S = W - 1;
  const range = (n: number) => [...Array(n).keys()];
  // window of channel c: taps k < S from the old state, tap S the new input
  const win = (c: number, k: number) => (k < S ? at("s", c * S + k) : `xn.${COMP[c]}`);
  const pre = (c: number) =>
    `${convBias ? `cb.${COMP[c]}` : "0.0"} + ${
      range(W).map((k) => `${at("w", c * W + k)} * ${win(c, k)}`).join(" + ")
    }`;
  const ns = (j: number) => win(Math.floor(j / S), (j % S) + 1);
  return `// mamba in-step v2 W=${W}
${uniformDecl(4)}
${decl4(names)}
${flatId(MSTEP_WG2)}
  let Bn = U(0u); let D4 = U(1u) / 4u; let E4 = U(2u) / 4u;
  if (gid >= Bn * E4) { return; }
  let b = gid / E4; let q = gid - b * E4;
  let xr = b * D4;
  let row = 2u * E4;
  var ss = vec4<f32>(); var ax = vec4<f32>(); var az = vec4<f32>();
  for (var i = 0u; i < D4; i++) {
    let xv = X[xr + i];
    ss += xv * xv;
    let v = xv${norm ? " * NW[i]" : ""};
    let o = 4u * i * row + q;
    ax += v.x * WI[o] + v.y * WI[o + row] + v.z * WI[o + 2u * row] + v.w * WI[o + 3u * row];
    az += v.x * WI[o + E4] + v.y * WI[o + row + E4] + v.z * WI[o + 2u * row + E4] + v.w * WI[o + 3u * row + E4];
  }
  ${norm ? "let r = inverseSqrt(dot(ss, vec4<f32>(1.0)) / f32(U(1u)) + UF(3u));" : "let r = 1.0;"}
  let xn = ax * r;
  ${range(S).map((m) => `let s${m} = ST[gid * ${S}u + ${m}u];`).join("\n  ")}
  ${range(W).map((m) => `let w${m} = CW[q * ${W}u + ${m}u];`).join("\n  ")}
  ${convBias ? "let cb = CB[q];" : ""}
  let pre = vec4<f32>(${range(4).map(pre).join(",\n    ")});
  XC[gid] = pre / (1.0 + exp(-pre));
  Z[gid] = az * r;
  ${
    range(S).map((m) =>
      `NS[gid * ${S}u + ${m}u] = vec4<f32>(${range(4).map((i) => ns(4 * m + i)).join(", ")});`
    ).join("\n  ")
  }
}`;
}

/**
 * ssm-step v2 for state size N and dt rank R (both divisible by 4): one invocation per (b, four channels).
 * Uniforms: [Bn, ED]. Bindings (vec4 arrays) as ssm-step v1: ssm state (B, ED, N), xc (B, ED), z (B, ED),
 * x_proj output (B, R + 2N), dt_proj weight (R, ED), dt_proj bias (ED), ALog (ED, N), D (ED); out y (B, ED),
 * the new state.
 */
export function ssmStepV2(N: number, R: number): string {
  const names: [string, boolean][] = [["ST", false], ["XC", false], ["Z", false], ["XD", false]];
  names.push(["DW", false], ["DB", false], ["AL", false], ["DS", false], ["Y", true], ["NS", true]);
  const N4 = N / 4, R4 = R / 4, P4 = R4 + 2 * N4;
  const range = (n: number) => [...Array(n).keys()];
  return `// mamba ssm-step v2 N=${N} R=${R}
${uniformDecl(2)}
${decl4(names)}
${SOFTPLUS}
${flatId(MSTEP_WG2)}
  let Bn = U(0u); let E4 = U(1u) / 4u;
  if (gid >= Bn * E4) { return; }
  let b = gid / E4; let q = gid - b * E4;
  let xd = b * ${P4}u;
  ${range(P4).map((k) => `let x${k} = XD[xd + ${k}u];`).join("\n  ")}
  ${ssmChannels(N, R)}
}`;
}

const SOFTPLUS = `fn softplus(x: f32) -> f32 {
  if (x > 20.0) { return x; }
  let e = exp(x);
  let w = 1.0 + e;
  if (w == 1.0) { return e; }
  return log(w) * e / (w - 1.0);
}`;

/**
 * The ssm update of four channels 4q..4q+3 (gid = b * ED / 4 + q), given x_proj's row in vec4s x0, x1, ...
 * (delta's low-rank input, B, C).
 */
function ssmChannels(N: number, R: number): string {
  const N4 = N / 4, R4 = R / 4;
  const range = (n: number) => [...Array(n).keys()];
  const chan = (c: number) =>
    `{
    let dc = dt.${COMP[c]}; let du = dc * uu.${COMP[c]};
    let so = (gid * 4u + ${c}u) * ${N4}u; let ao = (q * 4u + ${c}u) * ${N4}u;
    var acc = 0.0;
    ${
      range(N4).map((k) =>
        `{ let hn = exp(dc * -exp(AL[ao + ${k}u])) * ST[so + ${k}u] + du * x${R4 + k}; acc += dot(hn, x${
          R4 + N4 + k
        }); NS[so + ${k}u] = hn; }`
      ).join("\n    ")
    }
    y.${COMP[c]} += acc;
  }`;
  return `var pre = DB[q];
  ${range(R).map((r) => `pre += ${at("x", r)} * DW[${r}u * E4 + q];`).join("\n  ")}
  let dt = vec4<f32>(softplus(pre.x), softplus(pre.y), softplus(pre.z), softplus(pre.w));
  let uu = XC[gid];
  var y = DS[q] * uu;
  ${range(4).map(chan).join("\n  ")}
  let zz = Z[gid];
  Y[gid] = y * zz / (1.0 + exp(-zz));`;
}

/** Invocations per workgroup of ssm-step v3 (a power of two: its x_proj partial sums are tree-reduced). */
export const SSM3_WG = 64;

/** Whether ssm-step v3 takes x_proj rows of P4 vec4s: its reduction holds SSM3_WG x P4 vec4s (<= 16 KiB). */
export const ssmStepV3Fits = (P4: number) => SSM3_WG * P4 * 16 <= 16384;

/**
 * ssm-step v3: x_proj and ssm-step v2 in one dispatch. Workgroups (S, B): each computes the whole x_proj
 * row of its batch row (each invocation a partial sum over its channel groups, tree-reduced in workgroup
 * memory) and the ssm update of every S-th channel group; S > 1 (batch 1) spreads the update over more
 * cores at the cost of repeating x_proj. Uniforms: [Bn, ED, S]. Bindings (vec4 arrays):
 * ssm state, xc, z, x_proj weight (ED, R + 2N), dt_proj weight, dt_proj bias, ALog, D; out y, the new state.
 */
export function ssmStepV3(N: number, R: number): string {
  const names: [string, boolean][] = [["ST", false], ["XC", false], ["Z", false], ["XW", false]];
  names.push(["DW", false], ["DB", false], ["AL", false], ["DS", false], ["Y", true], ["NS", true]);
  const N4 = N / 4, R4 = R / 4, P4 = R4 + 2 * N4;
  const range = (n: number) => [...Array(n).keys()];
  const G = range(P4);
  const reduce = range(Math.log2(SSM3_WG)).map((i) => SSM3_WG >> (i + 1)).map((h) =>
    `if (t < ${h}u) {
    ${G.map((g) => `wp[t * ${P4}u + ${g}u] += wp[(t + ${h}u) * ${P4}u + ${g}u];`).join("\n    ")}
  }
  workgroupBarrier();`
  );
  return `// mamba ssm-step v3 N=${N} R=${R}
${uniformDecl(3)}
${decl4(names)}
${SOFTPLUS}
var<workgroup> wp: array<vec4<f32>, ${SSM3_WG * P4}>;
@compute @workgroup_size(${SSM3_WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let t = lid.x; let b = wid.y;
  let E4 = U(1u) / 4u; let S = U(2u);
  let xb = b * E4;
  ${G.map((g) => `var p${g} = vec4<f32>();`).join(" ")}
  for (var k = t; k < E4; k += ${SSM3_WG}u) {
    let xv = XC[xb + k];
    let o = k * ${4 * P4}u;
    ${
    G.map((g) =>
      `p${g} += xv.x * XW[o + ${g}u] + xv.y * XW[o + ${P4 + g}u] + xv.z * XW[o + ${
        2 * P4 + g
      }u] + xv.w * XW[o + ${3 * P4 + g}u];`
    ).join("\n    ")
  }
  }
  ${G.map((g) => `wp[t * ${P4}u + ${g}u] = p${g};`).join("\n  ")}
  workgroupBarrier();
  ${reduce.join("\n  ")}
  ${G.map((g) => `let x${g} = wp[${g}u];`).join("\n  ")}
  for (var q = t * S + wid.x; q < E4; q += S * ${SSM3_WG}u) {
    let gid = xb + q;
    ${ssmChannels(N, R).replaceAll("\n", "\n  ")}
  }
}`;
}

/** Flags of a proj-step variant (part of the pipeline key). */
export interface ProjStepVariant {
  /** RMSNorm of the input row (weight bound, eps in the uniforms). */
  norm: boolean;
  /** A bias (Nout) added. */
  bias: boolean;
  /** A residual (B, Nout) added. */
  residual: boolean;
}

/**
 * proj-step v2: out (B, Nout) = [residual +] [bias +] RMSNorm?(x) (B, K) @ W (K, Nout), one invocation per
 * (b, four outputs), K and Nout divisible by 4. Uniforms: [Bn, K, Nout, eps (f32 bits)]. Bindings (vec4
 * arrays): x, norm weight (K, if `norm`), W, bias (if any), residual (if any); out.
 */
export function projStepV2(v: ProjStepVariant): string {
  const names: [string, boolean][] = [["X", false]];
  if (v.norm) names.push(["NW", false]);
  names.push(["W", false]);
  if (v.bias) names.push(["BI", false]);
  if (v.residual) names.push(["RS", false]);
  names.push(["OUT", true]);
  return `// mamba proj-step v2 norm=${v.norm} bias=${v.bias} residual=${v.residual}
${uniformDecl(4)}
${decl4(names)}
${flatId(MSTEP_WG2)}
  let Bn = U(0u); let K4 = U(1u) / 4u; let O4 = U(2u) / 4u;
  if (gid >= Bn * O4) { return; }
  let b = gid / O4; let j = gid - b * O4;
  let xr = b * K4;
  var ss = vec4<f32>(); var acc = vec4<f32>();
  for (var i = 0u; i < K4; i++) {
    let xv = X[xr + i];
    ${v.norm ? "ss += xv * xv;\n    let v = xv * NW[i];" : "let v = xv;"}
    let o = 4u * i * O4 + j;
    acc += v.x * W[o] + v.y * W[o + O4] + v.z * W[o + 2u * O4] + v.w * W[o + 3u * O4];
  }
  ${v.norm ? "acc *= inverseSqrt(dot(ss, vec4<f32>(1.0)) / f32(U(1u)) + UF(3u));" : ""}
  OUT[gid] = acc${v.bias ? " + BI[j]" : ""}${v.residual ? " + RS[gid]" : ""};
}`;
}

/**
 * Storage buffers ssm-out-step v1 binds (with the uniform block, which lavapipe binds as storage); with
 * inner norms 3 more.
 */
export const SSM_OUT_BUFFERS = 14;

/**
 * ssm-out-step v1: ssm-step v3 and the out-projection plus residual in one dispatch, one workgroup of
 * SSM3_WG invocations per batch row (in-step v2 runs before it over every core): ssm-step v3's x_proj
 * reduction and ssm update, a storage barrier, then the out-projection plus residual (output groups t,
 * t + SSM3_WG, ...). At batch 1 the fixed cost of a dispatch on lavapipe (~50 us, more than these
 * projections' loads) outweighs spreading this work over both cores. (Folding the in-step in as well, one
 * dispatch per layer, was measured no faster: the in-step then runs on one core.) With `inner` (Jamba's
 * block) x_proj's three parts are RMS-normalised, each with its own weight, before the update. Uniforms:
 * [Bn, D, ED, eps, inner eps (f32 bits)]. Bindings (vec4 arrays): x, xc, z, ssm state, x_proj weight,
 * dt_proj weight, dt_proj bias, ALog, D, y (scratch), the new ssm state, out-projection, out; with `inner`
 * the norm weights of delta's input (R), B (N) and C (N).
 */
export function ssmOutStepV1(N: number, R: number, inner = false): string {
  const names: [string, boolean][] = [["X", false], ["XC", false], ["Z", false]];
  names.push(["ST", false], ["XW", false], ["DW", false]);
  names.push(["DB", false], ["AL", false], ["DS", false], ["Y", true], ["NS", true], ["WO", false]);
  names.push(["OUT", true]);
  if (inner) names.push(["NDT", false], ["NB", false], ["NC", false]);
  const T = SSM3_WG;
  const R4 = R / 4, N4 = N / 4;
  const P4 = R4 + 2 * N4;
  // the body of ssm-step v3 after its prologue
  const ssmSrc = ssmStepV3(N, R);
  let ssmBody = ssmSrc.slice(ssmSrc.indexOf("  var p0 = "), ssmSrc.lastIndexOf("}"))
    .replace("t * S + wid.x", "t").replace(`S * ${T}u`, `${T}u`);
  if (inner) {
    // Jamba's RMSNorms of x_proj's three parts (delta's input, B, C), each scaled by the inverse RMS of its
    // own values and its weight, before the update reads them
    const seg = (name: string, lo: number, n4: number, len: number, W: string) => {
      const gs = [...Array(n4).keys()].map((i) => lo + i);
      return {
        pre: `var ss${name} = 0.0; ${gs.map((g) => `ss${name} += dot(wp[${g}u], wp[${g}u]);`).join(" ")}
  let rs${name} = inverseSqrt(ss${name} / ${len}.0 + UF(4u));`,
        lets: gs.map((g) => `let x${g} = wp[${g}u] * rs${name} * ${W}[${g - lo}u];`),
      };
    };
    const parts = [seg("dt", 0, R4, R, "NDT"), seg("b", R4, N4, N, "NB"), seg("c", R4 + N4, N4, N, "NC")];
    const plain = [...Array(P4).keys()].map((g) => `let x${g} = wp[${g}u];`).join("\n  ");
    if (!ssmBody.includes(plain)) throw new Error("ssmOutStepV1: ssm-step v3's x_proj reads moved");
    ssmBody = ssmBody.replace(
      plain,
      `${parts.map((p) => p.pre).join("\n  ")}\n  ${parts.flatMap((p) => p.lets).join("\n  ")}`,
    );
  }
  return `// mamba ssm-out-step v1 N=${N} R=${R}${inner ? " inner norms" : ""}
${uniformDecl(5)}
${decl4(names)}
${SOFTPLUS}
var<workgroup> wp: array<vec4<f32>, ${T * P4}>;
@compute @workgroup_size(${T})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let t = lid.x; let b = wid.y;
  let D4 = U(1u) / 4u; let E4 = U(2u) / 4u;
  let xb = b * E4;
${ssmBody}
  storageBarrier();
  for (var j = t; j < D4; j += ${T}u) {
    var acc = vec4<f32>();
    for (var i = 0u; i < E4; i++) {
      let v = Y[xb + i];
      let o = 4u * i * D4 + j;
      acc += v.x * WO[o] + v.y * WO[o + D4] + v.z * WO[o + 2u * D4] + v.w * WO[o + 3u * D4];
    }
    OUT[b * D4 + j] = X[b * D4 + j] + acc;
  }
}`;
}
