/**
 * WGSL of the fused decoding steps: one token of Mamba's conv branch and of its selective scan, each in one
 * dispatch (the composed versions in `conv1d.ts` / `selective_scan_step.ts` take 5 and 12 dispatches).
 *
 * Versions (numbers are never reused):
 * - conv step v1: one invocation per (b, d): shifts the window (B, D, W - 1) by the new input, applies
 *   the W taps, the bias and SiLU. x is read through its strides, so a column slice of the in-projection
 *   (x of Mamba's (B, 2 ED) xz) needs no copy.
 * - scan step v1: one invocation per (b, d): dt = softplus(delta + bias), state' = exp(dt A) state +
 *   dt B u, y = <state', C> + D u, times silu(z), with the state in registers as ceil(N / 4) vec4s. u,
 *   delta, z, B and C are read through their strides (slices of Mamba's xz and x_proj output, no copies).
 * @module
 */

import { flatId } from "../../runtime/webgpu.ts";
import { uniformDecl } from "../core/util.ts";

/** Invocations per workgroup of the step kernels. */
export const STEP_WG = 64;

function decl(names: [string, boolean][]): string {
  return names.map(([n, w], i) =>
    `@group(0) @binding(${i + 1}) var<storage, ${w ? "read_write" : "read"}> ${n}: array<f32>;`
  ).join("\n");
}

/**
 * conv step v1 for width W. Uniforms: [Bn, D, xOff, xsB, xsD, stOff, wOff, bOff]. Bindings: state
 * (B, D, W - 1) contiguous from stOff, x (strided), weight (D, W) from wOff, bias (if any), y (B, D),
 * the new state (B, D, W - 1).
 */
export function convStepV1(W: number, hasBias: boolean, silu: boolean): string {
  const names: [string, boolean][] = [["ST", false], ["X", false], ["WT", false]];
  if (hasBias) names.push(["BI", false]);
  names.push(["Y", true], ["NS", true]);
  const S = W - 1;
  const win = [...Array(W).keys()].map((k) =>
    k < S ? `let x${k} = ST[U(5u) + gid * ${S}u + ${k}u];` : `let x${k} = X[U(2u) + b * U(3u) + d * U(4u)];`
  );
  const shift = [...Array(S).keys()].map((k) => `NS[gid * ${S}u + ${k}u] = x${k + 1};`);
  const taps = [...Array(W).keys()].map((k) => `WT[U(6u) + d * ${W}u + ${k}u] * x${k}`);
  return `// causal conv1d step v1 W=${W}
${uniformDecl(8)}
${decl(names)}
${flatId(STEP_WG)}
  let Bn = U(0u); let D = U(1u);
  if (gid >= Bn * D) { return; }
  let b = gid / D; let d = gid - b * D;
  ${win.join("\n  ")}
  let pre = ${hasBias ? "BI[U(7u) + d]" : "0.0"} + ${taps.join(" + ")};
  Y[gid] = ${silu ? "pre / (1.0 + exp(-pre))" : "pre"};
  ${shift.join("\n  ")}
}`;
}

/** Flags of a scan step variant (part of the pipeline key). */
export interface ScanStepVariant {
  N: number;
  hasD: boolean;
  hasZ: boolean;
  hasBias: boolean;
  softplus: boolean;
}

/** Uniform words of scan step v1. */
export const SCAN_STEP_WORDS = 28;

/**
 * scan step v1. Uniforms: [Bn, D, H (= D / G of B), stOff, uOff, usB, usD, dOff, dsB, dsD, zOff, zsB, zsD,
 * bOff, bsB, bsG, bsN, cOff, csB, csG, csN, aOff, DOff, biasOff, H of C]. Bindings: state (B, D, N) contiguous,
 * u, delta, A (D, N) contiguous, B, C, D (if any), z (if any), deltaBias (if any), y (B, D), the new
 * state (B, D, N).
 */
export function scanStepV1(v: ScanStepVariant): string {
  const { N } = v;
  const names: [string, boolean][] = [["ST", false], ["UU", false], ["DL", false], ["AA", false]];
  names.push(["BM", false], ["CM", false]);
  if (v.hasD) names.push(["DS", false]);
  if (v.hasZ) names.push(["Z", false]);
  if (v.hasBias) names.push(["BI", false]);
  names.push(["Y", true], ["NS", true]);
  const K = [...Array(Math.ceil(N / 4)).keys()];
  const vec = (f: (n: number) => string, k: number) =>
    `vec4<f32>(${[0, 1, 2, 3].map((i) => (4 * k + i < N ? f(4 * k + i) : "0.0")).join(", ")})`;
  const comp = ["x", "y", "z", "w"];
  const body = K.map((k) =>
    `{
    let a = ${vec((n) => `AA[U(21u) + d * ${N}u + ${n}u]`, k)};
    let h = ${vec((n) => `ST[U(3u) + gid * ${N}u + ${n}u]`, k)};
    let bv = ${vec((n) => `BM[bb + ${n}u * U(16u)]`, k)};
    let cv = ${vec((n) => `CM[cb + ${n}u * U(20u)]`, k)};
    let hn = exp(dt * a) * h + (dt * uu) * bv;
    y += dot(hn, cv);
    ${
      [0, 1, 2, 3].filter((i) => 4 * k + i < N).map((i) => `NS[gid * ${N}u + ${4 * k + i}u] = hn.${comp[i]};`)
        .join(" ")
    }
  }`
  );
  return `// selective scan step v1
${uniformDecl(SCAN_STEP_WORDS)}
${decl(names)}
fn softplus(x: f32) -> f32 {
  if (x > 20.0) { return x; }
  let e = exp(x);
  let w = 1.0 + e;
  if (w == 1.0) { return e; }
  return log(w) * e / (w - 1.0);
}
${flatId(STEP_WG)}
  let Bn = U(0u); let D = U(1u);
  if (gid >= Bn * D) { return; }
  let b = gid / D; let d = gid - b * D;
  let g = d / U(2u);
  let uu = UU[U(4u) + b * U(5u) + d * U(6u)];
  let pre = DL[U(7u) + b * U(8u) + d * U(9u)]${v.hasBias ? " + BI[U(23u) + d]" : ""};
  let dt = ${v.softplus ? "softplus(pre)" : "pre"};
  let bb = U(13u) + b * U(14u) + g * U(15u);
  let cb = U(17u) + b * U(18u) + (d / U(24u)) * U(19u);
  var y = ${v.hasD ? "DS[U(22u) + d] * uu" : "0.0"};
  ${body.join("\n  ")}
  ${v.hasZ ? "let zz = Z[U(10u) + b * U(11u) + d * U(12u)];\n  y = y * zz / (1.0 + exp(-zz));" : ""}
  Y[gid] = y;
}`;
}
