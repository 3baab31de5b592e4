/**
 * The MoE dispatch table: which token (and which of its K choices) sits in each expert's slots.
 * @module
 */

import { gpu } from "../../runtime/device.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { grid, MAX_LOOP } from "../../runtime/webgpu.ts";
import { full, zeros } from "../core/creation.ts";
import { contiguous } from "../core/elementwise.ts";
import { Uniforms } from "../core/util.ts";
import { moeRouteBlocksRef, moeRouteRef } from "./route_ref.ts";
import { moeRouteBlocksSource, moeRouteSource, ROUTE_WG } from "./route_wgsl.ts";

/** What {@link moeRoute} returns (no gradients: integer tables). */
export interface MoERoute {
  /** (E C) i32: the token in each expert slot, T for an empty slot (the index of a zero row). */
  tokenOf: Tensor;
  /** (E C) i32: the choice t K + k in each slot, T K for an empty slot (the index of a zero weight). */
  choiceOf: Tensor;
  /** (E) u32: each expert's choices, those past its capacity included. */
  counts: Tensor;
}

/**
 * Groups top-K router choices `indices` (T, K), i32 expert ids in [0, E), by expert into E x `capacity`
 * slots, each expert's choices in token order (stable); choices past an expert's capacity are dropped
 * (counted in `counts`). Everything stays on the device: no readback. An expert id outside [0, E) throws
 * on cpu; on webgpu it matches no expert (topk never produces one).
 *
 * @example
 * ```ts
 * import { moeRoute, tensor } from "seqlab";
 * const r = moeRoute(tensor([[1, 0], [1, 2]], { dtype: "i32" }), 3, 2);
 * console.log(await r.tokenOf.toArray(), await r.counts.toArray()); // Int32Array [0, 2, 0, 1, 1, 2] Uint32Array [1, 2, 1]
 * ```
 */
export function moeRoute(indices: Tensor, experts: number, capacity: number): MoERoute {
  checkRoute(indices, [["experts", experts], ["capacity", capacity]]);
  const [T, K] = indices.shape, E = experts, C = capacity, device = indices.device;
  const tokenOf = full([E * C], T, { dtype: "i32", device });
  const choiceOf = full([E * C], T * K, { dtype: "i32", device });
  const counts = zeros([E], { dtype: "u32", device });
  const idx = contiguous(indices);
  try {
    if (device === "cpu") {
      const [a, b, c] = [tokenOf, choiceOf, counts].map((t) => t.storage.data!);
      moeRouteRef(idx.storage.data!, idx.offset, T, K, E, C, a, b, c);
    } else {
      for (let j0 = 0; j0 < T * K; j0 += MAX_LOOP / 2) {
        gpu().run({
          name: "moeRoute",
          key: "v1",
          source: moeRouteSource,
          inputs: [idx.storage.buffer!],
          outputs: [tokenOf.storage.buffer!, choiceOf.storage.buffer!, counts.storage.buffer!],
          uniforms: new Uniforms().u32(K, E, C, idx.offset, j0, Math.min(T * K, j0 + MAX_LOOP / 2)).build(),
          workgroups: grid(E, ROUTE_WG),
        });
      }
    }
  } catch (e) {
    for (const t of [tokenOf, choiceOf, counts]) t.dispose();
    throw e;
  } finally {
    idx.dispose();
  }
  return { tokenOf, choiceOf, counts };
}

/** The checks moeRoute and moeRouteBlocks share. */
function checkRoute(indices: Tensor, sizes: [string, number][]): void {
  indices.check("moeRoute");
  if (indices.dtype !== "i32" || indices.rank !== 2) {
    throw new Error(`moeRoute: indices must be (T, K) i32, got ${indices.describe()}`);
  }
  for (const [n, v] of sizes) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`moeRoute: ${n} must be a positive integer, got ${v}`);
  }
}

/** What {@link moeRouteBlocks} returns (no gradients: integer tables). */
export interface MoERouteBlocks {
  /** (P B) i32: the token in each row, T for a padding row (the index of a zero row). */
  tokenOf: Tensor;
  /** (P B) i32: the choice t K + k in each row, T K for a padding row (the index of a zero weight). */
  choiceOf: Tensor;
  /** (P) i32: each block's expert (0 for unused trailing blocks, whose rows are all padding). */
  blockExpert: Tensor;
  /** (E) u32: each expert's choices. */
  counts: Tensor;
  /** Blocks P = ceil(T K / B) + E: enough for any routing, so the size is known without a readback. */
  blocks: number;
}

/**
 * An exact dispatch table of fixed size: top-K choices `indices` (T, K), i32 expert ids in [0, E), grouped
 * by expert into blocks of `blockRows` (B) rows, each expert's choices in token order, its last block padded.
 * Every block belongs to one expert, so a (P, B, D) @ (P, D, F) batched matmul with each block's expert
 * weights runs the experts on only their tokens (plus at most E (B - 1) padding rows and E empty blocks),
 * without a readback and without dropping anything.
 *
 * @example
 * ```ts
 * import { moeRouteBlocks, tensor } from "seqlab";
 * const r = moeRouteBlocks(tensor([[1, 0], [1, 2]], { dtype: "i32" }), 3, 2);
 * console.log(r.blocks, await r.tokenOf.toArray(), await r.blockExpert.toArray());
 * // 5 Int32Array [0, 2, 0, 1, 1, 2, 2, 2, 2, 2] Int32Array [0, 1, 2, 0, 0]
 * ```
 */
export function moeRouteBlocks(indices: Tensor, experts: number, blockRows: number): MoERouteBlocks {
  checkRoute(indices, [["experts", experts], ["blockRows", blockRows]]);
  const [T, K] = indices.shape, E = experts, B = blockRows, device = indices.device;
  const P = Math.ceil((T * K) / B) + E;
  const tokenOf = full([P * B], T, { dtype: "i32", device });
  const choiceOf = full([P * B], T * K, { dtype: "i32", device });
  const blockExpert = zeros([P], { dtype: "i32", device });
  const counts = zeros([E], { dtype: "u32", device });
  const fill = zeros([E], { dtype: "u32", device });
  const idx = contiguous(indices);
  try {
    if (device === "cpu") {
      const out = [tokenOf, choiceOf, blockExpert, counts].map((t) => t.storage.data!);
      moeRouteBlocksRef(idx.storage.data!, idx.offset, T, K, E, B, out[0], out[1], out[2], out[3]);
    } else {
      const bufs = [tokenOf, choiceOf, blockExpert, counts, fill].map((t) => t.storage.buffer!);
      for (const pass of [0, 1]) {
        for (let j0 = 0; j0 < T * K; j0 += MAX_LOOP / 2) {
          gpu().run({
            name: "moeRoute",
            key: "blocks v1",
            source: moeRouteBlocksSource,
            inputs: [idx.storage.buffer!],
            outputs: bufs,
            uniforms: new Uniforms().u32(K, E, B, idx.offset, j0, Math.min(T * K, j0 + MAX_LOOP / 2), pass)
              .build(),
            workgroups: grid(E, ROUTE_WG),
          });
        }
      }
    }
  } catch (e) {
    for (const t of [tokenOf, choiceOf, blockExpert, counts]) t.dispose();
    throw e;
  } finally {
    idx.dispose();
    fill.dispose();
  }
  return { tokenOf, choiceOf, blockExpert, counts, blocks: P };
}
