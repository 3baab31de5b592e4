/**
 * WGSL layout kernels.
 *
 * Versions:
 * - copyInto v1: one invocation per source element (concat writes each input at its column offset).
 * - gather v1: one invocation per output element; an index outside [0, A) writes 0 and raises a
 *   diagnostic that the next readback turns into an error (no garbage reads, no silent clamp).
 * - gather v2: v1 with vec4 loads and stores, 4 elements per invocation, when the f32 rows' width and
 *   offset are multiples of 4 (an embedding lookup: a quarter of the index and storage loads).
 * - scatterAdd v1: one invocation per output element, looping over all indices and summing the matches.
 *   Deterministic and atomic-free (WGSL has no float atomics); O(outputs x indices): 19.5 ms of a
 *   TransformerLM step for 2048 tokens into a 64 x 64 table, and it grows with table size x tokens.
 * - scatterAdd v2: a stable counting sort of the indices by row (one workgroup: count, scan, then place
 *   the indices in order, a block of 64 at a time, each lane's rank within the block from the block's keys
 *   in workgroup memory), then one invocation per output element (4 of them with vec4 loads when the
 *   row width allows) summing only its row's slices, in index order (Kahan-compensated). O(indices +
 *   outputs x uses); no float atomics, so every run adds in the same order: deterministic.
 * @module
 */

import { type DType, wgslType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { binding, enables, uniformDecl } from "./util.ts";

export const LAYOUT_WG = 64;

/** Uniforms: [outer, cols, dstCols, colOff, srcOff]. */
export function copyIntoSource(dtype: DType): string {
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "src", dtype)}
${binding(2, "dst", dtype, true)}
${flatId(LAYOUT_WG)}
  let outer = U(0u); let cols = U(1u);
  if (gid >= outer * cols) { return; }
  let o = gid / cols; let c = gid % cols;
  dst[o * U(2u) + U(3u) + c] = src[U(4u) + gid];
}`;
}

/**
 * The diagnostic codes gather and scatterAdd raise for an index out of range, one per index dtype: the
 * shader stores the index word, and the code tells the runtime to read it as i32 or as u32.
 */
export const INDEX_OOB = {
  gather: { i32: 1, u32: 3 },
  scatterAdd: { i32: 2, u32: 4 },
} as const;

/** The out-of-range code of `op` for an index dtype (i32 or u32). */
export function indexOobCode(op: keyof typeof INDEX_OOB, idxType: DType): number {
  if (idxType !== "i32" && idxType !== "u32") {
    throw new Error(`${op}: indices must be i32 or u32, got ${idxType}`);
  }
  return INDEX_OOB[op][idxType];
}

/**
 * Uniforms: [outer, A, inner, I, xOff, idxOff]; with `vec4` (f32, inner and xOff divisible by 4) inner
 * and xOff count vec4s and each invocation copies 4 elements.
 */
export function gatherSource(dtype: DType, idxType: DType, vec4 = false): string {
  const ty = vec4 ? "vec4<f32>" : wgslType(dtype);
  return `${enables(dtype)}${uniformDecl(8)}
@group(0) @binding(1) var<storage, read> x: array<${ty}>;
${binding(2, "idx", idxType)}
@group(0) @binding(3) var<storage, read_write> out: array<${ty}>;
@group(0) @binding(4) var<storage, read_write> diag: array<atomic<u32>, 4>;
${flatId(LAYOUT_WG)}
  let outer = U(0u); let A = U(1u); let inner = U(2u); let I = U(3u);
  if (gid >= outer * I * inner) { return; }
  let i = gid % inner;
  let j = (gid / inner) % I;
  let o = gid / (inner * I);
  let k = idx[U(5u) + j];
  if (${idxType === "i32" ? "k < 0 || " : ""}u32(k) >= A) {
    atomicStore(&diag[1], u32(k));
    atomicStore(&diag[2], A);
    atomicStore(&diag[0], ${indexOobCode("gather", idxType)}u);
    out[gid] = ${ty}(0);
    return;
  }
  out[gid] = x[U(4u) + (o * A + u32(k)) * inner + i];
}`;
}

/**
 * Uniforms: [outer, A, inner, I, srcOff, idxOff, j0, j1]: indices j0 .. j1 - 1 (at most MAX_LOOP per
 * dispatch), added to the output when j0 > 0.
 */
export function scatterAddSource(dtype: DType, idxType: DType): string {
  return `${enables(dtype)}${uniformDecl(8)}
${binding(1, "src", dtype)}
${binding(2, "idx", idxType)}
${binding(3, "out", dtype, true)}
@group(0) @binding(4) var<storage, read_write> diag: array<atomic<u32>, 4>;
${flatId(LAYOUT_WG)}
  let outer = U(0u); let A = U(1u); let inner = U(2u); let I = U(3u);
  if (gid >= outer * A * inner) { return; }
  let i = gid % inner;
  let a = (gid / inner) % A;
  let o = gid / (inner * A);
  var s = 0.0;
  if (U(6u) > 0u) { s = f32(out[gid]); }
  for (var j = U(6u); j < U(7u); j++) {
    let k = idx[U(5u) + j];
    if (gid == 0u && (${idxType === "i32" ? "k < 0 || " : ""}u32(k) >= A)) {
      atomicStore(&diag[1], u32(k));
      atomicStore(&diag[2], A);
      atomicStore(&diag[0], ${indexOobCode("scatterAdd", idxType)}u);
    }
    if (u32(k) == a) { s += f32(src[U(4u) + (o * I + j) * inner + i]); }
  }
  out[gid] = ${dtype}(s);
}`;
}

/** Invocations of the scatterAdd v2 sort: one workgroup, placing a block of this many indices per step. */
export const SORT_WG = 64;

/**
 * scatterAdd v2, pass 1, one workgroup. Uniforms: [A, I, idxOff, j0, j1, prep]. With prep = 1 it counts
 * the valid indices per row (cnt, atomics), flags an index out of range, writes the exclusive scan of
 * the counts to start (A + 1 entries) and leaves each row's first slot in cnt; then (every dispatch) it
 * places indices j0 .. j1 - 1 into order: index j of row k goes to cnt[k] + (earlier indices of row k in
 * its block), so every row lists its indices in increasing order. cnt carries over between dispatches.
 */
export function scatterSortSource(idxType: DType): string {
  const valid = idxType === "i32" ? "k >= 0 && u32(k) < A" : "u32(k) < A";
  return `${uniformDecl(8)}
${binding(1, "idx", idxType)}
@group(0) @binding(2) var<storage, read_write> cnt: array<atomic<u32>>;
${binding(3, "start", "u32", true)}
${binding(4, "order", "u32", true)}
@group(0) @binding(5) var<storage, read_write> diag: array<atomic<u32>, 4>;
var<workgroup> keys: array<u32, ${SORT_WG}>;
const NONE = 0xffffffffu;
@compute @workgroup_size(${SORT_WG})
fn main(@builtin(local_invocation_index) lid: u32) {
  let A = U(0u); let I = U(1u); let off = U(2u);
  if (U(5u) == 1u) {
    for (var a = lid; a < A; a += ${SORT_WG}u) { atomicStore(&cnt[a], 0u); }
    storageBarrier();
    for (var j = lid; j < I; j += ${SORT_WG}u) {
      let k = idx[off + j];
      if (${valid}) {
        atomicAdd(&cnt[u32(k)], 1u);
      } else {
        atomicStore(&diag[1], u32(k));
        atomicStore(&diag[2], A);
        atomicStore(&diag[0], ${indexOobCode("scatterAdd", idxType)}u);
      }
    }
    storageBarrier();
    // exclusive scan: each lane sums a chunk of rows, takes the chunks before it, then writes its chunk
    let per = (A + ${SORT_WG - 1}u) / ${SORT_WG}u;
    let a0 = min(lid * per, A); let a1 = min(a0 + per, A);
    var own = 0u;
    for (var a = a0; a < a1; a++) { own += atomicLoad(&cnt[a]); }
    keys[lid] = own;
    workgroupBarrier();
    var base = 0u;
    for (var q = 0u; q < lid; q++) { base += keys[q]; }
    for (var a = a0; a < a1; a++) {
      let c = atomicLoad(&cnt[a]);
      start[a] = base;
      atomicStore(&cnt[a], base);
      base += c;
    }
    if (lid == ${SORT_WG - 1}u) { start[A] = base; }
    storageBarrier();
    workgroupBarrier();
  }
  for (var b = U(3u); b < U(4u); b += ${SORT_WG}u) {
    let j = b + lid;
    var key = NONE;
    if (j < U(4u)) {
      let k = idx[off + j];
      if (${valid}) { key = u32(k); }
    }
    keys[lid] = key;
    workgroupBarrier();
    if (key != NONE) {
      var r = 0u;
      for (var q = 0u; q < lid; q++) { r += select(0u, 1u, keys[q] == key); }
      order[atomicLoad(&cnt[key]) + r] = j;
    }
    storageBarrier(); // every lane has read its row's slot before any lane advances it
    if (key != NONE) { atomicAdd(&cnt[key], 1u); }
    storageBarrier();
    workgroupBarrier();
  }
}`;
}

/**
 * scatterAdd v2, pass 2: one invocation per output element (vec4: per 4 consecutive ones along inner),
 * summing src's slices listed for its row in order[start[a] .. start[a + 1]) that fall in positions
 * p0 .. p1 - 1 (at most MAX_LOOP per dispatch), added to the output when p0 > 0. Kahan-compensated.
 * Uniforms: [outer, A, inner (in vec4s when vec4), I, srcOff (same units), p0, p1, 1.0 (f32)].
 */
export function scatterSumSource(dtype: DType, vec4: boolean): string {
  const el = vec4 ? "vec4<f32>" : "f32";
  const ty = vec4 ? "vec4<f32>" : wgslType(dtype);
  const load = (e: string) => (vec4 ? e : `f32(${e})`);
  return `${enables(dtype)}${uniformDecl(8)}
@group(0) @binding(1) var<storage, read> src: array<${ty}>;
${binding(2, "start", "u32")}
${binding(3, "order", "u32")}
@group(0) @binding(4) var<storage, read_write> out: array<${ty}>;
${flatId(LAYOUT_WG)}
  let A = U(1u); let inner = U(2u); let I = U(3u);
  if (gid >= U(0u) * A * inner) { return; }
  let i = gid % inner;
  let a = (gid / inner) % A;
  let o = gid / (inner * A);
  var s = ${el}(0.0); var comp = ${el}(0.0);
  if (U(5u) > 0u) { s = ${load("out[gid]")}; }
  let base = U(4u) + o * I * inner + i;
  let p1 = min(start[a + 1u], U(6u));
  // one = 1.0 from the uniforms: (t * one - s) - y stops the compiler folding (s + y) - s to y (Mesa's
  // NIR reassociates inexact float math, which leaves the compensation at 0)
  let one = UF(7u);
  for (var p = max(start[a], U(5u)); p < p1; p++) {
    let y = ${load("src[base + order[p] * inner]")} - comp;
    let t = s + y;
    comp = (t * one - s) - y;
    s = t;
  }
  out[gid] = ${vec4 ? "s" : `${wgslType(dtype)}(s)`};
}`;
}
