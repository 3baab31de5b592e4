/**
 * Standard attention on WebGPU, the paper's baseline (its Algorithm 0): S and P materialised in device
 * memory, with a backward composed from matmuls and elementwise ops.
 * @module
 */

import { isGradEnabled, noGrad, record } from "../../runtime/autograd.ts";
import { gpu } from "../../runtime/device.ts";
import type { Tensor } from "../../runtime/tensor.ts";
import { grid, type Program } from "../../runtime/webgpu.ts";
import { zeros } from "../core/creation.ts";
import { add, copyInto, mul, sub } from "../core/elementwise.ts";
import { matmul } from "../core/matmul.ts";
import { sum } from "../core/reduce.ts";
import { empty, fromArray } from "../core/util.ts";
import { auxTensors, baseFields, checkLoops, variantOf } from "./attention_gpu.ts";
import { type AttentionOptions, resolve, type Resolved, viaHeadsFirst } from "./attention_options.ts";
import { attentionRef, type AttentionResult, standardBackwardModel, standardModel } from "./attention_ref.ts";
import { packUniforms, softmaxSource, variantKey } from "./attention_wgsl.ts";

/**
 * Standard attention on WebGPU, the paper's baseline (its Algorithm 0): S = q k^T is written to device
 * memory (the library's matmul), read back by a masked-softmax shader that writes P and L, and
 * O = P v (matmul). S and P are materialised for all heads: scores of up to maxStorageBufferBindingSize
 * bytes per buffer, split over (batch, head) chunks; a single head's T x S scores over that limit is an
 * error (use {@link flashAttention}). Differentiable, with a backward composed from the same pieces
 * (P saved: T x S memory per head). f32 only; on the cpu it computes with {@link attentionRef}.
 *
 * Shapes: q (B, H, T, D); k, v (B, Hkv, S, D); O (B, H, T, D); L (B, H, T).
 *
 * @example
 * ```ts
 * import { randn, standardAttention } from "seqlab";
 * const q = randn([1, 2, 64, 16], { seed: 1 }), kv = randn([1, 2, 64, 16], { seed: 2 });
 * const { o, stats } = standardAttention(q, kv, kv);
 * console.log(o.shape, stats.impl); // [1, 2, 64, 16] "standard"
 * ```
 */
export function standardAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions = {},
): AttentionResult {
  const op = "standardAttention";
  const r = resolve(op, q, k, v, opts, q.device === "cpu");
  if (r.layout === "bthd") {
    return viaHeadsFirst(q, k, v, (a, b, c) => standardAttention(a, b, c, { ...opts, layout: "bhtd" }));
  }
  if (q.device === "cpu") {
    const res = attentionRef(q, k, v, opts);
    res.stats.impl = "reference (standardAttention on cpu)";
    return res;
  }
  if (q.dtype !== "f32") throw new Error(`${op}: needs f32 on webgpu, got ${q.dtype}; use flashAttention`);
  const { B, H, Hkv, G, T, S, D } = r;
  const cap = gpu().maxBinding;
  const perHead = T * S * 4;
  if (perHead > cap) {
    throw new Error(
      `${op}: the scores of one head (T x S = ${T} x ${S}) need ${
        (perHead / 2 ** 20).toFixed(0)
      } MiB, over the adapter's maxStorageBufferBindingSize (${
        (cap / 2 ** 20).toFixed(0)
      } MiB); use flashAttention`,
    );
  }
  checkLoops(op, `a softmax row of S = ${S} keys`, S);
  const P = B * Hkv;
  const chunks: { p0: number; p1: number; g0: number; g1: number }[] = [];
  if (G * perHead <= cap) {
    const n = Math.max(1, Math.floor(cap / Math.max(1, G * perHead)));
    for (let p0 = 0; p0 < P; p0 += n) chunks.push({ p0, p1: Math.min(P, p0 + n), g0: 0, g1: G });
  } else {
    const m = Math.floor(cap / perHead);
    for (let p = 0; p < P; p++) {
      for (let g0 = 0; g0 < G; g0 += m) chunks.push({ p0: p, p1: p + 1, g0, g1: Math.min(G, g0 + m) });
    }
  }
  const variant = variantOf(r);
  const stats = standardModel(r, "standard", 4);
  const o5 = empty(op, [P, G, T, D], "f32", "webgpu");
  const lse = empty(op, [B, H, T], "f32", "webgpu");
  const needGrad = isGradEnabled() && [q, k, v].some((t) => t.requiresGrad);
  const probs: Tensor[] = [];
  noGrad(() => {
    const q5 = q.reshape([P, G, T, D]), k5 = k.reshape([P, 1, S, D]), v5 = v.reshape([P, 1, S, D]);
    const aux = auxTensors(r);
    // the block-sparse mask as a buffer (a one-word stand-in without one: every variant binds it)
    const smask = fromArray(
      r.sparse ? r.sparse.mask : [0],
      [r.sparse ? r.sparse.mask.length : 1],
      "u32",
      "webgpu",
    );
    const keepBuf = r.keep ? r.keep.cast("f32") : fromArray([1], [1], "f32", "webgpu");
    try {
      if (o5.size > 0 && S > 0) {
        // Algorithm 0: write S for every chunk, then P (each S chunk freed once its P exists), then O
        const scores = chunks.map((c) => {
          const qc = q5.slice([[c.p0, c.p1], [c.g0, c.g1]]), kc = k5.slice([[c.p0, c.p1]]);
          const kt = kc.transpose(-1, -2);
          const s = matmul(qc, kt);
          for (const x of [qc, kc, kt]) x.dispose();
          return s;
        });
        chunks.forEach((c, n) => {
          const s = scores[n];
          const p = empty(op, s.shape, "f32", "webgpu");
          const rowsN = (c.p1 - c.p0) * (c.g1 - c.g0) * T;
          const src = softmaxSource(variant);
          const inputs = [s, aux.lens, smask, keepBuf, aux.slopes].filter((x): x is Tensor => x !== null);
          const prog: Program = {
            name: op,
            key: `attention softmax v1|${variantKey(variant)}`,
            source: () => src.code,
            inputs: inputs.map((x) => x.storage.buffer!),
            outputs: [p.storage.buffer!, lse.storage.buffer!],
            uniforms: packUniforms({ ...baseFields(r), bh0: c.p0 * G + c.g0, nbh: rowsN }),
            workgroups: grid(rowsN, 64),
          };
          gpu().run(prog);
          s.dispose();
          probs.push(p);
        });
        chunks.forEach((c, n) => {
          const vc = v5.slice([[c.p0, c.p1]]);
          const oc = matmul(probs[n], vc);
          const dst = o5.slice([[c.p0, c.p1], [c.g0, c.g1]]);
          copyInto(dst, oc);
          for (const x of [vc, oc, dst]) x.dispose();
        });
      } else if (o5.size > 0) {
        copyInto(o5, zeros([1], { device: "webgpu" }));
        copyInto(lse, fromArray([-Infinity], [1], "f32", "webgpu"));
      }
    } finally {
      for (const x of [q5, k5, v5]) x.dispose();
      keepBuf.dispose();
      smask.dispose();
      aux.dispose();
    }
  });
  const o = o5.reshape([B, H, T, D]);
  o5.dispose();
  if (!needGrad) {
    for (const p of probs) p.dispose();
    return { o, lse, stats };
  }
  const out = record(op, o, [q, k, v], [q, k, v, o, ...probs], (g, saved) => {
    const [qs, ks, vs, os] = saved;
    const grads = standardBackward(r, chunks, g, qs, ks, vs, os, saved.slice(4));
    stats.backward = standardBackwardModel(r, "standard backward", 4);
    return grads;
  });
  for (const p of probs) p.dispose(); // the graph holds its own references
  return { o: out, lse, stats };
}

function standardBackward(
  r: Resolved,
  chunks: { p0: number; p1: number; g0: number; g1: number }[],
  g: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  o: Tensor,
  probs: Tensor[],
): Tensor[] {
  const { B, Hkv, G, T, S, D } = r;
  const P = B * Hkv;
  const q5 = q.reshape([P, G, T, D]), k5 = k.reshape([P, 1, S, D]), v5 = v.reshape([P, 1, S, D]);
  const g5 = g.reshape([P, G, T, D]), o5 = o.reshape([P, G, T, D]);
  const dq = zeros([P, G, T, D], { device: "webgpu" });
  const dk = zeros([P, 1, S, D], { device: "webgpu" }), dv = zeros([P, 1, S, D], { device: "webgpu" });
  const free: Tensor[] = [q5, k5, v5, g5, o5];
  chunks.forEach((c, n) => {
    const sel = [[c.p0, c.p1], [c.g0, c.g1]] as [number, number][];
    const p = probs[n];
    const qc = q5.slice(sel), gc = g5.slice(sel), oc = o5.slice(sel);
    const kc = k5.slice([[c.p0, c.p1]]), vc = v5.slice([[c.p0, c.p1]]);
    const pt = p.transpose(-1, -2), vt = vc.transpose(-1, -2);
    const dvc = sum(matmul(pt, gc), 1, true); // (n, 1, S, D)
    const dp = matmul(gc, vt); // (n, g, T, S)
    const di = sum(mul(gc, oc), -1, true); // (n, g, T, 1)
    const ds = mul(p, sub(dp, di));
    const dqc = mul(matmul(ds, kc), r.scale);
    const dst = ds.transpose(-1, -2);
    const dkc = mul(sum(matmul(dst, qc), 1, true), r.scale);
    const qdst = dq.slice(sel);
    copyInto(qdst, dqc);
    const kdst = dk.slice([[c.p0, c.p1]]), vdst = dv.slice([[c.p0, c.p1]]);
    const ksum = add(kdst, dkc), vsum = add(vdst, dvc);
    copyInto(kdst, ksum);
    copyInto(vdst, vsum);
    free.push(qc, gc, oc, kc, vc, pt, vt, dvc, dp, di, ds, dqc, dst, dkc, qdst, kdst, vdst, ksum, vsum);
  });
  const grads = [dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)];
  for (const x of [...free, dq, dk, dv]) x.dispose();
  return grads;
}
