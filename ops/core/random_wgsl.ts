/**
 * WGSL twin of random_ref.ts (Philox4x32-10), plus fill and arange.
 *
 * Versions:
 * - random v1: one invocation per block of four outputs.
 * - fill v1 / arange v1: one invocation per element.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl } from "./util.ts";

export const RAND_WG = 64;

/** Uniforms: [n, seed lo, seed hi, stream lo, stream hi, a(f32), b(f32)]. */
export function randomSource(kind: "uniform" | "normal", dtype: DType): string {
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "out", dtype, true)}
fn mulhi(a: u32, b: u32) -> u32 {
  let al = a & 0xffffu; let ah = a >> 16u; let bl = b & 0xffffu; let bh = b >> 16u;
  let ll = al * bl; let lh = al * bh; let hl = ah * bl; let hh = ah * bh;
  let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
  return hh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
}
fn philox(ctr: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
  var c = ctr; var k = key;
  for (var r = 0; r < 10; r++) {
    let hi0 = mulhi(0xd2511f53u, c.x); let lo0 = 0xd2511f53u * c.x;
    let hi1 = mulhi(0xcd9e8d57u, c.z); let lo1 = 0xcd9e8d57u * c.z;
    c = vec4<u32>(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    k = k + vec2<u32>(0x9e3779b9u, 0xbb67ae85u);
  }
  return c;
}
fn unit(w: u32) -> f32 { return f32(w >> 8u) * 5.9604644775390625e-8; }
${flatId(RAND_WG)}
  let n = U(0u);
  let base = gid * 4u;
  if (base >= n) { return; }
  let w = philox(vec4<u32>(gid, 0u, U(3u), U(4u)), vec2<u32>(U(1u), U(2u)));
  var v: vec4<f32>;
  ${
    kind === "uniform"
      ? `v = UF(5u) + (UF(6u) - UF(5u)) * vec4<f32>(unit(w.x), unit(w.y), unit(w.z), unit(w.w));`
      : `let r0 = sqrt(-2.0 * log(f32((w.x >> 8u) + 1u) * 5.9604644775390625e-8));
  let t0 = 6.283185307179586 * unit(w.y);
  let r1 = sqrt(-2.0 * log(f32((w.z >> 8u) + 1u) * 5.9604644775390625e-8));
  let t1 = 6.283185307179586 * unit(w.w);
  v = UF(5u) + UF(6u) * vec4<f32>(r0 * cos(t0), r0 * sin(t0), r1 * cos(t1), r1 * sin(t1));`
  }
  for (var j = 0u; j < 4u; j++) {
    if (base + j < n) { out[base + j] = ${dtype}(v[j]); }
  }
}`;
}

/** Uniforms: [n, value bits]. Int dtypes take the bits as is; floats as f32. */
export function fillSource(dtype: DType): string {
  const value = dtype === "u32" ? "U(1u)" : dtype === "i32" ? "bitcast<i32>(U(1u))" : `${dtype}(UF(1u))`;
  return `${enables(dtype)}${uniformDecl(4)}
${binding(1, "out", dtype, true)}
${flatId(RAND_WG)}
  if (gid >= U(0u)) { return; }
  out[gid] = ${value};
}`;
}

/** Uniforms: [n, start, step] as f32 bits for floats, i32 bits for ints. */
export function arangeSource(dtype: DType): string {
  const expr = dtype === "u32"
    ? "U(1u) + gid * U(2u)"
    : dtype === "i32"
    ? "bitcast<i32>(U(1u)) + i32(gid) * bitcast<i32>(U(2u))"
    : `${dtype}(UF(1u) + f32(gid) * UF(2u))`;
  return `${enables(dtype)}${uniformDecl(4)}
${binding(1, "out", dtype, true)}
${flatId(RAND_WG)}
  if (gid >= U(0u)) { return; }
  out[gid] = ${expr};
}`;
}
