/**
 * The long-context survey's approximated and local attention, layout (B, H, T, D): linear attention
 * (elu + 1 features), Performer FAVOR+ (seeded orthogonal random features), Linformer (length
 * projections E, F) and block-wise local attention. Each has a float64 reference (`*Ref`, cpu tensors) and
 * runs on either device, composed from core ops, differentiable through autograd.
 *
 * @example
 * ```ts
 * import { linearAttention, localAttention, performerAttention, randn } from "seqlab";
 * const [q, k, v] = [1, 2, 3].map((seed) => randn([1, 2, 40, 16], { seed }));
 * console.log(linearAttention(q, k, v, { causal: true }).shape); // [1, 2, 40, 16]
 * console.log(performerAttention(q, k, v, { features: 32 }).shape); // [1, 2, 40, 16]
 * console.log(localAttention(q, k, v, { blockSize: 8 }).shape); // [1, 2, 40, 16]
 * ```
 * @module
 */

export { featureAttention, type FeatureAttentionOptions, linearAttention } from "./linear.ts";
export { featureAttentionRef, linearAttentionRef } from "./linear_ref.ts";
export { performerAttention, type PerformerFeatureOptions, performerFeatures } from "./performer.ts";
export { performerAttentionRef, type PerformerOptions } from "./performer_ref.ts";
export { linformerAttention, linformerProjection, type LinformerProjectionOptions } from "./linformer.ts";
export { linformerAttentionRef, type LinformerOptions } from "./linformer_ref.ts";
export { localAttention } from "./local.ts";
export { type LocalAttentionOptions, localAttentionRef } from "./local_ref.ts";
