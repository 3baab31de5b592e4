/**
 * Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"), the counter-based generator
 * both backends share: element i of a call takes word i % 4 of block philox(counter = (i / 4, 0, stream lo,
 * stream hi), key = (seed lo, seed hi)). Uniforms are (word >> 8) * 2^-24 (exact in f32), normals come from
 * Box-Muller over word pairs. The WGSL twin is in random_wgsl.ts.
 * @module
 */

const M0 = 0xd2511f53, M1 = 0xcd9e8d57, W0 = 0x9e3779b9, W1 = 0xbb67ae85;

/** High 32 bits of the 64-bit product of two u32 values, from 16-bit halves (exact in float64). */
export function mulhi(a: number, b: number): number {
  const al = a & 0xffff, ah = a >>> 16, bl = b & 0xffff, bh = b >>> 16;
  const ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
  const mid = (ll >>> 16) + (lh & 0xffff) + (hl & 0xffff);
  return (hh + (lh >>> 16) + (hl >>> 16) + Math.floor(mid / 65536)) >>> 0;
}

/** One Philox4x32-10 block. */
export function philox(c0: number, c1: number, c2: number, c3: number, k0: number, k1: number): Uint32Array {
  for (let r = 0; r < 10; r++) {
    const hi0 = mulhi(M0, c0), lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi(M1, c2), lo1 = Math.imul(M1, c2) >>> 0;
    const n0 = (hi1 ^ c1 ^ k0) >>> 0, n2 = (hi0 ^ c3 ^ k1) >>> 0;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 = (k0 + W0) >>> 0;
    k1 = (k1 + W1) >>> 0;
  }
  return Uint32Array.of(c0, c1, c2, c3);
}

/** Fills `out` with uniform [low, high) or normal(mean, std) values for (seed, stream). */
export function randomRef(
  kind: "uniform" | "normal",
  seed: number,
  stream: number,
  a: number,
  b: number,
  out: { length: number; [i: number]: number },
): void {
  const k0 = seed >>> 0, k1 = Math.floor(seed / 2 ** 32) >>> 0;
  const s0 = stream >>> 0, s1 = Math.floor(stream / 2 ** 32) >>> 0;
  for (let blk = 0; blk * 4 < out.length; blk++) {
    const w = philox(blk >>> 0, Math.floor(blk / 2 ** 32), s0, s1, k0, k1);
    for (let j = 0; j < 4 && blk * 4 + j < out.length; j++) {
      let v: number;
      if (kind === "uniform") v = (w[j] >>> 8) * 2 ** -24;
      else {
        const p = j & 2; // Box-Muller over words (p, p + 1)
        const u1 = ((w[p] >>> 8) + 1) * 2 ** -24, u2 = (w[p + 1] >>> 8) * 2 ** -24;
        const r = Math.sqrt(-2 * Math.log(u1)), th = 2 * Math.PI * u2;
        v = (j & 1) === 0 ? r * Math.cos(th) : r * Math.sin(th);
      }
      out[blk * 4 + j] = kind === "uniform" ? a + (b - a) * v : a + b * v;
    }
  }
}
