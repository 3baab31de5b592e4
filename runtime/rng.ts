/**
 * A small seeded generator (SplitMix32 over a 32-bit counter) for host-side sampling and shuffling: the
 * serving engine keeps one stream per sequence (so the tokens a seeded request draws do not depend on what
 * else is batched with it), and the image loaders shuffle with it.
 * @module
 */

/**
 * A seeded stream of uniform numbers (SplitMix32).
 *
 * @example
 * ```ts
 * import { Rng } from "seqlab";
 * const r = new Rng(7);
 * console.log(r.next() < 1, r.below(10) < 10); // true true
 * ```
 */
export class Rng {
  #s: number;
  /** A stream from a seed and a stream index (e.g. the sample's index in its request). */
  constructor(seed: number, stream = 0) {
    this.#s = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(stream + 1, 0x85ebca6b)) >>> 0;
  }
  /** The next uniform integer in [0, 2^32). */
  word(): number {
    let z = (this.#s = (this.#s + 0x9e3779b9) >>> 0);
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  }
  /** A uniform number in [0, 1). */
  next(): number {
    return this.word() / 2 ** 32;
  }
  /** A uniform number in (0, 1): never 0, so its logarithm is finite. */
  nextOpen(): number {
    return (this.word() + 0.5) / 2 ** 32;
  }
  /** A uniform integer in [0, n). */
  below(n: number): number {
    return Math.floor(this.next() * n);
  }
}
