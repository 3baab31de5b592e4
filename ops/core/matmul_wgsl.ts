/**
 * WGSL batched matmul.
 *
 * Versions (numbers are never reused):
 * - v1 naive: one invocation per output element, a scalar dot product. The baseline.
 * - v2 blocked: each invocation computes a 4x4 block of C in registers from scalar loads with clamped
 *   row/column indices (no bounds checks inside the k loop); any M, N, K, any dtype. No workgroup memory:
 *   barriers are costly on the software adapter.
 * - v3 blocked-vec4: v2 with vec4 loads of A rows and B rows, four k per step (needs K, N and both
 *   offsets divisible by 4, f32).
 * - v4 texture: both operands are first packed into rgba32float texture arrays (row copies when the
 *   operand is aligned f32, else {@link matmulPack}, which reads any strided view, casts f16 and
 *   broadcasts batches) and read as read-only storage textures; 16x16 outputs per invocation, 8x2
 *   invocations per workgroup. Exists because on lavapipe (Mesa 22.3) every storage-buffer load is a
 *   per-lane loop with a bounds check, ~7 ns per lane and component (measured), while a storage-texture
 *   load is a vector gather, ~0.34 ns: v3 spent ~90% of its time loading, and no tile shape (4x4 to 8x8,
 *   workgroups 8x8, 16x16, 64x1) or loop order moved it past ~1 GFLOP/s at N = 1024. Any M, N, f32 or f16,
 *   K up to the texture height limit (B's packed texture is K texels high).
 * - v5 texture-skinny: v4 with 4 rows per invocation, for short A (M <= 16, matrix-vector products),
 *   where v4's 32-row blocks would mostly fetch padding.
 *
 * v1-v3 uniforms: [M, N, K, batch0, offA, offB, sA, sB]; workgroup z is the batch index (plus batch0 when a
 * batch count over 65535 is split across dispatches). v4/v5 uniforms: see {@link matmulTex}.
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

// Accumulators are four named vec4s: a private array indexed in a loop is spilled to memory by the
// software adapter's compiler and runs ~10x slower.
const STORE_FN = (dtype: DType) => `
fn store(cb: u32, r: u32, col0: u32, M: u32, N: u32, v: vec4<f32>) {
  if (r >= M) { return; }
  let o = cb + r * N + col0;
  C[o] = ${dtype}(v.x);
  if (col0 + 1u < N) { C[o + 1u] = ${dtype}(v.y); }
  if (col0 + 2u < N) { C[o + 2u] = ${dtype}(v.z); }
  if (col0 + 3u < N) { C[o + 3u] = ${dtype}(v.w); }
}`;

const STORE = (_dtype: DType) => `
  let cb = b * M * N;
  store(cb, row0, col0, M, N, acc0);
  store(cb, row0 + 1u, col0, M, N, acc1);
  store(cb, row0 + 2u, col0, M, N, acc2);
  store(cb, row0 + 3u, col0, M, N, acc3);`;

/** v2: 4x4 register block per invocation, scalar loads. Workgroups: (ceil(N/32), ceil(M/32), batch). */
export function matmulV2(dtype: DType): string {
  return `${HEAD("v2 blocked")}
${enables(dtype)}${uniformDecl(8)}
${binding(1, "A", dtype)}
${binding(2, "B", dtype)}
${binding(3, "C", dtype, true)}
${STORE_FN(dtype)}
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
  var acc0 = vec4<f32>(); var acc1 = vec4<f32>(); var acc2 = vec4<f32>(); var acc3 = vec4<f32>();
  for (var k = 0u; k < K; k++) {
    let kn = k * N;
    let bv = vec4<f32>(f32(B[cc.x + kn]), f32(B[cc.y + kn]), f32(B[cc.z + kn]), f32(B[cc.w + kn]));
    acc0 += f32(A[ra.x + k]) * bv;
    acc1 += f32(A[ra.y + k]) * bv;
    acc2 += f32(A[ra.z + k]) * bv;
    acc3 += f32(A[ra.w + k]) * bv;
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
${STORE_FN("f32")}
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
  var acc0 = vec4<f32>(); var acc1 = vec4<f32>(); var acc2 = vec4<f32>(); var acc3 = vec4<f32>();
  for (var k4 = 0u; k4 < K4; k4++) {
    let kb = bB + k4 * 4u * N4;
    let b0 = B[kb]; let b1 = B[kb + N4]; let b2 = B[kb + 2u * N4]; let b3 = B[kb + 3u * N4];
    let a0 = A[r0 + k4]; let a1 = A[r1 + k4]; let a2 = A[r2 + k4]; let a3 = A[r3 + k4];
    acc0 += a0.x * b0 + a0.y * b1 + a0.z * b2 + a0.w * b3;
    acc1 += a1.x * b0 + a1.y * b1 + a1.z * b2 + a1.w * b3;
    acc2 += a2.x * b0 + a2.y * b1 + a2.z * b2 + a2.w * b3;
    acc3 += a3.x * b0 + a3.y * b1 + a3.z * b2 + a3.w * b3;
  }
  ${STORE("f32")}
}`;
}

/** Register tile and workgroup shape of a texture version: R rows x C columns per invocation (C % 4 == 0). */
export interface TexTile {
  R: number;
  C: number;
  WX: number;
  WY: number;
}

/** Tiles of the texture versions, chosen by measurement on lavapipe (bench/matmul.ts). */
export const TEX_TILES: Record<"v4" | "v5", TexTile> = {
  v4: { R: 16, C: 16, WX: 8, WY: 2 },
  v5: { R: 4, C: 16, WX: 8, WY: 2 },
};

/** v4's narrower tiles, for products too narrow or too small to fill the adapter with 16x16 ones. */
export const V4_NARROW: readonly TexTile[] = [
  { R: 16, C: 8, WX: 8, WY: 2 },
  { R: 8, C: 8, WX: 8, WY: 2 },
];

/** Invocations a product should have before a larger register tile is worth it (16 lanes, x32). */
const FILL = 512;

/**
 * The register tile v4 uses for an (M x N) output (M counting every batch's rows): 16x16 when the
 * workgroup's 128 columns are not mostly padding (N >= 128) and there are FILL invocations; else 16x8
 * (64 columns per workgroup) with FILL invocations; else 8x8. Measured on lavapipe at the LM training
 * shapes: (2048 x 64) = (2048 x 256) @ (256 x 64) 5.7 -> 2.9 ms with 16x8, (128 x 256) with K 2048 (a
 * weight gradient) 17 -> 4.8 ms with 8x8. v5 keeps its tile.
 */
export function texTile(version: "v4" | "v5", M: number, N: number): TexTile {
  if (version === "v5") return TEX_TILES.v5;
  const inv = (t: TexTile) => Math.ceil(M / t.R) * Math.ceil(N / t.C);
  if (N >= 128 && inv(TEX_TILES.v4) >= FILL) return TEX_TILES.v4;
  return inv(V4_NARROW[0]) >= FILL ? V4_NARROW[0] : V4_NARROW[1];
}

/**
 * Packed operand layout of v4/v5: one rgba32f texel holds 4 consecutive k of a row of A, or 4 consecutive
 * columns of a row of B. Each layer holds one block of the operand:
 * - A, blocks of RB = R*WY rows (one workgroup's rows): layer = z*MB + block, texel (k4, row in block).
 * - B, blocks of CB = C/4*WX texel columns (one workgroup's columns): layer = z*NB + block,
 *   texel (column texel in block, k).
 * where z is the batch within a chunk and MB/NB the blocks per batch. One k4 step of a workgroup then
 * reads RB texels of A and one contiguous run of 4*CB texels of B, and the next step follows: measured
 * ~25% faster on lavapipe than one row-major texture per operand, where the rows of a step are 4 KiB
 * apart. Both are plain row-major copies of the operand's rows, so contiguous aligned operands are packed
 * by copyBufferToTexture. Rows >= K of B hold zeros, so k runs to 4*ceil(K/4) with no tail.
 */
export function texBlocks(t: TexTile): { RB: number; CB: number } {
  return { RB: t.R * t.WY, CB: (t.C / 4) * t.WX };
}

/**
 * v4/v5: C = A @ B from textures in the layout of {@link texBlocks}, read as read-only storage textures
 * (on lavapipe a storage-texture load costs ~0.34 ns per lane and component against ~0.6 for textureLoad
 * of a sampled texture: no mip-level logic). Uniforms: [M, N, K4, aStep, bStep, cOff, ldc, cBatch, MB,
 * NB]: batch z reads A layer z*aStep*MB + block (aStep 0 when A is shared by the batch; likewise B) and
 * writes C[cOff + z*cBatch + m*ldc + n]. Rows past M and columns past N accumulate whatever the texture
 * holds there and are never stored. Workgroups: (NB, MB, batches).
 */
export function matmulTex(t: TexTile, out: DType, vec4Out = false): string {
  const { R, C, WX, WY } = t;
  const C4 = C / 4;
  const L: string[] = [];
  const rows = [...Array(R).keys()], cols = [...Array(C4).keys()], ks = [0, 1, 2, 3];
  L.push(`// matmul texture ${R}x${C}
${enables(out)}${uniformDecl(10)}
@group(0) @binding(1) var TA: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(2) var TB: texture_storage_2d_array<rgba32float, read>;
${
    vec4Out
      ? "@group(0) @binding(3) var<storage, read_write> C: array<vec4<f32>>;"
      : binding(3, "C", out, true)
  }
@compute @workgroup_size(${WX}, ${WY})
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
        @builtin(workgroup_id) w: vec3<u32>) {
  let M = U(0u); let N = U(1u); let K4 = U(2u);
  let la = g.z * U(3u) * U(8u) + w.y; let lb = g.z * U(4u) * U(9u) + w.x;
  let ay = l.y * ${R}u; let bx = l.x * ${C4}u;`);
  // Accumulators are named variables: a private array indexed in a loop is kept in memory by lavapipe.
  for (const i of rows) for (const j of cols) L.push(`  var c${i}_${j} = vec4<f32>();`);
  L.push(`  for (var k4 = 0u; k4 < K4; k4++) {
    let k = k4 * 4u;`);
  for (const kk of ks) {
    for (const j of cols) {
      L.push(`    let b${kk}_${j} = textureLoad(TB, vec2<u32>(bx + ${j}u, k + ${kk}u), lb);`);
    }
  }
  for (const i of rows) {
    L.push(`    let a${i} = textureLoad(TA, vec2<u32>(k4, ay + ${i}u), la);`);
    for (const j of cols) {
      L.push(
        `    c${i}_${j} += a${i}.x * b0_${j} + a${i}.y * b1_${j} + a${i}.z * b2_${j} + a${i}.w * b3_${j};`,
      );
    }
  }
  // Stores: a loop over the rows that stores row 0 and shifts the others up. Unrolled, the R*C conditional
  // stores (each a per-lane loop on lavapipe) took LLVM over a second to compile, ten for f16; an array
  // indexed by the loop counter is lowered to an if-ladder, worse still.
  L.push(`  }
  let cb = U(5u) + g.z * U(7u); let ldc = U(6u);
  let row0 = g.y * ${R}u; let col0 = g.x * ${C}u;
  for (var i = 0u; i < ${R}u; i++) {
    if (row0 + i >= M) { break; }
    let o = cb + (row0 + i) * ldc;`);
  for (const j of cols) L.push(`    put(o, col0 + ${4 * j}u, N, c0_${j});`);
  for (const i of rows.slice(1)) L.push(`    ${cols.map((j) => `c${i - 1}_${j} = c${i}_${j};`).join(" ")}`);
  L.push(`  }
}
${
    vec4Out
      // N, ldc and the output offset divisible by 4: a column texel is all in or all out, one vec4 store
      ? `fn put(o: u32, n: u32, N: u32, v: vec4<f32>) {
  if (n < N) { C[(o + n) / 4u] = v; }
}`
      : `fn put(o: u32, n: u32, N: u32, v: vec4<f32>) {
  if (n < N) { C[o + n] = ${out}(v.x); }
  if (n + 1u < N) { C[o + n + 1u] = ${out}(v.y); }
  if (n + 2u < N) { C[o + n + 2u] = ${out}(v.z); }
  if (n + 3u < N) { C[o + n + 3u] = ${out}(v.w); }
}`
  }`);
  return L.join("\n");
}

/** Batches one packing dispatch covers: their element offsets travel in the uniform block. */
export const PACK_MAX_BATCH = 256;

/** Uniform words of {@link matmulPack}: 8 scalars, then one element offset per batch. */
export const PACK_UNIFORM_WORDS = 8 + PACK_MAX_BATCH;

/** Invocations per workgroup of a packing pass (along x). */
export const PACK_GROUP = 32;

/**
 * Packs one operand of v4/v5 into the layout of {@link texBlocks} (`block` = RB for role "A", CB for
 * "B"), reading any strided view and casting to f32; zeros where a row or column is out of range. The
 * general path: contiguous aligned f32 operands are copied instead. Grid, with nothing divided by a
 * runtime value (lavapipe splits a vector integer division into eight scalar ones):
 * - A: x = k4 (bounds-checked), y = block * RB + row in block, z = batch;
 * - B: x = block * CB + column texel in block, y = k (to 4*K4), z = batch.
 * Uniforms: [rows, cols, off, rs, cs, blocks, W, -, batchOff[z]...]: element (r, c) of batch z at
 * off + batchOff[z] + r*rs + c*cs; W = K4 for A.
 */
export function matmulPack(src: DType, role: "A" | "B", block: number): string {
  const coords = role === "A"
    ? `if (g.x >= U(6u)) { return; }
  let blk = g.y / ${block}u; let r = g.y; let c = g.x * 4u;
  let at = vec2<u32>(g.x, g.y % ${block}u);`
    : `if (g.x >= U(5u) * ${block}u) { return; }
  let blk = g.x / ${block}u; let r = g.y; let c = g.x * 4u;
  let at = vec2<u32>(g.x % ${block}u, g.y);`;
  return `// matmul pack ${role}
${enables(src)}${uniformDecl(PACK_UNIFORM_WORDS)}
${binding(1, "X", src)}
@group(0) @binding(2) var P: texture_storage_2d_array<rgba32float, write>;
@compute @workgroup_size(${PACK_GROUP})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let rows = U(0u); let cols = U(1u); let cs = U(4u);
  ${coords}
  let o = U(2u) + U(8u + g.z) + r * U(3u) + c * cs;
  let cj = vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u);
  // Loads past the operand are clamped by the bounds checks and replaced by zero here.
  let v = vec4<f32>(f32(X[o]), f32(X[o + cs]), f32(X[o + 2u * cs]), f32(X[o + 3u * cs]));
  let keep = cj < vec4<u32>(cols) & vec4<bool>(r < rows);
  textureStore(P, at, g.z * U(5u) + blk, select(vec4<f32>(), v, keep));
}`;
}

/**
 * Packs a transposed f32 operand A (its rows are columns of a row-major X: unit row stride, column stride
 * and offsets divisible by 4) into v4/v5's A layout, 4 rows x 4 k per invocation: four vec4 loads (four
 * consecutive rows of A at one k each) transposed in registers into four texels, instead of sixteen scalar
 * loads (each a per-lane loop on lavapipe). Grid: x = k4 (bounds-checked), y = row quad (block * RB/4 +
 * quad in block; RB is a multiple of 4), z = batch. Uniforms as {@link matmulPack}.
 */
export function matmulPackTransposedA(block: number): string {
  return `// matmul pack A transposed (vec4)
${uniformDecl(PACK_UNIFORM_WORDS)}
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var P: texture_storage_2d_array<rgba32float, write>;
@compute @workgroup_size(${PACK_GROUP})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  if (g.x >= U(6u)) { return; }
  let rows = U(0u); let cols = U(1u); let cs = U(4u);
  let r0 = g.y * 4u; let c0 = g.x * 4u;
  let blk = r0 / ${block}u; let layer = g.z * U(5u) + blk;
  let o = U(2u) + U(8u + g.z) + r0;
  // row quad r0..r0+3 of A at k = c0 + i; k past the operand reads nothing
  // (unrolled: a private array indexed in a loop stays in memory on lavapipe)
  var v0 = vec4<f32>(); var v1 = vec4<f32>(); var v2 = vec4<f32>(); var v3 = vec4<f32>();
  if (c0 < cols) { v0 = X[(o + c0 * cs) / 4u]; }
  if (c0 + 1u < cols) { v1 = X[(o + (c0 + 1u) * cs) / 4u]; }
  if (c0 + 2u < cols) { v2 = X[(o + (c0 + 2u) * cs) / 4u]; }
  if (c0 + 3u < cols) { v3 = X[(o + (c0 + 3u) * cs) / 4u]; }
  let t0 = vec4<f32>(v0.x, v1.x, v2.x, v3.x);
  let t1 = vec4<f32>(v0.y, v1.y, v2.y, v3.y);
  let t2 = vec4<f32>(v0.z, v1.z, v2.z, v3.z);
  let t3 = vec4<f32>(v0.w, v1.w, v2.w, v3.w);
  let y = r0 % ${block}u;
  // rows past the operand hold zeros
  textureStore(P, vec2<u32>(g.x, y), layer, select(vec4<f32>(), t0, r0 < rows));
  textureStore(P, vec2<u32>(g.x, y + 1u), layer, select(vec4<f32>(), t1, r0 + 1u < rows));
  textureStore(P, vec2<u32>(g.x, y + 2u), layer, select(vec4<f32>(), t2, r0 + 2u < rows));
  textureStore(P, vec2<u32>(g.x, y + 3u), layer, select(vec4<f32>(), t3, r0 + 3u < rows));
}`;
}
