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
