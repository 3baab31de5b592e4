/**
 * Reference patch rearrangements, in plain loops: the oracle for `patch.ts` / `patch_wgsl.ts` and what the
 * cpu path runs. They move values without arithmetic, so the reference is exact in every dtype.
 *
 * Shapes: an image x (N, C, H, W) and its patch tokens (N, L, D) with L = (H / PH) (W / PW) and D = C PH PW.
 * Token t = a (W / PW) + b holds the patch whose top-left pixel is (a PH, b PW), row-major over the grid;
 * within a token, feature (c PH + ki) PW + kj is x[n, c, a PH + ki, b PW + kj]: channel-major, as the
 * flattened weights of ViT's conv stem (a conv2d with kernel = stride = the patch) see it.
 * @module
 */

import type { TypedArray } from "../../runtime/dtype.ts";
import type { Strided4 } from "./conv2d_ref.ts";

/** The geometry of a patch rearrangement (all sizes resolved). */
export interface PatchGeometry {
  /** Images. */
  N: number;
  /** Channels. */
  C: number;
  /** Image height. */
  H: number;
  /** Image width. */
  W: number;
  /** Patch height (divides H). */
  PH: number;
  /** Patch width (divides W). */
  PW: number;
  /** Patches down, H / PH. */
  GH: number;
  /** Patches across, W / PW. */
  GW: number;
}

/** A strided (N, L, D) source: element (n, t, f) at off + n s[0] + t s[1] + f s[2]. */
export interface Strided3 {
  /** The storage. */
  data: TypedArray;
  /** Element offset of (0, 0, 0). */
  off: number;
  /** Strides in elements. */
  s: readonly number[];
}

/** patchify: tokens (N, GH GW, C PH PW), contiguous, from x (N, C, H, W). */
export function patchifyRef(g: PatchGeometry, x: Strided4): Float64Array {
  const { N, C, PH, PW, GH, GW } = g;
  const L = GH * GW, D = C * PH * PW;
  const out = new Float64Array(N * L * D);
  for (let n = 0; n < N; n++) {
    for (let a = 0; a < GH; a++) {
      for (let b = 0; b < GW; b++) {
        const t = a * GW + b;
        for (let c = 0; c < C; c++) {
          for (let ki = 0; ki < PH; ki++) {
            for (let kj = 0; kj < PW; kj++) {
              out[(n * L + t) * D + (c * PH + ki) * PW + kj] =
                x.data[x.off + n * x.s[0] + c * x.s[1] + (a * PH + ki) * x.s[2] + (b * PW + kj) * x.s[3]];
            }
          }
        }
      }
    }
  }
  return out;
}

/** unpatchify, the inverse of {@link patchifyRef}: x (N, C, H, W), contiguous, from tokens (N, L, D). */
export function unpatchifyRef(g: PatchGeometry, tokens: Strided3): Float64Array {
  const { N, C, H, W, PH, PW, GW } = g;
  const out = new Float64Array(N * C * H * W);
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) {
      for (let h = 0; h < H; h++) {
        for (let w = 0; w < W; w++) {
          const a = Math.floor(h / PH), ki = h % PH, b = Math.floor(w / PW), kj = w % PW;
          out[((n * C + c) * H + h) * W + w] = tokens.data[
            tokens.off + n * tokens.s[0] + (a * GW + b) * tokens.s[1] +
            ((c * PH + ki) * PW + kj) * tokens.s[2]
          ];
        }
      }
    }
  }
  return out;
}
