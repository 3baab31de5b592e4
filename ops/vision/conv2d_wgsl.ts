/**
 * WGSL of the 2-D convolution's rearrangements (`conv2d.ts`). The convolution itself is a matmul (seqlab's
 * texture matmul, `ops/core/matmul_tex.ts`) over the im2col matrix, so only the gathers live here.
 *
 * Versions (numbers are never reused):
 * - im2col v1: one invocation per element of cols (groups, N OH OW, Cg KH KW), the geometry in uniforms:
 *   it decoded (group, n, i, j, c, kh, kw) with ten divisions by runtime values, which lavapipe splits into
 *   eight scalar divisions each: 167 ms for the 3.6M entries of (8, 64, 28, 28) under a 3x3 kernel.
 * - im2col v2: the geometry baked into the shader as constants (a pipeline per geometry; divisions by
 *   constants are multiplies), one invocation per (group, row, channel) writing its KH KW taps.
 * - col2im v1: one invocation per element of dx (N, C, H, W): sums, in kernel order, the cols entries that
 *   read it (KH KW candidates, those on the stride grid and inside the output); deterministic, no atomics.
 * - col2im v2: v1 with the geometry as constants.
 * - direct v1 (one output channel per group, Cg KH KW <= DIRECT_MAX_TAPS: depthwise): one invocation per
 *   (n, group, output row, 4 output columns), the group's weights loaded once; no im2col matrix and no
 *   matmul (whose per-group batches cost a pack and a dispatch each: a depthwise 3x3 over (8, 128, 28, 28)
 *   took ~1 s that way, v1 28 ms, against tfjs's 17 ms: it loaded every tap once per output).
 * - direct v2: 8 outputs per invocation, each kernel row's input span loaded once into registers (unrolled,
 *   constant indices) and shared by the outputs that cover it.
 * - direct v3 (removed): a block of 4 output rows by 8 columns per invocation, each input row's span loaded
 *   once for every output row its kernel covers (1.9 storage loads an output for a depthwise 3x3 against
 *   v2's 3.75). Slower on lavapipe all the same: 10.4 against v2's 8.0 ms on (8, 128, 28, 28) (load 4).
 * - direct v4: v2 reading x from a texture (texture loads cost ~1/50 of a storage load on lavapipe). x is
 *   copied whole into a 64-texel-wide rgba32float array texture (256 floats a row, so the copy needs no
 *   repacking: copyBufferToTexture's rows are 1 KiB); a row span of x is 4 texel loads and a pick of
 *   components by the span's alignment. The weights come through a texture the same way. No storage reads.
 *   Writing y as texels into a texture and copying it out (where OW is a multiple of 4) was tried and is
 *   slower: 3.87 against 3.43 ms on (8, 128, 28, 28), quiet machine; v2 took 4.95, a plain x + 1 2.53.
 * @module
 */

import { type DType, wgslType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl } from "../core/util.ts";
import type { ConvGeometry } from "./conv2d_ref.ts";
import { VISION_WG } from "./common.ts";

/** Invocations per workgroup of the rearrangements. */
export const CONV_WG = VISION_WG;

/** The geometry as WGSL constants: every division by a size is by a constant (a multiply, not 8 scalar divides). */
function consts(g: ConvGeometry): string {
  const Cg = g.C / g.groups;
  return [
    ["N", g.N],
    ["C", g.C],
    ["H", g.H],
    ["W", g.W],
    ["KH", g.KH],
    ["KW", g.KW],
    ["SH", g.sh],
    ["SW", g.sw],
    ["PH", g.ph],
    ["PW", g.pw],
    ["DH", g.dh],
    ["DW", g.dw],
    ["G", g.groups],
    ["OH", g.OH],
    ["OW", g.OW],
    ["CG", Cg],
    ["KK", g.KH * g.KW],
    ["K", Cg * g.KH * g.KW],
    ["P", g.OH * g.OW],
    ["M", g.N * g.OH * g.OW],
  ].map(([n, v]) => `const ${n} = ${v}i;`).join("\n");
}

/** The pipeline key of a geometry (the shaders bake it in). */
export function geometryKey(g: ConvGeometry): string {
  return [g.N, g.C, g.H, g.W, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.groups].join(",");
}

/**
 * im2col v2. Uniforms: [total rows x channels (G M Cg), xOff, sN, sC, sH, sW]. Bindings: x, cols
 * (contiguous (groups, N OH OW, Cg KH KW)). One invocation per (group, row, channel c): its KH KW taps.
 */
export function im2colSource(dtype: DType, g: ConvGeometry): string {
  const T = wgslType(dtype);
  return `// conv2d im2col v2
${enables(dtype)}${uniformDecl(6)}
${binding(1, "X", dtype)}
${binding(2, "COLS", dtype, true)}
${consts(g)}
${flatId(CONV_WG)}
  if (gid >= U(0u)) { return; }
  let so = i32(U(1u)); let s0 = i32(U(2u)); let s1 = i32(U(3u)); let s2 = i32(U(4u)); let s3 = i32(U(5u));
  let id = i32(gid);
  let c = id % CG; let rest = id / CG; let r = rest % M; let gr = rest / M;
  let n = r / P; let p = r - n * P; let i = p / OW; let j = p - i * OW;
  let xb = so + n * s0 + (gr * CG + c) * s1;
  let ob = (gr * M + r) * K + c * KK;
  for (var kh = 0i; kh < KH; kh++) {
    let ih = i * SH - PH + kh * DH;
    for (var kw = 0i; kw < KW; kw++) {
      let iw = j * SW - PW + kw * DW;
      var v = ${T}(0);
      if (ih >= 0 && ih < H && iw >= 0 && iw < W) { v = X[xb + ih * s2 + iw * s3]; }
      COLS[ob + kh * KW + kw] = v;
    }
  }
}`;
}

/**
 * col2im v2. Uniforms: [N C H W, cols offset, group, row and column strides]. Bindings: cols, dx
 * (contiguous (N, C, H, W)). One invocation per element of dx.
 */
export function col2imSource(dtype: DType, g: ConvGeometry): string {
  const T = wgslType(dtype);
  return `// conv2d col2im v2
${enables(dtype)}${uniformDecl(5)}
${binding(1, "COLS", dtype)}
${binding(2, "DX", dtype, true)}
${consts(g)}
${flatId(CONV_WG)}
  if (gid >= U(0u)) { return; }
  let so = i32(U(1u)); let s0 = i32(U(2u)); let s1 = i32(U(3u)); let s2 = i32(U(4u));
  let id = i32(gid);
  let iw = id % W; let r1 = id / W; let ih = r1 % H; let r2 = r1 / H;
  let ch = r2 % C; let n = r2 / C;
  let gr = ch / CG; let c = ch - gr * CG;
  var acc = ${T}(0);
  for (var kh = 0i; kh < KH; kh++) {
    let ti = ih + PH - kh * DH;
    if (ti < 0 || ti % SH != 0) { continue; }
    let i = ti / SH;
    if (i >= OH) { continue; }
    for (var kw = 0i; kw < KW; kw++) {
      let tj = iw + PW - kw * DW;
      if (tj < 0 || tj % SW != 0) { continue; }
      let j = tj / SW;
      if (j >= OW) { continue; }
      acc += COLS[so + gr * s0 + ((n * OH + i) * OW + j) * s1 + (c * KK + kh * KW + kw) * s2];
    }
  }
  DX[gid] = acc;
}`;
}

/** The most taps (Cg KH KW) the direct version keeps in registers. */
export const DIRECT_MAX_TAPS = 64;

/** Outputs along a row per invocation of the direct version. */
const DIRECT_Q = 8;

/**
 * The direct shaders' common head: bindings, the geometry, and per invocation its (n, group, row block `ib`
 * of `rows` output rows (the row itself when rows = 1: `i`), column block `jb` of 8) and the group's weights
 * in registers (`wv`).
 */
function directPrelude(version: string, dtype: DType, g: ConvGeometry, rows: number): string {
  const T = wgslType(dtype);
  const taps = (g.C / g.groups) * g.KH * g.KW;
  const row = rows === 1 ? "let i = r1 % OH; let r2 = r1 / OH;" : "let ib = r1 % OHR; let r2 = r1 / OHR;";
  return `// conv2d direct ${version}
${enables(dtype)}${uniformDecl(6)}
${binding(1, "X", dtype)}
${binding(2, "WT", dtype)}
${binding(3, "Y", dtype, true)}
${consts(g)}
const OWQ = ${Math.ceil(g.OW / DIRECT_Q)}i;
const OHR = ${Math.ceil(g.OH / rows)}i;
${flatId(CONV_WG)}
  if (gid >= U(0u)) { return; }
  let so = i32(U(1u)); let s0 = i32(U(2u)); let s1 = i32(U(3u)); let s2 = i32(U(4u)); let s3 = i32(U(5u));
  let id = i32(gid);
  let jb = id % OWQ; let r1 = id / OWQ; ${row} let gr = r2 % G; let n = r2 / G;
  var wv: array<${T}, ${taps}>;
  for (var t = 0i; t < ${taps}i; t++) { wv[t] = WT[gr * ${taps}i + t]; }`;
}

/** One kernel row's multiply-adds: a0..a7 += x(q SW + kw DW) w(c, kh, kw) for every kw. */
function directFmas(g: ConvGeometry): string {
  return Array.from(
    { length: g.KW },
    (_, kw) =>
      `{ let wk = wv[(c * KH + kh) * KW + ${kw}i];\n          ${
        Array.from({ length: DIRECT_Q }, (_, q) => `a${q} += x${q * g.sw + kw * g.dw} * wk;`).join(" ")
      } }`,
  ).join("\n        ");
}

/** `span` input values of one row from column iw0 on, zero outside [0, W): registers x0 .. x(span-1). */
function spanLoads(T: string, span: number): string {
  return Array.from(
    { length: span },
    (_, t) =>
      `let x${t} = select(${T}(0), X[max(rb + (iw0 + ${t}i) * s3, 0i)], iw0 + ${t}i >= 0i && iw0 + ${t}i < W);`,
  ).join("\n        ");
}

/**
 * direct v2. Uniforms: [invocations (N G OH ceil(OW / 8)), xOff, sN, sC, sH, sW]. Bindings: x, w (contiguous
 * (G, Cg, KH, KW)), y (contiguous (N, G, OH, OW)). Per (channel, kernel row) the input span the 8 outputs
 * read, (8 - 1) SW + (KW - 1) DW + 1 values, is loaded once into registers (the taps unrolled: every index
 * a constant) and each value feeds every output that covers it.
 */
export function convDirectSource(dtype: DType, g: ConvGeometry): string {
  const T = wgslType(dtype);
  const Q = DIRECT_Q;
  const span = (Q - 1) * g.sw + (g.KW - 1) * g.dw + 1;
  const loads = spanLoads(T, span);
  const fmas = directFmas(g);
  return `${directPrelude("v2", dtype, g, 1)}
  ${Array.from({ length: Q }, (_, q) => `var a${q} = ${T}(0);`).join(" ")}
  let j0 = jb * ${Q}i;
  let iw0 = j0 * SW - PW;
  for (var c = 0i; c < CG; c++) {
    let xb = so + n * s0 + (gr * CG + c) * s1;
    for (var kh = 0i; kh < KH; kh++) {
      let ih = i * SH - PH + kh * DH;
      if (ih >= 0 && ih < H) {
        let rb = xb + ih * s2;
        ${loads}
        ${fmas}
      }
    }
  }
  let yb = ((n * G + gr) * OH + i) * OW + j0;
  ${Array.from({ length: Q }, (_, q) => `if (j0 + ${q}i < OW) { Y[yb + ${q}i] = a${q}; }`).join("\n  ")}
}`;
}

/** Floats per row of direct v4's texture (64 rgba32float texels: 1 KiB, copyBufferToTexture's row unit). */
export const TEX_ROW = 256;

/**
 * direct v4 (see the module notes). `height`, `wHeight`: the textures' rows per layer. Uniforms:
 * [invocations (N G OH ceil(OW / 8)), xOff (a multiple of 4: x's texture holds its buffer from there)].
 * Bindings: x's texture, w's texture (contiguous (O, Cg, KH, KW) from element 0), y (N, O, OH, OW)
 * contiguous. x is contiguous.
 */
export function convDirectV4Source(g: ConvGeometry, height: number, wHeight: number): string {
  const Q = DIRECT_Q;
  const taps = (g.C / g.groups) * g.KH * g.KW;
  const wTexels = Math.ceil((3 + taps) / 4);
  const wPicks = Array.from(
    { length: 4 },
    (_, a) =>
      `case ${a}i: { ${
        Array.from({ length: taps }, (_, t) => `wv[${t}] = w${(a + t) >> 2}.${"xyzw"[(a + t) & 3]};`).join(
          " ",
        )
      } }`,
  ).join("\n    ");
  const span = (Q - 1) * g.sw + (g.KW - 1) * g.dw + 1;
  const texels = Math.ceil((3 + span) / 4);
  const comp = "xyzw";
  const picks = Array.from(
    { length: 4 },
    (_, a) =>
      `case ${a}i: { ${
        Array.from({ length: span }, (_, t) => `x${t} = t${(a + t) >> 2}.${comp[(a + t) & 3]};`).join(" ")
      } }`,
  ).join("\n          ");
  const fmas = directFmas(g);
  return `// conv2d direct v4
${uniformDecl(2)}
@group(0) @binding(1) var X: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(2) var WT: texture_storage_2d_array<rgba32float, read>;
${binding(3, "Y", "f32", true)}
${consts(g)}
const OWQ = ${Math.ceil(g.OW / Q)}i;
const HT = ${height}u;
const HW = ${wHeight}u;
fn texel(q: i32) -> vec4<f32> {
  let u = u32(max(q, 0i));
  return textureLoad(X, vec2<u32>(u % 64u, (u / 64u) % HT), u / (64u * HT));
}
fn wtexel(q: i32) -> vec4<f32> {
  let u = u32(q);
  return textureLoad(WT, vec2<u32>(u % 64u, (u / 64u) % HW), u / (64u * HW));
}
${flatId(CONV_WG)}
  if (gid >= U(0u)) { return; }
  let id = i32(gid);
  let jb = id % OWQ; let r1 = id / OWQ; let i = r1 % OH; let r2 = r1 / OH; let gr = r2 % G; let n = r2 / G;
  var wv: array<f32, ${taps}>;
  let wf = gr * ${taps}i;
  let wq = wf >> 2u;
  ${Array.from({ length: wTexels }, (_, k) => `let w${k} = wtexel(wq + ${k}i);`).join(" ")}
  switch wf & 3 {
    ${wPicks}
    default: {}
  }
  ${Array.from({ length: Q }, (_, q) => `var a${q} = 0.0;`).join(" ")}
  ${Array.from({ length: span }, (_, t) => `var x${t} = 0.0;`).join(" ")}
  let j0 = jb * ${Q}i;
  let iw0 = j0 * SW - PW;
  for (var c = 0i; c < CG; c++) {
    let xb = i32(U(1u)) + (n * C + gr * CG + c) * H * W;
    for (var kh = 0i; kh < KH; kh++) {
      let ih = i * SH - PH + kh * DH;
      if (ih >= 0 && ih < H) {
        let f0 = xb + ih * W + iw0;
        let al = f0 & 3;
        let q0 = (f0 - al) >> 2u;
        ${Array.from({ length: texels }, (_, k) => `let t${k} = texel(q0 + ${k}i);`).join(" ")}
        switch al {
          ${picks}
          default: {}
        }
        ${
    Array.from(
      { length: span },
      (_, t) => `x${t} = select(0.0, x${t}, iw0 + ${t}i >= 0i && iw0 + ${t}i < W);`,
    )
      .join("\n        ")
  }
        ${fmas}
      }
    }
  }
  let yb = ((n * G + gr) * OH + i) * OW + j0;
  ${Array.from({ length: Q }, (_, q) => `if (j0 + ${q}i < OW) { Y[yb + ${q}i] = a${q}; }`).join("\n  ")}
}`;
}
