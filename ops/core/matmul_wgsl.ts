/**
 * WGSL batched matmul. Uniforms: [M, N, K, batch0, offA, offB, sA, sB]; workgroup z is the batch index
 * (plus batch0 when a batch count over 65535 is split across dispatches).
 *
 * Versions:
 * - v1 naive: one invocation per output element, a scalar dot product. The baseline.
 * - v2 blocked: each invocation computes a 4x4 block of C in registers from scalar loads with clamped
 *   row/column indices (no bounds checks inside the k loop); any M, N, K, any dtype. No workgroup memory:
 *   barriers are costly on the software adapter.
 * - v3 blocked-vec4: v2 with vec4 loads of A rows and B rows, four k per step (needs K, N and both
 *   offsets divisible by 4, f32). The fast path.
 * @module
 */

import type { DType } from "../../runtime/dtype.ts";
import { binding, enables, uniformDecl } from "./util.ts";

/** Output tile per workgroup for v2/v3: 8x8 invocations x 4x4 outputs each. */
export const TILE = 32;

const HEAD = (v: string) => `// matmul ${v}`;

/** v1: one invocation per output. Workgroups: (ceil(N/8), ceil(M/8), batch). */
export function matmulV1(dtype: DType): string {
  return `${HEAD("v1 naive")}
${enables(dtype)}${uniformDecl(8)}
${binding(1, "A", dtype)}
${binding(2, "B", dtype)}
${binding(3, "C", dtype, true)}
@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let M = U(0u); let N = U(1u); let K = U(2u); let b = g.z + U(3u);
  if (g.x >= N || g.y >= M) { return; }
  let a0 = U(4u) + b * U(6u) + g.y * K;
  let b0 = U(5u) + b * U(7u) + g.x;
  var s = 0.0;
  for (var k = 0u; k < K; k++) { s += f32(A[a0 + k]) * f32(B[b0 + k * N]); }
  C[(b * M + g.y) * N + g.x] = ${dtype}(s);
}`;
}

const STORE = (dtype: DType) => `
  let cb = b * M * N;
  for (var i = 0u; i < 4u; i++) {
    let r = row0 + i;
    if (r >= M) { break; }
    let v = acc[i];
    let o = cb + r * N + col0;
    C[o] = ${dtype}(v.x);
    if (col0 + 1u < N) { C[o + 1u] = ${dtype}(v.y); }
    if (col0 + 2u < N) { C[o + 2u] = ${dtype}(v.z); }
    if (col0 + 3u < N) { C[o + 3u] = ${dtype}(v.w); }
  }`;

/** v2: 4x4 register block per invocation, scalar loads. Workgroups: (ceil(N/32), ceil(M/32), batch). */
export function matmulV2(dtype: DType): string {
  return `${HEAD("v2 blocked")}
${enables(dtype)}${uniformDecl(8)}
${binding(1, "A", dtype)}
${binding(2, "B", dtype)}
${binding(3, "C", dtype, true)}
@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let M = U(0u); let N = U(1u); let K = U(2u); let b = g.z + U(3u);
  let row0 = g.y * 4u; let col0 = g.x * 4u;
  if (row0 >= M || col0 >= N) { return; }
  let aB = U(4u) + b * U(6u);
  let bB = U(5u) + b * U(7u);
  let ra = vec4<u32>(aB + min(row0, M - 1u) * K, aB + min(row0 + 1u, M - 1u) * K,
                     aB + min(row0 + 2u, M - 1u) * K, aB + min(row0 + 3u, M - 1u) * K);
  let cc = vec4<u32>(bB + min(col0, N - 1u), bB + min(col0 + 1u, N - 1u),
                     bB + min(col0 + 2u, N - 1u), bB + min(col0 + 3u, N - 1u));
  var acc: array<vec4<f32>, 4>;
  for (var k = 0u; k < K; k++) {
    let kn = k * N;
    let bv = vec4<f32>(f32(B[cc.x + kn]), f32(B[cc.y + kn]), f32(B[cc.z + kn]), f32(B[cc.w + kn]));
    acc[0] += f32(A[ra.x + k]) * bv;
    acc[1] += f32(A[ra.y + k]) * bv;
    acc[2] += f32(A[ra.z + k]) * bv;
    acc[3] += f32(A[ra.w + k]) * bv;
  }
  ${STORE(dtype)}
}`;
}

/** v3: v2 with vec4 loads (K, N, offsets divisible by 4; f32). Workgroups: (ceil(N/32), ceil(M/32), batch). */
export function matmulV3(): string {
  return `${HEAD("v3 blocked-vec4")}
${uniformDecl(8)}
@group(0) @binding(1) var<storage, read> A: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> B: array<vec4<f32>>;
${binding(3, "C", "f32", true)}
@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let M = U(0u); let N = U(1u); let K = U(2u); let b = g.z + U(3u);
  let row0 = g.y * 4u; let col0 = g.x * 4u;
  if (row0 >= M || col0 >= N) { return; }
  let K4 = K / 4u; let N4 = N / 4u;
  let aB = (U(4u) + b * U(6u)) / 4u;
  let bB = (U(5u) + b * U(7u)) / 4u + g.x;
  let r0 = aB + min(row0, M - 1u) * K4;
  let r1 = aB + min(row0 + 1u, M - 1u) * K4;
  let r2 = aB + min(row0 + 2u, M - 1u) * K4;
  let r3 = aB + min(row0 + 3u, M - 1u) * K4;
  var acc: array<vec4<f32>, 4>;
  for (var k4 = 0u; k4 < K4; k4++) {
    let kb = bB + k4 * 4u * N4;
    let b0 = B[kb]; let b1 = B[kb + N4]; let b2 = B[kb + 2u * N4]; let b3 = B[kb + 3u * N4];
    let a0 = A[r0 + k4]; let a1 = A[r1 + k4]; let a2 = A[r2 + k4]; let a3 = A[r3 + k4];
    acc[0] += a0.x * b0 + a0.y * b1 + a0.z * b2 + a0.w * b3;
    acc[1] += a1.x * b0 + a1.y * b1 + a1.z * b2 + a1.w * b3;
    acc[2] += a2.x * b0 + a2.y * b1 + a2.z * b2 + a2.w * b3;
    acc[3] += a3.x * b0 + a3.y * b1 + a3.z * b2 + a3.w * b3;
  }
  ${STORE("f32")}
}`;
}
