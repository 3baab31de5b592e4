/**
 * WGSL of the fused Mamba decoding layer (`mamba_step.ts`): one token of x + Mamba(RMSNorm x) in four
 * dispatches (in-step, the x_proj matmul, ssm-step, out-step) instead of ~10. Decoding at batch 1 is bound by
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
