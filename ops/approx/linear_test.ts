import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, compareBackends, gpu32, leakCheck, scoped } from "../../test/helpers.ts";

leakCheck();

const rn = (shape: number[], seed: number, std = 1) =>
  s.randn(shape, { seed, device: "cpu", dtype: "f64", std });
const arr = async (t: Tensor) => Array.from(await t.toArray());
const TOL32 = { atol: 2e-5, rtol: 1e-4 };

/** elu(x) + 1 and the quadratic masked form sum_j<=i (phi_i . phi_j) v_j / sum_j<=i phi_i . phi_j, composed. */
function quadraticCausal(q: Tensor, k: Tensor, v: Tensor): Tensor {
  return s.tidy(() => {
    const phi = (x: Tensor) => s.where(x.gt(0), x.add(1), x.minimum(0).exp());
    const T = q.shape[2];
    const mask = s.tensor(
      Array.from({ length: T * T }, (_, n) => (n % T <= Math.floor(n / T) ? 1 : 0)),
      { shape: [T, T], dtype: q.dtype, device: q.device },
    );
    const A = phi(q).matmul(phi(k).transpose()).mul(mask);
    return A.matmul(v).div(A.sum(-1, true));
  });
}

describe("linear attention references", () => {
  test(
    "hand-computed: elu + 1 features, non-causal and causal",
    scoped(async () => {
      // q = 0 -> phi 1; keys 0 and 1 -> phi 1 and 2; values 1 and 3
      const q = s.tensor([[[[0], [0]]]], { device: "cpu", dtype: "f64" });
      const k = s.tensor([[[[0], [1]]]], { device: "cpu", dtype: "f64" });
      const v = s.tensor([[[[1], [3]]]], { device: "cpu", dtype: "f64" });
      assertClose(await arr(s.linearAttentionRef(q, k, v)), [7 / 3, 7 / 3], { atol: 1e-15, rtol: 0 });
      assertClose(await arr(s.linearAttentionRef(q, k, v, { causal: true })), [1, 7 / 3], {
        atol: 1e-15,
        rtol: 0,
      });
      // uniform features: the (running) mean of the values
      const f = s.ones([1, 1, 3, 2], { device: "cpu" }), w = s.tensor([[[[3], [5], [1]]]], { device: "cpu" });
      assertClose(await arr(s.featureAttentionRef(f, f, w)), [3, 3, 3], { atol: 1e-15, rtol: 0 });
      assertClose(await arr(s.featureAttentionRef(f, f, w, { causal: true })), [3, 4, 3], {
        atol: 1e-15,
        rtol: 0,
      });
    }),
  );

  test(
    "causal equals its quadratic masked form (reference, cpu op in float64, webgpu op)",
    scoped(async () => {
      const q = rn([2, 2, 23, 6], 1), k = rn([2, 2, 23, 6], 2), v = rn([2, 2, 23, 4], 3);
      const quad = await arr(quadraticCausal(q, k, v));
      assertClose(await arr(s.linearAttentionRef(q, k, v, { causal: true })), quad, {
        atol: 1e-12,
        rtol: 1e-12,
      });
      for (const chunkSize of [1, 5, 23, 64]) {
        const out = s.linearAttention(q, k, v, { causal: true, chunkSize });
        assertClose(await arr(out), quad, { atol: 1e-12, rtol: 1e-12 });
      }
      const g = await gpu32([q, k, v]);
      assertClose(
        await arr(s.linearAttention(g[0], g[1], g[2], { causal: true, chunkSize: 8 })),
        quad,
        TOL32,
      );
    }),
  );
});

describe("linearAttention and featureAttention on webgpu against the reference", () => {
  // [B, H, Tq, Tk, D, Dv, chunkSize]
  const grid: number[][] = [
    [1, 1, 1, 1, 4, 3, 64], // T = 1
    [2, 3, 37, 37, 8, 5, 8], // odd sizes, T not a multiple of the chunk
    [1, 2, 130, 130, 16, 16, 64], // several chunks of the default size
    [1, 2, 7, 11, 5, 3, 64], // Tq != Tk (non-causal only)
  ];
  for (const [B, H, Tq, Tk, D, Dv, chunkSize] of grid) {
    for (const causal of Tq === Tk ? [false, true] : [false]) {
      test(
        `B ${B} H ${H} Tq ${Tq} Tk ${Tk} D ${D} Dv ${Dv}${causal ? " causal" : ""}`,
        scoped(async () => {
          const q = s.randn([B, H, Tq, D], { seed: 4, device: "cpu" });
          const k = s.randn([B, H, Tk, D], { seed: 5, device: "cpu" });
          const v = s.randn([B, H, Tk, Dv], { seed: 6, device: "cpu" });
          const ref = s.linearAttentionRef(q, k, v, { causal });
          const gpu = await Promise.all([q, k, v].map((t) => t.to("webgpu")));
          const out = s.linearAttention(gpu[0], gpu[1], gpu[2], { causal, chunkSize });
          assertClose(await out.toArray(), await ref.toArray(), TOL32, {
            actual: out.shape,
            expected: ref.shape,
          });
          // featureAttention with arbitrary positive features; the cpu op is the float64 composition
          const fq = q.abs(), fk = k.abs();
          await compareBackends(
            (a, b, c) => s.featureAttention(a, b, c, { causal, chunkSize }),
            [fq, fk, v],
            TOL32,
          );
          assertClose(
            await s.featureAttention(fq, fk, v, { causal }).toArray(),
            await s.featureAttentionRef(fq, fk, v, { causal }).toArray(),
            { atol: 1e-5, rtol: 1e-5 },
          );
        }),
      );
    }
  }
});

describe("linear attention gradients", () => {
  for (const causal of [false, true]) {
    test(
      `against float64 finite differences${causal ? " (causal, chunks with padding)" : ""}`,
      scoped(async () => {
        const inputs = [rn([1, 2, 5, 3], 7), rn([1, 2, 5, 3], 8), rn([1, 2, 5, 2], 9)];
        const f = (q: Tensor, k: Tensor, v: Tensor) => s.linearAttention(q, k, v, { causal, chunkSize: 2 });
        const r = await s.gradcheck(f, inputs, { atol: 1e-8, rtol: 1e-6 });
        for (const e of r.maxError) expect(e).toBeLessThan(1e-7);
        const gpu = await gpu32(inputs);
        await s.gradcheck(f, gpu, { atol: 2e-4, rtol: 2e-3 });
      }),
    );
  }
});

describe("bad inputs", () => {
  test(
    "throw clear errors",
    scoped(async () => {
      const q = s.zeros([1, 2, 4, 8], { device: "cpu" }), k5 = s.zeros([1, 2, 5, 8], { device: "cpu" });
      const v4 = s.zeros([1, 2, 4, 3], { device: "cpu" }), v5 = s.zeros([1, 2, 5, 3], { device: "cpu" });
      expect(() => s.linearAttention(q, k5, v5, { causal: true })).toThrow(
        "linearAttention: needs Tq = Tk: q is [1, 2, 4, 8], k is [1, 2, 5, 8], v is [1, 2, 5, 3]",
      );
      expect(() => s.linearAttention(q, k5, v4)).toThrow("linearAttention: k and v have different lengths");
      expect(() => s.linearAttention(q, s.zeros([1, 2, 4, 7], { device: "cpu" }), v4)).toThrow(
        "linearAttention: head dims of q and k differ",
      );
      expect(() => s.linearAttention(q, q, s.zeros([1, 3, 4, 3], { device: "cpu" }))).toThrow(
        "linearAttention: batch and head dims of q, k and v differ",
      );
      expect(() => s.linearAttention(q.reshape([2, 4, 8]), q, v4)).toThrow(
        "linearAttention: q, k and v must be (B, H, T, D)",
      );
      expect(() => s.featureAttention(q, q, v4, { chunkSize: 0 })).toThrow(
        "featureAttention: chunkSize must be a positive integer, got 0",
      );
      const i = s.zeros([1, 2, 4, 8], { device: "cpu", dtype: "i32" });
      expect(() => s.linearAttention(i, i, v4)).toThrow(/linearAttention: needs float tensors, got tensor/);
      const [gq, gv] = [await q.to("webgpu"), await v4.to("webgpu")];
      expect(() => s.linearAttentionRef(gq, gq, gv)).toThrow(
        "linearAttentionRef: the reference needs cpu tensors, got tensor [1, 2, 4, 8] f32 on webgpu",
      );
      expect(() => s.linearAttention(gq, q, v4)).toThrow(
        "linearAttention: q, k and v must be on one device: webgpu, cpu, cpu",
      );
    }),
  );
});

test("linearAttention leaves nothing allocated (forward and backward, both devices)", () => {
  for (const device of ["cpu", "webgpu"] as const) {
    const [q, k, v] = [1, 2, 3].map((seed) => s.randn([1, 2, 9, 4], { seed, device }));
    for (const causal of [false, true]) {
      s.linearAttention(q, k, v, { causal, chunkSize: 4 }).dispose();
      for (const t of [q, k, v]) t.requiresGrad = true;
      const out = s.linearAttention(q, k, v, { causal, chunkSize: 4 }), loss = out.sum();
      loss.backward();
      for (const t of [loss, out]) t.dispose();
      for (const t of [q, k, v]) t.zeroGrad();
    }
    for (const t of [q, k, v]) t.dispose();
  }
});
