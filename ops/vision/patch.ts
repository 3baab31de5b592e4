/**
 * Patch tokens for vision transformers: {@link patchify} turns an image (N, C, H, W) into tokens
 * (N, (H / PH) (W / PW), C PH PW), channel-major within a patch as ViT's conv-stem flattening, and
 * {@link unpatchify} turns them back. Each is one WGSL gather (`patch_wgsl.ts`) and the other's backward;
 * the cpu path and the oracle are the loops in `patch_ref.ts`. Bad input throws a {@link ConvError}.
 * @module
 */

import { record } from "../../runtime/autograd.ts";
import { gpu } from "../../runtime/device.ts";
import { isFloat } from "../../runtime/dtype.ts";
import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { grid } from "../../runtime/webgpu.ts";
import { empty, Uniforms } from "../core/util.ts";
import { ConvError } from "./conv2d.ts";
import { type PatchGeometry, patchifyRef, unpatchifyRef } from "./patch_ref.ts";
import {
  PATCH_WG,
  patchifySource,
  patchifyVec4Source,
  patchKey,
  unpatchifySource,
  unpatchifyVec4Source,
} from "./patch_wgsl.ts";
import { checkImage, pair2, type Size2, strided4 } from "./pool.ts";

export type { PatchGeometry } from "./patch_ref.ts";

/** Options of {@link patchify} and {@link unpatchify}. */
export interface PatchOptions {
  /**
   * Shader version: "v1" one element per invocation, "v2" four (vec4: the source contiguous at an offset
   * divisible by 4, PW divisible by 4), "auto" (default) v2 where it applies. Checked on both backends.
   */
  version?: "auto" | "v1" | "v2";
}

/** Whether v2 (vec4) applies to `src` for patch width PW; throws for "v2" where it does not. */
function useVec4(op: string, src: Tensor, PW: number, version: PatchOptions["version"] = "auto"): boolean {
  if (version !== "auto" && version !== "v1" && version !== "v2") {
    throw new ConvError(`${op}: version must be "auto", "v1" or "v2", got ${JSON.stringify(version)}`);
  }
  const fits = src.isContiguous && src.offset % 4 === 0 && PW % 4 === 0;
  if (version === "v2" && !fits) {
    throw new ConvError(
      `${op}: v2 reads vec4s: it needs a contiguous source at an offset divisible by 4 and a patch width ` +
        `divisible by 4, got ${src.describe()} (offset ${src.offset}, contiguous ${src.isContiguous}) and PW ${PW}`,
    );
  }
  return version === "v1" ? false : fits;
}

/**
 * The geometry of patches of `patch` (one number or [PH, PW]) over images of `xShape` (N, C, H, W),
 * checked: the patch must divide H and W. Throws a {@link ConvError} naming what is wrong.
 *
 * @example
 * ```ts
 * import { patchGeometry } from "seqlab";
 * const g = patchGeometry([8, 3, 224, 224], 16);
 * console.log(g.GH * g.GW, g.C * g.PH * g.PW); // 196 768
 * ```
 */
export function patchGeometry(xShape: readonly number[], patch: Size2, op = "patchify"): PatchGeometry {
  if (xShape.length !== 4) throw new ConvError(`${op}: x must be (N, C, H, W), got ${fmt(xShape)}`);
  const [N, C, H, W] = xShape;
  const [PH, PW] = pair2(op, "patch", patch, 1, 1);
  if (H % PH !== 0 || W % PW !== 0) {
    throw new ConvError(
      `${op}: the patch ${PH}x${PW} does not divide the image ${H}x${W} (x ${fmt(xShape)})`,
    );
  }
  return { N, C, H, W, PH, PW, GH: H / PH, GW: W / PW };
}

/** patchify of a checked geometry, recorded with unpatchify as its backward. */
function patchifyWith(x: Tensor, g: PatchGeometry, v4: boolean): Tensor {
  const L = g.GH * g.GW, D = g.C * g.PH * g.PW;
  const out = empty("patchify", [g.N, L, D], x.dtype, x.device);
  try {
    if (x.device === "cpu") out.storage.data!.set(patchifyRef(g, strided4(x)));
    else if (out.size > 0) {
      const n = v4 ? out.size / 4 : out.size;
      gpu().run({
        name: "patchify",
        key: `${v4 ? "v2" : "v1"}|${x.dtype}|${patchKey(g)}`,
        source: () => (v4 ? patchifyVec4Source : patchifySource)(x.dtype, g),
        inputs: [x.storage.buffer!],
        outputs: [out.storage.buffer!],
        uniforms: v4
          ? new Uniforms().u32(n, x.offset / 4).build()
          : new Uniforms().u32(n, x.offset, ...x.strides).build(),
        workgroups: grid(n, PATCH_WG),
      });
    }
  } catch (e) {
    out.dispose();
    throw e;
  }
  return record("patchify", out, [x], [], (gt) => [unpatchifyWith(gt, g, useVec4("unpatchify", gt, g.PW))]);
}

/** unpatchify of a checked geometry, recorded with patchify as its backward. */
function unpatchifyWith(t: Tensor, g: PatchGeometry, v4: boolean): Tensor {
  const out = empty("unpatchify", [g.N, g.C, g.H, g.W], t.dtype, t.device);
  try {
    if (t.device === "cpu") {
      out.storage.data!.set(unpatchifyRef(g, { data: t.storage.data!, off: t.offset, s: t.strides }));
    } else if (out.size > 0) {
      const n = v4 ? out.size / 4 : out.size;
      gpu().run({
        name: "unpatchify",
        key: `${v4 ? "v2" : "v1"}|${t.dtype}|${patchKey(g)}`,
        source: () => (v4 ? unpatchifyVec4Source : unpatchifySource)(t.dtype, g),
        inputs: [t.storage.buffer!],
        outputs: [out.storage.buffer!],
        uniforms: v4
          ? new Uniforms().u32(n, t.offset / 4).build()
          : new Uniforms().u32(n, t.offset, ...t.strides).build(),
        workgroups: grid(n, PATCH_WG),
      });
    }
  } catch (e) {
    out.dispose();
    throw e;
  }
  return record("unpatchify", out, [t], [], (gx) => [patchifyWith(gx, g, useVec4("patchify", gx, g.PW))]);
}

/**
 * Image to patch tokens: x (N, C, H, W) -> (N, (H / PH) (W / PW), C PH PW). Token a (W / PW) + b is the
 * patch at grid row a, column b; its features run channel-major, (c, ki, kj), so `patchify(x, p)` times a
 * conv weight (O, C, p, p) flattened to (O, C p p) equals ViT's patch-embedding conv2d (kernel = stride =
 * p). `patch` is one number or [PH, PW] and must divide H and W; `opts.version` picks the shader
 * ({@link PatchOptions}). Differentiable on both backends (the
 * backward is {@link unpatchify}). Bad input throws a {@link ConvError}.
 *
 * @example
 * ```ts
 * import { arange, patchify } from "seqlab";
 * const x = arange(0, 16).reshape([1, 1, 4, 4]);
 * const t = patchify(x, 2);
 * console.log(t.shape, await t.toArray()); // [1, 4, 4] [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
 * ```
 */
export function patchify(x: Tensor, patch: Size2, opts: PatchOptions = {}): Tensor {
  checkImage("patchify", x);
  const g = patchGeometry(x.shape, patch);
  return patchifyWith(x, g, useVec4("patchify", x, g.PW, opts.version));
}

/**
 * Patch tokens back to images, the inverse of {@link patchify}: tokens (N, L, D) -> (N, C, H, W) for the
 * image size `size` = [H, W], with C = D / (PH PW) and L = (H / PH) (W / PW). Differentiable on both
 * backends (the backward is {@link patchify}). Bad input throws a {@link ConvError}.
 *
 * @example
 * ```ts
 * import { patchify, randn, unpatchify } from "seqlab";
 * const x = randn([2, 3, 8, 12], { seed: 1 });
 * const back = unpatchify(patchify(x, 4), 4, [8, 12]);
 * console.log(back.shape, (await back.sub(x).abs().max().item()) === 0); // [2, 3, 8, 12] true
 * ```
 */
export function unpatchify(
  tokens: Tensor,
  patch: Size2,
  size: readonly [number, number],
  opts: PatchOptions = {},
): Tensor {
  const op = "unpatchify";
  tokens.check(op);
  if (tokens.rank !== 3) throw new ConvError(`${op}: tokens must be (N, L, D), got ${fmt(tokens.shape)}`);
  if (!isFloat(tokens.dtype)) {
    throw new ConvError(`${op}: tokens must be a float tensor, got ${tokens.describe()}`);
  }
  const [PH, PW] = pair2(op, "patch", patch, 1, 1);
  const [N, L, D] = tokens.shape;
  if (!Array.isArray(size) || size.length !== 2 || !size.every((n) => Number.isInteger(n) && n >= 0)) {
    throw new ConvError(`${op}: size must be [H, W], two integers >= 0, got ${JSON.stringify(size)}`);
  }
  if (D % (PH * PW) !== 0) {
    throw new ConvError(
      `${op}: the token width ${D} (tokens ${
        fmt(tokens.shape)
      }) is not a multiple of the patch's ${PH}x${PW} pixels`,
    );
  }
  const g = patchGeometry([N, D / (PH * PW), size[0], size[1]], [PH, PW], op);
  if (g.GH * g.GW !== L) {
    throw new ConvError(
      `${op}: ${L} tokens (tokens ${fmt(tokens.shape)}) do not tile the image ${size[0]}x${size[1]}: ` +
        `its ${g.GH}x${g.GW} patches of ${PH}x${PW} make ${g.GH * g.GW}`,
    );
  }
  return unpatchifyWith(tokens, g, useVec4(op, tokens, PW, opts.version));
}
