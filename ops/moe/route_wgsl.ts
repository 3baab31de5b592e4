/**
 * WGSL kernel of the MoE dispatch table (see `route_ref.ts`).
 *
 * Versions:
 * - route v1: one invocation per expert, scanning every choice in order and appending its own: stable
 *   without atomics or a sort; E x T K index loads (16 x 2048 for a 1024-token batch, top-2 of 16), in
 *   windows of MAX_LOOP / 2 choices per dispatch with the counts carried over.
 * - route blocks v1: the same scan twice, for an exact table of fixed size: a first pass counts each
 *   expert's choices, a second places them at the expert's block-aligned start (each lane sums the padded
 *   counts of the experts before it: E loads) and labels the expert's blocks.
 * @module
 */

import { flatId } from "../../runtime/webgpu.ts";
import { uniformDecl } from "../core/util.ts";

/** Invocations per workgroup of the route kernel. */
export const ROUTE_WG = 64;

/** Uniforms: [K, E, C, idxOff, j0, j1]: choices j0 .. j1 - 1, appended after counts from earlier windows. */
export function moeRouteSource(): string {
  return `${uniformDecl(8)}
@group(0) @binding(1) var<storage, read> idx: array<i32>;
@group(0) @binding(2) var<storage, read_write> tokenOf: array<i32>;
@group(0) @binding(3) var<storage, read_write> choiceOf: array<i32>;
@group(0) @binding(4) var<storage, read_write> counts: array<u32>;
${flatId(ROUTE_WG)}
  let K = U(0u); let E = U(1u); let C = U(2u); let off = U(3u);
  if (gid >= E) { return; }
  let e = i32(gid);
  var c = counts[gid];
  for (var j = U(4u); j < U(5u); j++) {
    if (idx[off + j] == e) {
      if (c < C) {
        tokenOf[gid * C + c] = i32(j / K);
        choiceOf[gid * C + c] = i32(j);
      }
      c++;
    }
  }
  counts[gid] = c;
}`;
}

/**
 * Uniforms: [K, E, B, idxOff, j0, j1, pass]: pass 0 counts choices j0 .. j1 - 1 into counts; pass 1 places
 * them (fill carries each expert's placed count between windows) and, in its first window, writes
 * blockExpert for the expert's blocks.
 */
export function moeRouteBlocksSource(): string {
  return `${uniformDecl(8)}
@group(0) @binding(1) var<storage, read> idx: array<i32>;
@group(0) @binding(2) var<storage, read_write> tokenOf: array<i32>;
@group(0) @binding(3) var<storage, read_write> choiceOf: array<i32>;
@group(0) @binding(4) var<storage, read_write> blockExpert: array<i32>;
@group(0) @binding(5) var<storage, read_write> counts: array<u32>;
@group(0) @binding(6) var<storage, read_write> fill: array<u32>;
${flatId(ROUTE_WG)}
  let K = U(0u); let E = U(1u); let B = U(2u); let off = U(3u);
  if (gid >= E) { return; }
  let e = i32(gid);
  if (U(6u) == 0u) {
    var c = counts[gid];
    for (var j = U(4u); j < U(5u); j++) {
      if (idx[off + j] == e) { c++; }
    }
    counts[gid] = c;
    return;
  }
  var base = 0u;
  for (var q = 0u; q < gid; q++) { base += (counts[q] + B - 1u) / B * B; }
  if (U(4u) == 0u) {
    let p0 = base / B;
    for (var p = p0; p < p0 + (counts[gid] + B - 1u) / B; p++) { blockExpert[p] = e; }
  }
  var c = fill[gid];
  for (var j = U(4u); j < U(5u); j++) {
    if (idx[off + j] == e) {
      tokenOf[base + c] = i32(j / K);
      choiceOf[base + c] = i32(j);
      c++;
    }
  }
  fill[gid] = c;
}`;
}
