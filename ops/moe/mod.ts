/**
 * Mixture-of-experts ops: {@link topk} (the router's selection). The MoE layer itself is in
 * `models/moe.ts`.
 * @module
 */

export * from "./topk.ts";
export { TOPK_MAX } from "./topk_wgsl.ts";
