/**
 * Exact attention: the float64 reference, standard attention (S and P in device memory), FlashAttention
 * (forward and backward on WebGPU), a decode path against a K/V cache, and `attention`, which picks one.
 * Layout (B, H, T, D) for queries and (B, Hkv, S, D) for keys and values, or with `layout: "bthd"`
 * (B, T, H, D) and (B, S, Hkv, D), the layout of a reshaped projection (no head transposes).
 * @module
 */

export type { AttentionOptions, AttentionStats, BlockMask, Layout } from "./attention_options.ts";
export { attentionRef, attentionRefBackward } from "./attention_ref.ts";
export type { AttentionResult } from "./attention_ref.ts";
export { attention, attentionImpl } from "./attention.ts";
export type { AttentionChoice } from "./attention.ts";
export { flashAttention } from "./flash.ts";
export { standardAttention } from "./standard.ts";
export { attentionDecode } from "./decode.ts";
export type { DecodeOptions } from "./decode.ts";
