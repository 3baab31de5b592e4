/**
 * Performer FAVOR+ (Choromanski et al.): softmax attention approximated by positive random features with
 * seeded orthogonal (or i.i.d.) projections, composed from core ops on either device, differentiable
 * through autograd in q, k and v.
 * @module
 */

import { checkDType, type DType, isFloat } from "../../runtime/dtype.ts";
import { checkDevice, type DeviceName, getDevice, gpu } from "../../runtime/device.ts";
import { noGrad, record } from "../../runtime/autograd.ts";
import { grid } from "../../runtime/webgpu.ts";
import { type Tensor, tidy } from "../../runtime/tensor.ts";
import { contiguous, exp, mul, sub } from "../core/elementwise.ts";
import { max, sum } from "../core/reduce.ts";
import { fromArray, Uniforms } from "../core/util.ts";
import { FAVOR_WG, favorExpV1 } from "./performer_wgsl.ts";
import { featureAttention } from "./linear.ts";
import { type PerformerOptions, performerProjection64, projectionFrom } from "./performer_ref.ts";
import { matmul } from "../core/matmul.ts";
import { checkQKV, checkScale } from "./util.ts";

/**
 * Positive random features of x (B, H, T, D) for the projection W (m, D), up to a constant factor per
 * query row (queries) or per (b, h) (keys), which cancels in the attention's normalisation:
 * phi = exp(e - max e) with e_j = root w_j . x - [key] root^2 |x|^2 / 2, the max over the row (queries) or
 * over (T, m) (keys) and treated as a constant. WebGPU: core matmul and row maxima, then the favor v1
 * shader; cpu: core ops in float64.
 * Backward (recorded here): with G = g phi, dx = root G W - [key] root^2 x sum_j G_j.
 */
function favorFeatures(x: Tensor, W: Tensor, root: number, isKey: boolean): Tensor {
  const [B, H, T] = x.shape, m = W.shape[0];
  const out = noGrad(() =>
    tidy(() => {
      if (x.device !== "webgpu") {
        let e = mul(matmul(x, W.transpose()), root);
        if (isKey) e = sub(e, mul(sum(mul(x, x), -1, true), (root * root) / 2));
        return exp(sub(e, max(e, isKey ? [2, 3] : -1, true)));
      }
      // the stabiliser from (B, H, T, 1) row data: max_j e_j = root max_j p_j - c |x|^2 root^2 / 2
      const p = contiguous(matmul(x, W.transpose())); // (B, H, T, m), updated in place below
      const c = isKey ? (root * root) / 2 : 0;
      const sq = isKey ? sum(mul(x, x), -1, true) : null; // (B, H, T, 1)
      const rowMax = mul(max(p, -1, true), root);
      const stab = sq ? max(sub(rowMax, mul(sq, c)), 2, true) : rowMax; // (B, H, 1, 1) or (B, H, T, 1)
      const n = B * H * T * m;
      if (n === 0) return p;
      gpu().run({
        name: "performerFeatures",
        key: `exp v1|${x.dtype}`,
        source: () => favorExpV1(x.dtype),
        inputs: [(sq ?? stab).storage.buffer!, stab.storage.buffer!],
        outputs: [p.storage.buffer!],
        uniforms: new Uniforms().u32(n, m, isKey ? T * m : m).f32(root, c).padTo(8).build(),
        workgroups: grid(n, FAVOR_WG),
      });
      return p;
    })
  );
  return record("performerFeatures", out, [x], [x, out, W], (g, [xs, phi, w]) =>
    tidy(() => {
      const G = mul(g, phi);
      const dx = mul(matmul(G, w), root);
      return [isKey ? sub(dx, mul(xs, mul(sum(G, -1, true), root * root))) : dx];
    }));
}

/** Options of {@link performerFeatures}. */
export interface PerformerFeatureOptions {
  /** Seed (default 0): the same seed gives the same rows on every device. */
  seed?: number;
  /** Orthogonal blocks (default true) or i.i.d. Gaussian rows. */
  orthogonal?: boolean;
  /** Device (default {@link getDevice}). */
  device?: DeviceName;
  /** Float dtype (default f32). */
  dtype?: DType;
}

/**
 * The (m, D) random projection of Performer's features: i.i.d. N(0, I_D) rows, or (default) orthogonal
 * random features: blocks of D rows orthonormalised by Gram-Schmidt, each row rescaled to the length of
 * an independent Gaussian vector (chi(D)). Generated in float64 on the host from one Philox stream of
 * `seed`, so every device gets the same rows.
 *
 * @example
 * ```ts
 * import { matmul, performerFeatures } from "seqlab";
 * const w = performerFeatures(4, 4, { seed: 1, device: "cpu" });
 * const g = await matmul(w, w.transpose()).toArray(); // rows are orthogonal
 * console.log(Math.abs(g[1]) < 1e-5, Math.abs(g[6]) < 1e-5); // true true
 * ```
 */
export function performerFeatures(m: number, D: number, opts: PerformerFeatureOptions = {}): Tensor {
  for (const [name, v] of [["m", m], ["D", D]] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new Error(`performerFeatures: ${name} must be a positive integer, got ${v}`);
    }
  }
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new Error(`performerFeatures: seed must be a non-negative integer, got ${seed}`);
  }
  const device = opts.device === undefined ? getDevice() : checkDevice("performerFeatures", opts.device);
  const dtype = opts.dtype === undefined ? "f32" : checkDType("performerFeatures", opts.dtype);
  if (!isFloat(dtype)) throw new Error(`performerFeatures: dtype must be a float type, got ${dtype}`);
  return fromArray(performerProjection64(m, D, seed, opts.orthogonal ?? true), [m, D], dtype, device);
}

/**
 * Performer FAVOR+ attention (docs/papers.md, Performer): softmax(scale q k^T) v approximated with positive
 * random features phi(x) = exp(-|x'|^2 / 2) / sqrt(m) [exp(w_j^T x')], x' = sqrt(scale) x, for which
 * E[phi(q) . phi(k)] = exp(scale q . k), then linear attention over the features (causal by cumulative
 * sums, see `featureAttention`). Memory and time are linear in T.
 *
 * Numerics: each query's features are divided by their row maximum and the keys' by the maximum over
 * (T, m) of one (b, h); both are constant factors that cancel between numerator and denominator, so the
 * result is unchanged while exp stays in range (the query's exp(-|q'|^2 / 2) and 1/sqrt(m) cancel too
 * and are skipped). On WebGPU the feature maps end in one fused shader (performer_wgsl.ts, favor v1);
 * the rest is composed from core ops.
 *
 * - `q`: (B, H, Tq, D), `k`: (B, H, Tk, D), `v`: (B, H, Tk, Dv) -> (B, H, Tq, Dv).
 * - `features`: m (default round(D ln D)) with `seed` and `orthogonal`, or an (m, D) projection tensor
 *   (e.g. from {@link performerFeatures}) on q's device.
 *
 * The reference is {@link performerAttentionRef}; differentiable in q, k and v (the projection is fixed).
 *
 * @example
 * ```ts
 * import { performerAttention, randn } from "seqlab";
 * const q = randn([1, 2, 32, 16], { seed: 1 }), k = randn([1, 2, 32, 16], { seed: 2 });
 * const v = randn([1, 2, 32, 16], { seed: 3 });
 * const out = performerAttention(q, k, v, { features: 64, seed: 7 });
 * console.log(out.shape); // [1, 2, 32, 16]
 * ```
 */
export function performerAttention(q: Tensor, k: Tensor, v: Tensor, opts: PerformerOptions = {}): Tensor {
  const op = "performerAttention";
  const { D } = checkQKV(op, q, k, v, !!opts.causal);
  const root = Math.sqrt(checkScale(op, opts.scale, D));
  let W: Tensor;
  if (typeof opts.features === "object") {
    const f = opts.features;
    f.check(op);
    if (f.rank !== 2 || f.shape[1] !== D) {
      throw new Error(`${op}: features must be an (m, D = ${D}) projection, got ${f.describe()}`);
    }
    if (f.device !== q.device) throw new Error(`${op}: features are on ${f.device} but q is on ${q.device}`);
    W = f;
  } else {
    const { w, m } = projectionFrom(op, D, opts);
    W = fromArray(w, [m, D], q.dtype, q.device, "performer projection");
  }
  try {
    return tidy(() => {
      const Wq = W.dtype === q.dtype ? W : W.cast(q.dtype);
      const phiQ = favorFeatures(q, Wq, root, false), phiK = favorFeatures(k, Wq, root, true);
      return featureAttention(phiQ, phiK, v, { causal: opts.causal, chunkSize: opts.chunkSize });
    });
  } finally {
    if (W !== opts.features) W.dispose();
  }
}
