/**
 * What the vision ops share: their named error, [h, w] size pairs, the image check and strided views of
 * (N, C, H, W) tensors for the references.
 * @module
 */

import { isFloat } from "../../runtime/dtype.ts";
import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
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
