import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, expectThrowsNamed, GPU, leakCheck, scoped, testOp } from "../../test/helpers.ts";
import { batchNorm2dBackwardRef, batchNorm2dRef, batchNormStatsRef } from "./batchnorm_ref.ts";
import { strided4 } from "./pool.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const DEVICES = GPU ? ["cpu", "webgpu"] as const : ["cpu"] as const;

// [N, C, H, W]
const SHAPES: [number, number, number, number][] = [
  [2, 3, 5, 7], // odd sizes
  [3, 2, 33, 35], // H W = 1155: two statistics chunks per plane, a partial elementwise chunk
  [1, 4, 1, 9], // one image, one row
  [2, 3, 1, 1], // one pixel: M = 2 values per channel
  [5, 1, 2, 2], // one channel
];

describe("batchNorm2d", () => {
  test(
    "hand-computed: statistics, output and the running statistics' update (unbiased variance)",
    scoped(async () => {
      for (const device of DEVICES) {
        const x = s.tensor([1, 2, 3, 4, 10, 10, 10, 10], { shape: [2, 1, 2, 2], device });
        const runningMean = s.zeros([1], { device }), runningVar = s.ones([1], { device });
        const y = s.batchNorm2d(x, { runningMean, runningVar, weight: s.tensor([2], { device }) });
        const sd = Math.sqrt(117.5 / 8 + 1e-5);
        assertClose(await arr(y), [1, 2, 3, 4, 10, 10, 10, 10].map((v) => (2 * (v - 6.25)) / sd));
        assertClose(await arr(runningMean), [0.625]);
        assertClose(await arr(runningVar), [0.9 + (0.1 * 117.5) / 7]);
        // evaluation: the running statistics normalise; nothing moves
        const z = s.batchNorm2d(x, {
          runningMean,
          runningVar,
          training: false,
          bias: s.tensor([1], { device }),
        });
        assertClose(
          await arr(z),
          [1, 2, 3, 4, 10, 10, 10, 10].map((v) => (v - 0.625) / Math.sqrt(2.5785714 + 1e-5) + 1),
          {
            atol: 1e-5,
            rtol: 1e-5,
          },
        );
        assertClose(await arr(runningMean), [0.625]);
      }
    }),
  );

  for (const [N, C, H, W] of SHAPES) {
    for (const training of [true, false]) {
      for (const affine of [true, false]) {
        test(
          `values, running statistics and every gradient equal the reference: x ${N}x${C}x${H}x${W}, ${
            training ? "training" : "evaluation"
          }${affine ? ", affine" : ""}`,
          scoped(async () => {
            const o = { device: "cpu" as const, dtype: "f64" as const };
            // f64 copies of f32 values: every backend sees the same numbers
            const xs = s.cast(s.randn([N, C, H, W], { seed: 1, device: "cpu" }).mul(3).add(2), "f64");
            const w0 = s.randn([C], { seed: 2, ...o }), b0 = s.randn([C], { seed: 3, ...o });
            const rm0 = s.randn([C], { seed: 4, ...o }), rv0 = s.rand([C], { seed: 5, ...o }).add(0.5);
            const dy = s.randn([N, C, H, W], { seed: 6, ...o });
            const eps = 1e-5, momentum = 0.3, M = N * H * W;
            const batch = batchNormStatsRef(strided4(xs), xs.shape);
            const rmv = Array.from(await rm0.toArray()), rvv = Array.from(await rv0.toArray());
            const mean = training ? batch.mean : rmv, variance = training ? batch.variance : rvv;
            const wv = affine ? await w0.toArray() : null, bv = affine ? await b0.toArray() : null;
            const yRef = batchNorm2dRef(strided4(xs), xs.shape, mean, variance, wv, bv, eps);
            const gRef = batchNorm2dBackwardRef(
              strided4(xs),
              xs.shape,
              strided4(dy),
              mean,
              variance,
              wv,
              eps,
              training,
            );
            const rmRef = training ? rmv.map((v, c) => 0.7 * v + 0.3 * batch.mean[c]) : rmv;
            const rvRef = training
              ? rvv.map((v, c) => 0.7 * v + (0.3 * batch.variance[c] * M) / (M - 1))
              : rvv;
            for (const device of DEVICES) {
              for (const dtype of device === "cpu" ? ["f64", "f32"] as const : ["f32"] as const) {
                const leaf = async (t: Tensor) => {
                  const l = (await s.cast(t, dtype).to(device)).detach();
                  l.requiresGrad = true;
                  return l;
                };
                // x through a transposed view: the shaders read it by its strides
                const xt = await s.cast(xs.transpose(2, 3).contiguous(), dtype).to(device);
                const x = xt.transpose(2, 3).detach();
                x.requiresGrad = true;
                const [w, b] = [await leaf(w0), await leaf(b0)];
                // fresh copies (cast to the same dtype shares storage): each backend updates its own
                const runningMean = s.tensor(rmv, { dtype, device }),
                  runningVar = s.tensor(rvv, { dtype, device });
                const y = s.batchNorm2d(x, {
                  weight: affine ? w : null,
                  bias: affine ? b : null,
                  runningMean,
                  runningVar,
                  training,
                  momentum,
                  eps,
                });
                y.mul(await s.cast(dy, dtype).to(device)).sum().backward();
                const tol = dtype === "f64" ? { atol: 1e-10, rtol: 1e-10 } : { atol: 1e-4, rtol: 1e-4 };
                const checks: [string, Tensor, ArrayLike<number>][] = [
                  ["y", y, yRef],
                  ["runningMean", runningMean, rmRef],
                  ["runningVar", runningVar, rvRef],
                  ["dx", x.grad!, gRef.dx],
                  ...(affine
                    ? [["dweight", w.grad!, gRef.dweight], ["dbias", b.grad!, gRef.dbias]] as [
                      string,
                      Tensor,
                      ArrayLike<number>,
                    ][]
                    : []),
                ];
                try {
                  for (const [name, got, want] of checks) {
                    try {
                      assertClose(await arr(got), Array.from(want), tol);
                    } catch (e) {
                      throw new Error(`${device} ${dtype} ${name}: ${(e as Error).message}`);
                    }
                  }
                  if (!affine) expect(w.grad).toBeNull();
                } finally {
                  for (const l of [x, w, b]) l.zeroGrad();
                }
              }
            }
          }),
        );
      }
    }
  }

  test(
    "stable far from zero: x = 1000 + N(0, 1) normalises to within 1e-3 on every backend",
    scoped(async () => {
      const x32 = s.randn([4, 3, 16, 16], { seed: 7, device: "cpu" }).add(1000); // f32 values
      const xs = s.cast(x32, "f64");
      const st = batchNormStatsRef(strided4(xs), xs.shape);
      const yRef = batchNorm2dRef(strided4(xs), xs.shape, st.mean, st.variance, null, null, 1e-5);
      for (const device of DEVICES) {
        const y = s.batchNorm2d(await x32.to(device));
        assertClose(await arr(y), Array.from(yRef), { atol: 1e-3, rtol: 0 });
      }
    }),
  );

  test(
    "testOp: both backends and finite differences through the batch statistics, and in evaluation",
    scoped(async () => {
      await testOp([[2, 2, 2, 3], [2], [2]], (x, w, b) => s.batchNorm2d(x, { weight: w, bias: b }));
      await testOp([[3, 2, 3, 2]], (x) => s.batchNorm2d(x.transpose(2, 3)));
      await testOp([[2, 2, 3, 3], [2]], (x, w) =>
        s.batchNorm2d(x, {
          weight: w,
          runningMean: s.tensor([0.5, -1], { device: x.device, dtype: x.dtype }),
          runningVar: s.tensor([2, 0.25], { device: x.device, dtype: x.dtype }),
          training: false,
        }));
    }),
  );

  test(
    "bad input throws a ConvError naming what is wrong",
    scoped(() => {
      const x = s.zeros([2, 3, 4, 4]);
      const bad: [() => unknown, string][] = [
        [
          () => s.batchNorm2d(x, { weight: s.ones([4]) }),
          "weight must be (3), one per channel of x [2, 3, 4, 4]",
        ],
        [
          () => s.batchNorm2d(x, { runningMean: s.zeros([2]), runningVar: s.ones([3]) }),
          "runningMean must be (3), one per channel",
        ],
        [
          () => s.batchNorm2d(x, { runningMean: s.zeros([3]), runningVar: s.ones([3, 1]) }),
          "runningVar must be (3), one per channel",
        ],
        [() => s.batchNorm2d(x, { runningMean: s.zeros([3]) }), "runningMean and runningVar come together"],
        [
          () => s.batchNorm2d(x, { training: false }),
          "evaluation (training: false) normalises by runningMean",
        ],
        [() => s.batchNorm2d(s.zeros([1, 3, 1, 1])), "training needs more than one value per channel"],
        [() => s.batchNorm2d(s.zeros([2, 3, 4])), "batchNorm2d: x must be (N, C, H, W), got [2, 3, 4]"],
        [() => s.batchNorm2d(x, { momentum: 1.5 }), "momentum must be in [0, 1], got 1.5"],
        [() => s.batchNorm2d(x, { bias: s.zeros([3], { dtype: "i32" }) }), "must have x's device and dtype"],
      ];
      for (const [f, msg] of bad) expectThrowsNamed(f, s.ConvError, msg);
    }),
  );
});
