/**
 * Reference Performer FAVOR+ in float64: the seeded random projection (orthogonal or i.i.d.), the
 * positive softmax-kernel features, and the resulting linear attention.
 * @module
 */

import type { Tensor } from "../../runtime/tensor.ts";
import { fmt } from "../../runtime/shape.ts";
import { randn } from "../core/creation.ts";
import { featureAttention64 } from "./linear_ref.ts";
import { checkQKV, checkScale, host64, tensor64 } from "./util.ts";

/**
 * The (m, D) projection rows w_j, float64, from one Philox stream of `seed`:
 * - i.i.d.: each row ~ N(0, I_D).
 * - orthogonal: ceil(m / D) blocks of D Gaussian rows, each block orthonormalised by Gram-Schmidt (twice,
 *   for float64 orthogonality at large D), row j then scaled by the norm of a fresh N(0, I_D) vector so
 *   that its length has the chi(D) law of a Gaussian row (Performer's "scaling = 0"); the last block is
 *   cut to m rows. Rows within a block are exactly orthogonal; blocks are independent.
 */
export function performerProjection64(m: number, D: number, seed: number, orthogonal: boolean): Float64Array {
  const blocks = Math.ceil(m / D);
  const nG = orthogonal ? blocks * D * D + m * D : m * D;
  const g = randn([nG], { seed, device: "cpu", dtype: "f64" });
  const G = g.storage.data! as Float64Array;
  const w = new Float64Array(m * D);
  if (!orthogonal) {
    w.set(G.subarray(0, m * D));
    g.dispose();
    return w;
  }
  const block = new Float64Array(D * D);
  for (let b = 0; b < blocks; b++) {
    block.set(G.subarray(b * D * D, (b + 1) * D * D));
    for (let i = 0; i < D; i++) {
      const ri = i * D;
      for (let pass = 0; pass < 2; pass++) {
        for (let j = 0; j < i; j++) {
          let d = 0;
          for (let c = 0; c < D; c++) d += block[ri + c] * block[j * D + c];
          for (let c = 0; c < D; c++) block[ri + c] -= d * block[j * D + c];
        }
      }
      let n = 0;
      for (let c = 0; c < D; c++) n += block[ri + c] ** 2;
      n = Math.sqrt(n);
      for (let c = 0; c < D; c++) block[ri + c] /= n;
    }
    for (let i = 0; i < D && b * D + i < m; i++) {
      const row = b * D + i;
      let len = 0;
      for (let c = 0; c < D; c++) len += G[blocks * D * D + row * D + c] ** 2;
      len = Math.sqrt(len);
      for (let c = 0; c < D; c++) w[row * D + c] = block[i * D + c] * len;
    }
  }
  g.dispose();
  return w;
}

/** Options of `performerAttention` and its reference. */
export interface PerformerOptions {
  /** Number of random features m (default round(D ln D), at least 1), or the (m, D) projection itself. */
  features?: number | Tensor;
  /** Seed of the projection (default 0). */
  seed?: number;
  /** Orthogonal random features (default true); false draws i.i.d. Gaussian rows. */
  orthogonal?: boolean;
  /** Query i sees keys j <= i (needs Tq = Tk). Default false. */
  causal?: boolean;
  /** The softmax temperature approximated, softmax(scale q k^T) (default 1 / sqrt(D)). */
  scale?: number;
  /** Chunk length of the causal path (see `featureAttention`). */
  chunkSize?: number;
}

/** Default number of random features for head dim D: round(D ln D), at least 1. */
export function defaultFeatureCount(D: number): number {
  return Math.max(1, Math.round(D * Math.log(D)));
}

/** The projection as float64 rows, from options (validated). */
export function projectionFrom(
  op: string,
  D: number,
  opts: PerformerOptions,
): { w: Float64Array; m: number } {
  const f = opts.features ?? defaultFeatureCount(D);
  if (typeof f !== "number") {
    if (f.rank !== 2 || f.shape[1] !== D) {
      throw new Error(`${op}: features must be an (m, D = ${D}) projection, got ${fmt(f.shape)}`);
    }
    return { w: host64(op, f), m: f.shape[0] };
  }
  if (!Number.isInteger(f) || f < 1) throw new Error(`${op}: features must be a positive integer, got ${f}`);
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new Error(`${op}: seed must be a non-negative integer, got ${seed}`);
  }
  return { w: performerProjection64(f, D, seed, opts.orthogonal ?? true), m: f };
}

/**
 * Reference Performer FAVOR+ attention (docs/papers.md, Performer): with x' = sqrt(scale) x,
 * phi(x) = exp(-|x'|^2 / 2) / sqrt(m) [exp(w_j^T x')]_{j < m}, so E[phi(q) . phi(k)] = exp(scale q . k);
 * then linear attention with these features.
 *
 * - `q`: (B, H, Tq, D), `k`: (B, H, Tk, D), `v`: (B, H, Tk, Dv), cpu tensors.
 * - options as {@link PerformerOptions}; the same seed gives the same features as `performerAttention`.
 *   A `features` tensor must be on cpu here.
 * - returns (B, H, Tq, Dv) f64.
 *
 * @example
 * ```ts
 * import { performerAttentionRef, randn } from "seqlab";
 * const q = randn([1, 1, 6, 4], { device: "cpu", seed: 1 }), v = randn([1, 1, 6, 2], { device: "cpu" });
 * console.log(performerAttentionRef(q, q, v, { features: 16, seed: 3 }).shape); // [1, 1, 6, 2]
 * ```
 */
export function performerAttentionRef(q: Tensor, k: Tensor, v: Tensor, opts: PerformerOptions = {}): Tensor {
  const op = "performerAttentionRef";
  const { B, H, Tq, Tk, D, Dv } = checkQKV(op, q, k, v, !!opts.causal);
  const { w, m } = projectionFrom(op, D, opts);
  const root = Math.sqrt(checkScale(op, opts.scale, D));
  const phi = (x: Float64Array, rows: number) => {
    const out = new Float64Array(rows * m);
    for (let r = 0; r < rows; r++) {
      let sq = 0;
      for (let c = 0; c < D; c++) sq += (root * x[r * D + c]) ** 2;
      for (let j = 0; j < m; j++) {
        let d = 0;
        for (let c = 0; c < D; c++) d += w[j * D + c] * root * x[r * D + c];
        out[r * m + j] = Math.exp(d - sq / 2) / Math.sqrt(m);
      }
    }
    return out;
  };
  const out = featureAttention64(
    phi(host64(op, q), B * H * Tq),
    phi(host64(op, k), B * H * Tk),
    host64(op, v),
    B * H,
    Tq,
    Tk,
    m,
    Dv,
    !!opts.causal,
  );
  return tensor64(out, [B, H, Tq, Dv]);
}
