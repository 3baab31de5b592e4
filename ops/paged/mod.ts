/**
 * Paged K/V cache ops (PagedAttention, vLLM): pools of fixed-size blocks, block tables, writes into slots,
 * block copies and swaps, paged decode attention (v1 whole context, v2 partitions + reduce) and ragged
 * chunked prefill. Layout (numBlocks, Hkv, blockSize, D) per pool; see ops/README.md.
 * @module
 */

export { copyBlocks, pagedAttention, pagedPools, pagedPrefill, swapBlocks, writeKV } from "./paged.ts";
export type {
  PagedAttentionOptions,
  PagedAttentionResult,
  PagedPoolOptions,
  PagedVersion,
  WriteKVOptions,
} from "./paged.ts";
