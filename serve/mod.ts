/**
 * The serving engine: a paged KV cache's block allocator (reference counts, copy-on-write, prefix caching)
 * and an iteration-level scheduler (continuous batching, preemption by recomputation or swapping), KV-cache
 * arithmetic, request traces and a serving simulator, after PagedAttention / vLLM (Kwon et al., 2023).
 *
 * @example
 * ```ts
 * import { BlockAllocator, Scheduler } from "seqlab";
 * const s = new Scheduler(new BlockAllocator(64, 16), { maxNumSeqs: 8, maxNumBatchedTokens: 256 });
 * s.addGroup([1, 2, 3]);
 * console.log(s.schedule().prefills.length); // 1
 * ```
 * @module
 */

export * from "./block_allocator.ts";
export * from "./sequence.ts";
export * from "./scheduler.ts";
export * from "./kv_math.ts";
export * from "./traces.ts";
export * from "./simulator.ts";
export * from "./sampling.ts";
export * from "./engine.ts";
export * from "./state_slots.ts";
