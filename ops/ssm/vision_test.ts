import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, leakCheck, scoped } from "../../test/helpers.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const f64 = { device: "cpu" as const, dtype: "f64" as const };
const devices = ["cpu", "webgpu"] as const;
const dev = async (
  t: Tensor,
  device: "cpu" | "webgpu",
) => (device === "cpu" ? t : await s.cast(t, "f32").to(device));

describe("VMamba cross-scan / cross-merge", () => {
  for (const device of devices) {
    test(
      `cross-merge is the adjoint of cross-scan: <Sx, y> = <x, S^T y> (${device})`,
      scoped(async () => {
        for (const [Bn, C, H, W] of [[1, 1, 1, 1], [2, 3, 4, 5], [1, 2, 7, 3]]) {
          const x = await dev(s.randn([Bn, C, H, W], { seed: H, ...f64 }), device);
          const y = await dev(s.randn([Bn, 4, C, H * W], { seed: W, ...f64 }), device);
          const lhs = await s.crossScan(x).mul(y).sum().item();
          const rhs = await x.mul(s.crossMerge(y, H, W)).sum().item();
          expect(Math.abs(lhs - rhs)).toBeLessThan(device === "cpu" ? 1e-10 : 1e-3 * (1 + Math.abs(lhs)));
          // each direction is a permutation: merge(scan(x)) = 4 x
          assertClose(await arr(s.crossMerge(s.crossScan(x), H, W)), (await arr(x)).map((v) => 4 * v), {
            atol: 1e-5,
            rtol: 1e-6,
          });
        }
      }),
    );
  }

  test(
    "the four orders on a 2 x 3 image; gradients flow; bad shapes",
    scoped(async () => {
      const x = s.tensor([[[[1, 2, 3], [4, 5, 6]]]], f64);
      expect(await s.crossScan(x).toNested()).toEqual([[
        [[1, 2, 3, 4, 5, 6]],
        [[1, 4, 2, 5, 3, 6]],
        [[6, 5, 4, 3, 2, 1]],
        [[6, 3, 5, 2, 4, 1]],
      ]]);
      await s.gradcheck((a) => s.crossScan(a), [s.randn([1, 2, 2, 3], { seed: 1, ...f64 })]);
      await s.gradcheck((a) => s.crossMerge(a, 2, 3), [s.randn([1, 4, 2, 6], { seed: 2, ...f64 })]);
      expect(() => s.crossMerge(s.zeros([1, 4, 2, 5], f64), 2, 3)).toThrow(
        "crossMerge: y must be (B, 4, C, H * W) with H * W = 6, got tensor [1, 4, 2, 5] f64 on cpu",
      );
      expect(() => s.crossScan(s.zeros([2, 3], f64))).toThrow(
        "crossScan: x must be (B, C, H, W), got tensor [2, 3]",
      );
    }),
  );
});

describe("Vision Mamba bidirectional scan", () => {
  for (const device of devices) {
    test(
      `forward and flipped-backward selective scans with separate parameters, averaged (${device})`,
      scoped(async () => {
        const [Bn, D, L, N] = [2, 3, 10, 4];
        const mk = async (shape: number[], seed: number, lo?: number, hi?: number) =>
          await dev(
            lo === undefined
              ? s.randn(shape, { seed, ...f64 })
              : s.rand(shape, { seed, low: lo, high: hi, ...f64 }),
            device,
          );
        const u = await mk([Bn, D, L], 1);
        const p = async (seed: number) => ({
          delta: await mk([Bn, D, L], seed, 0.01, 0.3),
          A: await mk([D, N], seed + 1, -2, -0.1),
          B: await mk([Bn, N, L], seed + 2),
          C: await mk([Bn, N, L], seed + 3),
        });
        const f = await p(10), b = await p(20);
        // the backward branch's delta, B, C belong to the flipped sequence, as Vim computes them from it
        const y = s.bidirectional(
          u,
          (x) => s.selectiveScan(x, f.delta, f.A, f.B, f.C),
          (x) => s.selectiveScan(x, b.delta, b.A, b.B, b.C),
        );
        const cpu = async (t: Tensor) => s.cast(await t.to("cpu"), "f64");
        const [uc, fd, fA, fB, fC, bd, bA, bB, bC] = await Promise.all(
          [u, f.delta, f.A, f.B, f.C, b.delta, b.A, b.B, b.C].map(cpu),
        );
        const yf = await arr(s.selectiveScanRef(uc, fd, fA, fB, fC));
        const yb = await arr(s.selectiveScanRef(s.flip(uc), bd, bA, bB, bC));
        const want = yf.map((v, i) => {
          const t = i % L, row = i - t;
          return (v + yb[row + L - 1 - t]) / 2;
        });
        assertClose(
          await arr(y),
          want,
          device === "cpu" ? { atol: 1e-6, rtol: 1e-6 } : { atol: 2e-3, rtol: 6e-4 },
        );
      }),
    );
  }

  test(
    "differentiable through both branches",
    scoped(async () => {
      const u = s.randn([1, 2, 5], { seed: 1, ...f64 }), w1 = s.randn([2, 1], { seed: 2, ...f64 });
      const w2 = s.randn([2, 1], { seed: 3, ...f64 });
      await s.gradcheck(
        (x, a, b) => s.bidirectional(x, (v) => v.cumsum(-1).mul(a), (v) => v.cumsum(-1).mul(b)),
        [u, w1, w2],
      );
    }),
  );
});
