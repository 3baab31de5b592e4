/**
 * What a model offers the serving engine (`serve/engine.ts`): a paged K/V cache (per attention layer a pool
 * of fixed-size blocks, see `ops/paged/`) and one call that runs a ragged batch of new tokens from many
 * sequences (prompt chunks and single decode tokens together) against it. A model with per-sequence
 * recurrent state (JambaLM's Mamba layers) also keeps state slots in the cache: one per running sequence,
 * named by the batch's `stateSlots`; a sequence whose new tokens start at position 0 starts from a zero
 * state, any other continues from its slot, and the call leaves the state after its last new token there.
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
  /**
   * State slot of each sequence (S), distinct, in [0, cache.stateSlots): required when the cache has state
   * slots (a model with recurrent layers), ignored otherwise. The slot holds the sequence's state between
   * calls; the caller keeps one slot per live sequence (the engine: `StateSlots`).
   */
  stateSlots?: Int32Array;
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
  /**
   * Per-sequence state slots, for models with recurrent state (JambaLM with Mamba layers: required there);
   * the most sequences that can be in flight at once. Models without state ignore it.
   */
  maxSeqs?: number;
}

/** What the paged cache's state side holds besides K/V (see {@link PagedKVCache}'s last argument). */
export interface PagedStateOptions {
  /** Per-sequence state pools, each (stateSlots, ...): row i of every pool is slot i. */
  state?: Tensor[];
  /** Slots in each state pool (0: the model keeps no state). */
  stateSlots?: number;
  /** What the cache was made for (layout and sizes); the model that made it compares it with its own. */
  signature?: string;
}

/** A paged batch or cache that does not fit the model or itself; the message names the op and field. */
export class PagedBatchError extends Error {
  /** Always "PagedBatchError". */
  override name = "PagedBatchError";
}

/**
 * A model's paged K/V cache: per attention layer a key pool and a value pool, each (numBlocks, Hkv,
 * blockSize, Dh). The engine's allocator decides which blocks a sequence owns; the model only reads and
 * writes the slots a {@link PagedBatch} names. A model with recurrent layers adds per-sequence state pools
 * (`state`, each (stateSlots, ...)), addressed by the batch's `stateSlots`. Free it with `dispose()`.
 */
export class PagedKVCache {
  /** Per-sequence state pools, each (stateSlots, ...); empty for a model without state. */
  readonly state: Tensor[];
  /** Slots in each state pool (0: no state; the engine then needs no slot per sequence). */
  readonly stateSlots: number;
  /** What the cache was made for ("" when the model does not check). */
  readonly signature: string;
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
    /** State pools, their slot count and the signature, for models with state. */
    opts: PagedStateOptions = {},
  ) {
    this.state = opts.state ?? [];
    this.stateSlots = opts.stateSlots ?? 0;
    this.signature = opts.signature ?? "";
  }
  /** Bytes of one block across every layer's K and V pool (what a block of tokens costs). */
  get bytesPerBlock(): number {
    if (!this.k.length) return 0;
    const per = this.k[0].size / this.numBlocks * (this.k[0].dtype === "f16" ? 2 : 4);
    return 2 * per * this.k.length;
  }
  /** Bytes of one sequence's state slot across every state pool (0 without state). */
  get bytesPerStateSlot(): number {
    return this.state.reduce((n, t) => n + t.size / t.shape[0] * (t.dtype === "f16" ? 2 : 4), 0);
  }
  /** Frees the pools. */
  dispose(): void {
    for (const t of [...this.k, ...this.v, ...this.state]) t.dispose();
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

/**
 * Checks a batch's arrays against each other and the cache (its state slots too, when the cache has them);
 * throws a {@link PagedBatchError} naming `op` and the field.
 */
export function checkPagedBatch(op: string, b: PagedBatch, cache: PagedKVCache): { S: number; N: number } {
  const N = b.tokens.length, S = b.contextLens.length;
  const fail = (m: string): never => {
    throw new PagedBatchError(`${op}: ${m}`);
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
  if (cache.stateSlots > 0) {
    const ss = b.stateSlots ??
      fail(
        `stateSlots is required: the model keeps per-sequence state (${cache.stateSlots} slots in the cache)`,
      );
    if (ss.length !== S) fail(`stateSlots must have one entry per sequence (${S}), got ${ss.length}`);
    const seen = new Set<number>();
    for (let s = 0; s < S; s++) {
      if (!(Number.isInteger(ss[s]) && ss[s] >= 0 && ss[s] < cache.stateSlots)) {
        fail(`stateSlots[${s}] = ${ss[s]} is outside the cache's state slots [0, ${cache.stateSlots})`);
      }
      if (seen.has(ss[s])) fail(`stateSlots[${s}] = ${ss[s]} is named by two sequences of the batch`);
      seen.add(ss[s]);
    }
  }
  return { S, N };
}
