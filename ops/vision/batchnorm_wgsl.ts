/**
 * WGSL of 2-D batch normalisation (`batchnorm.ts`). The geometry is baked in as constants (a pipeline per
 * shape: the (n, c, chunk) decodes divide by constants); x and dy are read through their strides.
 *
 * The statistics travel in a per-channel f32 table STATS (C, 4): mean, 1 / sqrt(var + eps), weight / sqrt(var
 * + eps), bias; it is what the backward saves. Normalising computes (x - mean) scale + bias, never x scale +
 * (bias - mean scale), which would lose the digits of x - mean when |mean| is large against the spread.
 *
 * Versions (numbers are never reused):
 * - stats v1: one invocation per (channel, image, chunk of CS pixels): Welford's mean and sum of squared
 *   deviations over the chunk (count, mean, M2) -> PART (C, N KP, 3).
 * - finish v1: one invocation per channel: merges the chunks' (count, mean, M2) by Chan's rule (stable at
 *   any mean), writes STATS and moves the running statistics in place (training; unbiased variance), or
 *   builds STATS from the running statistics (evaluation).
 * - normalize v1: one invocation per (image, channel, chunk of CE pixels): y = (x - mean) scale + bias.
 * - bwd sums v1: one invocation per (channel, image, chunk of CS pixels): sum dy and sum dy xhat -> PART
 *   (C, N KP, 2).
 * - bwd finish v1: one invocation per channel: dweight, dbias, and the coefficients COEF (C, 3) of
 *   dx = k1 dy + k2 (x - mean) + k3 (training: through the batch statistics; evaluation: k2 = k3 = 0).
 * - bwd dx v1: one invocation per (image, channel, chunk of CE pixels).
 * @module
 */

import { type DType, wgslType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl } from "../core/util.ts";

/** Invocations per workgroup of the batch-norm shaders. */
export const BN_WG = 64;

/** The sizes the shaders bake in: x (N, C, H, W), stats chunks of CS pixels (KP per plane), elementwise chunks of CE (KE per plane). */
export interface BnGeometry {
  /** Images. */
  N: number;
  /** Channels. */
  C: number;
  /** Height. */
  H: number;
  /** Width. */
  W: number;
  /** Pixels per statistics chunk. */
  CS: number;
  /** Statistics chunks per (image, channel) plane, ceil(H W / CS). */
  KP: number;
  /** Pixels per elementwise chunk. */
  CE: number;
  /** Elementwise chunks per plane, ceil(H W / CE). */
  KE: number;
}

/** The pipeline key of a geometry. */
export function bnKey(g: BnGeometry): string {
  return [g.N, g.C, g.H, g.W, g.CS, g.CE].join(",");
}

function consts(g: BnGeometry): string {
  const v = { ...g, HW: g.H * g.W, NCH: g.N * g.KP };
  return Object.entries(v).map(([n, x]) => `const ${n} = ${x}i;`).join("\n") +
    `\nconst MF = ${g.N * g.H * g.W}.0;`;
}

const strides = (at: number, p: string) =>
  `let ${p}o = i32(U(${at}u)); let ${p}0 = i32(U(${at + 1}u)); let ${p}1 = i32(U(${at + 2}u)); ` +
  `let ${p}2 = i32(U(${at + 3}u)); let ${p}3 = i32(U(${at + 4}u));`;

/** A loop over pixels p0 .. p1 - 1 of a plane, keeping (h, w) without a division per pixel. */
const pixelLoop = (body: string) =>
  `  var h = p0 / W; var w = p0 - h * W;
  for (var p = p0; p < p1; p++) {
${body}
    w += 1;
    if (w == W) { w = 0; h += 1; }
  }`;

/** stats v1. Uniforms: [invocations, x offset and 4 strides]. Bindings: X, PART (f32 (C, N KP, 3)). */
export function bnStatsSource(dtype: DType, g: BnGeometry): string {
  return `// batchNorm2d stats v1
${enables(dtype)}${uniformDecl(6)}
${binding(1, "X", dtype)}
${binding(2, "PART", "f32", true)}
${consts(g)}
${flatId(BN_WG)}
  if (gid >= U(0u)) { return; }
  ${strides(1, "x")}
  let id = i32(gid);
  let k = id % KP; let r = id / KP; let n = r % N; let c = r / N;
  let p0 = k * CS; let p1 = min(p0 + CS, HW);
  let base = xo + n * x0 + c * x1;
  var cnt = 0.0; var mean = 0.0; var m2 = 0.0;
${
    pixelLoop(`    let v = f32(X[base + h * x2 + w * x3]);
    cnt += 1.0;
    let d = v - mean;
    mean += d / cnt;
    m2 += d * (v - mean);`)
  }
  PART[3 * id] = cnt; PART[3 * id + 1] = mean; PART[3 * id + 2] = m2;
}`;
}

/**
 * finish v1. Uniforms: [C, weight off/stride, bias off/stride, running mean off/stride, running var
 * off/stride, eps (f32), momentum (f32)]. Bindings: PART (training only), W?, B?, RM, RV (read-write in
 * training, read in evaluation; absent in training without running statistics), STATS (f32 (C, 4)).
 */
export function bnFinishSource(
  dtype: DType,
  g: BnGeometry,
  training: boolean,
  hasW: boolean,
  hasB: boolean,
  running: boolean,
): string {
  const T = wgslType(dtype);
  const decl: string[] = [];
  let b = 1;
  if (training) decl.push(binding(b++, "PART", "f32"));
  if (hasW) decl.push(binding(b++, "WT", dtype));
  if (hasB) decl.push(binding(b++, "BS", dtype));
  if (running) decl.push(binding(b++, "RM", dtype, training), binding(b++, "RV", dtype, training));
  decl.push(binding(b++, "STATS", "f32", true));
  const stats = training
    ? `  var na = 0.0; var mean = 0.0; var m2 = 0.0;
  for (var q = 0i; q < NCH; q++) {
    let o = 3 * (c * NCH + q);
    let nb = PART[o];
    if (nb == 0.0) { continue; }
    let nab = na + nb;
    let d = PART[o + 1] - mean;
    mean += d * (nb / nab);
    m2 += PART[o + 2] + d * d * (na * (nb / nab));
    na = nab;
  }
  let variance = m2 / MF;${
      running
        ? `
  let im = rmo + c * rms; let iv = rvo + c * rvs;
  RM[im] = ${T}((1.0 - mom) * f32(RM[im]) + mom * mean);
  RV[iv] = ${T}((1.0 - mom) * f32(RV[iv]) + mom * m2 / (MF - 1.0));`
        : ""
    }`
    : `  let mean = f32(RM[rmo + c * rms]);
  let variance = f32(RV[rvo + c * rvs]);`;
  return `// batchNorm2d finish v1
${enables(dtype)}${uniformDecl(11)}
${decl.join("\n")}
${consts(g)}
${flatId(BN_WG)}
  if (gid >= U(0u)) { return; }
  let c = i32(gid);
  let wo = i32(U(1u)); let ws = i32(U(2u)); let bo = i32(U(3u)); let bs = i32(U(4u));
  let rmo = i32(U(5u)); let rms = i32(U(6u)); let rvo = i32(U(7u)); let rvs = i32(U(8u));
  let eps = UF(9u); let mom = UF(10u);
${stats}
  let r = 1.0 / sqrt(variance + eps);
  STATS[4 * c] = mean;
  STATS[4 * c + 1] = r;
  STATS[4 * c + 2] = ${hasW ? "f32(WT[wo + c * ws])" : "1.0"} * r;
  STATS[4 * c + 3] = ${hasB ? "f32(BS[bo + c * bs])" : "0.0"};
}`;
}

/** normalize v1. Uniforms: [invocations, x offset and 4 strides]. Bindings: X, STATS, Y (contiguous). */
export function bnNormalizeSource(dtype: DType, g: BnGeometry): string {
  const T = wgslType(dtype);
  return `// batchNorm2d normalize v1
${enables(dtype)}${uniformDecl(6)}
${binding(1, "X", dtype)}
${binding(2, "STATS", "f32")}
${binding(3, "Y", dtype, true)}
${consts(g)}
${flatId(BN_WG)}
  if (gid >= U(0u)) { return; }
  ${strides(1, "x")}
  let id = i32(gid);
  let k = id % KE; let r = id / KE; let c = r % C; let n = r / C;
  let mean = STATS[4 * c]; let scale = STATS[4 * c + 2]; let shift = STATS[4 * c + 3];
  let p0 = k * CE; let p1 = min(p0 + CE, HW);
  let base = xo + n * x0 + c * x1;
  let ob = (n * C + c) * HW;
${pixelLoop(`    Y[ob + p] = ${T}((f32(X[base + h * x2 + w * x3]) - mean) * scale + shift);`)}
}`;
}

/**
 * bwd sums v1. Uniforms: [invocations, x offset and strides, dy offset and strides]. Bindings: X, DY,
 * STATS, PART (f32 (C, N KP, 2)).
 */
export function bnBackwardSumsSource(dtype: DType, g: BnGeometry): string {
  return `// batchNorm2d bwd sums v1
${enables(dtype)}${uniformDecl(11)}
${binding(1, "X", dtype)}
${binding(2, "DY", dtype)}
${binding(3, "STATS", "f32")}
${binding(4, "PART", "f32", true)}
${consts(g)}
${flatId(BN_WG)}
  if (gid >= U(0u)) { return; }
  ${strides(1, "x")}
  ${strides(6, "g")}
  let id = i32(gid);
  let k = id % KP; let r = id / KP; let n = r % N; let c = r / N;
  let mean = STATS[4 * c];
  let p0 = k * CS; let p1 = min(p0 + CS, HW);
  let xb = xo + n * x0 + c * x1; let gb = go + n * g0 + c * g1;
  var sg = 0.0; var sgx = 0.0;
${
    pixelLoop(`    let gv = f32(DY[gb + h * g2 + w * g3]);
    sg += gv;
    sgx += gv * (f32(X[xb + h * x2 + w * x3]) - mean);`)
  }
  PART[2 * id] = sg; PART[2 * id + 1] = sgx * STATS[4 * c + 1];
}`;
}

/**
 * bwd finish v1. Uniforms: [C]. Bindings: PART, STATS, COEF (f32 (C, 3)), DW? DB? (the dtype, (C)).
 * k1 = weight r; training: k2 = -k1 r sum(dy xhat) / M, k3 = -k1 sum(dy) / M; evaluation: k2 = k3 = 0.
 */
export function bnBackwardFinishSource(
  dtype: DType,
  g: BnGeometry,
  training: boolean,
  dw: boolean,
  db: boolean,
): string {
  const T = wgslType(dtype);
  let b = 4;
  const outs = [
    ...(dw ? [binding(b++, "DW", dtype, true)] : []),
    ...(db ? [binding(b++, "DB", dtype, true)] : []),
  ];
  return `// batchNorm2d bwd finish v1
${enables(dtype)}${uniformDecl(1)}
${binding(1, "PART", "f32")}
${binding(2, "STATS", "f32")}
${binding(3, "COEF", "f32", true)}
${outs.join("\n")}
${consts(g)}
${flatId(BN_WG)}
  if (gid >= U(0u)) { return; }
  let c = i32(gid);
  var sg = 0.0; var sgx = 0.0;
  for (var q = 0i; q < NCH; q++) { let o = 2 * (c * NCH + q); sg += PART[o]; sgx += PART[o + 1]; }
  let r = STATS[4 * c + 1];
  let k1 = STATS[4 * c + 2];
  COEF[3 * c] = k1;
  ${
    training
      ? "COEF[3 * c + 1] = -k1 * r * sgx / MF; COEF[3 * c + 2] = -k1 * sg / MF;"
      : "COEF[3 * c + 1] = 0.0; COEF[3 * c + 2] = 0.0;"
  }
  ${dw ? `DW[c] = ${T}(sgx);` : ""}
  ${db ? `DB[c] = ${T}(sg);` : ""}
}`;
}

/**
 * bwd dx v1. Uniforms: [invocations, x offset and strides, dy offset and strides]. Bindings: X, DY, STATS,
 * COEF, DX (contiguous). dx = k1 dy + k2 (x - mean) + k3.
 */
export function bnBackwardDxSource(dtype: DType, g: BnGeometry): string {
  const T = wgslType(dtype);
  return `// batchNorm2d bwd dx v1
${enables(dtype)}${uniformDecl(11)}
${binding(1, "X", dtype)}
${binding(2, "DY", dtype)}
${binding(3, "STATS", "f32")}
${binding(4, "COEF", "f32")}
${binding(5, "DX", dtype, true)}
${consts(g)}
${flatId(BN_WG)}
  if (gid >= U(0u)) { return; }
  ${strides(1, "x")}
  ${strides(6, "g")}
  let id = i32(gid);
  let k = id % KE; let r = id / KE; let c = r % C; let n = r / C;
  let mean = STATS[4 * c];
  let k1 = COEF[3 * c]; let k2 = COEF[3 * c + 1]; let k3 = COEF[3 * c + 2];
  let p0 = k * CE; let p1 = min(p0 + CE, HW);
  let xb = xo + n * x0 + c * x1; let gb = go + n * g0 + c * g1;
  let ob = (n * C + c) * HW;
${
    pixelLoop(
      `    DX[ob + p] = ${T}(k1 * f32(DY[gb + h * g2 + w * g3]) + k2 * (f32(X[xb + h * x2 + w * x3]) - mean) + k3);`,
    )
  }
}`;
}
