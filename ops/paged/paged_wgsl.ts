/**
 * WGSL programs of the paged K/V cache.
 *
 * Designed for the software adapter (lavapipe: 2 CPU threads x 8 lanes): a storage-buffer load is a
 * per-lane loop costing the same for a vec4 as for a scalar, so rows are read as vec4s where D and the
 * offsets allow (one key row of D = 64 is 16 loads, not 64); every loop stops after 65535 iterations per
 * invocation (all loops together), so the host checks each version's loop count (MAX_LOOP) before it runs.
 *
 * Attention versions (numbers are never reused):
 * - attn v1: one workgroup per (query row, head) over the row's whole context: the keys p - window .. p
 *   split into one contiguous run per lane, walked block by block (one table read and one integer
 *   division per block rather than per key), each lane keeping an online softmax (max, sum, D-vector), merged in workgroup memory
 *   as ops/attention/decode.ts does. The default wherever its loop count fits.
 * - attn v2: flash-decoding (vLLM's PagedAttention V2): workgroup (partition k, row, head) runs v1's lane
 *   loop over the keys in [k P, (k + 1) P) and writes its partial (max, sum) and unnormalised D-vector;
 *   then reduce v1 (one invocation per (row, head, 4 columns)) rescales the partials to their common max
 *   and divides by the total sum. More workgroups per row, for long contexts and where v1's loop count
 *   would pass the limit.
 * "auto" is v1 wherever its loops fit (a lane's share of maxBlocks x blockSize keys within MAX_LOOP: about
 * 60K tokens at D 64), else v2. Measured with bench/paged.ts (H 8, Hkv 2, D 64, block size 16, device time,
 * on a shared, loaded lavapipe): v1 beat v2 at 1K and 4K, batch 1 and 8 (e.g. 4K batch 1: 7.2 vs 9.4 ms):
 * with H >= 2 workgroups per sequence the adapter's 2 threads are already busy, so v2's extra workgroups
 * buy no parallelism and its second pass and partial states are pure cost here. On a GPU with many cores
 * v2 would win at batch 1 and long contexts, as in vLLM.
 * Both serve decode (row s at position contextLens[s] - 1) and ragged prefill (row r of sequence s found
 * by a binary search over queryStarts), a compile-time variant.
 *
 * Bad input never reads outside a buffer: a block table entry out of [0, numBlocks) (or at a block whose
 * inUse is 0) masks the keys of that block, a context length outside [0, maxBlocks x blockSize] empties
 * the row, and each raises a diagnostic ({@link PAGED_DIAG}) that the next readback turns into an error
 * naming the op. Queries past a bad queryStarts clamp to a real sequence.
 *
 * Other programs:
 * - writeKV v1: one invocation per (row, kv head, 4 columns) storing k and v into the slot's row of
 *   each pool (scalars when D or an offset is not a multiple of 4); a slot out of range or in a free
 *   block is skipped and raises a diagnostic.
 * - block copy v1: one invocation per 4 elements of the copied blocks, the pairs in a small i32 buffer
 *   (checked on the host: pairs are host numbers); an in-place variant binds one pool read-write
 *   (copyBlocks), the other a source and a destination (swapBlocks' staging).
 * @module
 */

import { type DType, wgslType } from "../../runtime/dtype.ts";
import { flatId } from "../../runtime/webgpu.ts";
import { enables, uniformDecl } from "../core/util.ts";

/** The ops that raise diagnostics, in code order. */
export const PAGED_OPS = ["pagedAttention", "pagedPrefill", "writeKV"] as const;

/** Kinds of bad input a paged shader reports. */
export const PAGED_KINDS = [
  "tableRange",
  "freeBlock",
  "contextLen",
  "queryStarts",
  "queries",
  "slotRange",
  "freeSlot",
] as const;

/** The diagnostic code of a kind of bad input in an op: 120 + 8 x op + kind. */
export function PAGED_DIAG(op: typeof PAGED_OPS[number], kind: typeof PAGED_KINDS[number]): number {
  return 120 + 8 * PAGED_OPS.indexOf(op) + PAGED_KINDS.indexOf(kind);
}

/** Uniform words of the attention programs, in order. */
export const ATTN_FIELDS = [
  "N",
  "H",
  "G",
  "Hkv",
  "D",
  "bs",
  "numBlocks",
  "maxBlocks",
  "S",
  "scale", // f32
  "window", // i32, -1 = none
  "qOff",
  "kOff", // in elements (vec4s in the vec variant)
  "vOff",
  "P", // keys per partition (v2; v1: the table's capacity)
  "nParts",
  "NH",
  "tabOff",
  "lensOff",
  "qsOff",
  "useOff",
] as const;

/** Compile-time variant of an attention program (its pipeline key). */
export interface AttnConfig {
  dtype: DType;
  /** ceil(D / 4). */
  D4: number;
  /** K and V rows read as vec4s (D and the pool offsets multiples of 4). */
  vec: boolean;
  /** Lanes per workgroup. */
  WG: number;
  alibi: boolean;
  prefill: boolean;
  inUse: boolean;
  /** v2's partition pass (writes partial states) rather than v1 (writes O and L). */
  part: boolean;
  /** The op whose diagnostic codes it raises. */
  op: "pagedAttention" | "pagedPrefill";
}

/** Pipeline key of an attention variant. */
export function attnKey(c: AttnConfig): string {
  return `paged attn ${
    c.part ? "v2" : "v1"
  }|${c.dtype}|${c.D4}|${c.vec}|${c.WG}|${c.alibi}|${c.prefill}|${c.inUse}|${c.op}`;
}

const U = (name: typeof ATTN_FIELDS[number]) => `U(${ATTN_FIELDS.indexOf(name)}u)`;
const NEG = "-1.0e30";
const NEG_INF = "bitcast<f32>(0xff800000u)";

/** Stores a diagnostic (code, value, limit) into the shared buffer. */
const raise = (code: number, value: string, limit: string) =>
  `atomicStore(&diag[1], bitcast<u32>(${value})); atomicStore(&diag[2], ${limit}); atomicStore(&diag[0], ${code}u);`;

/** The binding names of an attention program, in order. */
export function attnBindings(c: AttnConfig): string[] {
  return [
    "Q",
    "K",
    "V",
    "tab",
    "lens",
    ...(c.prefill ? ["qs"] : []),
    ...(c.alibi ? ["slopes"] : []),
    ...(c.inUse ? ["used"] : []),
    ...(c.part ? ["PML", "PA"] : ["O", "L"]),
    "diag",
  ];
}

/**
 * attn v1 (part = false) or v2's partition pass (part = true). Workgroup (wid.x = partition, wid.y +
 * 65535 wid.z = row x H + head).
 */
export function attnSource(c: AttnConfig): string {
  const T = wgslType(c.dtype);
  const row = c.vec ? `vec4<${T}>` : T;
  const decl: Record<string, string> = {
    Q: `var<storage, read> Q: array<${T}>;`,
    K: `var<storage, read> K: array<${row}>;`,
    V: `var<storage, read> V: array<${row}>;`,
    tab: "var<storage, read> tab: array<i32>;",
    lens: "var<storage, read> lens: array<i32>;",
    qs: "var<storage, read> qs: array<i32>;",
    slopes: "var<storage, read> slopes: array<f32>;",
    used: "var<storage, read> used: array<u32>;",
    O: `var<storage, read_write> O: array<${T}>;`,
    L: "var<storage, read_write> L: array<f32>;",
    PML: "var<storage, read_write> PML: array<vec2<f32>>;",
    PA: "var<storage, read_write> PA: array<vec4<f32>>;",
    diag: "var<storage, read_write> diag: array<atomic<u32>, 4>;",
  };
  const names = attnBindings(c);
  const code = (k: Parameters<typeof PAGED_DIAG>[1]) => PAGED_DIAG(c.op, k);
  const D4 = c.D4, WG = c.WG;
  // a key or value row's 4 columns i * 4 .. i * 4 + 3 as f32 (masked past D in the scalar variant)
  const load = (arr: string, off: string) =>
    c.vec
      ? `vec4<f32>(${arr}[${off} + rb + i])`
      : `vec4<f32>(f32(${arr}[${off} + rb + min(i * 4u, D - 1u)]), f32(${arr}[${off} + rb + min(i * 4u + 1u, D - 1u)]), ` +
        `f32(${arr}[${off} + rb + min(i * 4u + 2u, D - 1u)]), f32(${arr}[${off} + rb + min(i * 4u + 3u, D - 1u)])) * mask4(i, D)`;
  const rowStride = c.vec ? `${D4}u` : "D";
  return `// paged attention ${c.part ? "v2 partition pass" : "v1"}
${enables(c.dtype)}${uniformDecl(ATTN_FIELDS.length)}
${names.map((n, i) => `@group(0) @binding(${i + 1}) ${decl[n]}`).join("\n")}
var<workgroup> wm: array<f32, ${WG}>;
var<workgroup> wl: array<f32, ${WG}>;
var<workgroup> wa: array<vec4<f32>, ${WG * D4}>;
fn mask4(i: u32, D: u32) -> vec4<f32> {
  return vec4<f32>(select(0.0, 1.0, i * 4u < D), select(0.0, 1.0, i * 4u + 1u < D),
                   select(0.0, 1.0, i * 4u + 2u < D), select(0.0, 1.0, i * 4u + 3u < D));
}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let lid = lid3.x;
  let H = ${U("H")}; let D = ${U("D")}; let bs = ${U("bs")}; let Hkv = ${U("Hkv")};
  let NH = ${U("NH")}; let numBlocks = ${U("numBlocks")}; let maxBlocks = ${U("maxBlocks")};
  let S = ${U("S")}; let N = ${U("N")}; let win = bitcast<i32>(${U("window")});
  let kOff = ${U("kOff")}; let vOff = ${U("vOff")}; let tabOff = ${U("tabOff")};
  let cap = i32(maxBlocks * bs);
  let rh = wid.y + wid.z * 65535u;
  let rhc = min(rh, NH - 1u);
  let r = rhc / H; let h = rhc % H; let hk = h / ${U("G")};
${
    c.prefill
      ? `  // the checks of queryStarts, shared by the lanes of the first workgroup
  if (rh == 0u && wid.x == 0u) {
    let qsOff = ${U("qsOff")};
    if (lid == 0u && qs[qsOff] != 0) { ${raise(code("queryStarts"), "qs[qsOff]", "N")} }
    if (lid == 0u && qs[qsOff + S] != i32(N)) { ${raise(code("queryStarts"), "qs[qsOff + S]", "N")} }
    for (var t = lid; t < S; t += ${WG}u) {
      let a = qs[qsOff + t]; let b = qs[qsOff + t + 1u]; let cl = lens[${U("lensOff")} + t];
      if (b < a || b > i32(N)) { ${raise(code("queryStarts"), "b", "N")} }
      else if (b - a > cl && cl >= 0 && cl <= cap) { ${raise(code("queries"), "b - a", "u32(cl)")} }
    }
  }
  // the row's sequence: the last s with qs[s] <= r (a binary search; clamped to [0, S - 1])
  var lo_s = 0u; var hi_s = S - 1u;
  for (var it = 0u; it < 32u && lo_s < hi_s; it++) {
    let mid = (lo_s + hi_s + 1u) / 2u;
    if (qs[${U("qsOff")} + mid] <= i32(r)) { lo_s = mid; } else { hi_s = mid - 1u; }
  }
  let s = lo_s;
  let ctx0 = lens[${U("lensOff")} + s];
  let nq = qs[${U("qsOff")} + s + 1u] - qs[${U("qsOff")} + s];
  let p = ctx0 - nq + (i32(r) - qs[${U("qsOff")} + s]);`
      : `  let s = r;
  let ctx0 = lens[${U("lensOff")} + s];
  let p = ctx0 - 1;`
  }
  var ctxOk = ctx0 >= 0 && ctx0 <= cap;
  if (!ctxOk && h == 0u && lid == 0u && wid.x == 0u) { ${raise(code("contextLen"), "ctx0", "u32(cap)")} }
  // the keys this workgroup visits: [k0, k1) of the row's [lo, p]; one contiguous run per lane
  var lo = 0;
  if (win >= 0) { lo = max(0, p - win); }
  var k0 = lo; var k1 = p + 1;
  if (!ctxOk || p >= ctx0) { k1 = k0; }
${c.part ? `  k0 = max(k0, i32(wid.x * ${U("P")})); k1 = min(k1, i32((wid.x + 1u) * ${U("P")}));` : ""}
  let n = max(k1 - k0, 0);
  let per = (n + ${WG - 1}) / ${WG};
  let j0 = k0 + i32(lid) * per;
  let j1 = min(j0 + per, k1);
  var qa: array<vec4<f32>, ${D4}>;
  var acc: array<vec4<f32>, ${D4}>;
  let qb = ${U("qOff")} + rhc * D;
  let sc = bitcast<f32>(${U("scale")});
  for (var i = 0u; i < ${D4}u; i++) {
    var t = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) { if (i * 4u + e < D) { t[e] = f32(Q[qb + i * 4u + e]); } }
    qa[i] = t * sc;
    acc[i] = vec4<f32>(0.0);
  }
  ${c.alibi ? "let slope = slopes[h];" : ""}
  let tb = tabOff + s * maxBlocks;
  var m = ${NEG}; var l = 0.0;
  // the lane's run [j0, j1), block by block: one table read (and one division) per block, not per key
  var j = j0;
  loop {
    if (j >= j1) { break; }
    let bi = u32(j) / bs;
    let jEnd = min(j1, i32((bi + 1u) * bs));
    let b = tab[tb + bi];
    var ok = b >= 0 && u32(b) < numBlocks;
    if (!ok) { ${raise(code("tableRange"), "b", "numBlocks")} }
${
    c.inUse
      ? `    else if (used[${U("useOff")} + u32(b)] == 0u) { ok = false; ${
        raise(code("freeBlock"), "b", "numBlocks")
      } }`
      : ""
  }
    if (ok) {
      var rb = ((u32(b) * Hkv + hk) * bs + u32(j) - bi * bs) * ${rowStride};
      for (var jj = j; jj < jEnd; jj++) {
        var sj = 0.0;
        for (var i = 0u; i < ${D4}u; i++) { sj += dot(qa[i], ${load("K", "kOff")}); }
        ${c.alibi ? "sj -= slope * f32(p - jj);" : ""}
        let mn = max(m, sj); let cr = exp(m - mn); let pj = exp(sj - mn);
        l = l * cr + pj; m = mn;
        for (var i = 0u; i < ${D4}u; i++) { acc[i] = acc[i] * cr + pj * ${load("V", "vOff")}; }
        rb += ${rowStride};
      }
    }
    j = jEnd;
  }
  wm[lid] = m; wl[lid] = l;
  for (var i = 0u; i < ${D4}u; i++) { wa[lid * ${D4}u + i] = acc[i]; }
  workgroupBarrier();
  if (rh >= NH) { return; }
  var M = ${NEG};
  for (var w = 0u; w < ${WG}u; w++) { if (wl[w] > 0.0) { M = max(M, wm[w]); } }
  var Z = 0.0;
  for (var w = 0u; w < ${WG}u; w++) { if (wl[w] > 0.0) { Z += exp(wm[w] - M) * wl[w]; } }
${
    c.part
      ? `  let pi = rh * ${U("nParts")} + wid.x;
  for (var t = lid; t < ${D4}u; t += ${WG}u) {
    var a = vec4<f32>(0.0);
    for (var w = 0u; w < ${WG}u; w++) { if (wl[w] > 0.0) { a += exp(wm[w] - M) * wa[w * ${D4}u + t]; } }
    PA[pi * ${D4}u + t] = a;
  }
  if (lid == 0u) { PML[pi] = vec2<f32>(M, Z); }`
      : `  let inv = select(0.0, 1.0 / Z, Z > 0.0);
  for (var t = lid; t < ${D4}u; t += ${WG}u) {
    var a = vec4<f32>(0.0);
    for (var w = 0u; w < ${WG}u; w++) { if (wl[w] > 0.0) { a += exp(wm[w] - M) * wa[w * ${D4}u + t]; } }
    a *= inv;
    for (var e = 0u; e < 4u; e++) { if (t * 4u + e < D) { O[rh * D + t * 4u + e] = ${T}(a[e]); } }
  }
  if (lid == 0u) { L[rh] = select(${NEG_INF}, M + log(Z), Z > 0.0); }`
  }
}`;
}

/** Uniforms of the reduce: [NH, D, D4, nParts]. */
export const REDUCE_WG = 64;

/**
 * reduce v1 (v2's second pass): one invocation per (row x head, 4 columns) merging the nParts partial
 * states: O = sum_k exp(m_k - M) a_k / sum_k exp(m_k - M) l_k, L = M + log(Z). Bindings: PML, PA, O, L.
 */
export function reduceSource(dtype: DType): string {
  const T = wgslType(dtype);
  return `// paged attention v2 reduce
${enables(dtype)}${uniformDecl(4)}
@group(0) @binding(1) var<storage, read> PML: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> PA: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> O: array<${T}>;
@group(0) @binding(4) var<storage, read_write> L: array<f32>;
${flatId(REDUCE_WG)}
  let NH = U(0u); let D = U(1u); let D4 = U(2u); let nP = U(3u);
  if (gid >= NH * D4) { return; }
  let rh = gid / D4; let t = gid % D4;
  var M = ${NEG};
  for (var k = 0u; k < nP; k++) { let ml = PML[rh * nP + k]; if (ml.y > 0.0) { M = max(M, ml.x); } }
  var Z = 0.0; var a = vec4<f32>(0.0);
  for (var k = 0u; k < nP; k++) {
    let ml = PML[rh * nP + k];
    if (ml.y > 0.0) {
      let w = exp(ml.x - M);
      Z += w * ml.y;
      a += w * PA[(rh * nP + k) * D4 + t];
    }
  }
  a *= select(0.0, 1.0 / Z, Z > 0.0);
  for (var e = 0u; e < 4u; e++) { if (t * 4u + e < D) { O[rh * D + t * 4u + e] = ${T}(a[e]); } }
  if (t == 0u) { L[rh] = select(${NEG_INF}, M + log(Z), Z > 0.0); }
}`;
}

/** Workgroup size of writeKV and the block copy. */
export const FLAT_WG = 64;

/**
 * writeKV v1. Uniforms: [N, Hkv, W (D in units of `vec`), numBlocks, bs, kOff, vOff, slotOff, useOff, kPoolOff,
 * vPoolOff] (offsets in units too). Bindings: k, v, slots, [used], kPool, vPool, diag.
 */
export function writeKVSource(dtype: DType, vec: boolean, inUse: boolean): string {
  const T = wgslType(dtype);
  const el = vec ? `vec4<${T}>` : T;
  const code = (k: Parameters<typeof PAGED_DIAG>[1]) => PAGED_DIAG("writeKV", k);
  let b = 1;
  const bind = (decl: string) => `@group(0) @binding(${b++}) ${decl}`;
  return `// paged writeKV v1
${enables(dtype)}${uniformDecl(11)}
${bind(`var<storage, read> k: array<${el}>;`)}
${bind(`var<storage, read> v: array<${el}>;`)}
${bind("var<storage, read> slots: array<i32>;")}
${inUse ? bind("var<storage, read> used: array<u32>;") : ""}
${bind(`var<storage, read_write> kPool: array<${el}>;`)}
${bind(`var<storage, read_write> vPool: array<${el}>;`)}
${bind("var<storage, read_write> diag: array<atomic<u32>, 4>;")}
${flatId(FLAT_WG)}
  let N = U(0u); let Hkv = U(1u); let W = U(2u); let numBlocks = U(3u); let bs = U(4u);
  if (gid >= N * Hkv * W) { return; }
  let i = gid % W; let h = (gid / W) % Hkv; let n = gid / (W * Hkv);
  let sl = slots[U(7u) + n];
  if (sl < 0) { return; }
  if (u32(sl) >= numBlocks * bs) {
    if (i == 0u && h == 0u) { ${raise(code("slotRange"), "sl", "numBlocks * bs")} }
    return;
  }
  let blk = u32(sl) / bs;
${
    inUse
      ? `  if (used[U(8u) + blk] == 0u) { if (i == 0u && h == 0u) { ${
        raise(code("freeSlot"), "sl", "bs")
      } } return; }`
      : ""
  }
  let dst = ((blk * Hkv + h) * bs + u32(sl) % bs) * W + i;
  let src = (n * Hkv + h) * W + i;
  kPool[U(9u) + dst] = k[U(5u) + src];
  vPool[U(10u) + dst] = v[U(6u) + src];
}`;
}

/**
 * block copy v1. Uniforms: [P pairs, E elements per block (in units of `vec`), srcOff, dstOff]. Bindings:
 * pairs (i32, [src, dst] per pair), then the pool read-write (inPlace) or src and dst.
 */
export function blockCopySource(dtype: DType, vec: boolean, inPlace: boolean): string {
  const T = wgslType(dtype);
  const el = vec ? `vec4<${T}>` : T;
  return `// paged block copy v1
${enables(dtype)}${uniformDecl(4)}
@group(0) @binding(1) var<storage, read> pairs: array<i32>;
${
    inPlace
      ? `@group(0) @binding(2) var<storage, read_write> dst: array<${el}>;`
      : `@group(0) @binding(2) var<storage, read> src: array<${el}>;
@group(0) @binding(3) var<storage, read_write> dst: array<${el}>;`
  }
${flatId(FLAT_WG)}
  let E = U(1u);
  if (gid >= U(0u) * E) { return; }
  let pi = gid / E; let i = gid % E;
  let a = u32(pairs[2u * pi]); let b = u32(pairs[2u * pi + 1u]);
  dst[U(3u) + b * E + i] = ${inPlace ? "dst" : "src"}[U(2u) + a * E + i];
}`;
}
