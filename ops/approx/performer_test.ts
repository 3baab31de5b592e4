import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, gpu32, leakCheck, scoped } from "../../test/helpers.ts";

leakCheck();

const rn = (shape: number[], seed: number, std = 1) =>
  s.randn(shape, { seed, device: "cpu", dtype: "f64", std });
const arr = async (t: Tensor) => Array.from(await t.toArray());
const TOL32 = { atol: 5e-5, rtol: 1e-4 };

/** Exact softmax(scale q k^T) v in float64, composed from core ops on cpu. */
const exact = (q: Tensor, k: Tensor, v: Tensor) =>
  s.tidy(() => q.matmul(k.transpose()).mul(1 / Math.sqrt(q.shape[3])).softmax(-1).matmul(v));

/** Mean squared difference of two same-shape tensors. */
async function mse(a: Tensor, b: Tensor): Promise<number> {
  const x = await a.toArray(), y = await b.toArray();
  let e = 0;
  for (let i = 0; i < x.length; i++) e += (x[i] - y[i]) ** 2;
  return e / x.length;
}

describe("performerFeatures", () => {
  test(
    "orthogonal blocks with chi(D) row lengths; seeded, the same on every device",
    scoped(async () => {
      const D = 6, m = 15; // three blocks, the last cut to 3 rows
      const w = await arr(s.performerFeatures(m, D, { seed: 3, device: "cpu", dtype: "f64" }));
      const row = (i: number) => w.slice(i * D, (i + 1) * D);
      const dot = (a: number[], b: number[]) => a.reduce((acc, x, i) => acc + x * b[i], 0);
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < i; j++) {
          const sameBlock = Math.floor(i / D) === Math.floor(j / D);
          const cos = dot(row(i), row(j)) / Math.sqrt(dot(row(i), row(i)) * dot(row(j), row(j)));
          if (sameBlock) expect(Math.abs(cos)).toBeLessThan(1e-12);
          else expect(Math.abs(cos)).toBeGreaterThan(1e-6); // independent blocks are not orthogonal
        }
      }
      // the squared row lengths are chi-square(D): mean D over many rows
      const big = await arr(s.performerFeatures(4000, 8, { seed: 5, device: "cpu", dtype: "f64" }));
      let sq = 0;
      for (const x of big) sq += x * x;
      expect(sq / 4000).toBeGreaterThan(8 * 0.95);
      expect(sq / 4000).toBeLessThan(8 * 1.05);
      const again = await arr(s.performerFeatures(m, D, { seed: 3, device: "cpu", dtype: "f64" }));
      expect(again).toEqual(w);
      const gpu = s.performerFeatures(m, D, { seed: 3, device: "webgpu" });
      assertClose(await gpu.toArray(), w, { atol: 0, rtol: 1e-7 });
      const iid = await arr(s.performerFeatures(m, D, { seed: 3, orthogonal: false, device: "cpu" }));
      expect(Math.abs(dot(iid.slice(0, D), iid.slice(D, 2 * D)))).toBeGreaterThan(1e-6);
    }),
  );

  test("bad arguments throw", () => {
    expect(() => s.performerFeatures(0, 4)).toThrow("performerFeatures: m must be a positive integer, got 0");
    expect(() => s.performerFeatures(4, 4, { seed: -1 })).toThrow(
      "performerFeatures: seed must be a non-negative",
    );
  });
});

describe("Performer approximation quality (float64 reference, fixed seeds)", () => {
  // q, k ~ N(0, 0.25 I) in D = 16: logits q.k / 4 have std 0.25 and the positive features' variance is
  // moderate, so the error falls roughly as 1/m (with unit-variance inputs it falls much more slowly:
  // the estimator's variance grows like exp(|q' + k'|^2)).
  const B = 1, H = 2, T = 32, D = 16;
  const make = () => [rn([B, H, T, D], 11, 0.5), rn([B, H, T, D], 12, 0.5), rn([B, H, T, D], 13)];

  test(
    "the error against exact attention shrinks as the number of features grows",
    scoped(async () => {
      const [q, k, v] = make();
      const ex = exact(q, k, v);
      const ms = [8, 32, 128, 512], errs: number[] = [];
      for (const m of ms) {
        let e = 0;
        for (let seed = 0; seed < 8; seed++) {
          e += await mse(s.performerAttentionRef(q, k, v, { features: m, seed }), ex);
        }
        errs.push(e / 8);
      }
      for (let i = 1; i < ms.length; i++) expect(errs[i]).toBeLessThan(errs[i - 1]);
      expect(errs[3]).toBeLessThan(errs[0] / 10); // 64x the features: at least 10x smaller error
      // and the op itself (webgpu, f32) tracks the reference at m = 512
      const g = await gpu32([q, k, v]);
      const out = s.performerAttention(g[0], g[1], g[2], { features: 512, seed: 0 });
      expect(await mse(out, ex)).toBeLessThan(errs[3] * 3);
    }),
  );

  test(
    "orthogonal features beat i.i.d. ones at equal count (geometric mean over 64 seeds, m = D, 2D, 4D)",
    scoped(async () => {
      const [q, k, v] = make();
      const ex = exact(q, k, v);
      let logRatio = 0, n = 0;
      for (const m of [16, 32, 64]) {
        for (let seed = 100; seed < 164; seed++) {
          const o = await mse(s.performerAttentionRef(q, k, v, { features: m, seed }), ex);
          const i = await mse(s.performerAttentionRef(q, k, v, { features: m, seed, orthogonal: false }), ex);
          logRatio += Math.log(i / o);
          n++;
        }
      }
      // measured: i.i.d. error / orthogonal error = 1.25 (geometric mean); per m the ratio is 1.15-1.5 on
      // every seed set and input draw tried, 2-5 standard errors above 1 with 48 seeds
      expect(Math.exp(logRatio / n)).toBeGreaterThan(1.1);
    }),
  );
});

describe("performerAttention against the reference", () => {
  const grid: [number[], number[], boolean, number][] = [
    // [q shape, k shape, causal, features]
    [[1, 1, 1, 4], [1, 1, 1, 4], false, 8],
    [[2, 3, 37, 8], [2, 3, 37, 8], false, 20],
    [[2, 3, 37, 8], [2, 3, 37, 8], true, 20],
    [[1, 2, 70, 16], [1, 2, 70, 16], true, 64],
    [[1, 2, 5, 6], [1, 2, 9, 6], false, 7],
  ];
  for (const [qs, ks, causal, m] of grid) {
    test(
      `q ${qs} k ${ks}${causal ? " causal" : ""} m ${m}`,
      scoped(async () => {
        const q = rn(qs, 21, 0.7), k = rn(ks, 22, 0.7), v = rn([...ks.slice(0, 3), 5], 23);
        const opts = { causal, features: m, seed: 9 };
        const ref = await arr(s.performerAttentionRef(q, k, v, opts));
        assertClose(await arr(s.performerAttention(q, k, v, { ...opts, chunkSize: 16 })), ref, {
          atol: 1e-12,
          rtol: 1e-10,
        });
        const g = await gpu32([q, k, v]);
        assertClose(await arr(s.performerAttention(g[0], g[1], g[2], opts)), ref, TOL32);
        // a projection passed as a tensor gives the same result as its seed
        const W = s.performerFeatures(m, qs[3], { seed: 9, device: "webgpu" });
        assertClose(await arr(s.performerAttention(g[0], g[1], g[2], { causal, features: W })), ref, TOL32);
      }),
    );
  }

  test(
    "gradients against float64 finite differences (q, k, v; causal and not)",
    scoped(async () => {
      const inputs = [rn([1, 2, 5, 4], 31, 0.7), rn([1, 2, 5, 4], 32, 0.7), rn([1, 2, 5, 3], 33)];
      for (const causal of [false, true]) {
        const f = (q: Tensor, k: Tensor, v: Tensor) =>
          s.performerAttention(q, k, v, { causal, features: 6, seed: 2, chunkSize: 2 });
        const r = await s.gradcheck(f, inputs, { atol: 1e-8, rtol: 1e-6 });
        for (const e of r.maxError) expect(e).toBeLessThan(1e-7);
        const g = await gpu32(inputs);
        await s.gradcheck(f, g, { atol: 2e-4, rtol: 2e-3 });
      }
    }),
  );

  test(
    "bad inputs throw clear errors",
    scoped(() => {
      const q = s.zeros([1, 2, 4, 8], { device: "cpu" }), v = s.zeros([1, 2, 4, 3], { device: "cpu" });
      expect(() => s.performerAttention(q, q, v, { features: 0 })).toThrow(
        "performerAttention: features must be a positive integer, got 0",
      );
      expect(() => s.performerAttention(q, q, v, { features: s.zeros([4, 7], { device: "cpu" }) })).toThrow(
        "performerAttention: features must be an (m, D = 8) projection, got tensor [4, 7] f32 on cpu",
      );
      expect(() => s.performerAttention(q, q, v, { scale: -1 })).toThrow(
        "performerAttention: scale must be a positive finite number, got -1",
      );
      expect(() => s.performerAttentionRef(q, q, v, { seed: 1.5 })).toThrow(
        "performerAttentionRef: seed must be a non-negative integer, got 1.5",
      );
    }),
  );
});

test("performerAttention leaves nothing allocated (forward and backward, both devices)", () => {
  for (const device of ["cpu", "webgpu"] as const) {
    const [q, k, v] = [1, 2, 3].map((seed) => s.randn([1, 2, 9, 4], { seed, device }));
    for (const causal of [false, true]) {
      s.performerAttention(q, k, v, { causal, features: 8, chunkSize: 4 }).dispose();
      for (const t of [q, k, v]) t.requiresGrad = true;
      const out = s.performerAttention(q, k, v, { causal, features: 8, chunkSize: 4 }), loss = out.sum();
      loss.backward();
      for (const t of [loss, out]) t.dispose();
      for (const t of [q, k, v]) t.zeroGrad();
    }
    for (const t of [q, k, v]) t.dispose();
  }
});
