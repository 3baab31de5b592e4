/**
 * KV-cache arithmetic: bytes per token and per request from a model's shape, and the models and servers of
 * the PagedAttention paper (Kwon et al., SOSP 2023; docs/papers.md, "PagedAttention / vLLM").
 *
 * One token's KV state is a key and a value vector per layer and KV head:
 * `2 * layers * kvHeads * headDim * bytesPerValue`. For OPT-13B in 16-bit that is
 * 2 * 40 * 5120 * 2 = 819,200 bytes, the paper's "800 KB" (KiB, Section 3).
 * @module
 */

/** A model's KV shape. Give `hidden` alone (kvHeads * headDim = hidden, plain multi-head) or heads and widths. */
export interface KVModelConfig {
  /** A label for tables (e.g. "OPT-13B"). */
  name?: string;
  /** Decoder layers, each with its own K and V. */
  layers: number;
  /** Model width; with `heads`, headDim = hidden / heads. */
  hidden?: number;
  /** Query heads (default: kvHeads, or 1 when only `hidden` is given). */
  heads?: number;
  /** Width of one head (default hidden / heads). */
  headDim?: number;
  /** Key/value heads: fewer than `heads` for grouped-query attention (default heads). */
  kvHeads?: number;
  /** Bytes per stored value: 2 for fp16/bf16, 4 for f32, 1 for 8-bit. */
  bytesPerValue: number;
}

/** The thrown error of the KV arithmetic and the simulator, naming the function and the bad option. */
export class ServingConfigError extends Error {
  /** An error whose message says what was wrong and with what, prefixed by the function's name. */
  constructor(message: string) {
    super(message);
    this.name = "ServingConfigError";
  }
}

function posInt(op: string, name: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
    throw new ServingConfigError(`${op}: ${name} must be an integer >= 1, got ${v}`);
  }
  return v;
}

/** Resolves a config to (layers, kvHeads, headDim, bytesPerValue), validating every field. */
function kvShape(
  config: KVModelConfig,
): { layers: number; kvHeads: number; headDim: number; bytesPerValue: number } {
  const op = "kvBytesPerToken";
  if (config === null || typeof config !== "object") {
    throw new ServingConfigError(`${op}: config must be an object, got ${config}`);
  }
  const layers = posInt(op, "layers", config.layers);
  const bytesPerValue = config.bytesPerValue;
  if (typeof bytesPerValue !== "number" || !(bytesPerValue > 0) || !Number.isFinite(bytesPerValue)) {
    throw new ServingConfigError(`${op}: bytesPerValue must be a number > 0, got ${bytesPerValue}`);
  }
  const { hidden } = config;
  let { heads, headDim, kvHeads } = config;
  if (hidden !== undefined) posInt(op, "hidden", hidden);
  if (heads !== undefined) posInt(op, "heads", heads);
  if (headDim !== undefined) posInt(op, "headDim", headDim);
  if (kvHeads !== undefined) posInt(op, "kvHeads", kvHeads);
  if (headDim === undefined) {
    if (hidden === undefined) throw new ServingConfigError(`${op}: give hidden or headDim`);
    heads ??= kvHeads ?? 1;
    if (hidden % heads !== 0) {
      throw new ServingConfigError(`${op}: hidden ${hidden} is not a multiple of heads ${heads}`);
    }
    headDim = hidden / heads;
  } else {
    heads ??= hidden !== undefined ? hidden / headDim : kvHeads ?? 1;
    if (hidden !== undefined && (!Number.isInteger(heads) || headDim * heads !== hidden)) {
      throw new ServingConfigError(`${op}: heads ${heads} x headDim ${headDim} != hidden ${hidden}`);
    }
  }
  kvHeads ??= heads;
  if (heads % kvHeads !== 0) {
    throw new ServingConfigError(`${op}: heads ${heads} is not a multiple of kvHeads ${kvHeads}`);
  }
  return { layers, kvHeads, headDim, bytesPerValue };
}

/**
 * Bytes of KV cache one token occupies: 2 (K and V) x layers x kvHeads x headDim x bytesPerValue.
 *
 * @example
 * ```ts
 * import { kvBytesPerToken, OPT_13B } from "seqlab";
 * console.log(kvBytesPerToken(OPT_13B)); // 819200 (the paper's 800 KB)
 * ```
 */
export function kvBytesPerToken(config: KVModelConfig): number {
  const s = kvShape(config);
  return 2 * s.layers * s.kvHeads * s.headDim * s.bytesPerValue;
}

/**
 * Bytes of KV cache a request of `tokens` tokens (prompt and output) occupies.
 *
 * @example
 * ```ts
 * import { kvBytesPerRequest, OPT_13B } from "seqlab";
 * console.log(kvBytesPerRequest(OPT_13B, 2048) / 2 ** 30); // 1.5625 (GiB; the paper's "1.6 GB")
 * ```
 */
export function kvBytesPerRequest(config: KVModelConfig, tokens: number): number {
  if (typeof tokens !== "number" || !Number.isInteger(tokens) || tokens < 0) {
    throw new ServingConfigError(`kvBytesPerRequest: tokens must be an integer >= 0, got ${tokens}`);
  }
  return kvBytesPerToken(config) * tokens;
}

/**
 * How many tokens' KV state fit in `kvBytes` (the paper's "Max. # KV cache slots", Table 1).
 *
 * @example
 * ```ts
 * import { kvTokenSlots, OPT_13B } from "seqlab";
 * console.log(kvTokenSlots(OPT_13B, 12 * 2 ** 30)); // 15728 (Table 1: 15.7K)
 * ```
 */
export function kvTokenSlots(config: KVModelConfig, kvBytes: number): number {
  if (typeof kvBytes !== "number" || !(kvBytes >= 0) || !Number.isFinite(kvBytes)) {
    throw new ServingConfigError(`kvTokenSlots: kvBytes must be a finite number >= 0, got ${kvBytes}`);
  }
  return Math.floor(kvBytes / kvBytesPerToken(config));
}

// Architectures from the OPT paper (Zhang et al., 2022, Table 1) and the LLaMA paper (Touvron et al., 2023,
// Table 2); the PagedAttention paper serves them in 16-bit.

/** OPT-13B: 40 layers, width 5120, 40 heads, fp16. 819,200 bytes (800 KiB) per token. */
export const OPT_13B: Readonly<KVModelConfig> = Object.freeze({
  name: "OPT-13B",
  layers: 40,
  hidden: 5120,
  heads: 40,
  bytesPerValue: 2,
});
/** OPT-66B: 64 layers, width 9216, 72 heads, fp16. 2,359,296 bytes (2.25 MiB) per token. */
export const OPT_66B: Readonly<KVModelConfig> = Object.freeze({
  name: "OPT-66B",
  layers: 64,
  hidden: 9216,
  heads: 72,
  bytesPerValue: 2,
});
/** OPT-175B: 96 layers, width 12288, 96 heads, fp16. 4,718,592 bytes (4.5 MiB) per token. */
export const OPT_175B: Readonly<KVModelConfig> = Object.freeze({
  name: "OPT-175B",
  layers: 96,
  hidden: 12288,
  heads: 96,
  bytesPerValue: 2,
});
/** LLaMA-13B: 40 layers, width 5120, 40 heads, fp16: the same 800 KiB per token as OPT-13B. */
export const LLAMA_13B: Readonly<KVModelConfig> = Object.freeze({
  name: "LLaMA-13B",
  layers: 40,
  hidden: 5120,
  heads: 40,
  bytesPerValue: 2,
});

/** One column of the PagedAttention paper's Table 1 (model sizes and server configurations). */
export interface PaperServer {
  /** The column's model size; LLaMA-13B runs on the 13B server. */
  modelSize: "13B" | "66B" | "175B";
  /** The models of that size the paper evaluates. */
  models: readonly Readonly<KVModelConfig>[];
  /** GPUs, as the table writes them. */
  gpus: string;
  /** Total GPU memory, GB as printed. */
  totalMemoryGB: number;
  /** Parameter size, GB as printed. */
  parameterGB: number;
  /** Memory for KV cache, GB as printed (it behaves as GiB: 12 GiB / 800 KiB = 15.7K slots). */
  kvCacheGB: number;
  /** Max. # KV cache slots (tokens), as printed. */
  maxKvSlots: number;
}

/**
 * The PagedAttention paper's Table 1, as printed. `kvTokenSlots(model, kvCacheGB * 2 ** 30)` gives 15,728
 * (13B), 9,557 (66B: the table says 9.7K, so its "21 GB" is rounded) and 60,074 (175B).
 */
export const PAPER_SERVERS: readonly Readonly<PaperServer>[] = Object.freeze(
  [
    {
      modelSize: "13B",
      models: [OPT_13B, LLAMA_13B],
      gpus: "A100",
      totalMemoryGB: 40,
      parameterGB: 26,
      kvCacheGB: 12,
      maxKvSlots: 15_700,
    },
    {
      modelSize: "66B",
      models: [OPT_66B],
      gpus: "4xA100",
      totalMemoryGB: 160,
      parameterGB: 132,
      kvCacheGB: 21,
      maxKvSlots: 9_700,
    },
    {
      modelSize: "175B",
      models: [OPT_175B],
      gpus: "8xA100-80GB",
      totalMemoryGB: 640,
      parameterGB: 346,
      kvCacheGB: 264,
      maxKvSlots: 60_100,
    },
  ] as const,
);
