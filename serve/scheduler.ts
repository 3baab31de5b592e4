/**
 * The serving scheduler: iteration-level (continuous) batching over a paged KV cache, first come first
 * served, with preemption by recomputation or by swapping to a host pool.
 *
 * How the engine drives it, once per iteration:
 *
 * 1. `const out = scheduler.schedule()`.
 * 2. Perform the block operations, in this order: `out.swapOut` (device block -> host block, `swapBlocks`),
 *    `out.swapIn` (host -> device), `out.copies` (copy-on-write, `copyBlocks`). Blocks freed by a swap-out
 *    may be reused as copy destinations in the same step, so the swap-outs go first. Guarantees that make
 *    batching them safe: a step has swap-outs or swap-ins, never both (swapped groups resume only in a
 *    step without preemption); within each list no block is both a source and a destination; a copy's
 *    source is never freed in its step.
 * 3. Run the model on `out.prefills` and `out.decodes` (`packBatch` flattens them into the int32 arrays the
 *    paged ops take): each entry feeds `tokens` at `positions`, writes their keys and values at `slots`
 *    (`writeKV`), and attends over `blockTable` up to `contextLength` (`pagedPrefill`, or `pagedAttention` for
 *    the one-token entries; `contextLength` already counts the fed tokens).
 * 4. For each entry with `sample`, sample from the logits of its last fed token, then call
 *    `appendToken(seq, token)` (the token's KV slot is taken when it is fed, in the next `schedule()`), or
 *    `finishSequence(seq, reason)`. Parallel sampling and beam search call `fork(seq)` (a child sharing every
 *    block; copy-on-write happens when the children's different tokens are fed) and `removeSequence(seq)`
 *    (a dropped beam) between steps.
 * 5. Report `out.aborted` (the scheduler's own aborts, with reasons) and `out.preempted` (for metrics).
 *
 * Policy of one `schedule()`, in order, within `maxNumSeqs` (sequences reserved by running groups: each
 * reserves its `maxSeqs`), `maxNumBatchedTokens` (tokens fed in this step) and the blocks:
 *
 * - running groups that decode (every live sequence has one pending token), oldest first: take a slot for
 *   each sequence's token (a new block or a copy-on-write). When the blocks run out, preempt the latest
 *   arrival among the running groups not yet scheduled (possibly the group itself; a group that cannot fit
 *   even alone is aborted). The mode: `preemptionMode` "recompute" frees the blocks and returns the group to
 *   the waiting queue, whose next prefill covers prompt and generated tokens; "swap" moves its blocks to the
 *   host pool; "auto" (the default) recomputes a one-sequence group and swaps a larger one. A swap that does
 *   not fit the host pool falls back to recomputation (the reason says so).
 * - running groups still prefilling (chunked prefill): their next chunks.
 * - if nothing was preempted in this step: swapped groups, oldest first, swapped in and scheduled while they
 *   fit (blocks with the watermark kept, sequences, tokens).
 * - if nothing was preempted and nothing remains swapped: waiting groups, oldest first, admitted while they
 *   fit (their prompt's blocks with the watermark kept, prefix-cache hits counted as free when they are
 *   already in use). A group that can never fit (its blocks exceed the pool minus the watermark) is aborted
 *   with a reason instead of waiting forever; `addGroup` refuses such a prompt at once.
 *
 * Chunked prefill (`chunkedPrefill`, default true) splits a prompt longer than the step's remaining token
 * budget across steps; with it off, a prompt longer than `maxNumBatchedTokens` is refused. A group with
 * several sequences to prefill (after recomputation) keeps them in step: each holds back its last token
 * until the whole group can finish together, so all of its sequences sample in the same step.
 *
 * Prefix caching (the allocator's `enablePrefixCaching`): a newly admitted sequence starts with the cached
 * blocks matching its first full blocks (never the block holding its last token, which must be computed),
 * and the blocks a step fills are registered in the cache at the next `schedule()`, once their KV is written.
 *
 * @example
 * ```ts
 * import { BlockAllocator, Scheduler } from "seqlab";
 * const s = new Scheduler(new BlockAllocator(32, 4), { maxNumSeqs: 4, maxNumBatchedTokens: 64 });
 * const g = s.addGroup([5, 6, 7, 8, 9]);
 * let out = s.schedule(); // the prompt, 5 tokens in 2 blocks
 * console.log(out.prefills[0].positions, out.prefills[0].slots); // [0, 1, 2, 3, 4] [0, 1, 2, 3, 4]
 * s.appendToken(g.seqs[0], 42); // sampled from the logits of position 4
 * out = s.schedule(); // one decode token
 * console.log(out.decodes[0].tokens, out.decodes[0].positions, out.decodes[0].contextLength); // [42] [5] 6
 * s.finishSequence(g.seqs[0], "length");
 * console.log(g.status, s.allocator.numUsed); // finished 0
 * ```
 * @module
 */

import type { PagedBatch } from "../models/paged.ts";
import { BlockAllocator, type BlockPair, ROOT_HASH } from "./block_allocator.ts";
import { type FinishReason, Sequence, SequenceGroup } from "./sequence.ts";

/** How to preempt: recompute (free the blocks, prefill again later), swap (to the host pool), or auto. */
export type PreemptionMode = "auto" | "recompute" | "swap";

/** Options of a `Scheduler`. */
export interface SchedulerOptions {
  /** the most sequences in a step (running groups reserve their `maxSeqs`); default 64 */
  maxNumSeqs?: number;
  /** the most tokens fed in a step (prefill chunks + decode tokens); default 2048, at least `maxNumSeqs` */
  maxNumBatchedTokens?: number;
  /** default "auto": recompute one-sequence groups, swap larger ones */
  preemptionMode?: PreemptionMode;
  /** host pool capacity in blocks for swapping (0: no swapping, swaps fall back to recomputation); default 0 */
  swapBlocks?: number;
  /** split prompts across steps when they exceed the token budget; default true */
  chunkedPrefill?: boolean;
}

/** Options of `Scheduler.addGroup`. */
export interface AddGroupOptions {
  /** the request id (unique among live groups); default a counter */
  id?: string;
  /** the most live sequences at once: n for parallel sampling, the beam width for beam search; default 1 */
  maxSeqs?: number;
}

/**
 * One sequence's part of a step: everything needed to build its rows of the model call.
 * Its rows attend causally over positions `0 .. contextLength - 1` of its block table.
 */
export interface ScheduledSequence {
  /** the sequence (its `numComputed` already counts this step) */
  seq: Sequence;
  /** token ids to feed, one row each */
  tokens: number[];
  /** their positions: `contextLength - numQuery .. contextLength - 1` */
  positions: number[];
  /** the KV slot of each fed token (`block * blockSize + position % blockSize`) */
  slots: number[];
  /** the block table after this step's allocations and copy-on-write (a copy) */
  blockTable: number[];
  /** tokens in the cache after this step, the fed ones included */
  contextLength: number;
  /** tokens fed in this step (`tokens.length`) */
  numQuery: number;
  /** whether the logits of the last fed token are sampled (the sequence has no pending token left) */
  sample: boolean;
}

/** A preemption in a step. */
export interface Preemption {
  /** the preempted group (now waiting or swapped) */
  group: SequenceGroup;
  /** how */
  mode: "recompute" | "swap";
  /** why, in words */
  reason: string;
}

/** An abort decided by the scheduler. */
export interface Abort {
  /** the aborted group (its sequences finished with reason "abort") */
  group: SequenceGroup;
  /** why, in words */
  reason: string;
}

/** What `schedule()` returns: this step's work and the block operations to perform before it. */
export interface SchedulerOutput {
  /** prompt (or recomputation) chunks, one entry per sequence */
  prefills: ScheduledSequence[];
  /** one-token steps of generating sequences */
  decodes: ScheduledSequence[];
  /** device block -> host block copies, first */
  swapOut: BlockPair[];
  /** host block -> device block copies, second */
  swapIn: BlockPair[];
  /** copy-on-write device block copies [src, dst], third */
  copies: BlockPair[];
  /** groups preempted in this step */
  preempted: Preemption[];
  /** groups the scheduler aborted (including refusals by `addGroup` since the last step) */
  aborted: Abort[];
  /** tokens fed in this step */
  numBatchedTokens: number;
}

/**
 * Flat int32 arrays for one step's model call (`packBatch`): a {@link PagedBatch} (tokens, positions, slots,
 * queryStarts, contextLens, blockTables padded with -1, maxBlocks) plus its sizes and the sampled rows.
 */
export interface PackedBatch extends PagedBatch {
  /** S: sequences in the step */
  numSeqs: number;
  /** N: tokens fed in the step */
  numTokens: number;
  /** rows (indices into the N tokens) whose logits are sampled, in entry order: one per entry with `sample` */
  sampleRows: Int32Array;
}

/**
 * Flatten scheduled entries (e.g. `[...out.prefills, ...out.decodes]`) into the int32 arrays of one model
 * call. `maxBlocks` defaults to the longest table (at least 1).
 *
 * @example
 * ```ts
 * import { BlockAllocator, packBatch, Scheduler } from "seqlab";
 * const s = new Scheduler(new BlockAllocator(8, 2));
 * s.addGroup([1, 2, 3]);
 * s.addGroup([4]);
 * const b = packBatch(s.schedule().prefills);
 * console.log(b.tokens, b.queryStarts, b.contextLens); // [1, 2, 3, 4] [0, 3, 4] [3, 1]
 * console.log(b.blockTables, b.sampleRows); // [0, 1, 2, -1] [2, 3]
 * ```
 */
export function packBatch(entries: readonly ScheduledSequence[], maxBlocks?: number): PackedBatch {
  const S = entries.length;
  const N = entries.reduce((n, e) => n + e.numQuery, 0);
  const mb = maxBlocks ?? Math.max(1, ...entries.map((e) => e.blockTable.length));
  const tokens = new Int32Array(N), positions = new Int32Array(N), slots = new Int32Array(N);
  const queryStarts = new Int32Array(S + 1), contextLens = new Int32Array(S);
  const blockTables = new Int32Array(S * mb).fill(-1);
  const sampleRows: number[] = [];
  let row = 0;
  entries.forEach((e, s) => {
    if (e.blockTable.length > mb) {
      throw new Error(
        `packBatch: sequence ${e.seq.id} has ${e.blockTable.length} blocks, more than maxBlocks ${mb}`,
      );
    }
    tokens.set(e.tokens, row);
    positions.set(e.positions, row);
    slots.set(e.slots, row);
    blockTables.set(e.blockTable, s * mb);
    contextLens[s] = e.contextLength;
    row += e.numQuery;
    queryStarts[s + 1] = row;
    if (e.sample) sampleRows.push(row - 1);
  });
  return {
    numSeqs: S,
    numTokens: N,
    tokens,
    positions,
    slots,
    queryStarts,
    contextLens,
    blockTables,
    maxBlocks: mb,
    sampleRows: Int32Array.from(sampleRows),
  };
}

/**
 * Iteration-level scheduler over a `BlockAllocator` (see the module comment for the protocol and policy).
 * Sequences and groups are the scheduler's; the engine changes them only through its methods, which throw a
 * message naming the method on misuse (appending to a sequence that has a pending token, forking a waiting
 * one, and so on).
 *
 * @example
 * ```ts
 * import { BlockAllocator, Scheduler } from "seqlab";
 * const s = new Scheduler(new BlockAllocator(4, 4, { watermark: 0 }));
 * const g = s.addGroup(new Array(20).fill(1)); // 20 tokens need 5 blocks of 4; the cache has 4
 * console.log(g.status, g.abortReason);
 * // aborted prompt of 20 tokens needs 5 blocks of 4 tokens; the cache has 4 (4 after the watermark)
 * console.log(s.schedule().aborted.length); // 1: the refusal is reported with the next step
 * ```
 */
export class Scheduler {
  /** the device block pool */
  readonly allocator: BlockAllocator;
  /** the host block pool for swapped groups (undefined when `swapBlocks` is 0) */
  readonly hostAllocator: BlockAllocator | undefined;
  /** see `SchedulerOptions` */
  readonly maxNumSeqs: number;
  /** see `SchedulerOptions` */
  readonly maxNumBatchedTokens: number;
  /** see `SchedulerOptions` */
  readonly preemptionMode: PreemptionMode;
  /** see `SchedulerOptions` */
  readonly chunkedPrefill: boolean;
  #waiting: SequenceGroup[] = [];
  #running: SequenceGroup[] = [];
  #swapped: SequenceGroup[] = [];
  #groups = new Map<string, SequenceGroup>();
  #refused: Abort[] = [];
  #arrivals = 0;
  #seqIds = 0;
  #preemptions = { recompute: 0, swap: 0 };

  /**
   * An empty scheduler over `allocator`, with a host pool of `swapBlocks` blocks for swapping.
   * @param allocator the device pool (its block size is the KV cache's)
   */
  constructor(allocator: BlockAllocator, opts: SchedulerOptions = {}) {
    this.allocator = allocator;
    this.maxNumSeqs = opts.maxNumSeqs ?? 64;
    this.maxNumBatchedTokens = opts.maxNumBatchedTokens ?? 2048;
    this.preemptionMode = opts.preemptionMode ?? "auto";
    this.chunkedPrefill = opts.chunkedPrefill ?? true;
    const swapBlocks = opts.swapBlocks ?? 0;
    if (!Number.isInteger(this.maxNumSeqs) || this.maxNumSeqs < 1) {
      throw new Error(`Scheduler: maxNumSeqs must be a positive integer, got ${this.maxNumSeqs}`);
    }
    if (!Number.isInteger(this.maxNumBatchedTokens) || this.maxNumBatchedTokens < this.maxNumSeqs) {
      throw new Error(
        `Scheduler: maxNumBatchedTokens must be an integer >= maxNumSeqs (${this.maxNumSeqs}), ` +
          `got ${this.maxNumBatchedTokens}`,
      );
    }
    if (!["auto", "recompute", "swap"].includes(this.preemptionMode)) {
      throw new Error(
        `Scheduler: preemptionMode must be "auto", "recompute" or "swap", got ${this.preemptionMode}`,
      );
    }
    if (!Number.isInteger(swapBlocks) || swapBlocks < 0) {
      throw new Error(`Scheduler: swapBlocks must be a non-negative integer, got ${swapBlocks}`);
    }
    this.hostAllocator = swapBlocks > 0
      ? new BlockAllocator(swapBlocks, allocator.blockSize, { watermark: 0 })
      : undefined;
  }

  /** Groups waiting for admission (new or preempted by recomputation). */
  get numWaiting(): number {
    return this.#waiting.length;
  }
  /** Groups holding device blocks. */
  get numRunning(): number {
    return this.#running.length;
  }
  /** Groups swapped out to the host pool. */
  get numSwapped(): number {
    return this.#swapped.length;
  }
  /** Whether any group is neither finished nor aborted. */
  hasUnfinished(): boolean {
    return this.#groups.size > 0;
  }
  /** A live group by id. */
  group(id: string): SequenceGroup | undefined {
    return this.#groups.get(id);
  }
  /** Preemptions so far, by mode. */
  get preemptions(): { recompute: number; swap: number } {
    return { ...this.#preemptions };
  }

  /**
   * Queue a request: a group with one sequence holding `prompt`. A prompt that can never be served (more
   * blocks than the pool minus the watermark, `maxSeqs` over `maxNumSeqs`, or without chunked prefill more
   * tokens than `maxNumBatchedTokens`) is refused: the group comes back aborted with `abortReason` and is
   * reported in the next `schedule()`'s `aborted`.
   */
  addGroup(prompt: ArrayLike<number>, opts: AddGroupOptions = {}): SequenceGroup {
    const id = opts.id ?? `${this.#arrivals}`;
    const maxSeqs = opts.maxSeqs ?? 1;
    if (this.#groups.has(id)) throw new Error(`Scheduler.addGroup: a live group already has id "${id}"`);
    if (prompt.length < 1) throw new Error(`Scheduler.addGroup: the prompt of "${id}" is empty`);
    for (let i = 0; i < prompt.length; i++) {
      if (!Number.isInteger(prompt[i])) {
        throw new Error(`Scheduler.addGroup: prompt token ${i} of "${id}" is not an integer: ${prompt[i]}`);
      }
    }
    if (!Number.isInteger(maxSeqs) || maxSeqs < 1) {
      throw new Error(`Scheduler.addGroup: maxSeqs must be a positive integer, got ${maxSeqs}`);
    }
    const g = new SequenceGroup(id, this.#arrivals++, maxSeqs);
    g.seqs.push(new Sequence(this.#seqIds++, g, Array.from(prompt), prompt.length));
    const a = this.allocator, L = prompt.length;
    const blocks = Math.ceil(L / a.blockSize);
    let refusal: string | undefined;
    if (a.canAllocate(blocks) === "never") {
      refusal = `prompt of ${L} tokens needs ${blocks} blocks of ${a.blockSize} tokens; the cache has ` +
        `${a.numBlocks} (${a.numBlocks - a.watermarkBlocks} after the watermark)`;
    } else if (maxSeqs > this.maxNumSeqs) {
      refusal = `maxSeqs ${maxSeqs} exceeds the scheduler's maxNumSeqs ${this.maxNumSeqs}`;
    } else if (!this.chunkedPrefill && L > this.maxNumBatchedTokens) {
      refusal = `prompt of ${L} tokens exceeds maxNumBatchedTokens ${this.maxNumBatchedTokens} ` +
        `and chunked prefill is off`;
    }
    if (refusal !== undefined) {
      this.#end(g, "aborted", refusal);
      this.#refused.push({ group: g, reason: refusal });
      return g;
    }
    this.#groups.set(id, g);
    this.#waiting.push(g);
    return g;
  }

  /**
   * Abort a live group: every sequence finishes with reason "abort" and its blocks are freed. Returns the
   * group, or undefined when no live group has that id. (Not reported in `schedule()`'s `aborted`: the
   * caller knows.)
   */
  abortGroup(id: string, reason = "aborted by the caller"): SequenceGroup | undefined {
    const g = this.#groups.get(id);
    if (g === undefined) return undefined;
    this.#dequeue(g);
    this.#end(g, "aborted", reason);
    return g;
  }

  /**
   * Append a sampled token to a running sequence whose pending tokens were all fed (an entry with `sample`
   * in the last step). Its KV slot is taken when it is fed, in the next `schedule()`.
   */
  appendToken(seq: Sequence, token: number): void {
    this.#own("appendToken", seq);
    if (seq.status !== "running") {
      throw new Error(`Scheduler.appendToken: sequence ${seq.id} is ${seq.status}, not running`);
    }
    if (seq.numPending !== 0) {
      throw new Error(
        `Scheduler.appendToken: sequence ${seq.id} still has ${seq.numPending} pending tokens: ` +
          `append only after a step that samples it`,
      );
    }
    if (!Number.isInteger(token)) throw new Error(`Scheduler.appendToken: token is not an integer: ${token}`);
    seq.tokens.push(token);
  }

  /**
   * A new sequence in `seq`'s group with the same tokens and a table sharing all of its blocks (nothing is
   * allocated; the first differing token fed copies the shared last block). `seq` must be running. The group
   * may hold more than `maxSeqs` live sequences between steps (fork the new beams, then remove the old), but
   * not at a `schedule()`.
   */
  fork(seq: Sequence): Sequence {
    this.#own("fork", seq);
    if (seq.status !== "running") {
      throw new Error(`Scheduler.fork: sequence ${seq.id} is ${seq.status}, not running`);
    }
    const child = new Sequence(this.#seqIds++, seq.group, seq.tokens.slice(), seq.promptLength);
    child.blockTable = this.allocator.fork(seq.blockTable);
    child.numComputed = seq.numComputed;
    child.status = "running";
    child.blockHashes = seq.blockHashes.slice();
    child.cacheChainBroken = seq.cacheChainBroken;
    seq.group.seqs.push(child);
    return child;
  }

  /**
   * Finish a sequence (`reason`: "stop", "length", "eos" or "abort") and free its blocks. The group finishes
   * when its last live sequence does.
   */
  finishSequence(seq: Sequence, reason: FinishReason): void {
    this.#own("finishSequence", seq);
    if (seq.isFinished) throw new Error(`Scheduler.finishSequence: sequence ${seq.id} already finished`);
    if (!["stop", "length", "eos", "abort"].includes(reason)) {
      throw new Error(`Scheduler.finishSequence: unknown reason ${reason}`);
    }
    this.#release(seq, reason);
    this.#settle(seq.group);
  }

  /** Drop a sequence (a pruned beam): free its blocks and remove it from its group. */
  removeSequence(seq: Sequence): void {
    this.#own("removeSequence", seq);
    if (!seq.isFinished) this.#release(seq, "abort");
    const seqs = seq.group.seqs;
    seqs.splice(seqs.indexOf(seq), 1);
    this.#settle(seq.group);
  }

  /** Decide this step (see the module comment): what to run, and the block operations to perform first. */
  schedule(): SchedulerOutput {
    const out: SchedulerOutput = {
      prefills: [],
      decodes: [],
      swapOut: [],
      swapIn: [],
      copies: [],
      preempted: [],
      aborted: this.#refused,
      numBatchedTokens: 0,
    };
    this.#refused = [];
    this.#registerFilledBlocks();
    for (const g of this.#running) {
      const live = g.liveSeqs;
      if (live.length > g.maxSeqs) {
        throw new Error(
          `Scheduler.schedule: group "${g.id}" has ${live.length} live sequences, over its maxSeqs ${g.maxSeqs}`,
        );
      }
      for (const s of live) {
        if (s.numPending === 0) {
          throw new Error(
            `Scheduler.schedule: sequence ${s.id} has no token to feed: after a step that samples it, ` +
              `call appendToken or finishSequence`,
          );
        }
      }
    }
    const a = this.allocator;
    let budget = this.maxNumBatchedTokens;
    let preempted = false;
    const running = this.#running;

    // 1. decodes of running groups, oldest first; preempt the latest arrivals when blocks run out
    for (let i = 0; i < running.length; i++) {
      const g = running[i];
      if (!isDecoding(g)) continue;
      const need = appendNeed(g, a);
      let fits = true;
      while (a.numAvailable < need) {
        preempted = true;
        if (running.length - 1 > i) {
          this.#preempt(running.pop()!, out);
          continue;
        }
        running.splice(i--, 1);
        fits = false;
        if (running.length === 0) {
          const reason = `group needs ${need} more blocks to continue and ${a.numAvailable} are free with ` +
            `nothing else running: it outgrew the cache of ${a.numBlocks} blocks`;
          this.#end(g, "aborted", reason);
          out.aborted.push({ group: g, reason });
        } else {
          this.#preempt(g, out);
        }
        break;
      }
      if (fits) budget -= this.#decode(g, out);
    }

    // 2. chunks of running groups still prefilling
    for (const g of running) {
      if (isDecoding(g)) continue;
      if (budget <= 0) break;
      const n = this.#prefill(g, budget, out);
      if (n === 0 && !this.chunkedPrefill) break;
      budget -= n;
    }

    // 3. swapped groups, oldest first, if nothing was preempted
    let reserved = running.reduce((n, g) => n + g.maxSeqs, 0);
    while (!preempted && this.#swapped.length > 0) {
      const g = this.#swapped[0], host = this.hostAllocator!;
      const distinct = new Set(g.liveSeqs.flatMap((s) => s.blockTable)).size;
      const decoding = isDecoding(g);
      const need = distinct + (decoding ? appendNeed(g, host) : 0);
      const can = a.canAllocate(need);
      if (can === "never") {
        this.#swapped.shift();
        const reason = `swapped group needs ${need} blocks to resume; the cache has ${a.numBlocks} ` +
          `(${a.numBlocks - a.watermarkBlocks} after the watermark)`;
        this.#end(g, "aborted", reason);
        out.aborted.push({ group: g, reason });
        continue;
      }
      if (can === "later" || reserved + g.maxSeqs > this.maxNumSeqs) break;
      const tokens = decoding ? g.liveSeqs.length : this.#prefillTokens(g, budget);
      if (tokens === 0 || tokens > budget) break;
      this.#swapped.shift();
      this.#swapIn(g, out);
      insertByArrival(running, g);
      reserved += g.maxSeqs;
      budget -= decoding ? this.#decode(g, out) : this.#prefill(g, budget, out);
    }

    // 4. waiting groups, oldest first, if nothing was preempted and nothing is swapped
    while (!preempted && this.#swapped.length === 0 && this.#waiting.length > 0) {
      const g = this.#waiting[0];
      const plan = this.#admissionPlan(g);
      if (plan.never !== undefined) {
        this.#waiting.shift();
        this.#end(g, "aborted", plan.never);
        out.aborted.push({ group: g, reason: plan.never });
        continue;
      }
      if (a.canAllocate(plan.blocks) !== "now" || reserved + g.maxSeqs > this.maxNumSeqs) break;
      const tokens = Math.min(plan.pending, this.chunkedPrefill ? budget : plan.pending);
      if (tokens === 0 || tokens > budget) break;
      this.#waiting.shift();
      this.#admit(g);
      insertByArrival(running, g);
      reserved += g.maxSeqs;
      budget -= this.#prefill(g, budget, out);
    }

    out.numBatchedTokens = this.maxNumBatchedTokens - budget;
    const scheduled = out.prefills.length + out.decodes.length;
    if (budget < 0 || scheduled > this.maxNumSeqs) {
      throw new Error(
        `Scheduler.schedule: internal error: ${out.numBatchedTokens} tokens / ${scheduled} sequences exceed ` +
          `the limits ${this.maxNumBatchedTokens} / ${this.maxNumSeqs}`,
      );
    }
    return out;
  }

  // --- steps of schedule() ---

  /** Take a slot for each live sequence's pending token (allocation or copy-on-write); returns tokens fed. */
  #decode(g: SequenceGroup, out: SchedulerOutput): number {
    let n = 0;
    for (const s of g.liveSeqs) {
      const p = s.length - 1;
      const r = this.allocator.appendSlot(s.blockTable, p);
      if (r.copy) out.copies.push(r.copy);
      s.numComputed = p + 1;
      out.decodes.push({
        seq: s,
        tokens: [s.tokens[p]],
        positions: [p],
        slots: [r.slot],
        blockTable: s.blockTable.slice(),
        contextLength: p + 1,
        numQuery: 1,
        sample: true,
      });
      n++;
    }
    return n;
  }

  /**
   * Tokens `#prefill` would feed within `budget`: all pending tokens if they fit, else (chunked) each
   * sequence's pending tokens but its last, up to the budget; 0 when nothing fits.
   */
  #prefillTokens(g: SequenceGroup, budget: number): number {
    const live = g.liveSeqs;
    const total = live.reduce((n, s) => n + s.numPending, 0);
    if (total <= budget) return total;
    if (!this.chunkedPrefill) return 0;
    return Math.min(budget, live.reduce((n, s) => n + s.numPending - 1, 0));
  }

  /** Schedule a prefilling group's next chunks (blocks already cover its tokens); returns tokens fed. */
  #prefill(g: SequenceGroup, budget: number, out: SchedulerOutput): number {
    const live = g.liveSeqs;
    const total = live.reduce((n, s) => n + s.numPending, 0);
    const whole = total <= budget;
    if (!whole && !this.chunkedPrefill) return 0;
    const bs = this.allocator.blockSize;
    let fed = 0;
    for (const s of live) {
      const n = whole ? s.numPending : Math.min(s.numPending - 1, budget - fed);
      if (n <= 0) continue;
      const start = s.numComputed;
      const positions = Array.from({ length: n }, (_, i) => start + i);
      const slots = positions.map((p) => {
        const b = s.blockTable[Math.floor(p / bs)];
        if (b === undefined) {
          throw new Error(`Scheduler: internal error: sequence ${s.id} has no block for position ${p}`);
        }
        return b * bs + (p % bs);
      });
      s.numComputed += n;
      fed += n;
      out.prefills.push({
        seq: s,
        tokens: s.tokens.slice(start, start + n),
        positions,
        slots,
        blockTable: s.blockTable.slice(),
        contextLength: start + n,
        numQuery: n,
        sample: whole,
      });
    }
    return fed;
  }

  /** Blocks to admit a waiting group (prefix hits already in use are free), its pending tokens, or why never. */
  #admissionPlan(g: SequenceGroup): { blocks: number; pending: number; never?: string } {
    const a = this.allocator, bs = a.blockSize;
    let blocks = 0, pending = 0, total = 0, longest = 0;
    for (const s of g.liveSeqs) {
      const L = s.length, n = Math.ceil(L / bs);
      const hits = a.matchPrefix(s.tokens, Math.floor((L - 1) / bs)).blocks;
      blocks += n - hits.filter((b) => a.refCount(b) > 0).length;
      pending += L - hits.length * bs;
      total += n;
      longest = Math.max(longest, L);
    }
    if (a.canAllocate(total) === "never") {
      return {
        blocks,
        pending,
        never: `group of ${g.liveSeqs.length} sequences (longest ${longest} tokens) needs ${total} blocks; ` +
          `the cache has ${a.numBlocks} (${a.numBlocks - a.watermarkBlocks} after the watermark)`,
      };
    }
    if (!this.chunkedPrefill && pending > this.maxNumBatchedTokens) {
      return {
        blocks,
        pending,
        never:
          `group needs ${pending} tokens in one step, over maxNumBatchedTokens ${this.maxNumBatchedTokens}, ` +
          `and chunked prefill is off`,
      };
    }
    return { blocks, pending };
  }

  /** Give each sequence its cached prefix and fresh blocks for the rest of its tokens. */
  #admit(g: SequenceGroup): void {
    const a = this.allocator, bs = a.blockSize;
    g.status = "running";
    for (const s of g.liveSeqs) {
      const hit = a.allocatePrefix(s.tokens, Math.floor((s.length - 1) / bs));
      s.blockTable = hit.blocks;
      s.blockHashes = hit.hashes;
      s.cacheChainBroken = false;
      s.numComputed = hit.blocks.length * bs;
      while (s.blockTable.length * bs < s.length) s.blockTable.push(a.allocate());
      s.status = "running";
    }
  }

  #preempt(g: SequenceGroup, out: SchedulerOutput): void {
    const live = g.liveSeqs;
    let mode: "recompute" | "swap" = this.preemptionMode === "auto"
      ? (live.length > 1 ? "swap" : "recompute")
      : this.preemptionMode;
    let reason = `out of KV blocks; latest arrival among running groups`;
    if (mode === "swap") {
      const distinct = new Set(live.flatMap((s) => s.blockTable)).size;
      const host = this.hostAllocator;
      if (host === undefined || host.numAvailable < distinct) {
        mode = "recompute";
        reason +=
          `; swap space ${host ? `has ${host.numAvailable} free blocks, needs ${distinct}` : "is 0"}, ` +
          `so recomputed instead`;
      }
    }
    g.numPreemptions++;
    this.#preemptions[mode]++;
    if (mode === "swap") {
      this.#swapOut(g, out);
      g.status = "swapped";
      insertByArrival(this.#swapped, g);
    } else {
      for (const s of live) {
        this.allocator.freeTable(s.blockTable);
        s.numComputed = 0;
        s.blockHashes = [];
        s.status = "waiting";
      }
      g.status = "waiting";
      insertByArrival(this.#waiting, g);
    }
    out.preempted.push({ group: g, mode, reason });
  }

  #swapOut(g: SequenceGroup, out: SchedulerOutput): void {
    const host = this.hostAllocator!, dev = this.allocator;
    const moved = new Map<number, number>();
    for (const s of g.liveSeqs) {
      s.blockTable = s.blockTable.map((b) => {
        let h = moved.get(b);
        if (h === undefined) {
          h = host.allocate();
          moved.set(b, h);
          out.swapOut.push([b, h]);
        } else {
          host.retain(h);
        }
        dev.free(b);
        return h;
      });
      s.status = "swapped";
    }
  }

  #swapIn(g: SequenceGroup, out: SchedulerOutput): void {
    const host = this.hostAllocator!, dev = this.allocator;
    const moved = new Map<number, number>();
    g.status = "running";
    for (const s of g.liveSeqs) {
      s.blockTable = s.blockTable.map((h) => {
        let b = moved.get(h);
        if (b === undefined) {
          b = dev.allocate();
          moved.set(h, b);
          out.swapIn.push([h, b]);
        } else {
          dev.retain(b);
        }
        host.free(h);
        return b;
      });
      s.status = "running";
    }
  }

  /** Register the full blocks that the previous steps filled (prefix caching). */
  #registerFilledBlocks(): void {
    const a = this.allocator, bs = a.blockSize;
    if (!a.enablePrefixCaching) return;
    for (const g of this.#running) {
      for (const s of g.liveSeqs) {
        while (!s.cacheChainBroken && (s.blockHashes.length + 1) * bs <= s.numComputed) {
          const i = s.blockHashes.length;
          const parent = i === 0 ? ROOT_HASH : s.blockHashes[i - 1];
          const r = a.register(s.blockTable[i], parent, s.tokens.slice(i * bs, (i + 1) * bs));
          if (r.status === "collision") s.cacheChainBroken = true;
          else s.blockHashes.push(r.hash);
        }
      }
    }
  }

  // --- bookkeeping ---

  #own(method: string, seq: Sequence): void {
    if (this.#groups.get(seq.group.id) !== seq.group || !seq.group.seqs.includes(seq)) {
      throw new Error(`Scheduler.${method}: sequence ${seq.id} is not live in this scheduler`);
    }
  }

  /** Free a sequence's blocks (device or host) and mark it finished. */
  #release(seq: Sequence, reason: FinishReason): void {
    if (seq.status === "running") this.allocator.freeTable(seq.blockTable);
    else if (seq.status === "swapped") this.hostAllocator!.freeTable(seq.blockTable);
    seq.status = "finished";
    seq.finishReason = reason;
  }

  /** End the group if no live sequence is left. */
  #settle(g: SequenceGroup): void {
    if (g.liveSeqs.length > 0) return;
    this.#dequeue(g);
    this.#end(g, "finished");
  }

  #end(g: SequenceGroup, status: "finished" | "aborted", reason?: string): void {
    for (const s of g.liveSeqs) this.#release(s, "abort");
    g.status = status;
    if (status === "aborted") g.abortReason = reason;
    this.#groups.delete(g.id);
  }

  #dequeue(g: SequenceGroup): void {
    for (const q of [this.#waiting, this.#running, this.#swapped]) {
      const i = q.indexOf(g);
      if (i >= 0) q.splice(i, 1);
    }
  }
}

/** Whether every live sequence of the group has exactly one pending token (and the group has some). */
function isDecoding(g: SequenceGroup): boolean {
  const live = g.liveSeqs;
  return live.length > 0 && live.every((s) => s.numPending === 1);
}

/**
 * Blocks the group's decode step takes from `pool`: a new block for each sequence whose token starts one,
 * and a copy for each sequence appending into a shared last block, except the last of the group's holders
 * when no one outside the group shares it (it writes in place once the others have copied).
 */
function appendNeed(g: SequenceGroup, pool: BlockAllocator): number {
  const bs = pool.blockSize;
  let need = 0;
  const holders = new Map<number, number>();
  for (const s of g.liveSeqs) {
    const k = Math.floor((s.length - 1) / bs);
    if (k >= s.blockTable.length) need++;
    else {
      const b = s.blockTable[k];
      if (pool.refCount(b) > 1) holders.set(b, (holders.get(b) ?? 0) + 1);
    }
  }
  for (const [b, h] of holders) need += pool.refCount(b) > h ? h : h - 1;
  return need;
}

function insertByArrival(q: SequenceGroup[], g: SequenceGroup): void {
  let i = q.length;
  while (i > 0 && q[i - 1].arrival > g.arrival) i--;
  q.splice(i, 0, g);
}
