/**
 * Positional encodings, layout (B, H, T, D): RoPE with rotate-half pairing and its context-extension
 * scalings (Position Interpolation, NTK-aware, dynamic NTK, YaRN), and ALiBi slopes and biases.
 *
 * @example
 * ```ts
 * import { alibiSlopes, applyRope, randn, ropeFrequencies } from "seqlab";
 * const q = randn([1, 2, 5, 8], { seed: 1 });
 * const pi = ropeFrequencies(8, { scaling: { type: "linear", factor: 4 } });
 * console.log(applyRope(q, 0, pi).shape, alibiSlopes(2)[0]); // [1, 2, 5, 8] 0.0625
 * ```
 * @module
 */

export { alibiBias, type AlibiOptions, alibiSlopes } from "./alibi.ts";
export { alibiBiasRef } from "./alibi_ref.ts";
export { type RopeFrequencies, ropeFrequencies, type RopeOptions, type RopeScaling } from "./frequencies.ts";
export { applyRope, type ApplyRopeOptions, type RopePositions } from "./rope.ts";
export { type RopeLayout, ropeRef } from "./rope_ref.ts";
