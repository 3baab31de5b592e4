import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, gpu32, leakCheck, scoped } from "../../test/helpers.ts";

leakCheck();

const rn = (shape: number[], seed: number, std = 1) =>
  s.randn(shape, { seed, device: "cpu", dtype: "f64", std });
const arr = async (t: Tensor) => Array.from(await t.toArray());
const TOL32 = { atol: 2e-5, rtol: 1e-4 };

describe("Linformer reference", () => {
  test(
    "k = 1 with E = F = 1/T averages the values; E = F = I is exact attention",
    scoped(async () => {
      const q = rn([1, 2, 4, 3], 1), k = rn([1, 2, 6, 3], 2), v = rn([1, 2, 6, 2], 3);
      const mean = await arr(v.mean(2, true).expand([1, 2, 4, 2]).contiguous());
      const avg = s.full([1, 6], 1 / 6, { device: "cpu", dtype: "f64" });
      assertClose(await arr(s.linformerAttentionRef(q, k, v, avg)), mean, { atol: 1e-15, rtol: 1e-14 });
      const eye = s.tensor(Array.from({ length: 36 }, (_, n) => (n % 7 === 0 ? 1 : 0)), {
        shape: [6, 6],
        device: "cpu",
        dtype: "f64",
      });
      const exact = q.matmul(k.transpose()).mul(1 / Math.sqrt(3)).softmax(-1).matmul(v);
      assertClose(await arr(s.linformerAttentionRef(q, k, v, eye)), await arr(exact), {
        atol: 1e-14,
        rtol: 1e-13,
      });
    }),
  );
});

describe("linformerAttention against the reference", () => {
  // [B, H, Tq, Tk, D, Dv, k, per-head, separate F]
  const grid: [number, number, number, number, number, number, number, boolean, boolean][] = [
    [1, 1, 1, 1, 4, 3, 1, false, false], // T = 1
    [2, 3, 37, 37, 8, 5, 7, false, false], // odd sizes
    [2, 3, 37, 37, 8, 5, 7, true, true], // per-head E and F
    [1, 2, 5, 33, 16, 4, 8, false, true], // Tq != Tk
  ];
  for (const [B, H, Tq, Tk, D, Dv, kP, perHead, sepF] of grid) {
    test(
      `B ${B} H ${H} Tq ${Tq} Tk ${Tk} D ${D} Dv ${Dv} k ${kP}${perHead ? " per head" : ""}${
        sepF ? " F" : ""
      }`,
      scoped(async () => {
        const q = rn([B, H, Tq, D], 4), k = rn([B, H, Tk, D], 5), v = rn([B, H, Tk, Dv], 6);
        const heads = perHead ? H : undefined;
        const E = s.linformerProjection(kP, Tk, { seed: 7, heads, device: "cpu", dtype: "f64" });
        const F = sepF
          ? s.linformerProjection(kP, Tk, { seed: 8, heads, device: "cpu", dtype: "f64" })
          : undefined;
        const ref = await arr(s.linformerAttentionRef(q, k, v, E, { F }));
        assertClose(await arr(s.linformerAttention(q, k, v, E, { F })), ref, { atol: 1e-13, rtol: 1e-12 });
        const g = await Promise.all(
          [q, k, v, E, ...(F ? [F] : [])].map(async (t) => await s.cast(t, "f32").to("webgpu")),
        );
        assertClose(await arr(s.linformerAttention(g[0], g[1], g[2], g[3], { F: g[4] })), ref, TOL32);
      }),
    );
  }

  test(
    "gradients against float64 finite differences (q, k, v, E, F)",
    scoped(async () => {
      const inputs = [
        rn([1, 2, 4, 3], 9),
        rn([1, 2, 5, 3], 10),
        rn([1, 2, 5, 2], 11),
        rn([2, 5], 12),
        rn([2, 2, 5], 13),
      ];
      const f = (q: Tensor, k: Tensor, v: Tensor, E: Tensor, F: Tensor) =>
        s.linformerAttention(q, k, v, E.expand([2, 2, 5]), { F, scale: 0.7 });
      const r = await s.gradcheck(f, inputs, { atol: 1e-8, rtol: 1e-6 });
      for (const e of r.maxError) expect(e).toBeLessThan(1e-7);
      const g = await gpu32(inputs);
      await s.gradcheck(f, g, { atol: 2e-4, rtol: 2e-3 });
    }),
  );

  test(
    "bad inputs throw clear errors",
    scoped(async () => {
      const q = s.zeros([1, 2, 4, 8], { device: "cpu" }), v = s.zeros([1, 2, 4, 3], { device: "cpu" });
      expect(() => s.linformerAttention(q, q, v, s.zeros([2, 5], { device: "cpu" }))).toThrow(
        "linformerAttention: E must be (k, Tk = 4) or (H = 2, k, Tk = 4), got [2, 5]",
      );
      expect(() => s.linformerAttention(q, q, v, s.zeros([3, 2, 4], { device: "cpu" }))).toThrow(
        "linformerAttention: E must be (k, Tk = 4) or (H = 2, k, Tk = 4), got [3, 2, 4]",
      );
      const E = s.zeros([2, 4], { device: "cpu" });
      expect(() => s.linformerAttention(q, q, v, E, { F: s.zeros([3, 4], { device: "cpu" }) })).toThrow(
        "linformerAttention: E [2, 4] and F [3, 4] must have the same shape",
      );
      const gE = await E.to("webgpu");
      expect(() => s.linformerAttention(q, q, v, gE)).toThrow(
        "linformerAttention: E is on webgpu but q is on cpu",
      );
      expect(() => s.linformerProjection(0, 4)).toThrow(
        "linformerProjection: k must be a positive integer, got 0",
      );
    }),
  );
});

test("linformerAttention leaves nothing allocated (forward and backward, both devices)", () => {
  for (const device of ["cpu", "webgpu"] as const) {
    const [q, k, v] = [1, 2, 3].map((seed) => s.randn([1, 2, 9, 4], { seed, device }));
    const E = s.linformerProjection(3, 9, { seed: 4, device });
    s.linformerAttention(q, k, v, E).dispose();
    for (const t of [q, k, v, E]) t.requiresGrad = true;
    const out = s.linformerAttention(q, k, v, E), loss = out.sum();
    loss.backward();
    for (const t of [loss, out]) t.dispose();
    for (const t of [q, k, v, E]) {
      t.zeroGrad();
      t.dispose();
    }
  }
});
