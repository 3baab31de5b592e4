/**
 * What the vision ops share: their named error, [h, w] size pairs, the image check and strided views of
 * (N, C, H, W) tensors for the references.
 * @module
 */

import { gpu } from "../../runtime/device.ts";
import { isFloat } from "../../runtime/dtype.ts";
import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { grid } from "../../runtime/webgpu.ts";
import { empty, Uniforms } from "../core/util.ts";
import type { Strided4 } from "./conv2d_ref.ts";

/** A named error for bad input to the vision ops (shapes, channels, kernel, stride, padding, groups). */
export class ConvError extends Error {
  /** Always "ConvError". */
  override name = "ConvError";
}

/** A size given as one number or [h, w]. */
export type Size2 = number | readonly [number, number];

/** A checked [h, w] pair of integers >= min; throws a {@link ConvError} naming `name` otherwise. */
export function pair2(
  op: string,
  name: string,
  v: Size2 | undefined,
  dflt: Size2,
  min: number,
): [number, number] {
  const given = v ?? dflt;
  const p: readonly number[] = typeof given === "number" ? [given, given] : given;
  if (!Array.isArray(p) || p.length !== 2 || !p.every((n) => Number.isInteger(n) && n >= min)) {
    throw new ConvError(
      `${op}: ${name} must be an integer >= ${min} or two of them, got ${JSON.stringify(v)}`,
    );
  }
  return [p[0], p[1]];
}

/** Throws unless x is a live float (N, C, H, W) tensor. */
export function checkImage(op: string, x: Tensor): void {
  x.check(op);
  if (x.rank !== 4) throw new ConvError(`${op}: x must be (N, C, H, W), got ${fmt(x.shape)}`);
  if (!isFloat(x.dtype)) throw new ConvError(`${op}: x must be a float tensor, got ${x.describe()}`);
}

/** A tensor's storage as a strided (N, C, H, W) source for the references. */
export const strided4 = (t: Tensor): Strided4 => ({ data: t.storage.data!, off: t.offset, s: t.strides });

/** Invocations per workgroup of the vision shaders run by {@link pass} (their `workgroup_size`). */
export const VISION_WG = 64;

/** Uniforms [total, offset, 4 strides] of a strided (N, C, H, W) operand. */
const stridedUniforms = (total: number, t: Tensor) =>
  new Uniforms().u32(total, t.offset, ...t.strides).build();

/**
 * Runs one pass of a vision op into a new contiguous `shape` tensor: `cpu` fills it from the reference,
 * else the WGSL program reads `src` through its strides (uniforms [invocations, offset, strides]) with
 * `extra.threads` invocations (default: one per output element). Frees the output if anything throws.
 */
export function pass(
  name: string,
  src: Tensor,
  shape: number[],
  cpu: () => ArrayLike<number>,
  key: string,
  source: () => string,
  extra: { inputs?: Tensor[]; outputs?: Tensor[]; threads?: number } = {},
): Tensor {
  const out = empty(name, shape, src.dtype, src.device);
  try {
    if (src.device === "cpu") out.storage.data!.set(cpu());
    else if (out.size > 0) {
      gpu().run({
        name,
        key,
        source,
        inputs: [src, ...(extra.inputs ?? [])].map((t) => t.storage.buffer!),
        outputs: [out, ...(extra.outputs ?? [])].map((t) => t.storage.buffer!),
        uniforms: stridedUniforms(extra.threads ?? out.size, src),
        workgroups: grid(extra.threads ?? out.size, VISION_WG),
      });
    }
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}
