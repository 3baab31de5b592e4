/**
 * What the vision modules share: their named error ({@link VisionError}), input checks and FLOP helpers.
 * Internal to `models/vision/` except `VisionError`, which `mod.ts` exports.
 * @module
 */

import { isFloat } from "../../runtime/dtype.ts";
import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";

/** A named error for bad input to the vision modules and their data (shapes, channels, options). */
export class VisionError extends Error {
  /** Always "VisionError". */
  override name = "VisionError";
}

/** Throws a {@link VisionError} unless `v` is an integer >= `min`. */
export function checkInt(op: string, name: string, v: number, min = 1): void {
  if (!Number.isInteger(v) || v < min) {
    throw new VisionError(`${op}: ${name} must be an integer >= ${min}, got ${v}`);
  }
}

/**
 * Checks a feature map x (N, C, H, W) against a module of `channels` channels whose parameters live on
 * `device`: rank 4, float, the channel count, the device. Throws a {@link VisionError}.
 */
export function checkFeatureMap(op: string, x: Tensor, channels: number, device: string): void {
  if (x.rank !== 4) throw new VisionError(`${op}: x must be (N, C, H, W), got ${x.describe()}`);
  if (!isFloat(x.dtype)) throw new VisionError(`${op}: x must be a float tensor, got ${x.describe()}`);
  if (x.shape[1] !== channels) {
    throw new VisionError(
      `${op}: x ${fmt(x.shape)} has ${x.shape[1]} channels but the module was built for ${channels}`,
    );
  }
  if (x.device !== device) {
    throw new VisionError(`${op}: x is on ${x.device} but the module's parameters are on ${device}`);
  }
}

/** Checks a shape argument of a `flops(shape)` method: (N, C, H, W) with C = `channels`. */
export function checkShape(op: string, shape: readonly number[], channels: number): number[] {
  if (shape.length !== 4 || !shape.every((n) => Number.isInteger(n) && n > 0)) {
    throw new VisionError(`${op}: the shape must be (N, C, H, W) of positive integers, got ${fmt(shape)}`);
  }
  if (shape[1] !== channels) {
    throw new VisionError(`${op}: the shape ${fmt(shape)} has ${shape[1]} channels, the module ${channels}`);
  }
  return [...shape];
}

/** FLOPs of a Linear (in -> out) applied to `rows` rows: 2 in out per row, plus out for the bias. */
export function linearFlops(rows: number, inF: number, outF: number, bias: boolean): number {
  return rows * (2 * inF * outF + (bias ? outF : 0));
}

/** The hidden width C / r (floored) of a reduction MLP; throws when r is not in [1, C]. */
export function reducedWidth(op: string, channels: number, r: number): number {
  checkInt(op, "channels", channels);
  checkInt(op, "r", r);
  if (r > channels) {
    throw new VisionError(
      `${op}: the reduction r = ${r} is larger than the channels C = ${channels} (C / r must be at least 1)`,
    );
  }
  return Math.floor(channels / r);
}
