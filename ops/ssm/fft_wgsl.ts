/**
 * WGSL FFT for S4's convolution mode: batched complex FFTs over rgba32float storage textures.
 *
 * Layout. Real rows (u's B D rows, K's D rows, in the backward also g's) are taken four at a time: a
 * "group" g holds real rows 4g .. 4g + 3, and its texel at position t is (r0[t], r1[t], r2[t], r3[t]),
 * read as two complex numbers r0 + i r1 and r2 + i r3. So one vec4 butterfly transforms two complex rows,
 * each carrying two real rows (the spectrum of each real row is recovered from Z[k] and Z[n - k]). A
 * group's n texels are consecutive in a linear texel index i = g n + t, mapped to a 2d-array texture as
 * x = i mod 8192, y = (i / 8192) mod 8192, layer = i / 8192^2.
 *
 * Versions (numbers are never reused):
 * - stage v1: one Stockham autosort pass of radix R (8, the last pass the remaining power of two; 1 for
 *   n = 1): invocation (g, j) reads the R texels j + r n/R, multiplies by twiddles w^(k r n/(Ns R)),
 *   k = j mod Ns, from a float64-built table texture (exact to f32 rounding, and a texel load instead of
 *   a sin and a cos), runs the R-point DFT in registers (straight-line code with constant twiddles) and
 *   writes (j - k) R + k + r Ns. No loops, no workgroup memory, no barriers (costly on lavapipe).
 *   Storage textures rather than buffers: on lavapipe a storage-buffer load is a per-lane loop (~7 ns a
 *   component), a texel load a vector gather (measured ~3 ns a texel); a texel store costs ~10 ns, so a
 *   pass is bound by its stores and the pass count is what to cut. Measured (B = 1, D = 512, n = 32K,
 *   8.4M texels a pass, machine under load): radix 4 ~15-25 ns a texel a pass, radix 8 ~37, radix 16
 *   ~58 (its 16 vec4 values spill); end to end radix 8 (5 passes) beat radix 4 (8 passes) and 16
 *   (4 passes) by 1.2-1.6x. A four-step variant doing whole 64- to 256-point sub-FFTs per invocation
 *   in a private array (2 passes) was 5-10x slower a pass (lavapipe keeps such arrays in memory) and
 *   took minutes to compile.
 *   The first pass also packs: it reads the rows from a flat copy of the input buffers (copyBufferToTexture
 *   of the raw floats, 4 per texel), zero-padded past each row's length.
 * - pointwise v1: per (group, k), the spectra of the four real rows from Z[k] and Z[n - k]; "conv"
 *   multiplies u^ by K^ of the row's channel; "corr" (the backward) forms conj(K^) g^ for du and
 *   sum_b conj(u^) g^ for dK (a loop over B). Results are packed two real rows per complex row (the
 *   inverse of a Hermitian spectrum is real, so IFFT(Y0 + i Y1) = y0 + i y1) and scaled by 1/n. With D
 *   a multiple of 4 the kernel spectra of a group's four rows share one group (2 loads instead of 8).
 * - unpack v1: one invocation per output texel (4 consecutive floats of the (rows, len) output) gathers
 *   its values from the groups; the texture is then copied to the output buffer.
 * Cost (same run as above): the whole convolution at B = 1, D = 512, L = 16K takes ~2.5 s on the
 * software adapter (direct conv1d: minutes); at D = 64 see `deno task bench ssm`.
 * @module
 */

import { flatId } from "../../runtime/webgpu.ts";
import { uniformDecl } from "../core/util.ts";

/** Invocations per workgroup of every FFT pass. */
export const FFT_WG = 64;

/** log2 of the texture width and of the rows per layer (8192, WebGPU's default maxTextureDimension2D). */
export const FFT_TEX_LOG = 13;

/** Uniform words of every FFT pass. */
export const FFT_WORDS = 24;

/** First word of the pack sources in a first-stage uniform block: 3 sources of 5 words. */
export const FFT_SRC_WORD = 8;

const texAt = `fn at(i: u32) -> vec3<u32> {
  let row = i >> ${FFT_TEX_LOG}u;
  return vec3<u32>(i & ${(1 << FFT_TEX_LOG) - 1}u, row & ${(1 << FFT_TEX_LOG) - 1}u, row >> ${FFT_TEX_LOG}u);
}`;

const loadStore = `${texAt}
fn ld(i: u32) -> vec4<f32> { let c = at(i); return textureLoad(SRC, c.xy, c.z); }
fn st(i: u32, v: vec4<f32>) { let c = at(i); textureStore(DST, c.xy, c.z, v); }`;

const decl = (twiddles: boolean) =>
  `@group(0) @binding(1) var SRC: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(2) var DST: texture_storage_2d_array<rgba32float, write>;
${twiddles ? "@group(0) @binding(3) var TW: texture_storage_2d_array<rgba32float, read>;" : ""}`;

/**
 * Straight-line WGSL for the R-point DFT (R a power of two) of the vec4 values named in `x` (two complex
 * numbers each), by recursive radix-2 decimation in time with constant twiddles; `sign` -1 forward, +1
 * inverse. Returns the lines and the names of the R outputs in frequency order.
 */
function dftCode(x: string[], sign: number, tmp: { n: number }): { lines: string[]; out: string[] } {
  const R = x.length;
  if (R === 1) return { lines: [], out: x };
  const e = dftCode(x.filter((_, i) => i % 2 === 0), sign, tmp);
  const o = dftCode(x.filter((_, i) => i % 2 === 1), sign, tmp);
  const lines = [...e.lines, ...o.lines];
  const out: string[] = new Array(R);
  const f = (
    v: number,
  ) => (Math.abs(v) < 1e-15 ? "0.0" : v.toPrecision(17).replace(/0+$/, "").replace(/\.$/, ".0"));
  for (let k = 0; k < R / 2; k++) {
    const a = (sign * 2 * Math.PI * k) / R;
    let t: string;
    if (k === 0) t = o.out[k];
    else if (4 * k === R) t = `rot(${o.out[k]})`; // times sign i
    else t = `cmul(${o.out[k]}, vec2<f32>(${f(Math.cos(a))}, ${f(Math.sin(a))}))`;
    const p = `t${tmp.n++}`, lo = `t${tmp.n++}`, hi = `t${tmp.n++}`;
    lines.push(`let ${p} = ${t}; let ${lo} = ${e.out[k]} + ${p}; let ${hi} = ${e.out[k]} - ${p};`);
    out[k] = lo;
    out[k + R / 2] = hi;
  }
  return { lines, out };
}

/** The radices stage v1 is generated for. */
export type FftRadix = 1 | 2 | 4 | 8 | 16;

/**
 * stage v1 of radix R. Uniforms: [n, G, Ns, n / R, n / (Ns R), ...]; the first stage reads the flat input
 * (3 sources at FFT_SRC_WORD: group start, rows, row length, row stride, first float) and needs no
 * twiddles. Bindings: SRC (read), DST (write), twiddle table (when R > 1 and not first).
 */
export function fftStageV1(R: FftRadix, first: boolean, inverse: boolean): string {
  const rs = [...Array(R).keys()];
  const tw = R > 1 && !first;
  const load = (r: number) => first ? `pick(g, j + ${r}u * m)` : `ld(base + j + ${r}u * m)`;
  const rot = inverse ? "vec4<f32>(-a.y, a.x, -a.w, a.z)" : "vec4<f32>(a.y, -a.x, a.w, -a.z)";
  const dft = dftCode(rs.map((r) => `v${r}`), inverse ? 1 : -1, { n: 0 });
  const S = FFT_SRC_WORD;
  return `// ssm fft stage v1 R=${R}${first ? " first" : ""}${inverse ? " inverse" : ""}
${uniformDecl(FFT_WORDS)}
${decl(tw)}
${loadStore}
fn cmul(a: vec4<f32>, w: vec2<f32>) -> vec4<f32> {
  return vec4<f32>(a.x * w.x - a.y * w.y, a.x * w.y + a.y * w.x, a.z * w.x - a.w * w.y, a.z * w.y + a.w * w.x);
}
fn rot(a: vec4<f32>) -> vec4<f32> { return ${rot}; } // times ${inverse ? "+i" : "-i"}
${
    tw
      ? `fn tw(k: u32) -> vec2<f32> {
  let c = at(k >> 1u);
  let t = textureLoad(TW, c.xy, c.z);
  let w = select(t.xy, t.zw, (k & 1u) == 1u);
  return ${inverse ? "vec2<f32>(w.x, -w.y)" : "w"};
}`
      : ""
  }
${
    first
      ? `// the 4 real rows of group g at position t from the flat input, 0 past a row's length
fn pick(g: u32, t: u32) -> vec4<f32> {
  var s = 0u;
  if (g >= U(${S + 5}u)) { s = 1u; }
  if (g >= U(${S + 10}u)) { s = 2u; }
  let w = ${S}u + 5u * s;
  let rows = U(w + 1u); let len = U(w + 2u); let stride = U(w + 3u); let off = U(w + 4u);
  var v = vec4<f32>(0.0);
  if (t >= len) { return v; }
  let r0 = (g - U(w)) * 4u;
  for (var c = 0u; c < 4u; c++) {
    if (r0 + c < rows) {
      let f = off + (r0 + c) * stride + t;
      let x = at(f >> 2u);
      v[c] = textureLoad(SRC, x.xy, x.z)[f & 3u];
    }
  }
  return v;
}`
      : ""
  }
${flatId(FFT_WG)}
  let n = U(0u); let Ns = U(2u); let m = U(3u);
  if (gid >= U(1u) * m) { return; }
  let g = gid / m; let j = gid - g * m;
  let k = j % Ns;
  let base = g * n;
  ${rs.map((r) => `var v${r} = ${load(r)};`).join("\n  ")}
  ${tw ? rs.slice(1).map((r) => `v${r} = cmul(v${r}, tw(k * ${r}u * U(4u)));`).join("\n  ") : ""}
  ${dft.lines.join("\n  ")}
  let d = base + (j - k) * ${R}u + k;
  ${rs.map((r) => `st(d + ${r}u * Ns, ${dft.out[r]});`).join("\n  ")}
}`;
}

/**
 * pointwise v1. Uniforms: [n, output groups, B D, D, B, U group start, K group start, g group start,
 * Gu = ceil(B D / 4), 1 / n (f32)]. "conv": output group g < Gu holds y^ of rows 4g .. 4g + 3; "corr":
 * groups < Gu hold du^, groups Gu .. hold dK^ of channels 4(g - Gu) ... With `aligned` (D a multiple of
 * 4) a group's four rows are four consecutive channels, whose kernel spectra share one group: 2 texel
 * loads for them instead of 8.
 */
export function fftPointwiseV1(mode: "conv" | "corr", aligned: boolean): string {
  const cs = [0, 1, 2, 3];
  // the spectra of the four rows of group g (a row past the end reads a zero row: harmless)
  const rows = (name: string, g: string) =>
    `let ${name}z = ld(${g} * n + k); let ${name}m = ld(${g} * n + nk);\n    ` +
    cs.map((c) => `let ${name}${c} = ext(${name}z, ${name}m, ${c}u);`).join(" ");
  const kernel = (r: (c: number) => string) =>
    aligned
      ? rows("k", `(U(6u) + (${r(0)} % D) / 4u)`)
      : cs.map((c) => `let k${c} = spec(U(6u) + (${r(c)} % D) / 4u, (${r(c)} % D) & 3u, k, nk);`).join(
        "\n    ",
      );
  const conv = `  if (g >= U(8u)) { return; }
    ${rows("u", "(U(5u) + g)")}
    ${kernel((c) => `(4u * g + ${c}u)`)}
    ${
    cs.map((c) => `y[${c}] = select(vec2<f32>(0.0), cmul(u${c}, k${c}), 4u * g + ${c}u < BD);`).join("\n    ")
  }`;
  const dk = aligned
    ? `var a0 = vec2<f32>(0.0); var a1 = vec2<f32>(0.0); var a2 = vec2<f32>(0.0); var a3 = vec2<f32>(0.0);
    for (var b = 0u; b < U(4u); b++) {
      let r = b * D + 4u * h;
      ${rows("u", "(U(5u) + r / 4u)")}
      ${rows("q", "(U(7u) + r / 4u)")}
      ${cs.map((c) => `a${c} += cmulc(u${c}, q${c});`).join(" ")}
    }
    ${cs.map((c) => `y[${c}] = select(vec2<f32>(0.0), a${c}, 4u * h + ${c}u < D);`).join("\n    ")}`
    : cs.map((c) =>
      `if (4u * h + ${c}u < D) {
      let d = 4u * h + ${c}u;
      var acc = vec2<f32>(0.0);
      for (var b = 0u; b < U(4u); b++) {
        let r = b * D + d;
        acc += cmulc(spec(U(5u) + r / 4u, r & 3u, k, nk), spec(U(7u) + r / 4u, r & 3u, k, nk));
      }
      y[${c}] = acc;
    }`
    ).join("\n    ");
  const corr = `  if (g < U(8u)) {
    ${rows("q", "(U(7u) + g)")}
    ${kernel((c) => `(4u * g + ${c}u)`)}
    ${
    cs.map((c) => `y[${c}] = select(vec2<f32>(0.0), cmulc(k${c}, q${c}), 4u * g + ${c}u < BD);`).join(
      "\n    ",
    )
  }
  } else {
    let h = g - U(8u);
    ${dk}
  }`;
  return `// ssm fft pointwise v1 ${mode}${aligned ? " aligned" : ""}
${uniformDecl(FFT_WORDS)}
${decl(false)}
${loadStore}
fn cmul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> { return vec2<f32>(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x); }
fn cmulc(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> { return vec2<f32>(a.x * b.x + a.y * b.y, a.x * b.y - a.y * b.x); }
// the spectrum at k of real row c of a group, from its texels at k and n - k
fn ext(z: vec4<f32>, zm: vec4<f32>, c: u32) -> vec2<f32> {
  let a = select(z.xy, z.zw, c >= 2u); let b = select(zm.xy, zm.zw, c >= 2u);
  if ((c & 1u) == 0u) { return 0.5 * vec2<f32>(a.x + b.x, a.y - b.y); }
  return 0.5 * vec2<f32>(a.y + b.y, b.x - a.x);
}
${
    aligned ? "" : `fn spec(g: u32, c: u32, k: u32, nk: u32) -> vec2<f32> {
  let n = U(0u);
  return ext(ld(g * n + k), ld(g * n + nk), c);
}`
  }
${flatId(FFT_WG)}
  let n = U(0u); let BD = U(2u); let D = U(3u);
  if (gid >= U(1u) * n) { return; }
  let g = gid / n; let k = gid - g * n;
  let nk = (n - k) & (n - 1u);
  var y = array<vec2<f32>, 4>(vec2<f32>(0.0), vec2<f32>(0.0), vec2<f32>(0.0), vec2<f32>(0.0));
${mode === "conv" ? conv : corr}
  let s = UF(9u);
  st(g * n + k, s * vec4<f32>(y[0].x - y[1].y, y[0].y + y[1].x, y[2].x - y[3].y, y[2].y + y[3].x));
}`;
}

/**
 * unpack v1. Uniforms: [n, output floats, row length, first group, first output texel]. Output texel q
 * holds floats 4q .. 4q + 3 of the (rows, len) result, row-major.
 */
export function fftUnpackV1(): string {
  return `// ssm fft unpack v1
${uniformDecl(FFT_WORDS)}
${decl(false)}
${loadStore}
${flatId(FFT_WG)}
  let n = U(0u); let count = U(1u); let len = U(2u);
  if (gid >= (count + 3u) / 4u) { return; }
  var v = vec4<f32>(0.0);
  for (var c = 0u; c < 4u; c++) {
    let f = 4u * gid + c;
    if (f < count) {
      let row = f / len;
      v[c] = ld((U(3u) + row / 4u) * n + f - row * len)[row & 3u];
    }
  }
  st(U(4u) + gid, v);
}`;
}
