/**
 * Attention for one new query per (batch, head) against a K/V cache (autoregressive decoding).
 * @module
 */

import { noGrad } from "../../runtime/autograd.ts";
import { gpu } from "../../runtime/device.ts";
import { itemSize } from "../../runtime/dtype.ts";
import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { contiguous } from "../core/elementwise.ts";
import { stack } from "../core/layout.ts";
import { empty } from "../core/util.ts";
import { auxTensors, baseFields, MAX_Y, variantOf } from "./attention_gpu.ts";
import { type AttentionOptions, type AttentionStats, makeStats, resolve } from "./attention_options.ts";
import { attentionRef, type AttentionResult } from "./attention_ref.ts";
import { decodeSource, packUniforms, variantKey } from "./attention_wgsl.ts";

/** Options of {@link attentionDecode}. */
export interface DecodeOptions {
  /** Valid cached keys: one length for every batch, or one per batch (default: the cache length). */
  length?: number | readonly number[];
  /** Score scale; default 1 / sqrt(D). */
  scale?: number;
  /** ALiBi slopes (H): bias -slope * (p - j) with the query at p = length - 1. */
  alibi?: readonly number[] | Float32Array | Float64Array;
  /** Left window: the query at p sees keys p - window ... p. */
  window?: number;
  /** With `window`: keys j < globalTokens are always visible. */
  globalTokens?: number;
}

/**
 * One new query per (batch, head) against a K/V cache: q1 (B, H, 1, D), kCache and vCache
 * (B, Hkv, Smax, D) of which the first `length[b]` keys are valid; the query sits at position
 * length[b] - 1 (its own key is already in the cache), so it sees every valid key (causal is implied).
 * On WebGPU the cached keys are split over the lanes of one workgroup per (batch, head) and merged (no
 * packing: the cache changes every step). Inference only: nothing is recorded for autograd. Returns O
 * (B, H, 1, D) and L (B, H, 1).
 *
 * @example
 * ```ts
 * import { attentionDecode, randn } from "seqlab";
 * const q = randn([2, 4, 1, 16], { seed: 1 }), cache = randn([2, 2, 32, 16], { seed: 2 });
 * const { o } = attentionDecode(q, cache, cache, { length: [10, 32] });
 * console.log(o.shape); // [2, 4, 1, 16]
 * ```
 */
export function attentionDecode(
  q1: Tensor,
  kCache: Tensor,
  vCache: Tensor,
  opts: DecodeOptions = {},
): AttentionResult {
  const op = "attentionDecode";
  if (q1.rank === 4 && q1.shape[2] !== 1) {
    throw new Error(`${op}: q must be (B, H, 1, D) (one new query), got ${fmt(q1.shape)}`);
  }
  const Smax = kCache.rank === 4 ? kCache.shape[2] : 0;
  const B = q1.rank === 4 ? q1.shape[0] : 0;
  const lens = typeof opts.length === "number" || opts.length === undefined
    ? new Array(B).fill(opts.length ?? Smax)
    : [...opts.length];
  if (lens.length !== B || lens.some((l) => !Number.isInteger(l) || l < 0 || l > Smax)) {
    throw new Error(
      `${op}: length must be B = ${B} integers in [0, ${Smax}] (the cache length), got ${opts.length}`,
    );
  }
  const base: AttentionOptions = {
    keyPadding: lens,
    scale: opts.scale,
    alibi: opts.alibi,
    window: opts.window,
    globalTokens: opts.globalTokens,
  };
  const r = resolve(op, q1, kCache, vCache, base, q1.device === "cpu");
  if (q1.device === "cpu") return noGrad(() => decodeOnCpu(q1, kCache, vCache, lens, base));
  const { H, D } = r;
  const o = empty(op, [B, H, 1, D], q1.dtype, "webgpu");
  const lse = empty(op, [B, H, 1], "f32", "webgpu");
  const D4 = Math.ceil(D / 4);
  const WG = D4 * 16 * 64 + 512 <= gpu().limits.maxComputeWorkgroupStorageSize ? 64 : 32;
  const stats = makeStats("decode v1", null, [{
    name: "decode v1",
    read: (B * H * D + 2 * lens.reduce((a, l) => a + l, 0) * r.Hkv * D) * itemSize(q1.dtype),
    written: B * H * (D * itemSize(q1.dtype) + 4),
    flops: 4 * D * H * lens.reduce((a, l) => a + l, 0),
  }]);
  if (o.size === 0) return { o, lse, stats };
  const kc = kCache.isContiguous ? kCache : contiguous(kCache);
  const vc = vCache.isContiguous ? vCache : contiguous(vCache);
  const aux = auxTensors(r);
  const variant = variantOf(r);
  try {
    const src = decodeSource(q1.dtype, D4, WG, variant);
    const inputs = [q1, kc, vc, aux.lens, aux.slopes].filter((x): x is Tensor => x !== null);
    gpu().run({
      name: op,
      key: `attention decode v1|${q1.dtype}|${D4}|${WG}|${variantKey(variant)}`,
      source: () => src.code,
      inputs: inputs.map((x) => x.storage.buffer!),
      outputs: [o.storage.buffer!, lse.storage.buffer!],
      uniforms: packUniforms({
        ...baseFields(r),
        qOff: q1.offset,
        qsB: q1.strides[0],
        qsH: q1.strides[1],
        qsD: q1.strides[3],
        nbh: B * H,
        x0: kc.offset,
        x1: vc.offset,
        nD4: D4,
      }),
      workgroups: [Math.min(B * H, MAX_Y), Math.ceil((B * H) / MAX_Y), 1],
    });
  } finally {
    if (kc !== kCache) kc.dispose();
    if (vc !== vCache) vc.dispose();
    aux.dispose();
  }
  return { o, lse, stats };
}

function decodeOnCpu(
  q1: Tensor,
  k: Tensor,
  v: Tensor,
  lens: number[],
  base: AttentionOptions,
): AttentionResult {
  const os: Tensor[] = [], ls: Tensor[] = [];
  let stats: AttentionStats | null = null;
  for (let b = 0; b < lens.length; b++) {
    const qb = q1.slice([[b, b + 1]]), kb = k.slice([[b, b + 1], null, [0, lens[b]]]);
    const vb = v.slice([[b, b + 1], null, [0, lens[b]]]);
    const res = attentionRef(qb, kb, vb, { ...base, keyPadding: undefined });
    stats = res.stats;
    os.push(res.o);
    ls.push(res.lse);
    for (const x of [qb, kb, vb]) x.dispose();
  }
  const so = os.map((x) => x.squeeze(0)), sl = ls.map((x) => x.squeeze(0));
  const o = so.length ? stack(so, 0) : empty("attentionDecode", q1.shape, q1.dtype, "cpu");
  const lse = sl.length ? stack(sl, 0) : empty("attentionDecode", [0, q1.shape[1], 1], q1.dtype, "cpu");
  for (const x of [...os, ...ls, ...so, ...sl]) x.dispose();
  return {
    o,
    lse,
    stats: { ...(stats ?? makeStats("reference", null, [])), impl: "reference (decode on cpu)" },
  };
}
