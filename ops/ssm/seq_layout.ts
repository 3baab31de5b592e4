/**
 * Layouts of (B, D, L) sequence operands shared by the conv and the scan: every (B, D, L) tensor is read
 * through its strides, and outputs are stored either contiguous or channels-last, a (B, D, L) view of a
 * (B, L, D) buffer, so that Mamba's (B, L, D) activations reach the conv and the scan, and leave them,
 * without transposing copies.
 * @module
 */

import { noGrad } from "../../runtime/autograd.ts";
import type { DeviceName } from "../../runtime/device.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { contiguous } from "../core/elementwise.ts";
import { empty } from "../core/util.ts";

/** (off, sb, sd, st) of a (B, D, L) view: element (b, d, t) sits at off + b sb + d sd + t st. */
export const seqWords = (t: Tensor): number[] => [t.offset, t.strides[0], t.strides[1], t.strides[2]];

/**
 * Whether the 4 channels 4 i .. 4 i + 3 of a (B, D, L) view at one step are one aligned vec4: channel
 * stride 1, D, the offset and the other strides multiples of 4 (channels-last activations).
 */
export const seqVec4 = (t: Tensor): boolean =>
  t.shape[1] % 4 === 0 && t.strides[1] === 1 &&
  [t.offset, t.strides[0], t.strides[2]].every((v) => v % 4 === 0);

/** A (B, D, L) view of a fresh (B, L, D) buffer: channels-last, its `.transpose(1, 2)` contiguous. */
export function channelsLastView(buf: Tensor): Tensor {
  const [Bn, L, D] = buf.shape;
  const v = buf.view([Bn, D, L], [L * D, 1, D], 0);
  buf.dispose();
  return v;
}

/** A new f32 (B, D, L) tensor, channels-last or contiguous. */
export function newSeq(
  op: string,
  [Bn, D, L]: readonly number[],
  channelsLast: boolean,
  device: DeviceName = "webgpu",
): Tensor {
  return channelsLast
    ? channelsLastView(empty(op, [Bn, L, D], "f32", device))
    : empty(op, [Bn, D, L], "f32", device);
}

/** A (B, D, L) result moved into the layout asked for (a transposing copy for channels-last; frees t). */
export function toLayout(t: Tensor, channelsLast: boolean): Tensor {
  if (!channelsLast) return t;
  const c = noGrad(() => tidy(() => contiguous(t.transpose(1, 2)))); // (B, L, D)
  t.dispose();
  return channelsLastView(c);
}
