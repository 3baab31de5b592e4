/**
 * Reference attention in float64 loops: the oracle every other implementation is tested against.
 *
 * Shapes (B batch, H query heads, Hkv kv heads dividing H, T queries, S keys, D head width):
 * - q: (B, H, T, D); k, v: (B, Hkv, S, D); query head h reads kv head floor(h / (H / Hkv)) (GQA; MQA is
 *   Hkv = 1).
 * - With `layout: "bthd"`, q is (B, T, H, D), k and v (B, S, Hkv, D) and O (B, T, H, D); L stays (B, H, T).
 * - O: (B, H, T, D) = softmax(scale * q k^T + bias, masked) v; L: (B, H, T) the log-sum-exp of the
 *   masked, scaled, biased scores (natural log); a row with no visible key gives O = 0 and L = -inf.
 * - Masks (see {@link AttentionOptions}): causal bottom-right aligned (query i is at key position
 *   i + S - T), key padding (B, S) 0/1 or lengths (B), sliding window with global tokens, block-sparse
 *   (H or 1, ceil(T / Br), ceil(S / Bc)); ALiBi slopes (H).
 *
 * It materialises the scores S and probabilities P of each row (T x S per head in total), like the
 * paper's standard attention.
 * @module
 */

import { record } from "../../runtime/autograd.ts";
import type { DType } from "../../runtime/dtype.ts";
import { fmt } from "../../runtime/shape.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { empty } from "../core/util.ts";
import {
  type AttentionOptions,
  type AttentionStats,
  bias,
  headStrides,
  headsView,
  type Layout,
  layoutShape,
  makeStats,
  resolve,
  type Resolved,
  visible,
} from "./attention_options.ts";

/** What an attention call returns: the output, the log-sum-exp, and the work it did. */
export interface AttentionResult {
  /** (B, H, T, D), differentiable with respect to q, k, v. */
  o: Tensor;
  /** (B, H, T) log-sum-exp of each row's scores (no gradient flows through it). */
  lse: Tensor;
  /** FLOPs and device-memory traffic of the programs that ran (see {@link AttentionStats}). */
  stats: AttentionStats;
}

/** Reads a 4-D cpu tensor given in `layout` into a contiguous float64 array in (B, heads, rows, D) order. */
function host(t: Tensor, layout: Layout = "bhtd"): Float64Array {
  const view = headsView(t, layout);
  const c = view.contiguous();
  const out = Float64Array.from(c.storage.data!.subarray(c.offset, c.offset + c.size));
  c.dispose();
  view.dispose();
  return out;
}

/** A cpu tensor in `layout` from (B, heads, rows, D)-ordered data `a`. */
function fromHeads(op: string, a: Float64Array, dims: number[], dtype: DType, layout: Layout): Tensor {
  const [B, Hn, R, D] = dims;
  const t = empty(op, layoutShape(layout, B, Hn, R, D), dtype, "cpu");
  const [sB, sH, sR] = headStrides(t, layout);
  const out = t.storage.data!;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < Hn; h++) {
      for (let i = 0; i < R; i++) {
        const src = ((b * Hn + h) * R + i) * D, dst = b * sB + h * sH + i * sR;
        for (let d = 0; d < D; d++) out[dst + d] = a[src + d];
      }
    }
  }
  return t;
}

/** The standard model of reference/standard attention: Theta(T D + T S) traffic, 4 T S D FLOPs per head. */
export function standardModel(r: Resolved, impl: string, bytes: number): AttentionStats {
  const BH = r.B * r.H, TS = r.T * r.S;
  const io = (n: number) => n * bytes;
  return makeStats(impl, null, [
    {
      name: "S = scale q k^T",
      read: io(BH * r.T * r.D + r.B * r.Hkv * r.S * r.D),
      written: io(BH * TS),
      flops: 2 * BH * TS * r.D,
    },
    { name: "P = softmax(S)", read: io(BH * TS), written: io(BH * TS + BH * r.T), flops: 5 * BH * TS },
    {
      name: "O = P v",
      read: io(BH * TS + r.B * r.Hkv * r.S * r.D),
      written: io(BH * r.T * r.D),
      flops: 2 * BH * TS * r.D,
    },
  ]);
}

/**
 * The standard backward's model (P saved by the forward): dV = P^T dO, dP = dO V^T, dS = P (dP - D),
 * dQ = scale dS K, dK = scale dS^T Q: Theta(T D + T S) traffic, 8 T S D FLOPs per head.
 */
export function standardBackwardModel(r: Resolved, impl: string, bytes: number): AttentionStats {
  const BH = r.B * r.H, TS = r.T * r.S, TD = BH * r.T * r.D, SD = r.B * r.Hkv * r.S * r.D;
  const io = (n: number) => n * bytes;
  return makeStats(impl, null, [
    { name: "dV = P^T dO", read: io(BH * TS + TD), written: io(SD), flops: 2 * BH * TS * r.D },
    { name: "dP = dO V^T", read: io(TD + SD), written: io(BH * TS), flops: 2 * BH * TS * r.D },
    {
      name: "dS = P (dP - rowsum(dO O))",
      read: io(2 * BH * TS + 2 * TD),
      written: io(BH * TS),
      flops: 2 * BH * TS + 2 * TD,
    },
    { name: "dQ = scale dS K", read: io(BH * TS + SD), written: io(TD), flops: 2 * BH * TS * r.D },
    { name: "dK = scale dS^T Q", read: io(BH * TS + TD), written: io(SD), flops: 2 * BH * TS * r.D },
  ]);
}

/** Per-row probabilities P (visible entries) recomputed in float64; returns L and fills p. */
function rowProbs(
  r: Resolved,
  qd: Float64Array,
  kd: Float64Array,
  b: number,
  h: number,
  i: number,
  p: Float64Array,
): number {
  const { T, S, D, Hkv, G, H } = r;
  const hk = Math.floor(h / G);
  const qo = ((b * H + h) * T + i) * D;
  let m = -Infinity;
  for (let j = 0; j < S; j++) {
    if (!visible(r, b, h, i, j)) {
      p[j] = -Infinity;
      continue;
    }
    const ko = ((b * Hkv + hk) * S + j) * D;
    let s = 0;
    for (let d = 0; d < D; d++) s += qd[qo + d] * kd[ko + d];
    p[j] = r.scale * s + bias(r, h, i, j);
    if (p[j] > m) m = p[j];
  }
  if (m === -Infinity) {
    p.fill(0);
    return -Infinity;
  }
  let z = 0;
  for (let j = 0; j < S; j++) z += p[j] === -Infinity ? 0 : Math.exp(p[j] - m);
  for (let j = 0; j < S; j++) p[j] = p[j] === -Infinity ? 0 : Math.exp(p[j] - m) / z;
  return m + Math.log(z);
}

/**
 * Standard attention in float64 on the cpu, materialising S and P: the oracle for every other
 * implementation. q (B, H, T, D), k and v (B, Hkv, S, D), all cpu tensors of one float dtype; returns O
 * (B, H, T, D) and L (B, H, T) in that dtype. Differentiable (its backward, also in float64, is
 * {@link attentionRefBackward}). Throws naming the shapes on bad input.
 *
 * @example
 * ```ts
 * import { attentionRef, tensor } from "seqlab";
 * const q = tensor([[[[1, 0], [0, 1]]]], { device: "cpu" }); // (1, 1, 2, 2)
 * const { o, lse } = attentionRef(q, q, q, { causal: true, scale: 1 });
 * console.log(await o.toArray()); // [1, 0, 0.2689, 0.7311]: row 0 sees key 0 only
 * console.log(await lse.toArray()); // [1, 1.3133]
 * ```
 */
export function attentionRef(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): AttentionResult {
  const r = resolve("attentionRef", q, k, v, opts, true);
  if (q.device !== "cpu") {
    throw new Error(`attentionRef: runs on the cpu; got ${q.describe()} (use await t.to("cpu"))`);
  }
  const { B, H, T, S, D, Hkv, G, layout } = r;
  const qd = host(q, layout), kd = host(k, layout), vd = host(v, layout);
  const od = new Float64Array(B * H * T * D);
  const lse = empty("attentionRef", [B, H, T], q.dtype, "cpu");
  const ld = lse.storage.data!;
  const p = new Float64Array(S);
  const acc = new Float64Array(D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const hk = Math.floor(h / G);
      for (let i = 0; i < T; i++) {
        const row = (b * H + h) * T + i;
        ld[row] = rowProbs(r, qd, kd, b, h, i, p);
        acc.fill(0);
        for (let j = 0; j < S; j++) {
          if (p[j] === 0) continue;
          const vo = ((b * Hkv + hk) * S + j) * D;
          for (let d = 0; d < D; d++) acc[d] += p[j] * vd[vo + d];
        }
        for (let d = 0; d < D; d++) od[row * D + d] = acc[d];
      }
    }
  }
  const o = fromHeads("attentionRef", od, [B, H, T, D], q.dtype, layout);
  const stats = standardModel(r, "reference", q.dtype === "f64" ? 8 : 4);
  const out = record("attentionRef", o, [q, k, v], [q, k, v], (g, [qs, ks, vs]) => {
    const grads = attentionRefBackward(g, qs, ks, vs, opts);
    stats.backward = standardBackwardModel(r, "reference backward", q.dtype === "f64" ? 8 : 4);
    return grads;
  });
  return { o: out, lse, stats };
}

/**
 * The gradients of {@link attentionRef}'s O with respect to q, k, v for an output gradient dO
 * (B, H, T, D), in float64 on the cpu: with P recomputed per row, dV = P^T dO, dP = dO V^T,
 * D_i = rowsum(dO * O) = sum_j P_ij dP_ij, dS = P * (dP - D_i), dQ = scale dS K, dK = scale dS^T Q (summed
 * over the query heads sharing a kv head). Returns [dq, dk, dv] in q's dtype.
 *
 * @example
 * ```ts
 * import { attentionRefBackward, ones, randn } from "seqlab";
 * const q = randn([1, 2, 3, 4], { device: "cpu", seed: 1 }), kv = randn([1, 1, 3, 4], { device: "cpu", seed: 2 });
 * const [dq, dk, dv] = attentionRefBackward(ones([1, 2, 3, 4], { device: "cpu" }), q, kv, kv, { causal: true });
 * console.log(dq.shape, dk.shape, dv.shape); // [1, 2, 3, 4] [1, 1, 3, 4] [1, 1, 3, 4]
 * ```
 */
export function attentionRefBackward(
  dO: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions = {},
): Tensor[] {
  const r = resolve("attentionRefBackward", q, k, v, opts, true);
  const { B, H, T, S, D, Hkv, G, layout } = r;
  const oShape = layoutShape(layout, B, H, T, D);
  if (dO.rank !== 4 || dO.shape.some((d, i) => d !== oShape[i])) {
    throw new Error(`attentionRefBackward: dO must be ${fmt(oShape)} like O, got ${dO.describe()}`);
  }
  if (q.device !== "cpu" || dO.device !== "cpu") {
    throw new Error(`attentionRefBackward: runs on the cpu; got ${q.describe()} and ${dO.describe()}`);
  }
  const qd = host(q, layout), kd = host(k, layout), vd = host(v, layout), gd = host(dO, layout);
  const dq = new Float64Array(qd.length), dk = new Float64Array(kd.length), dv = new Float64Array(vd.length);
  const p = new Float64Array(S), dp = new Float64Array(S);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const hk = Math.floor(h / G);
      for (let i = 0; i < T; i++) {
        const row = ((b * H + h) * T + i) * D;
        rowProbs(r, qd, kd, b, h, i, p);
        let Di = 0;
        for (let j = 0; j < S; j++) {
          if (p[j] === 0) {
            dp[j] = 0;
            continue;
          }
          const vo = ((b * Hkv + hk) * S + j) * D;
          let t = 0;
          for (let d = 0; d < D; d++) {
            t += gd[row + d] * vd[vo + d];
            dv[vo + d] += p[j] * gd[row + d];
          }
          dp[j] = t;
          Di += p[j] * t;
        }
        for (let j = 0; j < S; j++) {
          if (p[j] === 0) continue;
          const ds = p[j] * (dp[j] - Di) * r.scale;
          const ko = ((b * Hkv + hk) * S + j) * D;
          for (let d = 0; d < D; d++) {
            dq[row + d] += ds * kd[ko + d];
            dk[ko + d] += ds * qd[row + d];
          }
        }
      }
    }
  }
  const wrap = (a: Float64Array, dims: number[]) =>
    fromHeads("attentionRefBackward", a, dims, q.dtype, layout);
  return [wrap(dq, [B, H, T, D]), wrap(dk, [B, Hkv, S, D]), wrap(dv, [B, Hkv, S, D])];
}
