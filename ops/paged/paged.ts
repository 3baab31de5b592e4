/**
 * The paged K/V cache ops: pools of fixed-size blocks per layer, writes into slots, block copies and swaps,
 * and attention of queries against their sequences' blocks (decode and ragged chunked prefill).
 *
 * Layout: kPool and vPool (numBlocks, Hkv, blockSize, D), separate tensors; block tables i32 (S, maxBlocks)
 * (entries past a sequence's context are never read: -1 is the usual filler); context lengths i32 (S).
 * Position p of sequence s lives in block blockTables[s][floor(p / blockSize)] at offset p % blockSize;
 * its slot is block * blockSize + offset. See ops/README.md for why this layout suits the adapter.
 * @module
 */

import { noGrad } from "../../runtime/autograd.ts";
import type { DeviceName } from "../../runtime/device.ts";
import { type DType, isFloat, type TypedArray } from "../../runtime/dtype.ts";
import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { MAX_LOOP } from "../../runtime/webgpu.ts";
import { contiguous } from "../core/elementwise.ts";
import { empty, fromArray, sameDevice, Uniforms } from "../core/util.ts";
import { gpu, hasWebGPU } from "../../runtime/device.ts";
import { grid } from "../../runtime/webgpu.ts";
import {
  ATTN_FIELDS,
  attnBindings,
  type AttnConfig,
  attnKey,
  attnSource,
  blockCopySource,
  FLAT_WG,
  PAGED_DIAG,
  PAGED_KINDS,
  REDUCE_WG,
  reduceSource,
  writeKVSource,
} from "./paged_wgsl.ts";
import { full } from "../core/creation.ts";
import { copyBlocksRef, pagedAttentionRef, type PagedDims, pagedMessages, writeKVRef } from "./paged_ref.ts";

/** Options of {@link pagedAttention} and {@link pagedPrefill}. */
export interface PagedAttentionOptions {
  /** Score scale; default 1 / sqrt(D). */
  scale?: number;
  /** ALiBi slopes (H): bias -slope * (p - j) for the query at p and the key at j. */
  alibi?: readonly number[] | Float32Array | Float64Array;
  /** Left window: the query at p sees keys p - window .. p. */
  window?: number;
  /**
   * WebGPU shader version (checked on both backends): "v1" one workgroup per (query row, head) over the
   * whole context, "v2" partitions of `partitionSize` keys then a reduce (flash-decoding); "auto" picks.
   */
  version?: PagedVersion;
  /** Keys per v2 partition (default 512). */
  partitionSize?: number;
  /** Optional (numBlocks) i32 or u32 tensor, nonzero = allocated: an entry pointing at a 0 is an error. */
  inUse?: Tensor;
}

/** Shader versions of {@link pagedAttention} and {@link pagedPrefill}. */
export type PagedVersion = "auto" | "v1" | "v2";

const VERSIONS: readonly PagedVersion[] = ["auto", "v1", "v2"];

/** What {@link pagedAttention} and {@link pagedPrefill} return. */
export interface PagedAttentionResult {
  /** (rows, H, D) in q's dtype. */
  o: Tensor;
  /** (rows, H): the log-sum-exp of each row's scaled, biased scores (f32; f64 for f64 on cpu). */
  lse: Tensor;
  /** The shader version that ran ("reference" on cpu). */
  version: "v1" | "v2" | "reference";
}

/** Options of {@link pagedPools}. */
export interface PagedPoolOptions {
  /** Default: the default device. */
  device?: DeviceName;
  /** Float dtype (default f32). */
  dtype?: DType;
}

/**
 * A zero-filled key pool and value pool, each (numBlocks, Hkv, blockSize, D).
 *
 * @example
 * ```ts
 * import { pagedPools } from "seqlab";
 * const { k, v } = pagedPools(64, 2, 16, 32, { device: "cpu" });
 * console.log(k.shape, v.shape); // [64, 2, 16, 32] [64, 2, 16, 32]
 * ```
 */
export function pagedPools(
  numBlocks: number,
  Hkv: number,
  blockSize: number,
  D: number,
  opts: PagedPoolOptions = {},
): { k: Tensor; v: Tensor } {
  const dims = { numBlocks, Hkv, blockSize, D };
  for (const [name, x] of Object.entries(dims)) {
    if (!Number.isInteger(x) || x < 1) {
      throw new Error(`pagedPools: ${name} must be a positive integer, got ${x}`);
    }
  }
  const dtype = opts.dtype ?? "f32";
  if (!isFloat(dtype)) throw new Error(`pagedPools: dtype must be a float dtype, got ${dtype}`);
  const shape = [numBlocks, Hkv, blockSize, D];
  const k = full(shape, 0, { dtype, device: opts.device });
  try {
    return { k, v: full(shape, 0, { dtype, device: opts.device }) };
  } catch (e) {
    k.dispose();
    throw e;
  }
}

/** A pool's geometry, checked: (numBlocks, Hkv, blockSize, D), float, contiguous. */
function poolDims(op: string, kPool: Tensor, vPool: Tensor): Omit<PagedDims, "maxBlocks"> {
  if (kPool.rank !== 4) {
    throw new Error(`${op}: kPool must be (numBlocks, Hkv, blockSize, D), got ${fmt(kPool.shape)}`);
  }
  if (fmt(vPool.shape) !== fmt(kPool.shape) || vPool.dtype !== kPool.dtype) {
    throw new Error(`${op}: vPool ${vPool.describe()} must match kPool ${kPool.describe()}`);
  }
  if (!isFloat(kPool.dtype)) throw new Error(`${op}: the pools must be float, got ${kPool.describe()}`);
  for (const [name, t] of [["kPool", kPool], ["vPool", vPool]] as const) {
    if (!t.isContiguous) {
      throw new Error(
        `${op}: ${name} must be contiguous (pools are read and written in place), got ${t.describe()}`,
      );
    }
  }
  const [numBlocks, Hkv, blockSize, D] = kPool.shape;
  return { numBlocks, Hkv, blockSize, D };
}

/** Checks an index tensor: i32 (or u32 where allowed) of exactly `shape`. */
function checkIndex(op: string, name: string, t: Tensor, shape: number[], what: string, u32 = false): void {
  const okType = t.dtype === "i32" || (u32 && t.dtype === "u32");
  if (!okType || fmt(t.shape) !== fmt(shape)) {
    throw new Error(
      `${op}: ${name} must be ${u32 ? "i32 or u32" : "i32"} ${what} = ${fmt(shape)}, got ${t.describe()}`,
    );
  }
}

/** Everything an attention call needs, checked. */
interface Resolved extends PagedGeometry {
  device: DeviceName;
  version: "v1" | "v2";
  alibi: Float64Array | null;
  window: number | null;
}

function resolveAttention(
  op: string,
  q: Tensor,
  kPool: Tensor,
  vPool: Tensor,
  blockTables: Tensor,
  contextLens: Tensor,
  queryStarts: Tensor | null,
  o: PagedAttentionOptions,
): Resolved {
  const device = sameDevice(
    op,
    ...[q, kPool, vPool, blockTables, contextLens, queryStarts, o.inUse].filter((t): t is Tensor => !!t),
  );
  const pd = poolDims(op, kPool, vPool);
  const rows = queryStarts ? "N" : "S";
  if (q.rank !== 3) throw new Error(`${op}: q must be (${rows}, H, D), got ${fmt(q.shape)}`);
  if (q.dtype !== kPool.dtype) {
    throw new Error(`${op}: q and the pools must share one dtype, got q ${q.dtype} and pools ${kPool.dtype}`);
  }
  const [N, H, D] = q.shape;
  if (D !== pd.D) throw new Error(`${op}: q's head width D = ${D} differs from the pools' D = ${pd.D}`);
  if (H % pd.Hkv !== 0) {
    throw new Error(`${op}: H = ${H} query heads must be a multiple of the pools' Hkv = ${pd.Hkv} kv heads`);
  }
  if (blockTables.rank !== 2 || blockTables.dtype !== "i32") {
    throw new Error(`${op}: blockTables must be i32 (S, maxBlocks), got ${blockTables.describe()}`);
  }
  const [S, maxBlocks] = blockTables.shape;
  checkIndex(op, "contextLens", contextLens, [S], "(S) with S", false);
  if (queryStarts) checkIndex(op, "queryStarts", queryStarts, [S + 1], "(S + 1) with S + 1", false);
  else if (N !== S) {
    throw new Error(`${op}: q has ${N} rows but blockTables has S = ${S} sequences (one query per sequence)`);
  }
  if (o.inUse) checkIndex(op, "inUse", o.inUse, [pd.numBlocks], "(numBlocks) with numBlocks", true);
  const scale = o.scale ?? 1 / Math.sqrt(D);
  if (typeof scale !== "number" || !Number.isFinite(scale)) {
    throw new Error(`${op}: scale must be a finite number, got ${o.scale}`);
  }
  let alibi: Float64Array | null = null;
  if (o.alibi !== undefined) {
    alibi = Float64Array.from(o.alibi as ArrayLike<number>);
    if (alibi.length !== H || alibi.some((x) => !Number.isFinite(x))) {
      throw new Error(`${op}: alibi must be H = ${H} finite slopes, got ${o.alibi.length} values`);
    }
  }
  const window = o.window ?? null;
  if (window !== null && (!Number.isInteger(window) || window < 0)) {
    throw new Error(`${op}: window must be an integer >= 0, got ${o.window}`);
  }
  const version = o.version ?? "auto";
  if (!VERSIONS.includes(version)) {
    throw new Error(`${op}: version must be one of ${VERSIONS.join(", ")}, got ${JSON.stringify(version)}`);
  }
  const partitionSize = o.partitionSize ?? 512;
  if (!Number.isInteger(partitionSize) || partitionSize < 1) {
    throw new Error(`${op}: partitionSize must be a positive integer, got ${o.partitionSize}`);
  }
  const g: PagedGeometry = {
    ...pd,
    maxBlocks,
    S,
    N,
    H,
    scale,
    partitionSize,
    WG: decodeWorkgroup(D),
  };
  const cap = maxBlocks * pd.blockSize;
  const fits = attnV1Fits(g);
  if (version === "v1" && !fits) {
    throw new Error(
      `${op} v1: a context of up to ${cap} tokens (maxBlocks x blockSize) loops past MAX_LOOP = ${MAX_LOOP} ` +
        `per invocation; use v2`,
    );
  }
  // v1 fills the adapter once S x H workgroups cover its 16 lanes; v2 pays a second dispatch and a pass over
  // the partials, so it runs only where v1 cannot (see paged_wgsl.ts's header for the measurements)
  const chosen = version === "auto" ? (fits ? "v1" : "v2") : version;
  return { ...g, device, version: chosen, alibi, window };
}

/** A contiguous tensor's elements (cpu). */
function hostView(t: Tensor): TypedArray {
  return t.storage.data!.subarray(t.offset, t.offset + t.size);
}

function attend(
  op: "pagedAttention" | "pagedPrefill",
  q: Tensor,
  kPool: Tensor,
  vPool: Tensor,
  blockTables: Tensor,
  contextLens: Tensor,
  queryStarts: Tensor | null,
  opts: PagedAttentionOptions,
): PagedAttentionResult {
  const r = resolveAttention(op, q, kPool, vPool, blockTables, contextLens, queryStarts, opts);
  const lseType: DType = q.dtype === "f64" ? "f64" : "f32";
  if (r.device === "cpu") {
    return noGrad(() => {
      const owned = [q, blockTables, contextLens, queryStarts, opts.inUse].map((t) => t && contiguous(t));
      try {
        const [qc, tc, lc, sc, uc] = owned;
        const res = pagedAttentionRef(
          op,
          hostView(qc!),
          hostView(kPool),
          hostView(vPool),
          hostView(tc!),
          hostView(lc!),
          sc ? hostView(sc) : null,
          r.H,
          { ...r },
          { scale: r.scale, alibi: r.alibi, window: r.window, inUse: uc ? hostView(uc) : null },
        );
        const o = empty(op, [r.N, r.H, r.D], q.dtype, "cpu"), lse = empty(op, [r.N, r.H], lseType, "cpu");
        o.storage.data!.set(res.o);
        lse.storage.data!.set(res.lse);
        return { o, lse, version: "reference" as const };
      } finally {
        for (const t of owned) t?.dispose();
      }
    });
  }
  return noGrad(() =>
    runPagedAttention(op, q, kPool, vPool, blockTables, contextLens, queryStarts, opts.inUse ?? null, r)
  );
}

/**
 * Paged decode attention: one query per sequence against the blocks its table names. q (S, H, D); kPool
 * and vPool (numBlocks, Hkv, blockSize, D); blockTables i32 (S, maxBlocks); contextLens i32 (S). The query
 * of sequence s sits at position contextLens[s] - 1 and its own key is already written (by
 * {@link writeKV}); it sees keys p - window .. p (all with no window), kv head h / (H / Hkv) (GQA, MQA).
 * A context of 0 gives o = 0 and lse = -Infinity. A table entry that a query reads out of [0, numBlocks),
 * or at a block whose `inUse` is 0, and a context length outside [0, maxBlocks x blockSize] are errors
 * naming the op: at call time on cpu, at the next readback on webgpu (nothing else in the pool is read).
 * Inference only (nothing is recorded for autograd).
 *
 * @example
 * ```ts
 * import { pagedAttention, pagedPools, tensor, randn } from "seqlab";
 * const { k, v } = pagedPools(8, 2, 16, 32, { device: "cpu" });
 * const q = randn([2, 4, 32], { seed: 1, device: "cpu" });
 * const tables = tensor([[3, 5], [0, -1]], { dtype: "i32", device: "cpu" });
 * const lens = tensor([20, 7], { dtype: "i32", device: "cpu" });
 * const { o, lse } = pagedAttention(q, k, v, tables, lens);
 * console.log(o.shape, lse.shape); // [2, 4, 32] [2, 4]
 * ```
 */
export function pagedAttention(
  q: Tensor,
  kPool: Tensor,
  vPool: Tensor,
  blockTables: Tensor,
  contextLens: Tensor,
  opts: PagedAttentionOptions = {},
): PagedAttentionResult {
  return attend("pagedAttention", q, kPool, vPool, blockTables, contextLens, null, opts);
}

/**
 * Paged (ragged, chunked) prefill: rows queryStarts[s] .. queryStarts[s + 1] - 1 of q (N, H, D) are the
 * new queries of sequence s, at positions contextLens[s] - nq .. contextLens[s] - 1 (nq their count), their
 * keys already written by {@link writeKV}; each attends causally to its sequence's keys up to its own
 * position (and from p - window with a window). Decode is the case nq = 1. queryStarts i32 (S + 1) must
 * rise from 0 to N, and nq <= contextLens[s]. Errors as {@link pagedAttention}'s.
 *
 * @example
 * ```ts
 * import { pagedPrefill, pagedPools, tensor, randn } from "seqlab";
 * const { k, v } = pagedPools(4, 1, 8, 16, { device: "cpu" });
 * const q = randn([5, 2, 16], { seed: 1, device: "cpu" }); // 3 new rows of sequence 0, 2 of sequence 1
 * const i32 = (x: number[][] | number[]) => tensor(x, { dtype: "i32", device: "cpu" });
 * const { o } = pagedPrefill(q, k, v, i32([[0, 1], [2, -1]]), i32([10, 2]), i32([0, 3, 5]));
 * console.log(o.shape); // [5, 2, 16]
 * ```
 */
export function pagedPrefill(
  q: Tensor,
  kPool: Tensor,
  vPool: Tensor,
  blockTables: Tensor,
  contextLens: Tensor,
  queryStarts: Tensor,
  opts: PagedAttentionOptions = {},
): PagedAttentionResult {
  return attend("pagedPrefill", q, kPool, vPool, blockTables, contextLens, queryStarts, opts);
}

/** Options of {@link writeKV}. */
export interface WriteKVOptions {
  /** Optional (numBlocks) i32 or u32 tensor, nonzero = allocated: a slot in a block with 0 is an error. */
  inUse?: Tensor;
}

/**
 * Writes new keys and values into their slots of the pools, in place: k and v (N, Hkv, D), slots i32 (N);
 * row n goes to block floor(slots[n] / blockSize), offset slots[n] % blockSize. A negative slot is padding
 * (skipped). A slot at or past numBlocks x blockSize (or in a block whose `inUse` is 0) is an error naming
 * the op: at call time on cpu, at the next readback on webgpu (nothing is written out of the pool). Slots
 * should be distinct (two rows naming one slot: on webgpu either may land).
 *
 * @example
 * ```ts
 * import { pagedPools, tensor, writeKV } from "seqlab";
 * const { k, v } = pagedPools(2, 1, 4, 2, { device: "cpu" });
 * const x = tensor([[[1, 2]]], { device: "cpu" }); // (N = 1, Hkv = 1, D = 2)
 * writeKV(k, v, x, x, tensor([5], { dtype: "i32", device: "cpu" })); // block 1, offset 1
 * console.log(Array.from(await k.toArray()).slice(10, 12)); // [1, 2]
 * ```
 */
export function writeKV(
  kPool: Tensor,
  vPool: Tensor,
  k: Tensor,
  v: Tensor,
  slots: Tensor,
  opts: WriteKVOptions = {},
): void {
  const op = "writeKV";
  const device = sameDevice(op, ...[kPool, vPool, k, v, slots, opts.inUse].filter((t): t is Tensor => !!t));
  const pd = poolDims(op, kPool, vPool);
  const want = `(N, Hkv = ${pd.Hkv}, D = ${pd.D})`;
  if (k.rank !== 3 || k.shape[1] !== pd.Hkv || k.shape[2] !== pd.D) {
    throw new Error(`${op}: k must be ${want}, got ${fmt(k.shape)}`);
  }
  if (fmt(v.shape) !== fmt(k.shape)) throw new Error(`${op}: v ${fmt(v.shape)} must match k ${fmt(k.shape)}`);
  if (k.dtype !== kPool.dtype || v.dtype !== kPool.dtype) {
    throw new Error(
      `${op}: k, v and the pools must share one dtype, got k ${k.dtype}, v ${v.dtype}, pools ${kPool.dtype}`,
    );
  }
  const N = k.shape[0];
  checkIndex(op, "slots", slots, [N], "(N) with N", false);
  if (opts.inUse) checkIndex(op, "inUse", opts.inUse, [pd.numBlocks], "(numBlocks) with numBlocks", true);
  if (N === 0) return;
  noGrad(() => {
    const owned = [k, v, slots, opts.inUse].map((t) => t && contiguous(t));
    try {
      const [kc, vc, sc, uc] = owned;
      if (device === "cpu") {
        writeKVRef(
          op,
          kPool.storage.data!.subarray(kPool.offset),
          vPool.storage.data!.subarray(vPool.offset),
          hostView(kc!),
          hostView(vc!),
          hostView(sc!),
          { ...pd, maxBlocks: 0 },
          uc ? hostView(uc) : null,
        );
      } else runWriteKV(op, kPool, vPool, kc!, vc!, sc!, uc ?? null, pd);
    } finally {
      for (const t of owned) t?.dispose();
    }
  });
}

/** Checks block pairs [src, dst] against the pools' block counts; `inPlace` also forbids chains. */
function checkPairs(
  op: string,
  pairs: readonly (readonly [number, number])[],
  srcBlocks: number,
  dstBlocks: number,
  inPlace: boolean,
): void {
  if (!Array.isArray(pairs)) throw new Error(`${op}: pairs must be an array of [src, dst] block numbers`);
  const dsts = new Set<number>(), srcs = new Set<number>();
  for (const p of pairs) {
    if (!Array.isArray(p) || p.length !== 2) {
      throw new Error(`${op}: pairs must be an array of [src, dst] block numbers, got ${JSON.stringify(p)}`);
    }
    const [s, d] = p;
    for (const [x, n] of [[s, srcBlocks], [d, dstBlocks]]) {
      if (!Number.isInteger(x) || x < 0 || x >= n) throw new Error(pagedMessages.pairRange(op, x, n));
    }
    if (dsts.has(d)) throw new Error(`${op}: block ${d} is the destination of two pairs`);
    dsts.add(d);
    srcs.add(s);
  }
  if (inPlace) {
    for (const d of dsts) {
      if (srcs.has(d)) {
        throw new Error(`${op}: block ${d} is both a source and a destination (chained copies)`);
      }
    }
  }
}

/**
 * Copies whole blocks within the pools (copy-on-write): for each pair [src, dst], block dst of kPool and of
 * vPool becomes a copy of block src. Batched: one dispatch per pool on webgpu. A block number out of
 * range, a destination named twice, or a block that is both a source and a destination is an error at
 * call time (pairs are host numbers).
 *
 * @example
 * ```ts
 * import { copyBlocks, pagedPools } from "seqlab";
 * const { k, v } = pagedPools(4, 1, 2, 2, { device: "cpu" });
 * k.storage.data!.fill(1, 0, 4); // block 0
 * copyBlocks(k, v, [[0, 3]]);
 * console.log(Array.from(await k.toArray()).slice(12)); // [1, 1, 1, 1]
 * ```
 */
export function copyBlocks(
  kPool: Tensor,
  vPool: Tensor,
  pairs: readonly (readonly [number, number])[],
): void {
  const op = "copyBlocks";
  const device = sameDevice(op, kPool, vPool);
  const pd = poolDims(op, kPool, vPool);
  checkPairs(op, pairs, pd.numBlocks, pd.numBlocks, true);
  if (pairs.length === 0) return;
  const blockElems = pd.Hkv * pd.blockSize * pd.D;
  for (const pool of [kPool, vPool]) {
    if (device === "cpu") {
      const data = pool.storage.data!.subarray(pool.offset);
      copyBlocksRef(data, data, pairs, blockElems);
    } else runBlockCopy(op, pool, pool, pairs, blockElems);
  }
}

/**
 * Swaps blocks between pools on different devices (or the same): for each pair [src, dst], block dst of
 * `dst` becomes a copy of block src of `src`. Both pools must have the same block geometry (Hkv,
 * blockSize, D) and dtype; their block counts may differ (a host pool is often smaller). Returns a promise
 * that settles when `dst` holds the blocks: from webgpu to cpu that needs a readback (one submit and wait);
 * to webgpu the copy is recorded before the call returns (the promise settles at once). Bad pairs throw at
 * call time. Swapping out and back in is bit-exact.
 *
 * @example
 * ```ts
 * import { pagedPools, swapBlocks } from "seqlab";
 * const gpuPool = pagedPools(8, 1, 4, 4, { device: "cpu" }).k, host = pagedPools(2, 1, 4, 4, { device: "cpu" }).k;
 * await swapBlocks(gpuPool, host, [[5, 0], [6, 1]]);
 * console.log(host.shape); // [2, 1, 4, 4]
 * ```
 */
export function swapBlocks(
  src: Tensor,
  dst: Tensor,
  pairs: readonly (readonly [number, number])[],
): Promise<void> {
  const op = "swapBlocks";
  src.check(op);
  dst.check(op);
  poolDims(op, src, src);
  poolDims(op, dst, dst);
  if (fmt(src.shape.slice(1)) !== fmt(dst.shape.slice(1)) || src.dtype !== dst.dtype) {
    throw new Error(
      `${op}: the pools must share (Hkv, blockSize, D) and dtype, got src ${src.describe()} and dst ${dst.describe()}`,
    );
  }
  const same = src.storage === dst.storage;
  checkPairs(op, pairs, src.shape[0], dst.shape[0], same);
  const blockElems = src.shape[1] * src.shape[2] * src.shape[3];
  if (pairs.length === 0) return Promise.resolve();
  if (src.device === "cpu" && dst.device === "cpu") {
    copyBlocksRef(
      src.storage.data!.subarray(src.offset),
      dst.storage.data!.subarray(dst.offset),
      pairs,
      blockElems,
    );
    return Promise.resolve();
  }
  if (src.device === "webgpu" && dst.device === "webgpu") {
    runBlockCopy(op, src, dst, pairs, blockElems);
    return Promise.resolve();
  }
  if (src.device === "cpu") {
    // gather the host blocks into one upload, then scatter them into the device pool by a recorded copy
    const host = src.storage.data!.subarray(src.offset);
    const staged = new (host.constructor as { new (n: number): TypedArray })(pairs.length * blockElems);
    pairs.forEach(([s], i) =>
      staged.set(host.subarray(s * blockElems, (s + 1) * blockElems), i * blockElems)
    );
    const up = fromArray(staged, [pairs.length, ...src.shape.slice(1)], src.dtype, "webgpu");
    try {
      runBlockCopy(op, up, dst, pairs.map(([, d], i) => [i, d] as const), blockElems);
    } finally {
      up.dispose();
    }
    return Promise.resolve();
  }
  // webgpu -> cpu: gather the blocks into a staging tensor (recorded), read it back, place them
  const stage = empty(op, [pairs.length, ...src.shape.slice(1)], src.dtype, "webgpu");
  try {
    runBlockCopy(op, src, stage, pairs.map(([s], i) => [s, i] as const), blockElems);
  } catch (e) {
    stage.dispose();
    throw e;
  }
  return stage.toArray().then((data) => {
    const host = dst.storage.data!.subarray(dst.offset);
    pairs.forEach(([, d], i) =>
      host.set(data.subarray(i * blockElems, (i + 1) * blockElems), d * blockElems)
    );
  }).finally(() => stage.dispose());
}

// ---------------------------------------------------------------------------------------------------------
// WebGPU programs

/** The geometry of an attention call, checked. */
interface PagedGeometry extends PagedDims {
  S: number;
  N: number;
  H: number;
  scale: number;
  partitionSize: number;
  /** Lanes of a v1/v2 workgroup. */
  WG: number;
}

/**
 * Lanes per attention workgroup: 64, or 32 where 64 lanes' D-vectors would not fit the workgroup memory
 * (the merge keeps one per lane). Without an adapter (cpu only) the same rule at WebGPU's default 16 KiB.
 */
function decodeWorkgroup(D: number): number {
  const limit = hasWebGPU() ? gpu().limits.maxComputeWorkgroupStorageSize : 16384;
  return Math.ceil(D / 4) * 16 * 64 + 512 <= limit ? 64 : 32;
}

/** Loop iterations of one lane over `keys` keys (q load, K and V rows, the merge). */
function laneLoops(g: PagedGeometry, keys: number): number {
  const D4 = Math.ceil(g.D / 4);
  return 5 * D4 + Math.ceil(keys / g.WG) * (2 * D4 + 2) + 3 * g.WG + Math.ceil(g.S / g.WG) + 32;
}

/** Whether v1's loops (a lane's share of the whole table capacity) stay within MAX_LOOP. */
function attnV1Fits(g: PagedGeometry): boolean {
  return laneLoops(g, g.maxBlocks * g.blockSize) <= MAX_LOOP;
}

/** Registers the messages of `op`'s diagnostics (the same words as the cpu checks). */
function registerDiagnostics(op: "pagedAttention" | "pagedPrefill" | "writeKV"): void {
  const ctx = gpu();
  for (const kind of PAGED_KINDS) {
    const msg = pagedMessages[kind] as (op: string, v: number, l: number) => string;
    ctx.diagnostic(PAGED_DIAG(op, kind), (v, l) => msg(op, v, l));
  }
}

const bufOf = (t: Tensor) => t.storage.buffer!;

function runPagedAttention(
  op: "pagedAttention" | "pagedPrefill",
  q: Tensor,
  kPool: Tensor,
  vPool: Tensor,
  blockTables: Tensor,
  contextLens: Tensor,
  queryStarts: Tensor | null,
  inUse: Tensor | null,
  r: Resolved,
): PagedAttentionResult {
  const { N, H, D } = r;
  const o = empty(op, [N, H, D], q.dtype, "webgpu"), lse = empty(op, [N, H], "f32", "webgpu");
  if (N * H === 0 || D === 0) return { o, lse, version: r.version };
  const owned = [q, blockTables, contextLens, queryStarts, inUse].map((t) => t && contiguous(t));
  const temps: Tensor[] = [];
  try {
    const [qc, tc, lc, sc, uc] = owned;
    const ctx = gpu();
    registerDiagnostics(op);
    const D4 = Math.ceil(D / 4);
    const vec = D % 4 === 0 && kPool.offset % 4 === 0 && vPool.offset % 4 === 0;
    const cap = r.maxBlocks * r.blockSize;
    const part = r.version === "v2";
    const P = part ? r.partitionSize : Math.max(cap, 1);
    const nParts = Math.max(1, Math.ceil(cap / P));
    const cfg: AttnConfig = {
      dtype: q.dtype,
      D4,
      vec,
      WG: r.WG,
      alibi: r.alibi !== null,
      prefill: queryStarts !== null,
      inUse: inUse !== null,
      part,
      op,
    };
    const slopes = r.alibi ? fromArray(r.alibi, [H], "f32", "webgpu") : null;
    if (slopes) temps.push(slopes);
    const words = new Uniforms();
    const field: Record<string, number> = {
      N,
      H,
      G: H / r.Hkv,
      Hkv: r.Hkv,
      D,
      bs: r.blockSize,
      numBlocks: r.numBlocks,
      maxBlocks: r.maxBlocks,
      S: r.S,
      qOff: qc!.offset,
      kOff: vec ? kPool.offset / 4 : kPool.offset,
      vOff: vec ? vPool.offset / 4 : vPool.offset,
      P,
      nParts,
      NH: N * H,
      tabOff: tc!.offset,
      lensOff: lc!.offset,
      qsOff: sc?.offset ?? 0,
      useOff: uc?.offset ?? 0,
    };
    for (const f of ATTN_FIELDS) {
      if (f === "scale") words.f32(r.scale);
      else if (f === "window") words.i32(r.window ?? -1);
      else words.u32(field[f]);
    }
    let pml: Tensor | null = null, pa: Tensor | null = null;
    if (part) {
      pml = empty(op, [N * H * nParts, 2], "f32", "webgpu");
      pa = empty(op, [N * H * nParts, D4 * 4], "f32", "webgpu");
      temps.push(pml, pa);
    }
    const buffers: Record<string, Tensor | GPUBuffer | null> = {
      Q: qc,
      K: kPool,
      V: vPool,
      tab: tc,
      lens: lc,
      qs: sc,
      slopes,
      used: uc,
      O: o,
      L: lse,
      PML: pml,
      PA: pa,
      diag: ctx.diagnostics,
    };
    const names = attnBindings(cfg);
    ctx.run({
      name: op,
      key: attnKey(cfg),
      source: () => ({ code: attnSource(cfg), bindings: names }),
      bindings: names.map((n) => {
        const b = buffers[n]!;
        const buffer = b instanceof GPUBuffer ? b : bufOf(b as Tensor);
        return {
          buffer,
          access: ["O", "L", "PML", "PA", "diag"].includes(n) ? "read_write" : "read",
        } as const;
      }),
      uniforms: words.build(),
      workgroups: [nParts, Math.min(N * H, 65535), Math.ceil((N * H) / 65535)],
    });
    if (part) {
      ctx.run({
        name: op,
        key: `paged attn v2 reduce|${q.dtype}`,
        source: () => reduceSource(q.dtype),
        inputs: [bufOf(pml!), bufOf(pa!)],
        outputs: [bufOf(o), bufOf(lse)],
        uniforms: new Uniforms().u32(N * H, D, D4, nParts).build(),
        workgroups: grid(N * H * D4, REDUCE_WG),
      });
    }
    return { o, lse, version: r.version };
  } catch (e) {
    o.dispose();
    lse.dispose();
    throw e;
  } finally {
    for (const t of owned) t?.dispose();
    for (const t of temps) t.dispose();
  }
}

function runWriteKV(
  op: "writeKV",
  kPool: Tensor,
  vPool: Tensor,
  k: Tensor,
  v: Tensor,
  slots: Tensor,
  inUse: Tensor | null,
  pd: Omit<PagedDims, "maxBlocks">,
): void {
  const ctx = gpu();
  registerDiagnostics(op);
  const vec = pd.D % 4 === 0 && [kPool, vPool, k, v].every((t) => t.offset % 4 === 0);
  const w = vec ? 4 : 1;
  const N = k.shape[0], W = pd.D / w;
  ctx.run({
    name: op,
    key: `paged writeKV v1|${kPool.dtype}|${vec}|${inUse !== null}`,
    source: () => writeKVSource(kPool.dtype, vec, inUse !== null),
    inputs: [k, v, slots, ...(inUse ? [inUse] : [])].map(bufOf),
    outputs: [bufOf(kPool), bufOf(vPool), ctx.diagnostics],
    uniforms: new Uniforms().u32(
      N,
      pd.Hkv,
      W,
      pd.numBlocks,
      pd.blockSize,
      k.offset / w,
      v.offset / w,
      slots.offset,
      inUse?.offset ?? 0,
      kPool.offset / w,
      vPool.offset / w,
    ).build(),
    workgroups: grid(N * pd.Hkv * W, FLAT_WG),
  });
}

/** Copies blocks pairs[i][0] of `src` to pairs[i][1] of `dst` (checked pairs), one dispatch. */
function runBlockCopy(
  op: string,
  src: Tensor,
  dst: Tensor,
  pairs: readonly (readonly [number, number])[],
  blockElems: number,
): void {
  const inPlace = src.storage === dst.storage;
  const vec = blockElems % 4 === 0 && src.offset % 4 === 0 && dst.offset % 4 === 0;
  const w = vec ? 4 : 1, E = blockElems / w;
  const idx = fromArray(pairs.flat(), [pairs.length, 2], "i32", "webgpu");
  try {
    gpu().run({
      name: op,
      key: `paged block copy v1|${src.dtype}|${vec}|${inPlace}`,
      source: () => blockCopySource(src.dtype, vec, inPlace),
      inputs: inPlace ? [bufOf(idx)] : [bufOf(idx), bufOf(src)],
      outputs: [bufOf(dst)],
      uniforms: new Uniforms().u32(pairs.length, E, src.offset / w, dst.offset / w).build(),
      workgroups: grid(pairs.length * E, FLAT_WG),
    });
  } finally {
    idx.dispose();
  }
}
