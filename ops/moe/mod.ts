/**
 * Mixture-of-experts ops: {@link topk} (the router's selection) and {@link moeRoute} (the dispatch
 * table). The MoE layer is in `models/moe.ts`.
 * @module
 */

export * from "./topk.ts";
export { TOPK_MAX } from "./topk_wgsl.ts";
export * from "./route.ts";
