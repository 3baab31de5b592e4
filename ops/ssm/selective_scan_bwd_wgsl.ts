/**
 * WGSL backward of the selective scan: bwd v1 (see the version list in `selective_scan_wgsl.ts`).
 * @module
 */

import { flatId } from "../../runtime/webgpu.ts";
import { uniformDecl } from "../core/util.ts";
import { paramStride, SCAN_WG, type ScanVariant } from "./selective_scan_wgsl.ts";

const COMP = ["x", "y", "z", "w"];

/**
 * bwd v1: one invocation per (b, d) of the channel block [d0, d0 + nb), in two phases, each split over
 * dispatches by segment ranges [sLo, sHi) so that no invocation runs more than MAX_LOOP loop iterations
 * (lavapipe's limit): phase 0 writes the checkpoints (the state entering each segment of K steps),
 * ascending; phase 1 walks the segments in reverse, recomputing each one's states from its checkpoint into
 * the scratch and running the adjoint back through it. Between phase-1 dispatches the adjoint travels in
 * the scratch and the per-channel sums accumulate in dparams.
 *
 * Uniforms: [Bn, D, L, H, G, d0, nb, K, nS, uOff, dOff, zOff, bOff, cOff, goOff, glOff, sLo, sHi].
 * Bindings, phase 0: params, u, delta, B (unless shared), scratch. Phase 1: params, u, delta, B (unless
 * shared), C (unless shared), z (if any), dout (if `hasOut`), dlast (if `hasLast`); then du, ddelta,
 * dz (if z), dparams (Bn, D, P) per-channel sums in the params layout, dB terms (Bn, nb, N, L) and dC
 * terms (unless shared), scratch (Bn * nb, nS + K + 1, N): checkpoints, one segment's states, the adjoint.
 */
export function scanBackwardV1(v: ScanVariant, hasOut: boolean, hasLast: boolean, phase: 0 | 1): string {
  const { N } = v;
  const K4 = [...Array(Math.ceil(N / 4)).keys()];
  const P = paramStride(v);
  let b = 1;
  const decl: string[] = [];
  const bind = (name: string, write = false) =>
    decl.push(
      `@group(0) @binding(${b++}) var<storage, ${write ? "read_write" : "read"}> ${name}: array<f32>;`,
    );
  bind("P");
  bind("U_");
  bind("DL");
  if (!v.bShared) bind("BM");
  if (phase === 1) {
    if (!v.cShared) bind("CM");
    if (v.hasZ) bind("Z");
    if (hasOut) bind("GO");
    if (hasLast) bind("GL");
    bind("DU", true);
    bind("DDL", true);
    if (v.hasZ) bind("DZ", true);
    bind("DP", true);
    if (!v.bShared) bind("DBV", true);
    if (!v.cShared) bind("DCV", true);
  }
  bind("SCR", true);
  const vecK = (k: number, f: (n: number) => string) =>
    `vec4<f32>(${[0, 1, 2, 3].map((i) => (4 * k + i < N ? f(4 * k + i) : "0.0")).join(", ")})`;
  const each = (k: number, f: (n: number, c: string) => string) =>
    [0, 1, 2, 3].filter((i) => 4 * k + i < N).map((i) => f(4 * k + i, COMP[i])).join(" ");
  const param = (off: number) => (n: number) => `P[pb + ${off + n}u]`;
  const bOffS = N + 2, cOffS = N + 2 + (v.bShared ? N : 0);
  const Bk = (k: number) => (v.bShared ? `bs${k}` : vecK(k, (n) => `BM[bb + ${n}u * L + t]`));
  const Ck = (k: number) => (v.cShared ? `cs${k}` : vecK(k, (n) => `CM[cb + ${n}u * L + t]`));
  const loadT = `let pre = DL[U(10u) + row + t] + bias;
      let dt = ${v.softplus ? "softplus(pre)" : "pre"};
      let uu = U_[U(9u) + row + t];`;
  const fwdStep = K4.map((k) => `h${k} = exp(dt * a${k}) * h${k} + (dt * uu) * ${Bk(k)};`).join("\n      ");
  // scratch slots: 0 .. nS-1 checkpoints, nS .. nS+K-1 a segment's states, nS+K the adjoint
  const scr = (slot: string, k: number) => vecK(k, (n) => `SCR[sb + (${slot}) * ${N}u + ${n}u]`);
  const scrStore = (slot: string, k: number, val: string) =>
    each(k, (n, c) => `SCR[sb + (${slot}) * ${N}u + ${n}u] = ${val}.${c};`);
  const prelude = `${uniformDecl(20)}
${decl.join("\n")}
fn softplus(x: f32) -> f32 {
  if (x > 20.0) { return x; }
  let e = exp(x);
  let w = 1.0 + e;
  if (w == 1.0) { return e; }
  return log(w) * e / (w - 1.0);
}
${flatId(SCAN_WG)}
  let Bn = U(0u); let D = U(1u); let L = U(2u); let nb = U(6u); let K = U(7u); let nS = U(8u);
  let sLo = U(16u); let sHi = U(17u);
  if (gid >= Bn * nb) { return; }
  let b = gid / nb; let dl = gid - b * nb; let d = U(5u) + dl;
  let bd = b * D + d;
  let g = d / U(3u);
  let pb = d * ${P}u;
  let Dskip = P[pb + ${N}u]; let bias = P[pb + ${N + 1}u];
  ${K4.map((k) => `let a${k} = ${vecK(k, param(0))}; var h${k} = vec4<f32>(0.0);`).join("\n  ")}
  ${v.bShared ? K4.map((k) => `let bs${k} = ${vecK(k, param(bOffS))};`).join("\n  ") : ""}
  ${v.cShared && phase === 1 ? K4.map((k) => `let cs${k} = ${vecK(k, param(cOffS))};`).join("\n  ") : ""}
  let row = bd * L;
  let bb = U(12u) + (b * U(4u) + g) * ${N}u * L;
  let cb = U(13u) + (b * U(4u) + g) * ${N}u * L;
  let sb = gid * (nS + K + 1u) * ${N}u;`;
  if (phase === 0) {
    return `// selective scan bwd v1, phase 0: checkpoints
${prelude}
  if (sLo > 0u) {
    ${K4.map((k) => `h${k} = ${scr("sLo", k)};`).join("\n    ")}
  }
  for (var s = sLo; s < sHi; s++) {
    ${K4.map((k) => scrStore("s", k, `h${k}`)).join("\n    ")}
    let t1 = min(s * K + K, L);
    for (var t = s * K; t < t1; t++) {
      ${loadT}
      ${fwdStep}
    }
  }
  if (sHi < nS) {
    ${K4.map((k) => scrStore("sHi", k, `h${k}`)).join("\n    ")}
  }
}`;
  }
  return `// selective scan bwd v1, phase 1: the reverse scan
${prelude}
  // gn = dA_t+1 g_t+1, the adjoint flowing back into step t: from the last state's gradient at the end,
  // else from the previous dispatch
  ${K4.map((k) => `var gn${k} = vec4<f32>(0.0);`).join("\n  ")}
  if (sHi < nS) {
    ${K4.map((k) => `gn${k} = ${scr("nS + K", k)};`).join("\n    ")}
  }${
    hasLast
      ? ` else {
    ${K4.map((k) => `gn${k} = ${vecK(k, (n) => `GL[U(15u) + bd * ${N}u + ${n}u]`)};`).join("\n    ")}
  }`
      : ""
  }
  ${
    K4.map((k) => `var dA${k} = vec4<f32>(0.0); var dBs${k} = vec4<f32>(0.0); var dCs${k} = vec4<f32>(0.0);`)
      .join("\n  ")
  }
  var dDacc = 0.0; var dbacc = 0.0;
  for (var s1 = sHi; s1 > sLo; s1--) {
    let s = s1 - 1u;
    let t0 = s * K; let t1 = min(t0 + K, L);
    ${K4.map((k) => `h${k} = ${scr("s", k)};`).join("\n    ")}
    for (var t = t0; t < t1; t++) {
      ${loadT}
      ${fwdStep}
      ${K4.map((k) => scrStore(`nS + t - t0`, k, `h${k}`)).join("\n      ")}
    }
    ${K4.map((k) => `var hc${k} = ${scr("nS + t1 - 1u - t0", k)};`).join("\n    ")}
    for (var t1b = t1; t1b > t0; t1b--) {
      let t = t1b - 1u;
      ${loadT}
      ${K4.map((k) => `var hp${k}: vec4<f32>;`).join("\n      ")}
      if (t > t0) {
        ${K4.map((k) => `hp${k} = ${scr("nS + t - 1u - t0", k)};`).join("\n        ")}
      } else {
        ${K4.map((k) => `hp${k} = ${scr("s", k)};`).join("\n        ")}
      }
      var dy = ${hasOut ? "GO[U(14u) + row + t]" : "0.0"};
      ${
    v.hasZ
      ? `{
        let zz = Z[U(11u) + row + t];
        let sg = 1.0 / (1.0 + exp(-zz));
        var y = Dskip * uu;
        ${K4.map((k) => `y += dot(hc${k}, ${Ck(k)});`).join("\n        ")}
        DZ[row + t] = dy * y * sg * (1.0 + zz * (1.0 - sg));
        dy = dy * zz * sg;
      }`
      : ""
  }
      dDacc += dy * uu;
      var duv = Dskip * dy;
      var dDt = 0.0;
      ${
    K4.map((k) =>
      `{
        let Bv = ${Bk(k)};
        let Cv = ${Ck(k)};
        let ea = exp(dt * a${k});
        let gk = gn${k} + Cv * dy;
        ${
        v.cShared
          ? `dCs${k} += dy * hc${k};`
          : each(k, (n, c) => `DCV[(gid * ${N}u + ${n}u) * L + t] = dy * hc${k}.${c};`)
      }
        ${
        v.bShared
          ? `dBs${k} += gk * (dt * uu);`
          : each(k, (n, c) => `DBV[(gid * ${N}u + ${n}u) * L + t] = gk.${c} * dt * uu;`)
      }
        duv += dot(gk, Bv) * dt;
        let ah = ea * hp${k};
        dDt += dot(gk, a${k} * ah + Bv * uu);
        dA${k} += gk * dt * ah;
        gn${k} = ea * gk;
      }`
    ).join("\n      ")
  }
      let dpre = ${v.softplus ? "select(dDt / (1.0 + exp(-pre)), dDt, pre > 20.0)" : "dDt"};
      DU[row + t] = duv;
      DDL[row + t] = dpre;
      dbacc += dpre;
      ${K4.map((k) => `hc${k} = hp${k};`).join(" ")}
    }
  }
  ${K4.map((k) => scrStore("nS + K", k, `gn${k}`)).join("\n  ")}
  let ob = bd * ${P}u;
  // per-channel sums: the first dispatch of the reverse (sHi = nS) writes, later ones add
  let more = sHi < nS;
  ${
    K4.map((k) => each(k, (n, c) => `DP[ob + ${n}u] = select(0.0, DP[ob + ${n}u], more) + dA${k}.${c};`))
      .join("\n  ")
  }
  DP[ob + ${N}u] = select(0.0, DP[ob + ${N}u], more) + dDacc;
  DP[ob + ${N + 1}u] = select(0.0, DP[ob + ${N + 1}u], more) + dbacc;
  ${
    v.bShared
      ? K4.map((k) =>
        each(
          k,
          (n, c) => `DP[ob + ${bOffS + n}u] = select(0.0, DP[ob + ${bOffS + n}u], more) + dBs${k}.${c};`,
        )
      )
        .join("\n  ")
      : ""
  }
  ${
    v.cShared
      ? K4.map((k) =>
        each(
          k,
          (n, c) => `DP[ob + ${cOffS + n}u] = select(0.0, DP[ob + ${cOffS + n}u], more) + dCs${k}.${c};`,
        )
      )
        .join("\n  ")
      : ""
  }
}`;
}
