/**
 * `attention`: exact attention with the implementation that fits the inputs (flash.ts, standard.ts,
 * decode.ts, or the float64 reference on the cpu), and `attentionImpl`, which says which one it picks.
 * @module
 */

import { isGradEnabled } from "../../runtime/autograd.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { type AttentionOptions, layoutOf, resolve, viaHeadsFirst } from "./attention_options.ts";
import { attentionRef, type AttentionResult } from "./attention_ref.ts";
import { attentionDecode } from "./decode.ts";
import { checkFlashOptions, flashAttention } from "./flash.ts";
import { standardAttention } from "./standard.ts";

/** Options of {@link attention}: the shared options plus an optional implementation choice. */
export interface AttentionChoice extends AttentionOptions {
  /** "auto" (default), or force "flash", "standard", "reference" or "decode". */
  impl?: "auto" | "flash" | "standard" | "reference" | "decode";
}

/**
 * Which implementation {@link attention} would use for these inputs and options: "reference" on the cpu;
 * on WebGPU "decode" for a single query with nothing to differentiate (no block mask or padding mask, and
 * no lengths combined with window or ALiBi, whose positions differ between the two paths), else "flash"
 * (faster than "standard" at every size measured, and without its T x S memory).
 *
 * @example
 * ```ts
 * import { attentionImpl, zeros } from "seqlab";
 * const q = zeros([1, 2, 1, 8]), kv = zeros([1, 2, 50, 8]);
 * console.log(attentionImpl(q, kv, kv)); // "decode" on webgpu, "reference" on cpu
 * ```
 */
export function attentionImpl(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions = {},
): "reference" | "flash" | "decode" {
  if (q.device === "cpu") return "reference";
  const tAxis = opts.layout === "bthd" ? 1 : 2;
  const grad = isGradEnabled() && [q, k, v].some((t) => t.requiresGrad);
  const kp = opts.keyPadding;
  const keepMask = kp !== undefined && !Array.isArray(kp) && (kp as Tensor).rank === 2;
  const lengths = kp !== undefined && !keepMask;
  if (
    q.rank === 4 && q.shape[tAxis] === 1 && !grad && !opts.blockMask && !keepMask &&
    !(lengths && (opts.window !== undefined || opts.alibi !== undefined)) && opts.blockQ === undefined &&
    opts.blockK === undefined && (opts.version === undefined || opts.version === "auto")
  ) return "decode";
  return "flash";
}

/**
 * Attention with the best implementation for the inputs and options (see {@link attentionImpl}); the same
 * options and result as {@link flashAttention}. `impl` forces one.
 *
 * @example
 * ```ts
 * import { attention, randn } from "seqlab";
 * const q = randn([1, 8, 128, 64], { seed: 1 }), k = randn([1, 2, 128, 64], { seed: 2 });
 * const { o, stats } = attention(q, k, k, { causal: true });
 * console.log(o.shape, stats.impl); // [1, 8, 128, 64] "flash v3" (webgpu) or "reference" (cpu)
 * ```
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionChoice = {}): AttentionResult {
  const { impl = "auto", ...opts } = options;
  const pick = impl === "auto" ? attentionImpl(q, k, v, opts) : impl;
  switch (pick) {
    case "reference": {
      if (q.device !== "cpu") {
        throw new Error(`attention: impl "reference" needs cpu tensors, got ${q.describe()}`);
      }
      // flash's options are refused on the cpu as flash refuses them on webgpu
      const flashOpts = opts.version !== undefined || opts.blockQ !== undefined || opts.blockK !== undefined;
      if (impl === "auto" && flashOpts) checkFlashOptions(q, k, v, opts);
      return attentionRef(q, k, v, opts);
    }
    case "standard":
      return standardAttention(q, k, v, opts);
    case "decode": {
      if (opts.blockMask) throw new Error(`attention: impl "decode" has no block mask`);
      const kp = opts.keyPadding;
      if (kp !== undefined && !Array.isArray(kp) && !ArrayBuffer.isView(kp) && (kp as Tensor).rank === 2) {
        throw new Error(`attention: impl "decode" takes key lengths, not a (B, S) mask`);
      }
      let length: number[] | undefined;
      if (kp !== undefined) {
        const r = resolve("attention", q, k, v, { keyPadding: kp, layout: opts.layout }, false);
        length = [...r.lengths!];
      }
      const decode = (a: Tensor, b: Tensor, c: Tensor) =>
        attentionDecode(a, b, c, {
          length,
          scale: opts.scale,
          alibi: opts.alibi,
          window: typeof opts.window === "number" ? opts.window : opts.window?.[0],
          globalTokens: opts.globalTokens,
        });
      if (layoutOf("attention", opts) === "bthd") return viaHeadsFirst(q, k, v, decode);
      return decode(q, k, v);
    }
    case "flash":
      return flashAttention(q, k, v, opts);
    default:
      throw new Error(
        `attention: unknown impl ${
          JSON.stringify(impl)
        }; expected auto, flash, standard, reference or decode`,
      );
  }
}
