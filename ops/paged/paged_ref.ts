/**
 * Float64 references of the paged K/V cache ops, on flat arrays. Their doc comments are the shape spec.
 *
 * Layout: a pool (numBlocks, Hkv, blockSize, D) per K and per V, row-major; block tables (S, maxBlocks)
 * and context lengths (S). A token at position p of sequence s lives in block
 * `tables[s * maxBlocks + floor(p / blockSize)]` at offset `p % blockSize`; its slot is
 * `block * blockSize + offset`, and its key row for kv head h starts at `((block * Hkv + h) * blockSize +
 * offset) * D`.
 *
 * The references check every index they follow and throw the same messages ({@link pagedMessages}) as the
 * WebGPU shaders raise through the diagnostics channel.
 * @module
 */

/** The error messages shared by the cpu checks and the WebGPU diagnostics (same words on both backends). */
export const pagedMessages = {
  tableRange: (op: string, v: number, numBlocks: number): string =>
    `${op}: block table entry ${v} is out of range for a pool of ${numBlocks} blocks`,
  freeBlock: (op: string, v: number): string =>
    `${op}: block table entry ${v} points at a free block (inUse[${v}] is 0)`,
  contextLen: (op: string, v: number, cap: number): string =>
    `${op}: context length ${v} is outside [0, ${cap}] (the block table holds maxBlocks x blockSize = ${cap} tokens)`,
  queryStarts: (op: string, v: number, N: number): string =>
    `${op}: queryStarts must rise from 0 to N = ${N} without decreasing, got an entry ${v}`,
  queries: (op: string, nq: number, ctx: number): string =>
    `${op}: a sequence has ${nq} new queries but a context length of ${ctx} (its queries are its last tokens)`,
  slotRange: (op: string, v: number, slots: number): string =>
    `${op}: slot ${v} is out of range for a pool of ${slots} slots (numBlocks x blockSize)`,
  freeSlot: (op: string, v: number, blockSize: number): string =>
    `${op}: slot ${v} lies in a free block (inUse[floor(${v} / ${blockSize})] is 0)`,
  pairRange: (op: string, v: number, numBlocks: number): string =>
    `${op}: block ${v} is out of range for a pool of ${numBlocks} blocks`,
};

/** The geometry of a pool and its block table. */
export interface PagedDims {
  /** KV heads. */
  Hkv: number;
  /** Head width. */
  D: number;
  blockSize: number;
  numBlocks: number;
  /** Columns of the block table. */
  maxBlocks: number;
}

/** Attention options of the references (already validated). */
export interface PagedRefOptions {
  /** Score scale (the op's default is 1 / sqrt(D)). */
  scale: number;
  /** ALiBi slopes (H): the bias -slope * (p - j) for the query at p and the key at j. */
  alibi?: ArrayLike<number> | null;
  /** The query at p sees keys p - window .. p. */
  window?: number | null;
  /** Per block, nonzero when allocated: a table entry pointing at a block with 0 is an error. */
  inUse?: ArrayLike<number> | null;
}

/**
 * Checks the context lengths (S) against the table's capacity, and (prefill) queryStarts (S + 1) against
 * the N query rows and the lengths. Throws {@link pagedMessages} in the order the scan finds them.
 */
export function checkContexts(
  op: string,
  contextLens: ArrayLike<number>,
  cap: number,
  queryStarts: ArrayLike<number> | null,
  N: number,
): void {
  for (let s = 0; s < contextLens.length; s++) {
    const c = contextLens[s];
    if (c < 0 || c > cap) throw new Error(pagedMessages.contextLen(op, c, cap));
  }
  if (!queryStarts) return;
  const S = contextLens.length;
  if (queryStarts[0] !== 0) throw new Error(pagedMessages.queryStarts(op, queryStarts[0], N));
  for (let s = 0; s < S; s++) {
    const a = queryStarts[s], b = queryStarts[s + 1];
    if (b < a || b > N) throw new Error(pagedMessages.queryStarts(op, b, N));
    if (b - a > contextLens[s]) throw new Error(pagedMessages.queries(op, b - a, contextLens[s]));
  }
  if (queryStarts[S] !== N) throw new Error(pagedMessages.queryStarts(op, queryStarts[S], N));
}

/** The block holding position `p` of sequence `s`, checked against the pool and `inUse`. */
function blockOf(
  op: string,
  tables: ArrayLike<number>,
  s: number,
  p: number,
  d: PagedDims,
  inUse: ArrayLike<number> | null | undefined,
): number {
  const b = tables[s * d.maxBlocks + Math.floor(p / d.blockSize)];
  if (b < 0 || b >= d.numBlocks) throw new Error(pagedMessages.tableRange(op, b, d.numBlocks));
  if (inUse && inUse[b] === 0) throw new Error(pagedMessages.freeBlock(op, b));
  return b;
}

/**
 * The first key position the query at `p` sees: p - window with a window, else 0.
 */
export function firstKey(p: number, window: number | null | undefined): number {
  return window === null || window === undefined ? 0 : Math.max(0, p - window);
}

/**
 * Paged attention over query rows (float64): q (N, H, D) contiguous, kPool and vPool (numBlocks, Hkv,
 * blockSize, D), tables (S, maxBlocks), contextLens (S), and queryStarts (S + 1) for prefill or null for
 * decode (N = S, the row of sequence s at position contextLens[s] - 1). With queryStarts, rows
 * queryStarts[s] .. queryStarts[s + 1] - 1 are the last nq positions of sequence s (contextLens[s] - nq ..
 * contextLens[s] - 1). The row at p attends to keys firstKey(p) .. p of its sequence (causal), GQA head
 * h / (H / Hkv). Returns o (N, H, D) and lse (N, H): log sum exp of the biased, scaled scores; a row with
 * no keys (context 0 in decode) gets o = 0 and lse = -Infinity. Checks everything it reads: the lengths
 * and queryStarts (see {@link checkContexts}) before any work, then each block a row reads.
 *
 * @example
 * ```ts
 * import { pagedAttentionRef } from "./paged_ref.ts";
 * // one sequence of 2 tokens in block 1 of a 2-block pool, H = Hkv = 1, D = 1, block size 2
 * const k = [0, 0, 1, 2], v = [0, 0, 10, 20];
 * const d = { Hkv: 1, D: 1, blockSize: 2, numBlocks: 2, maxBlocks: 1 };
 * const { o } = pagedAttentionRef("demo", [0], k, v, [1], [2], null, 1, d, { scale: 1 });
 * console.log(o[0]); // 15 (equal weights: q = 0)
 * ```
 */
export function pagedAttentionRef(
  op: string,
  q: ArrayLike<number>,
  kPool: ArrayLike<number>,
  vPool: ArrayLike<number>,
  tables: ArrayLike<number>,
  contextLens: ArrayLike<number>,
  queryStarts: ArrayLike<number> | null,
  H: number,
  d: PagedDims,
  opts: PagedRefOptions,
): { o: Float64Array; lse: Float64Array } {
  const S = contextLens.length, { D, Hkv, blockSize: bs } = d;
  const N = queryStarts ? q.length / (H * D) : S;
  checkContexts(op, contextLens, d.maxBlocks * bs, queryStarts, N);
  const G = H / Hkv;
  // rows: (sequence, position); blocks of every row are checked before any arithmetic
  const rowSeq = new Int32Array(N), rowPos = new Int32Array(N);
  for (let s = 0; s < S; s++) {
    const a = queryStarts ? queryStarts[s] : s, b = queryStarts ? queryStarts[s + 1] : s + 1;
    for (let r = a; r < b; r++) {
      rowSeq[r] = s;
      rowPos[r] = contextLens[s] - (b - r);
    }
  }
  const blocks: Int32Array[] = [];
  for (let r = 0; r < N; r++) {
    const p = rowPos[r], lo = firstKey(p, opts.window);
    const row = new Int32Array(Math.max(0, p + 1 - lo));
    for (let j = lo, b = -1; j <= p; j++) {
      if (b < 0 || j % bs === 0) b = blockOf(op, tables, rowSeq[r], j, d, opts.inUse);
      row[j - lo] = b;
    }
    blocks.push(row);
  }
  const o = new Float64Array(N * H * D), lse = new Float64Array(N * H);
  for (let r = 0; r < N; r++) {
    const p = rowPos[r], lo = firstKey(p, opts.window), n = p + 1 - lo;
    for (let h = 0; h < H; h++) {
      const hk = Math.floor(h / G), qb = (r * H + h) * D, slope = opts.alibi ? opts.alibi[h] : 0;
      const scores = new Float64Array(Math.max(n, 0));
      let m = -Infinity;
      for (let t = 0; t < n; t++) {
        const j = lo + t, kb = ((blocks[r][t] * Hkv + hk) * bs + (j % bs)) * D;
        let dot = 0;
        for (let i = 0; i < D; i++) dot += q[qb + i] * kPool[kb + i];
        scores[t] = dot * opts.scale - slope * (p - j);
        m = Math.max(m, scores[t]);
      }
      let z = 0;
      for (let t = 0; t < n; t++) z += Math.exp(scores[t] - m);
      lse[r * H + h] = n > 0 ? m + Math.log(z) : -Infinity;
      for (let t = 0; t < n; t++) {
        const j = lo + t,
          vb = ((blocks[r][t] * Hkv + hk) * bs + (j % bs)) * D,
          w = Math.exp(scores[t] - m) / z;
        for (let i = 0; i < D; i++) o[qb + i] += w * vPool[vb + i];
      }
    }
  }
  return { o, lse };
}

/**
 * Writes keys and values into their slots: k and v (N, Hkv, D) contiguous, slots (N); row n goes to
 * block floor(slots[n] / blockSize), offset slots[n] % blockSize, of kPool and vPool (numBlocks, Hkv,
 * blockSize, D), in place. A negative slot is padding (skipped). Every slot is checked before anything is
 * written. Later rows win when two rows name one slot.
 *
 * @example
 * ```ts
 * import { writeKVRef } from "./paged_ref.ts";
 * const kPool = new Float64Array(4), vPool = new Float64Array(4);
 * const d = { Hkv: 1, D: 1, blockSize: 2, numBlocks: 2, maxBlocks: 1 };
 * writeKVRef("demo", kPool, vPool, [7, 8], [9, 9], [3, -1], d);
 * console.log(kPool); // Float64Array(4) [0, 0, 0, 7]
 * ```
 */
export function writeKVRef(
  op: string,
  kPool: { [i: number]: number },
  vPool: { [i: number]: number },
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  slots: ArrayLike<number>,
  d: PagedDims,
  inUse?: ArrayLike<number> | null,
): void {
  const { Hkv, D, blockSize: bs, numBlocks } = d;
  for (let n = 0; n < slots.length; n++) {
    const sl = slots[n];
    if (sl < 0) continue;
    if (sl >= numBlocks * bs) throw new Error(pagedMessages.slotRange(op, sl, numBlocks * bs));
    if (inUse && inUse[Math.floor(sl / bs)] === 0) throw new Error(pagedMessages.freeSlot(op, sl, bs));
  }
  for (let n = 0; n < slots.length; n++) {
    const sl = slots[n];
    if (sl < 0) continue;
    const b = Math.floor(sl / bs), off = sl % bs;
    for (let h = 0; h < Hkv; h++) {
      const dst = ((b * Hkv + h) * bs + off) * D, src = (n * Hkv + h) * D;
      for (let i = 0; i < D; i++) {
        kPool[dst + i] = k[src + i];
        vPool[dst + i] = v[src + i];
      }
    }
  }
}

/**
 * Copies whole blocks: for each pair [src, dst], block dst of `dstPool` becomes block src of `srcPool`
 * (pools of `blockElems` = Hkv x blockSize x D elements per block; they may be the same array, then the
 * pairs must not chain: no block is both a source and a destination).
 *
 * @example
 * ```ts
 * import { copyBlocksRef } from "./paged_ref.ts";
 * const pool = new Float64Array([1, 2, 0, 0]);
 * copyBlocksRef(pool, pool, [[0, 1]], 2);
 * console.log(pool); // Float64Array(4) [1, 2, 1, 2]
 * ```
 */
export function copyBlocksRef(
  srcPool: ArrayLike<number>,
  dstPool: { [i: number]: number },
  pairs: readonly (readonly [number, number])[],
  blockElems: number,
): void {
  for (const [s, d] of pairs) {
    for (let i = 0; i < blockElems; i++) dstPool[d * blockElems + i] = srcPool[s * blockElems + i];
  }
}
