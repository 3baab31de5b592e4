/**
 * WGSL backward of the selective scan: bwd v1 (see the version list in `selective_scan_wgsl.ts`).
 * @module
 */

import { flatId } from "../../runtime/webgpu.ts";
import { uniformDecl } from "../core/util.ts";
import {
  helpers,
  paramDecl,
  paramStride,
  SCAN_WG,
  type ScanVariant,
  TEX_ROWS,
  TEX_W,
  v2Prelude,
} from "./selective_scan_wgsl.ts";

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

/** Flags of a bwd v2 variant beyond the forward's (part of the pipeline key). */
export interface ScanBwdV2Variant {
  hasOut: boolean;
  hasLast: boolean;
  /** L % 4 == 0: du, ddelta and dz leave as one vec4 store per 4 steps. */
  vec4Out: boolean;
  /** SCR already holds the state entering every texel (fwd v2's fix-up saved it): no phase 0. */
  statesGiven?: boolean;
}

/**
 * bwd v2: one invocation per (b, d), one dispatch. Inputs come from the textures of fwd v2 (4 steps per
 * texel): TX holds u, delta, z (if any), dout (if any) as operands 0, 1, 2, 2 or 3; TBC holds B and C
 * (those input-dependent). Phase 0 walks forward and stores the state entering every texel (ceil(N / 4)
 * vec4s) in the scratch; phase 1 walks the texels in reverse, recomputes a texel's 4 states from its
 * checkpoint in registers and runs the adjoint back through them. Every store is a vec4 (the lavapipe cost
 * of a storage access is per access, not per byte): du, ddelta, dz per texel (when L % 4 == 0), the terms
 * of input-dependent dB and dC per step as (B, D, L, N) vec4s over n, reduced over the channels of a group
 * by {@link scanBwdReduceV2}. 2 L / 4 loop iterations per invocation: L <= 4 MAX_LOOP / 2.
 *
 * Uniforms: the fwd v2 words (0 BD, 1 D, 2 L, 3 L4, 6 H, 7 G, 8 X rowBlocks, 9 BC groups per layer,
 * 10 BC layer blocks, 11 segments), 12 glOff, 13 and 14 the terms texture's rowBlocks and segments, 16 .. 27
 * (off, sb, sd, st) of du, ddelta, dz (read unless `vec4Out`). Bindings: 1 params, 2 TX, 3 TBC (if B or C
 * input-dependent), dlast (if `hasLast`), du, ddelta, dz (if z), dparams (B D, P), the terms texture
 * (write; if B or C input-dependent), scratch, diag.
 */
export function scanBackwardV2(v: ScanVariant, w: ScanBwdV2Variant): string {
  const { N } = v;
  const K = [...Array(Math.ceil(N / 4)).keys()];
  const P = paramStride(v);
  const needBC = !v.bShared || !v.cShared;
  let b = 2;
  const decl = [`@group(0) @binding(${b++}) var TX: texture_storage_2d_array<rgba32float, read>;`];
  if (needBC) decl.push(`@group(0) @binding(${b++}) var TBC: texture_storage_2d_array<rgba32float, read>;`);
  const bind = (name: string, type: string, write = true) =>
    decl.push(`@group(0) @binding(${b++}) var<storage, ${write ? "read_write" : "read"}> ${name}: ${type};`);
  const seqT = w.vec4Out ? "array<vec4<f32>>" : "array<f32>";
  if (w.hasLast) bind("GL", "array<f32>", false);
  bind("DU", seqT);
  bind("DDL", seqT);
  if (v.hasZ) bind("DZ", seqT);
  bind("DP", "array<f32>");
  // the terms of input-dependent dB and dC go straight into the texture the reduce reads (no buffer and no
  // copy: 2 B D L N floats per call)
  if (!v.bShared || !v.cShared) {
    decl.push(`@group(0) @binding(${b++}) var TT: texture_storage_2d_array<rgba32float, write>;`);
  }
  bind("SCR", "array<vec4<f32>>");
  const diagB = b;
  // texture layers from words v2Prelude read once (a U() in the step loop is a storage load per lane)
  const xl = (op: number) => `(${op}u * pU8 + xrb) * pU11 + seg`;
  const bl = (op: number) => `(${op}u * pU10 + blb) * pU11 + seg`;
  const outOp = 2 + (v.hasZ ? 1 : 0);
  const ns = (k: number) => [0, 1, 2, 3].filter((i) => 4 * k + i < N).map((i) => 4 * k + i);
  const texVec = (name: string, k: number, c: string) =>
    `vec4<f32>(${[0, 1, 2, 3].map((i) => (4 * k + i < N ? `${name}${4 * k + i}.${c}` : "0.0")).join(", ")})`;
  const loadBC = (which: "B" | "C") =>
    K.flatMap((k) =>
      ns(k).map((n) =>
        `let ${which}${n} = textureLoad(TBC, vec2<u32>(x, by + ${n}u), ${
          bl(which === "B" || v.bShared ? 0 : 1)
        });`
      )
    ).join("\n    ");
  const Bv = (k: number, c: string) => (v.bShared ? `bs${k}` : texVec("B", k, c));
  const Cv = (k: number, c: string) => (v.cShared ? `cs${k}` : texVec("C", k, c));
  const dtLines = (mask: boolean) =>
    [
      "var dt4 = d4 + vec4<f32>(bias);",
      v.softplus
        ? "dt4 = vec4<f32>(softplus(dt4.x), softplus(dt4.y), softplus(dt4.z), softplus(dt4.w));"
        : "",
      mask
        ? "dt4 = select(dt4, vec4<f32>(0.0), vec4<u32>(4u * t4) + vec4<u32>(0u, 1u, 2u, 3u) >= vec4<u32>(L));"
        : "",
      "let du4 = dt4 * u4;",
    ].filter((s) => s).join("\n    ");
  const cmp = ["x", "y", "z", "w"];
  // phase 1, step tt of the texel (reverse order); s{tt}_k is the state after step tt, hp the one before
  const stepBack = (tt: number) => {
    const c = cmp[tt];
    const hc = (k: number) => `s${tt}_${k}`;
    const hp = (k: number) => (tt > 0 ? `s${tt - 1}_${k}` : `h${k}`);
    const lines = [`if (4u * t4 + ${tt}u < L) {`, `  let t = 4u * t4 + ${tt}u;`];
    lines.push(`  let uu = u4.${c}; let dt = dt4.${c};`);
    lines.push(`  var dy = ${w.hasOut ? `g4.${c}` : "0.0"};`);
    if (v.hasZ) {
      lines.push(`  let zz = z4.${c}; let sg = 1.0 / (1.0 + exp(-zz));`);
      lines.push(`  var y = Dskip * uu;`);
      for (const k of K) lines.push(`  y += dot(${hc(k)}, ${Cv(k, c)});`);
      lines.push(`  dz4.${c} = dy * y * sg * (1.0 + zz * (1.0 - sg));`);
      lines.push(`  dy = dy * zz * sg;`);
    }
    lines.push("  dDacc += dy * uu; var duv = Dskip * dy; var dDt = 0.0;");
    for (const k of K) {
      lines.push(`  {`);
      lines.push(`    let bv = ${Bv(k, c)}; let cv = ${Cv(k, c)};`);
      lines.push(`    let gk = gn${k} + cv * dy;`);
      lines.push(
        v.cShared
          ? `    dCs${k} += dy * ${hc(k)};`
          : `    putT(${v.bShared ? 0 : 1}u, bd, t * ${K.length}u + ${k}u, dy * ${hc(k)});`,
      );
      lines.push(
        v.bShared
          ? `    dBs${k} += gk * (dt * uu);`
          : `    putT(0u, bd, t * ${K.length}u + ${k}u, gk * (dt * uu));`,
      );
      lines.push(`    duv += dot(gk, bv) * dt;`);
      lines.push(`    let ea = exp2(dt * l2a${k}); let ah = ea * ${hp(k)};`);
      lines.push(`    dDt += dot(gk, a${k} * ah + bv * uu);`);
      lines.push(`    dA${k} += gk * dt * ah;`);
      lines.push(`    gn${k} = ea * gk;`);
      lines.push(`  }`);
    }
    lines.push(`  let pre = d4.${c} + bias;`);
    lines.push(`  let dpre = ${v.softplus ? "select(dDt / (1.0 + exp(-pre)), dDt, pre > 20.0)" : "dDt"};`);
    lines.push(`  du4o.${c} = duv; dd4o.${c} = dpre; dbacc += dpre;`);
    lines.push("}");
    return lines.join("\n    ");
  };
  // du, ddelta, dz: vec4 stores when contiguous with L % 4 == 0, else through their strides (words 16 ..
  // 27: (off, sb, sd, st) each; channels-last gradients), unrolled (no loop: lavapipe's loop limit)
  const words: Record<string, number> = { DU: 16, DDL: 20, DZ: 24 };
  const store = (name: string, val: string) => {
    if (w.vec4Out) return `${name}[bd * L4 + t4] = ${val};`;
    const o = words[name];
    return `{ let st = U(${o + 3}u); let o = U(${o}u) + b * U(${o + 1}u) + d * U(${o + 2}u) + 4u * t4 * st;
      ${
      [0, 1, 2, 3].map((i) => `if (4u * t4 + ${i}u < L) { ${name}[o + ${i}u * st] = ${val}[${i}]; }`).join(
        " ",
      )
    } }`;
  };
  const dpStore = (slot: number, val: string) => `DP[bd * ${P}u + ${slot}u] = ${val};`;
  const bOffS = N + 2, cOffS = N + 2 + (v.bShared ? N : 0);
  return `// selective scan bwd v2
${uniformDecl(28)}
${paramDecl(diagB)}
${decl.join("\n")}
${helpers()}
${
    needBC
      ? `// term texel tx = t K + k of row bd, operand op (dB terms, then dC terms) in seqLayout(B D, 4 L K, 1)
var<private> tU13: u32;
var<private> tU14: u32;
fn putT(op: u32, bd: u32, tx: u32, v: vec4<f32>) {
  let rb = bd / ${TEX_ROWS}u;
  textureStore(TT, vec2<u32>(tx % ${TEX_W}u, bd - rb * ${TEX_ROWS}u), (op * tU13 + rb) * tU14 + tx / ${TEX_W}u, v);
}`
      : ""
  }
@compute @workgroup_size(${SCAN_WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  ${v2Prelude(v)}
  ${needBC ? "tU13 = U(13u); tU14 = U(14u);" : ""}
  let K = ${K.length}u;
  // phase 0: the state entering every texel${w.statesGiven ? " (given: saved by the forward)" : ""}
  for (var t4 = 0u; t4 < ${w.statesGiven ? "0u" : "L4"}; t4++) {
    let x = t4 % ${TEX_W}u; let seg = t4 / ${TEX_W}u;
    ${K.map((k) => `SCR[(bd * L4 + t4) * K + ${k}u] = h${k};`).join("\n    ")}
    let u4 = textureLoad(TX, vec2<u32>(x, xy), ${xl(0)});
    let d4 = textureLoad(TX, vec2<u32>(x, xy), ${xl(1)});
    ${dtLines(true)}
    ${v.bShared ? "" : loadBC("B")}
    ${
    K.map((k) =>
      cmp.map((c) => `h${k} = exp2(dt4.${c} * l2a${k}) * h${k} + du4.${c} * ${Bv(k, c)};`).join("\n    ")
    )
      .join("\n    ")
  }
  }
  // phase 1: the adjoint gn = dA_t+1 g_t+1 flowing back into step t
  ${K.map((k) => `var gn${k} = vec4<f32>(0.0);`).join("\n  ")}
  ${
    w.hasLast
      ? K.map((k) => `gn${k} = ${paramVecFrom("GL", `U(12u) + bd * ${N}u`, N, k)};`).join("\n  ")
      : ""
  }
  ${
    K.map((k) => `var dA${k} = vec4<f32>(0.0); var dBs${k} = vec4<f32>(0.0); var dCs${k} = vec4<f32>(0.0);`)
      .join("\n  ")
  }
  var dDacc = 0.0; var dbacc = 0.0;
  for (var r = 0u; r < L4; r++) {
    let t4 = L4 - 1u - r;
    let x = t4 % ${TEX_W}u; let seg = t4 / ${TEX_W}u;
    let u4 = textureLoad(TX, vec2<u32>(x, xy), ${xl(0)});
    let d4 = textureLoad(TX, vec2<u32>(x, xy), ${xl(1)});
    ${v.hasZ ? `let z4 = textureLoad(TX, vec2<u32>(x, xy), ${xl(2)}); var dz4 = vec4<f32>(0.0);` : ""}
    ${w.hasOut ? `let g4 = textureLoad(TX, vec2<u32>(x, xy), ${xl(outOp)});` : ""}
    ${dtLines(true)}
    ${v.bShared ? "" : loadBC("B")}
    ${v.cShared ? "" : loadBC("C")}
    ${K.map((k) => `h${k} = SCR[(bd * L4 + t4) * K + ${k}u];`).join("\n    ")}
    ${
    [0, 1, 2, 3].map((tt) =>
      K.map((k) =>
        `let s${tt}_${k} = exp2(dt4.${cmp[tt]} * l2a${k}) * ${tt > 0 ? `s${tt - 1}_${k}` : `h${k}`} + du4.${
          cmp[tt]
        } * ${Bv(k, cmp[tt])};`
      ).join("\n    ")
    ).join("\n    ")
  }
    var du4o = vec4<f32>(0.0); var dd4o = vec4<f32>(0.0);
    ${[3, 2, 1, 0].map(stepBack).join("\n    ")}
    ${store("DU", "du4o")}
    ${store("DDL", "dd4o")}
    ${v.hasZ ? store("DZ", "dz4") : ""}
  }
  ${K.map((k) => ns(k).map((n) => dpStore(n, `dA${k}.${cmp[n - 4 * k]}`)).join(" ")).join("\n  ")}
  ${dpStore(N, "dDacc")}
  ${dpStore(N + 1, "dbacc")}
  ${
    v.bShared
      ? K.map((k) => ns(k).map((n) => dpStore(bOffS + n, `dBs${k}.${cmp[n - 4 * k]}`)).join(" ")).join("\n  ")
      : ""
  }
  ${
    v.cShared
      ? K.map((k) => ns(k).map((n) => dpStore(cOffS + n, `dCs${k}.${cmp[n - 4 * k]}`)).join(" ")).join("\n  ")
      : ""
  }
}`;
}

function paramVecFrom(arr: string, base: string, N: number, k: number): string {
  return `vec4<f32>(${
    [0, 1, 2, 3].map((i) => (4 * k + i < N ? `${arr}[${base} + ${4 * k + i}u]` : "0.0")).join(", ")
  })`;
}

/**
 * bwd v2 reduce: the sums the scan leaves per (b, d): input-dependent dB and dC summed over the H channels
 * of each group (invocations [0, nB) and [nB, nB + nC), one per (b, g, t, n / 4): H vec4 loads each), and
 * the per-channel sums over the batch (invocations from nB + nC, one per channel d): dA (D, N), dD (D),
 * d deltaBias (D), shared dB and dC (D, N). Uniforms: [Bn, D, L, H, G, nB, nC, terms rowBlocks, terms
 * segments]. Bindings: dparams, the terms texture (the dB terms unless B is shared, then the dC terms
 * unless C is shared: texture loads are cheap on lavapipe, storage loads are not), then dB (B, G, N, L) (unless shared), dC (unless shared), dA,
 * dD, d deltaBias, shared dB, shared dC.
 */
export function scanBwdReduceV2(v: Pick<ScanVariant, "N" | "bShared" | "cShared">): string {
  const { N } = v;
  const K = Math.ceil(N / 4);
  const P = paramStride(v);
  const names: [string, string, boolean][] = [["DP", "array<f32>", false]];
  if (!v.bShared || !v.cShared) names.push(["TT", "", false]);
  if (!v.bShared) names.push(["DB", "array<f32>", true]);
  if (!v.cShared) names.push(["DC", "array<f32>", true]);
  names.push(["DA", "array<f32>", true], ["DD", "array<f32>", true], ["DBI", "array<f32>", true]);
  if (v.bShared) names.push(["DBS", "array<f32>", true]);
  if (v.cShared) names.push(["DCS", "array<f32>", true]);
  const decl = names.map(([n, t, w], i) =>
    n === "TT"
      ? `@group(0) @binding(${i + 1}) var TT: texture_storage_2d_array<rgba32float, read>;`
      : `@group(0) @binding(${i + 1}) var<storage, ${w ? "read_write" : "read"}> ${n}: ${t};`
  ).join("\n");
  // the terms texture: row bd, texel t K + k, in the layout of seqLayout(B D, 4 L K, 1); operand 0 holds
  // the dB terms (unless B is shared), the next the dC terms
  // outputs through strides (words 9 .. 13 for dB, 14 .. 18 for dC: off, sb, sg, sn, st), so they can land in a
  // view (Mamba's x_proj gradient (B, L, R + 2N) takes dB and dC as (B, N, L) views)
  const terms = (op: number, OUT: string) =>
    `{
    let k = j % ${K}u; let r = j / ${K}u; let t = r % L; let bg = r / L;
    let b = bg / G; let g = bg - b * G;
    let w = ${OUT === "DB" ? 9 : 14}u;
    let ob = U(w) + b * U(w + 1u) + g * U(w + 2u) + t * U(w + 4u); let sn = U(w + 3u);
    var acc = vec4<f32>(0.0);
    let tx = t * ${K}u + k;
    let x = tx % ${TEX_W}u; let seg = tx / ${TEX_W}u;
    for (var dl = 0u; dl < Ht; dl++) {
      let bd = b * Dt + g * Ht + dl;
      let rb = bd / ${TEX_ROWS}u;
      acc += textureLoad(TT, vec2<u32>(x, bd - rb * ${TEX_ROWS}u), (${op}u * u7 + rb) * u8 + seg);
    }
    for (var i = 0u; i < 4u; i++) {
      let n = 4u * k + i;
      if (n < ${N}u) { ${OUT}[ob + n * sn] = acc[i]; }
    }
  }`;
  const sums: string[] = [];
  const col = (off: number, n: number, OUT: string, stride: number) =>
    `{ var s = 0.0; for (var b = 0u; b < Bn; b++) { s += DP[(b * D + d) * ${P}u + ${
      off + n
    }u]; } ${OUT}[d * ${stride}u + ${n}u] = s; }`;
  for (let n = 0; n < N; n++) sums.push(col(0, n, "DA", N));
  sums.push(col(N, 0, "DD", 1), col(N + 1, 0, "DBI", 1));
  if (v.bShared) { for (let n = 0; n < N; n++) sums.push(col(N + 2, n, "DBS", N)); }
  if (v.cShared) { for (let n = 0; n < N; n++) sums.push(col(N + 2 + (v.bShared ? N : 0), n, "DCS", N)); }
  return `// selective scan bwd v2 reduce
${uniformDecl(21)}
${decl}
${flatId(SCAN_WG)}
  let Bn = U(0u); let D = U(1u); let L = U(2u); let H = U(3u); let G = U(4u);
  let nB = U(5u); let nC = U(6u); let u7 = U(7u); let u8 = U(8u); let Dt = U(19u); let Ht = U(20u);
  if (gid < nB) {
    let j = gid;
    ${v.bShared ? "" : terms(0, "DB")}
    return;
  }
  if (gid < nB + nC) {
    let j = gid - nB;
    ${v.cShared ? "" : terms(v.bShared ? 0 : 1, "DC")}
    return;
  }
  let d = gid - nB - nC;
  if (d >= D) { return; }
  ${sums.join("\n  ")}
}`;
}

/**
 * bwd v2 unpack: moves contiguous (B, D, L) results of bwd v2 (its vec4 stores along t) into strided
 * destinations, up to 3 operands per dispatch: one invocation per (b, 4 steps, 4 channels) loads 4 vec4s
 * along t and stores 4 vec4s along the channels when a destination is channels-last (`vec4[j]`), else 16
 * scalars. Cheaper than bwd v2 storing each step's value through the strides itself (a storage access per
 * value on lavapipe, in the pass that is already the step's longest). L % 4 == 0. Uniforms: [Bn, D, L,
 * L4, D4], then per operand the destination's (off, sb, sd, st). Bindings: the sources, then the
 * destinations.
 */
export function scanBwdUnpackV2(vec4: readonly boolean[]): string {
  const n = vec4.length;
  const decl = [
    ...vec4.map((_, j) => `@group(0) @binding(${j + 1}) var<storage, read> S${j}: array<vec4<f32>>;`),
    ...vec4.map((v, j) =>
      `@group(0) @binding(${n + j + 1}) var<storage, read_write> O${j}: array<${v ? "vec4<f32>" : "f32"}>;`
    ),
  ];
  const body = vec4.map((v, j) => {
    const w = 5 + 4 * j;
    const base = (t: string) => `U(${w}u) + b * U(${w + 1}u) + ${t} * U(${w + 3}u)`;
    const loads = [0, 1, 2, 3].map((c) =>
      `let s${c} = select(vec4<f32>(0.0), S${j}[(b * D + min(d0 + ${c}u, D - 1u)) * L4 + t4], d0 + ${c}u < D);`
    );
    const stores = [0, 1, 2, 3].map((q) => {
      const val = `vec4<f32>(s0[${q}], s1[${q}], s2[${q}], s3[${q}])`;
      const t = `(4u * t4 + ${q}u)`;
      return v
        ? `O${j}[(${base(t)}) / 4u + d4] = ${val};`
        : `{ let v = ${val}; for (var c = 0u; c < 4u; c++) { if (d0 + c < D) { O${j}[${
          base(t)
        } + (d0 + c) * U(${w + 2}u)] = v[c]; } } }`;
    });
    return `{ // operand ${j}
    ${loads.join("\n    ")}
    ${stores.join("\n    ")}
  }`;
  });
  return `// selective scan bwd v2 unpack (${n} operands)
${uniformDecl(5 + 4 * n)}
${decl.join("\n")}
${flatId(SCAN_WG)}
  let Bn = U(0u); let D = U(1u); let L4 = U(3u); let D4 = U(4u);
  if (gid >= Bn * L4 * D4) { return; }
  let d4 = gid % D4; let r = gid / D4; let t4 = r % L4; let b = r / L4;
  let d0 = 4u * d4;
  ${body.join("\n  ")}
}`;
}
