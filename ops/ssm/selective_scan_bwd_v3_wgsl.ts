/**
 * WGSL backward of the selective scan, bwd v3: bwd v2 with four channels per invocation (see the version
 * list in `selective_scan_wgsl.ts`).
 *
 * Why: in bwd v2 every (b, d) invocation stores its own per-step terms of input-dependent dB and dC (8
 * texture stores a step at N 16) and a reduce pass sums them over the H channels of a group; its du,
 * ddelta and dz leave as vec4s along t, so channels-last destinations (Mamba's) need an unpack pass; and
 * dout is packed into a texture first. With four channels of one group in one invocation, the terms are
 * summed over those four in registers (a quarter of the stores and of the reduce's loads), the 4 steps x 4
 * channels of du, ddelta, dz in hand are stored as vec4s along whichever axis the destination has unit
 * stride (no unpack), B and C are loaded once for the four channels, and a channels-last dout is read
 * straight from its buffer as vec4s (no pack). Measured on lavapipe at MambaLM's training shape in
 * `deno task bench ssm inner`.
 * @module
 */

import { flatId } from "../../runtime/webgpu.ts";
import { uniformDecl } from "../core/util.ts";
import { helpers, paramDecl, paramStride, type ScanVariant, TEX_ROWS, TEX_W } from "./selective_scan_wgsl.ts";

/** Invocations per workgroup of bwd v3: few invocations in all, so small groups spread over the threads. */
export const BWD_V3_WG = 16;

/**
 * How a (B, D, L) destination (or dout) of bwd v3 is addressed: "d4" vec4s along the channels (unit
 * channel stride, everything else a multiple of 4: channels-last), "t4" vec4s along t (unit step stride,
 * the rest multiples of 4: contiguous), "s" scalars through the strides. For dout, "tex": read from the
 * packed texture instead.
 */
export type SeqAccess = "d4" | "t4" | "s" | "tex";

/** Flags of a bwd v3 variant (part of the pipeline key). */
export interface ScanBwdV3Variant {
  hasLast: boolean;
  /** du, ddelta, dz (if z) destinations. */
  out: [SeqAccess, SeqAccess, SeqAccess];
  /** dout: "d4" from its buffer, else "tex" (packed into TX after u, delta, z). */
  dout: "d4" | "tex";
  /** SCR holds the state entering every texel (the forward saved it): no phase 0. */
  statesGiven: boolean;
}

/** Whether a (B, D, L) view can be addressed as `access` ("d4" or "t4"), from its offset and strides. */
export function seqAccess(
  offset: number,
  [, D, L]: readonly number[],
  [sb, sd, st]: readonly number[],
): SeqAccess {
  const m4 = (...v: number[]) => v.every((x) => x % 4 === 0);
  if (sd === 1 && m4(D, offset, sb, st)) return "d4";
  if (st === 1 && m4(L, offset, sb, sd)) return "t4";
  return "s";
}

const CMP = ["x", "y", "z", "w"];

/**
 * bwd v3: one invocation per (b, 4 channels d0 .. d0 + 3 of one group), one dispatch; needs D, H = D / G
 * and L divisible by 4 and B, C input-dependent. Inputs as bwd v2: TX holds u, delta, z (if any) and, when
 * `dout` is "tex", dout as operands 0, 1, 2, 2 or 3 (rows b D + d); TBC holds B and C. Phase 0 (unless
 * `statesGiven`) stores the state entering every texel of each channel in SCR (as bwd v2: (b D + d, L / 4,
 * ceil(N / 4)) vec4s); phase 1 walks the texels in reverse, and per texel and channel recomputes the 4
 * states from that checkpoint and runs the adjoint back through them, summing the dB and dC terms of the 4
 * channels before storing them (rows b D / 4 + d0 / 4 of the terms texture, as (4 L ceil(N / 4)) texels).
 * 2 L / 4 loop iterations per invocation at most.
 *
 * Uniforms: 0 B D, 1 D, 2 L, 3 L4, 4 B D / 4, 6 H, 7 G, 8 X rowBlocks, 9 BC groups per layer, 10 BC layer
 * blocks, 11 segments, 12 glOff, 13 and 14 the terms texture's rowBlocks and segments, 16 .. 27 (off, sb,
 * sd, st) of du, ddelta, dz, 28 .. 31 of dout. Bindings: 1 params, 2 TX, 3 TBC, dout (if "d4"), dlast (if
 * `hasLast`), du, ddelta, dz (if z), dparams (B D, P), the terms texture (write), scratch, diag.
 */
export function scanBackwardV3(v: ScanVariant, w: ScanBwdV3Variant): string {
  if (v.bShared || v.cShared) throw new Error("selectiveScan bwd v3: B and C must be input-dependent");
  const { N } = v;
  const K = [...Array(Math.ceil(N / 4)).keys()];
  const nK = K.length;
  const P = paramStride(v);
  const ch = [0, 1, 2, 3];
  const ns = (k: number) => ch.filter((i) => 4 * k + i < N).map((i) => 4 * k + i);
  let b = 2;
  const decl = [
    `@group(0) @binding(${b++}) var TX: texture_storage_2d_array<rgba32float, read>;`,
    `@group(0) @binding(${b++}) var TBC: texture_storage_2d_array<rgba32float, read>;`,
  ];
  const bind = (name: string, type: string, write = true) =>
    decl.push(`@group(0) @binding(${b++}) var<storage, ${write ? "read_write" : "read"}> ${name}: ${type};`);
  const arr = (a: SeqAccess) => (a === "s" ? "array<f32>" : "array<vec4<f32>>");
  if (w.dout === "d4") bind("GO", "array<vec4<f32>>", false);
  if (w.hasLast) bind("GL", "array<f32>", false);
  bind("DU", arr(w.out[0]));
  bind("DDL", arr(w.out[1]));
  if (v.hasZ) bind("DZ", arr(w.out[2]));
  bind("DP", "array<f32>");
  decl.push(`@group(0) @binding(${b++}) var TT: texture_storage_2d_array<rgba32float, write>;`);
  bind("SCR", "array<vec4<f32>>");
  const diagB = b;
  const xl = (c: number, op: number) => `(${op}u * pU8 + xrb${c}) * pU11 + seg`;
  const bl = (op: number) => `(${op}u * pU10 + blb) * pU11 + seg`;
  const outOp = 2 + (v.hasZ ? 1 : 0);
  const vecOf = (name: string, k: number, comp: string) =>
    `vec4<f32>(${ch.map((i) => (4 * k + i < N ? `${name}${4 * k + i}.${comp}` : "0.0")).join(", ")})`;
  const param = (c: number, off: number, k: number) =>
    `vec4<f32>(${ch.map((i) => (4 * k + i < N ? `P[pb${c} + ${off + 4 * k + i}u]` : "0.0")).join(", ")})`;

  // per channel: its params, texture row, adjoint and per-channel sums (live across the texel loop)
  const chanDecl = ch.map((c) =>
    [
      `let bd${c} = bdb + ${c}u; let pb${c} = (d0 + ${c}u) * ${P}u;`,
      `let xrb${c} = bd${c} / ${TEX_ROWS}u; let xy${c} = bd${c} % ${TEX_ROWS}u;`,
      `let Dskip${c} = P[pb${c} + ${N}u]; let bias${c} = P[pb${c} + ${N + 1}u];`,
      ...K.flatMap((k) => [
        `let a${c}_${k} = ${param(c, 0, k)}; let l2a${c}_${k} = a${c}_${k} * 1.4426950408889634;`,
        `if (any(a${c}_${k} > vec4<f32>(0.0))) { flagA(d0 + ${c}u, ${4 * k}u, a${c}_${k}); }`,
        `var gn${c}_${k} = ${
          w.hasLast
            ? `vec4<f32>(${
              ch.map((i) => (4 * k + i < N ? `GL[U(12u) + bd${c} * ${N}u + ${4 * k + i}u]` : "0.0")).join(
                ", ",
              )
            })`
            : "vec4<f32>(0.0)"
        };`,
        `var dA${c}_${k} = vec4<f32>(0.0);`,
      ]),
      `var dD${c} = 0.0; var db${c} = 0.0;`,
    ].join("\n  ")
  ).join("\n  ");

  const dtLines = (c: number) =>
    [
      `var dt4 = d4 + vec4<f32>(bias${c});`,
      v.softplus
        ? "dt4 = vec4<f32>(softplus(dt4.x), softplus(dt4.y), softplus(dt4.z), softplus(dt4.w));"
        : "",
      "let du4 = dt4 * u4;",
    ].filter((s) => s).join("\n      ");

  // phase 0: states entering each texel, per channel
  const phase0 = w.statesGiven ? "" : `for (var t4 = 0u; t4 < L4; t4++) {
    let x = t4 % ${TEX_W}u; let seg = t4 / ${TEX_W}u;
    ${
    K.flatMap((k) => ns(k).map((n) => `let B${n} = textureLoad(TBC, vec2<u32>(x, by + ${n}u), ${bl(0)});`))
      .join("\n    ")
  }
    ${
    ch.map((c) =>
      `{
      let u4 = textureLoad(TX, vec2<u32>(x, xy${c}), ${xl(c, 0)});
      let d4 = textureLoad(TX, vec2<u32>(x, xy${c}), ${xl(c, 1)});
      ${dtLines(c)}
      ${
        K.map((k) => `var h${k} = hs${c}_${k}; SCR[(bd${c} * L4 + t4) * ${nK}u + ${k}u] = h${k};`).join(
          "\n      ",
        )
      }
      ${
        K.map((k) =>
          CMP.map((cc) =>
            `h${k} = exp2(dt4.${cc} * l2a${c}_${k}) * h${k} + du4.${cc} * ${vecOf("B", k, cc)};`
          )
            .join("\n      ")
        ).join("\n      ")
      }
      ${K.map((k) => `hs${c}_${k} = h${k};`).join(" ")}
    }`
    ).join("\n    ")
  }
  }`;

  // phase 1, channel c at texel t4: states from the checkpoint, then steps 3 .. 0 back
  const chanBack = (c: number) => {
    const L: string[] = [];
    L.push(`let u4 = textureLoad(TX, vec2<u32>(x, xy${c}), ${xl(c, 0)});`);
    L.push(`let d4 = textureLoad(TX, vec2<u32>(x, xy${c}), ${xl(c, 1)});`);
    if (v.hasZ) L.push(`let z4 = textureLoad(TX, vec2<u32>(x, xy${c}), ${xl(c, 2)});`);
    L.push(
      w.dout === "d4"
        ? `let g4 = vec4<f32>(go0[${c}], go1[${c}], go2[${c}], go3[${c}]);`
        : `let g4 = textureLoad(TX, vec2<u32>(x, xy${c}), ${xl(c, outOp)});`,
    );
    L.push(dtLines(c));
    for (const k of K) L.push(`let h${k} = SCR[(bd${c} * L4 + t4) * ${nK}u + ${k}u];`);
    for (const tt of ch) {
      for (const k of K) {
        L.push(
          `let s${tt}_${k} = exp2(dt4.${CMP[tt]} * l2a${c}_${k}) * ${
            tt > 0 ? `s${tt - 1}_${k}` : `h${k}`
          } + du4.${CMP[tt]} * ${vecOf("B", k, CMP[tt])};`,
        );
      }
    }
    for (const tt of [3, 2, 1, 0]) {
      const cc = CMP[tt];
      L.push(`{ // step ${tt}`);
      L.push(`  let uu = u4.${cc}; let dt = dt4.${cc};`);
      L.push(`  var dy = g4.${cc};`);
      if (v.hasZ) {
        L.push(`  let zz = z4.${cc}; let sg = 1.0 / (1.0 + exp(-zz));`);
        L.push(`  var y = Dskip${c} * uu;`);
        for (const k of K) L.push(`  y += dot(s${tt}_${k}, ${vecOf("C", k, cc)});`);
        L.push(`  dzo${c}.${cc} = dy * y * sg * (1.0 + zz * (1.0 - sg));`);
        L.push(`  dy = dy * zz * sg;`);
      }
      L.push(`  dD${c} += dy * uu; var duv = Dskip${c} * dy; var dDt = 0.0;`);
      for (const k of K) {
        const hp = tt > 0 ? `s${tt - 1}_${k}` : `h${k}`;
        L.push(`  {`);
        L.push(`    let bv = ${vecOf("B", k, cc)};`);
        L.push(`    let gk = gn${c}_${k} + ${vecOf("C", k, cc)} * dy;`);
        L.push(`    tc${tt}_${k} += dy * s${tt}_${k};`);
        L.push(`    tb${tt}_${k} += gk * (dt * uu);`);
        L.push(`    duv += dot(gk, bv) * dt;`);
        L.push(`    let ea = exp2(dt * l2a${c}_${k}); let ah = ea * ${hp};`);
        L.push(`    dDt += dot(gk, a${c}_${k} * ah + bv * uu);`);
        L.push(`    dA${c}_${k} += gk * dt * ah;`);
        L.push(`    gn${c}_${k} = ea * gk;`);
        L.push(`  }`);
      }
      L.push(`  let pre = d4.${cc} + bias${c};`);
      L.push(`  let dpre = ${v.softplus ? "select(dDt / (1.0 + exp(-pre)), dDt, pre > 20.0)" : "dDt"};`);
      L.push(`  duo${c}.${cc} = duv; ddo${c}.${cc} = dpre; db${c} += dpre;`);
      L.push(`}`);
    }
    return `{ // channel ${c}
      ${L.join("\n      ")}
    }`;
  };

  // du, ddelta, dz of the texel: 4 channels x 4 steps, stored per the destination's access
  const words: Record<string, number> = { DU: 16, DDL: 20, DZ: 24 };
  const store = (name: string, val: string, a: SeqAccess) => {
    const o = words[name];
    const base = `U(${o}u) + b * U(${o + 1}u)`;
    if (a === "d4") {
      return ch.map((tt) =>
        `${name}[(${base} + (4u * t4 + ${tt}u) * U(${o + 3}u) + d0) / 4u] = vec4<f32>(${
          ch.map((c) => `${val}${c}.${CMP[tt]}`).join(", ")
        });`
      ).join("\n    ");
    }
    if (a === "t4") {
      return ch.map((c) => `${name}[(${base} + (d0 + ${c}u) * U(${o + 2}u)) / 4u + t4] = ${val}${c};`).join(
        "\n    ",
      );
    }
    return ch.flatMap((c) =>
      ch.map((tt) =>
        `${name}[${base} + (d0 + ${c}u) * U(${o + 2}u) + (4u * t4 + ${tt}u) * U(${o + 3}u)] = ${val}${c}.${
          CMP[tt]
        };`
      )
    ).join("\n    ");
  };
  const dpStore = (c: number, slot: number, val: string) => `DP[bd${c} * ${P}u + ${slot}u] = ${val};`;

  return `// selective scan bwd v3 (4 channels per invocation)
${uniformDecl(32)}
${paramDecl(diagB)}
${decl.join("\n")}
${helpers()}
${flatId(BWD_V3_WG)}
  if (gid >= U(4u)) { return; }
  let D = U(1u); let L = U(2u); let L4 = U(3u); let D4 = D / 4u;
  let b = gid / D4; let d0 = 4u * (gid - b * D4);
  let bdb = b * D + d0;
  let bg = b * U(7u) + d0 / U(6u);
  let blb = bg / U(9u); let by = (bg - blb * U(9u)) * ${N}u;
  let pU8 = U(8u); let pU10 = U(10u); let pU11 = U(11u); let tU13 = U(13u); let tU14 = U(14u);
  let trb = gid / ${TEX_ROWS}u; let ty = gid - trb * ${TEX_ROWS}u;
  ${chanDecl}
  ${w.statesGiven ? "" : ch.flatMap((c) => K.map((k) => `var hs${c}_${k} = vec4<f32>(0.0);`)).join("\n  ")}
  ${phase0}
  for (var r = 0u; r < L4; r++) {
    let t4 = L4 - 1u - r;
    let x = t4 % ${TEX_W}u; let seg = t4 / ${TEX_W}u;
    ${
    K.flatMap((k) => ns(k).map((n) => `let B${n} = textureLoad(TBC, vec2<u32>(x, by + ${n}u), ${bl(0)});`))
      .join("\n    ")
  }
    ${
    K.flatMap((k) => ns(k).map((n) => `let C${n} = textureLoad(TBC, vec2<u32>(x, by + ${n}u), ${bl(1)});`))
      .join("\n    ")
  }
    ${
    w.dout === "d4"
      ? ch.map((tt) => `let go${tt} = GO[(U(28u) + b * U(29u) + (4u * t4 + ${tt}u) * U(31u) + d0) / 4u];`)
        .join(
          "\n    ",
        )
      : ""
  }
    ${
    ch.flatMap((tt) => K.map((k) => `var tb${tt}_${k} = vec4<f32>(0.0); var tc${tt}_${k} = vec4<f32>(0.0);`))
      .join("\n    ")
  }
    ${
    ch.map((c) => `var duo${c} = vec4<f32>(0.0); var ddo${c} = vec4<f32>(0.0); var dzo${c} = vec4<f32>(0.0);`)
      .join("\n    ")
  }
    ${ch.map(chanBack).join("\n    ")}
    ${
    ch.flatMap((tt) =>
      K.flatMap((k) => {
        const tx = `(4u * t4 + ${tt}u) * ${nK}u + ${k}u`;
        const at = (op: number) =>
          `vec2<u32>((${tx}) % ${TEX_W}u, ty), (${op}u * tU13 + trb) * tU14 + (${tx}) / ${TEX_W}u`;
        return [`textureStore(TT, ${at(0)}, tb${tt}_${k});`, `textureStore(TT, ${at(1)}, tc${tt}_${k});`];
      })
    ).join("\n    ")
  }
    ${store("DU", "duo", w.out[0])}
    ${store("DDL", "ddo", w.out[1])}
    ${v.hasZ ? store("DZ", "dzo", w.out[2]) : ""}
  }
  ${
    ch.map((c) =>
      [
        ...K.flatMap((k) => ns(k).map((n) => dpStore(c, n, `dA${c}_${k}.${CMP[n - 4 * k]}`))),
        dpStore(c, N, `dD${c}`),
        dpStore(c, N + 1, `db${c}`),
      ].join(" ")
    ).join("\n  ")
  }
}`;
}
