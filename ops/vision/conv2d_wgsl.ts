/**
 * WGSL of the 2-D convolution's rearrangements (`conv2d.ts`). The convolution itself is a matmul (seqlab's
 * texture matmul, `ops/core/matmul_tex.ts`) over the im2col matrix, so only the gathers live here.
 *
 * Versions (numbers are never reused):
 * - im2col v1: one invocation per element of cols (groups, N OH OW, Cg KH KW): decodes (group, n, i, j, c,
 *   kh, kw) and loads x through its strides (0 in the padding).
 * - col2im v1: one invocation per element of dx (N, C, H, W): sums, in kernel order, the cols entries that
 *   read it (KH KW candidates, those on the stride grid and inside the output); deterministic, no atomics.
 * @module
 */

import { type DType, wgslType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl } from "../core/util.ts";

/** Invocations per workgroup of the rearrangements. */
export const CONV_WG = 64;

/** Uniform words shared by both: the geometry, then the source's offset and strides. */
const GEOM = `let N = U(1u); let C = U(2u); let H = i32(U(3u)); let W = i32(U(4u));
  let KH = U(5u); let KW = U(6u); let sh = i32(U(7u)); let sw = i32(U(8u));
  let ph = i32(U(9u)); let pw = i32(U(10u)); let dh = i32(U(11u)); let dw = i32(U(12u));
  let G = U(13u); let OH = U(14u); let OW = U(15u);
  let Cg = C / G; let KK = KH * KW; let K = Cg * KK; let P = OH * OW; let M = N * P;
  let so = U(16u); let s0 = U(17u); let s1 = U(18u); let s2 = U(19u); let s3 = U(20u);`;

/**
 * im2col v1. Uniforms: [total, N, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, groups, OH, OW, xOff, sN, sC,
 * sH, sW]. Bindings: x, cols (contiguous (groups, N OH OW, Cg KH KW)).
 */
export function im2colSource(dtype: DType): string {
  const T = wgslType(dtype);
  return `// conv2d im2col v1
${enables(dtype)}${uniformDecl(21)}
${binding(1, "X", dtype)}
${binding(2, "COLS", dtype, true)}
${flatId(CONV_WG)}
  if (gid >= U(0u)) { return; }
  ${GEOM}
  let k = gid % K; let rest = gid / K; let r = rest % M; let gr = rest / M;
  let c = k / KK; let kk = k - c * KK; let kh = kk / KW; let kw = kk - kh * KW;
  let n = r / P; let p = r - n * P; let i = p / OW; let j = p - i * OW;
  let ih = i32(i) * sh - ph + i32(kh) * dh;
  let iw = i32(j) * sw - pw + i32(kw) * dw;
  var v = ${T}(0);
  if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
    v = X[so + n * s0 + (gr * Cg + c) * s1 + u32(ih) * s2 + u32(iw) * s3];
  }
  COLS[gid] = v;
}`;
}

/**
 * col2im v1. Uniforms: as im2col (total = N C H W), then the cols' offset and (group, row, column)
 * strides in words 16 .. 19. Bindings: cols, dx (contiguous (N, C, H, W)).
 */
export function col2imSource(dtype: DType): string {
  const T = wgslType(dtype);
  return `// conv2d col2im v1
${enables(dtype)}${uniformDecl(21)}
${binding(1, "COLS", dtype)}
${binding(2, "DX", dtype, true)}
${flatId(CONV_WG)}
  if (gid >= U(0u)) { return; }
  ${GEOM}
  let uW = u32(W); let uH = u32(H);
  let iw = i32(gid % uW); let r1 = gid / uW; let ih = i32(r1 % uH); let r2 = r1 / uH;
  let ch = r2 % C; let n = r2 / C;
  let gr = ch / Cg; let c = ch - gr * Cg;
  var acc = ${T}(0);
  for (var kh = 0u; kh < KH; kh++) {
    let ti = ih + ph - i32(kh) * dh;
    if (ti < 0 || ti % sh != 0) { continue; }
    let i = u32(ti / sh);
    if (i >= OH) { continue; }
    for (var kw = 0u; kw < KW; kw++) {
      let tj = iw + pw - i32(kw) * dw;
      if (tj < 0 || tj % sw != 0) { continue; }
      let j = u32(tj / sw);
      if (j >= OW) { continue; }
      let row = (n * OH + i) * OW + j;
      acc += COLS[so + gr * s0 + row * s1 + (c * KK + kh * KW + kw) * s2];
    }
  }
  DX[gid] = acc;
}`;
}
