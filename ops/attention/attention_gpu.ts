/**
 * What the WebGPU attention ops (flash.ts, standard.ts, decode.ts) share: the uniform fields every
 * program reads, the small per-call inputs (key lengths, ALiBi slopes, the block-sparse mask as a
 * buffer), binding helpers and the software adapter's loop limit. The programs themselves are recorded
 * with `gpu().run` like every other op (one batch, one pipeline cache, one error channel).
 * @module
 */

import type { Tensor } from "../../runtime/tensor.ts";
import type { Binding, GpuTexture } from "../../runtime/webgpu.ts";
import { fromArray } from "../core/util.ts";
import { type Resolved, UNBOUNDED } from "./attention_options.ts";
import type { Variant } from "./attention_wgsl.ts";

/** The largest workgroup count per grid dimension WebGPU guarantees. */
export const MAX_Y = 65535;

/**
 * Loops in these programs run at most this many iterations: lavapipe silently ends a loop after 65535
 * (the flash loops step 4 keys; softmax one key; the dK/dV loop is split over dispatches instead).
 */
const LOOP_CAP = 65535;

/** Throws when one shader loop would run past {@link LOOP_CAP} iterations. */
export function checkLoops(op: string, what: string, iterations: number): void {
  if (iterations > LOOP_CAP) {
    throw new Error(
      `${op}: ${what} needs ${iterations} iterations of one shader loop, over the ${LOOP_CAP} the software adapter runs; split the sequence`,
    );
  }
}

/** The compile-time variant of a call's programs. */
export function variantOf(r: Resolved, sparseElem = false): Variant {
  return { alibi: !!r.alibi, sparseElem };
}

/** Uniform fields common to every program of one call. */
export function baseFields(r: Resolved) {
  return {
    T: r.T,
    S: r.S,
    H: r.H,
    G: r.G,
    D: r.D,
    B: r.B,
    off: r.off,
    winL: r.window ? r.window[0] : UNBOUNDED,
    winR: r.window ? r.window[1] : UNBOUNDED,
    cR: r.causal ? 0 : UNBOUNDED,
    keepOn: r.keep ? 1 : 0,
    glob: r.globalTokens,
    scale: r.scale,
    spH: r.sparse && r.sparse.heads > 1 ? 1 : 0,
    nbr: r.sparse?.nbr ?? 0,
    nbc: r.sparse?.nbc ?? 0,
    br: r.sparse?.br ?? 1,
    bc: r.sparse?.bc ?? 1,
    Hkv: r.Hkv,
  };
}

/** Small per-call device inputs: key lengths (B) and the ALiBi slopes (H) when there are any. */
export interface AuxTensors {
  lens: Tensor;
  slopes: Tensor | null;
  dispose(): void;
}

/** Uploads the key lengths (the cache length S where there are none) and the ALiBi slopes. */
export function auxTensors(r: Resolved): AuxTensors {
  const lens = fromArray(r.lengths ?? new Array(r.B).fill(r.S), [r.B], "u32", "webgpu");
  const slopes = r.alibi ? fromArray(r.alibi, [r.H], "f32", "webgpu") : null;
  return {
    lens,
    slopes,
    dispose: () => {
      lens.dispose();
      slopes?.dispose();
    },
  };
}

/** A storage buffer binding that a program reads. */
export const readOf = (t: Tensor): Binding => ({ buffer: t.storage.buffer!, access: "read" });

/** A storage buffer binding that a program writes. */
export const writeOf = (t: Tensor): Binding => ({ buffer: t.storage.buffer!, access: "read_write" });

/** A texture a program reads with textureLoad. */
export const sampledOf = (t: GpuTexture): Binding => ({ texture: t, access: "sampled" });
