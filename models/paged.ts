/**
 * What a model offers the serving engine (`serve/engine.ts`): a paged K/V cache (per attention layer a pool
 * of fixed-size blocks, see `ops/paged/`) and one call that runs a ragged batch of new tokens from many
 * sequences (prompt chunks and single decode tokens together) against it.
 * @module
 */

import type { Tensor } from "../runtime/tensor.ts";

/**
 * One iteration's work for a paged model: the new tokens of S sequences, flattened sequence after
 * sequence (N tokens in all). Sequence s owns rows queryStarts[s] .. queryStarts[s + 1]; after this call
 * its context holds contextLens[s] tokens, the new ones last, so its first new token sits at position
 * contextLens[s] - (queryStarts[s + 1] - queryStarts[s]).
 */
export interface PagedBatch {
  /** New token ids (N). */
  tokens: Int32Array;
  /** Position of each new token in its sequence (N). */
  positions: Int32Array;
  /** Cache slot (block * blockSize + offset) of each new token's key and value (N). */
  slots: Int32Array;
  /** Row ranges of the sequences (S + 1), starting at 0 and ending at N. */
  queryStarts: Int32Array;
  /** Context length of each sequence after this call (S). */
  contextLens: Int32Array;
  /** Block tables, row-major (S, maxBlocks); entries past a context are ignored (-1 by convention). */
  blockTables: Int32Array;
  /** Columns of `blockTables`. */
  maxBlocks: number;
}

/** A {@link PagedBatch}'s index arrays as i32 tensors on the model's device (what each layer reads). */
export interface PagedTensors {
  /** (N) cache slots of the new tokens. */
  slots: Tensor;
  /** (S, maxBlocks) block tables. */
  blockTables: Tensor;
  /** (S) context lengths after the call. */
  contextLens: Tensor;
  /** (S + 1) row offsets. */
  queryStarts: Tensor;
  /** Every sequence has exactly one new token (decode: `pagedAttention` instead of `pagedPrefill`). */
  decode: boolean;
}

/** The geometry of a paged cache. */
export interface PagedCacheConfig {
  /** Blocks in each layer's pool. */
  numBlocks: number;
  /** Tokens per block (8, 16, 32, 64 or 128; default 16). */
  blockSize?: number;
}

/**
 * A model's paged K/V cache: per attention layer a key pool and a value pool, each (numBlocks, Hkv,
 * blockSize, Dh). The engine's allocator decides which blocks a sequence owns; the model only reads and
 * writes the slots a {@link PagedBatch} names. Free it with `dispose()`.
 */
export class PagedKVCache {
  /** Creates a cache over pools (use the model's `initPagedCache`). */
  constructor(
    /** Key pools per attention layer. */
    readonly k: Tensor[],
    /** Value pools per attention layer. */
    readonly v: Tensor[],
    /** Blocks per pool. */
    readonly numBlocks: number,
    /** Tokens per block. */
    readonly blockSize: number,
  ) {}
  /** Bytes of one block across every layer's K and V pool (what a block of tokens costs). */
  get bytesPerBlock(): number {
    if (!this.k.length) return 0;
    const per = this.k[0].size / this.numBlocks * (this.k[0].dtype === "f16" ? 2 : 4);
    return 2 * per * this.k.length;
  }
  /** Frees the pools. */
  dispose(): void {
    for (const t of [...this.k, ...this.v]) t.dispose();
  }
}

/** A model the serving engine can drive. */
export interface PagedModel {
  /** Vocabulary size (the logits' width). */
  readonly vocabSize: number;
  /** A paged cache for this model on its device. */
  initPagedCache(cfg: PagedCacheConfig): PagedKVCache;
  /**
   * Runs one batch: writes the new tokens' keys and values into their slots and returns the logits of
   * each sequence's last new token, (S, V) (with `allRows`, of every new token, (N, V)).
   */
  forwardPaged(batch: PagedBatch, cache: PagedKVCache, opts?: { allRows?: boolean }): Tensor;
}

/** Checks a batch's arrays against each other and the cache; throws naming `op` and the field. */
export function checkPagedBatch(op: string, b: PagedBatch, cache: PagedKVCache): { S: number; N: number } {
  const N = b.tokens.length, S = b.contextLens.length;
  const fail = (m: string) => {
    throw new Error(`${op}: ${m}`);
  };
  if (N === 0) fail("the batch has no tokens");
  if (b.positions.length !== N || b.slots.length !== N) {
    fail(
      `tokens, positions and slots must have one entry per new token (${N}), got ${b.positions.length} and ${b.slots.length}`,
    );
  }
  if (b.queryStarts.length !== S + 1 || b.queryStarts[0] !== 0 || b.queryStarts[S] !== N) {
    fail(`queryStarts must have S + 1 = ${S + 1} entries from 0 to N = ${N}, got [${[...b.queryStarts]}]`);
  }
  if (!Number.isInteger(b.maxBlocks) || b.maxBlocks < 1 || b.blockTables.length !== S * b.maxBlocks) {
    fail(`blockTables must be S x maxBlocks = ${S} x ${b.maxBlocks}, got ${b.blockTables.length} entries`);
  }
  const cap = cache.numBlocks * cache.blockSize;
  for (let s = 0; s < S; s++) {
    const nq = b.queryStarts[s + 1] - b.queryStarts[s], ctx = b.contextLens[s];
    if (nq < 1) fail(`sequence ${s} has no new tokens`);
    if (ctx < nq || ctx > b.maxBlocks * cache.blockSize) {
      fail(
        `contextLens[${s}] = ${ctx} must be in [${nq}, ${
          b.maxBlocks * cache.blockSize
        }] (its new tokens, the table)`,
      );
    }
    for (let i = 0; i < nq; i++) {
      const r = b.queryStarts[s] + i;
      if (b.positions[r] !== ctx - nq + i) {
        fail(
          `positions[${r}] = ${b.positions[r]} but sequence ${s}'s new token ${i} sits at ${ctx - nq + i}`,
        );
      }
      if (!(b.slots[r] >= 0 && b.slots[r] < cap)) {
        fail(`slots[${r}] = ${b.slots[r]} is outside the pool [0, ${cap})`);
      }
      const pos = b.positions[r], blk = b.blockTables[s * b.maxBlocks + Math.floor(pos / cache.blockSize)];
      if (b.slots[r] !== blk * cache.blockSize + (pos % cache.blockSize)) {
        fail(
          `slots[${r}] = ${b.slots[r]} but sequence ${s}'s block table puts position ${pos} at ${
            blk * cache.blockSize + (pos % cache.blockSize)
          }`,
        );
      }
    }
  }
  return { S, N };
}
