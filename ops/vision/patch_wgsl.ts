/**
 * WGSL of the patch rearrangements (`patch.ts`): pure gathers, one invocation per output element, the
 * geometry baked in as constants (its divisions become multiplies on lavapipe), the source read through
 * its strides (a transposed image or a broadcast gradient needs no copy).
 *
 * Versions (numbers are never reused):
 * - patchify v1: one invocation per token element (n, t, f) of (N, L, D): one strided load, one store.
 * - unpatchify v1: one invocation per pixel (n, c, h, w) of (N, C, H, W): one strided load, one store.
 * - patchify v2: v1 on vec4s: one invocation per 4 consecutive features (kj .. kj + 3), which are 4
 *   consecutive pixels of a row; for contiguous x at an offset divisible by 4 and PW divisible by 4. A vec4
 *   storage access costs what a scalar one does on lavapipe, so it moves 4x the data per access.
 * - unpatchify v2: v1 on vec4s, the same conditions on the tokens.
 * Each is the other's backward (a permutation's adjoint is its inverse).
 * @module
 */

import { type DType, wgslType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl } from "../core/util.ts";
import type { PatchGeometry } from "./patch_ref.ts";

/** Invocations per workgroup of the patch shaders. */
export const PATCH_WG = 64;

function consts(g: PatchGeometry): string {
  return Object.entries({ ...g, L: g.GH * g.GW, D: g.C * g.PH * g.PW })
    .map(([n, v]) => `const ${n} = ${v}i;`).join("\n");
}

/** The pipeline key of a geometry (the shaders bake it in). */
export function patchKey(g: PatchGeometry): string {
  return [g.N, g.C, g.H, g.W, g.PH, g.PW].join(",");
}

/** patchify v1. Uniforms: [elements, xOff, x strides (4)]. Bindings: X (strided NCHW), OUT (N, L, D). */
export function patchifySource(dtype: DType, g: PatchGeometry): string {
  return `// patchify v1
${enables(dtype)}${uniformDecl(6)}
${binding(1, "X", dtype)}
${binding(2, "OUT", dtype, true)}
${consts(g)}
${flatId(PATCH_WG)}
  if (gid >= U(0u)) { return; }
  let so = i32(U(1u)); let s0 = i32(U(2u)); let s1 = i32(U(3u)); let s2 = i32(U(4u)); let s3 = i32(U(5u));
  let id = i32(gid);
  let f = id % D; let r = id / D; let t = r % L; let n = r / L;
  let kj = f % PW; let f1 = f / PW; let ki = f1 % PH; let c = f1 / PH;
  let b = t % GW; let a = t / GW;
  OUT[gid] = X[so + n * s0 + c * s1 + (a * PH + ki) * s2 + (b * PW + kj) * s3];
}`;
}

/** unpatchify v1. Uniforms: [elements, tokens' offset, strides (3)]. Bindings: TOK (strided (N, L, D)), OUT (NCHW). */
export function unpatchifySource(dtype: DType, g: PatchGeometry): string {
  return `// unpatchify v1
${enables(dtype)}${uniformDecl(5)}
${binding(1, "TOK", dtype)}
${binding(2, "OUT", dtype, true)}
${consts(g)}
${flatId(PATCH_WG)}
  if (gid >= U(0u)) { return; }
  let so = i32(U(1u)); let s0 = i32(U(2u)); let s1 = i32(U(3u)); let s2 = i32(U(4u));
  let id = i32(gid);
  let w = id % W; let r1 = id / W; let h = r1 % H; let r2 = r1 / H; let c = r2 % C; let n = r2 / C;
  let a = h / PH; let ki = h - a * PH; let b = w / PW; let kj = w - b * PW;
  OUT[gid] = TOK[so + n * s0 + (a * GW + b) * s1 + ((c * PH + ki) * PW + kj) * s2];
}`;
}

const vec4Binding = (i: number, name: string, dtype: DType, write = false) =>
  `@group(0) @binding(${i}) var<storage, ${write ? "read_write" : "read"}> ${name}: array<vec4<${
    wgslType(dtype)
  }>>;`;

/** patchify v2. Uniforms: [vec4s, xOff / 4]. Bindings: X (contiguous NCHW, vec4), OUT (N, L, D) vec4. */
export function patchifyVec4Source(dtype: DType, g: PatchGeometry): string {
  return `// patchify v2
${enables(dtype)}${uniformDecl(2)}
${vec4Binding(1, "X", dtype)}
${vec4Binding(2, "OUT", dtype, true)}
${consts(g)}
const D4 = D / 4;
${flatId(PATCH_WG)}
  if (gid >= U(0u)) { return; }
  let id = i32(gid);
  let f = 4 * (id % D4); let r = id / D4; let t = r % L; let n = r / L;
  let kj = f % PW; let f1 = f / PW; let ki = f1 % PH; let c = f1 / PH;
  let b = t % GW; let a = t / GW;
  OUT[gid] = X[i32(U(1u)) + (((n * C + c) * H + a * PH + ki) * W + b * PW + kj) / 4];
}`;
}

/** unpatchify v2. Uniforms: [vec4s, tokens' offset / 4]. Bindings: TOK (contiguous (N, L, D), vec4), OUT vec4. */
export function unpatchifyVec4Source(dtype: DType, g: PatchGeometry): string {
  return `// unpatchify v2
${enables(dtype)}${uniformDecl(2)}
${vec4Binding(1, "TOK", dtype)}
${vec4Binding(2, "OUT", dtype, true)}
${consts(g)}
const W4 = W / 4;
${flatId(PATCH_WG)}
  if (gid >= U(0u)) { return; }
  let id = i32(gid);
  let w = 4 * (id % W4); let r1 = id / W4; let h = r1 % H; let r2 = r1 / H; let c = r2 % C; let n = r2 / C;
  let a = h / PH; let ki = h - a * PH; let b = w / PW; let kj = w - b * PW;
  OUT[gid] = TOK[i32(U(1u)) + ((n * L + a * GW + b) * D + (c * PH + ki) * PW + kj) / 4];
}`;
}
