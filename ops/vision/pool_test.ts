import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import {
  assertClose,
  expectThrowsNamed,
  GPU,
  leakCheck,
  requireGpu,
  scoped,
  testOp,
} from "../../test/helpers.ts";
import type { Strided4 } from "./conv2d_ref.ts";
import { strided4 } from "./pool.ts";
import {
  adaptiveAvgPool2dBackwardRef,
  adaptiveAvgPool2dRef,
  avgPool2dBackwardRef,
  avgPool2dRef,
  maxPool2dBackwardRef,
  maxPool2dRef,
} from "./pool_ref.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const DEVICES = GPU ? ["cpu", "webgpu"] as const : ["cpu"] as const;

const expectConvError = (f: () => unknown, msg: string) => expectThrowsNamed(f, s.ConvError, msg);

/**
 * The op's values and dx on cpu f64 / f32 and webgpu f32 against the float64 reference (`ref` forward,
 * `refBack` dx for a random dy), x read through a transposed view when `transposed`.
 */
async function checkAgainstRef(
  xShape: number[],
  op: (x: Tensor) => Tensor,
  ref: (x: Strided4) => Float64Array,
  refBack: (dy: Strided4) => Float64Array,
  transposed = false,
) {
  const o = { device: "cpu" as const, dtype: "f64" as const };
  const x0 = s.randn(xShape, { seed: 11, ...o });
  const yRef = ref(strided4(x0));
  const y0 = s.noGrad(() => op(x0));
  const dy = s.randn(y0.shape, { seed: 12, ...o });
  const dxRef = refBack(strided4(dy));
  for (const device of DEVICES) {
    for (const dtype of device === "cpu" ? ["f64", "f32"] as const : ["f32"] as const) {
      // f32 inputs are the f64 ones rounded: the reference's argmax is theirs too (no near ties at random)
      const x =
        (await s.cast(transposed ? x0.transpose(2, 3).contiguous().transpose(2, 3) : x0, dtype).to(device))
          .detach();
      x.requiresGrad = true;
      const y = op(x);
      y.mul(await s.cast(dy, dtype).to(device)).sum().backward();
      const tol = dtype === "f64" ? { atol: 1e-12, rtol: 1e-12 } : { atol: 1e-5, rtol: 1e-5 };
      try {
        expect(y.shape).toEqual(y0.shape);
        assertClose(await arr(y), Array.from(yRef), tol);
        assertClose(await arr(x.grad!), Array.from(dxRef), tol);
      } catch (e) {
        throw new Error(`${device} ${dtype}: ${(e as Error).message}`);
      } finally {
        x.zeroGrad();
      }
    }
  }
}

// [N, C, H, W, kernel, stride, padding, dilation]
type WinCase = [number, number, number, number, Size, Size | undefined, Size, Size];
type Size = number | [number, number];
const WINDOW_CASES: WinCase[] = [
  [2, 3, 7, 6, 3, 2, 1, 1], // odd sizes, ResNet's 3x3 stride 2 padding 1
  [1, 2, 9, 9, 2, undefined, 0, 1], // stride = kernel (default)
  [1, 3, 8, 11, [3, 2], [1, 2], [1, 1], 1], // rectangular kernel, mixed strides
  [2, 1, 10, 9, 3, 1, 1, 2], // dilation 2
  [1, 2, 5, 5, 5, 1, 0, 1], // the kernel the size of the input: 1x1 output
  [3, 1, 1, 1, 1, 1, 0, 1], // 1x1 everything
  [1, 2, 6, 7, [2, 4], 3, [1, 2], [2, 1]], // padding exactly half the kernel, dilated rows
];

describe("maxPool2d", () => {
  test(
    "hand-computed: 2x2 windows of a 4x4; ties go to the first tap; gradients land on the argmax",
    scoped(async () => {
      for (const device of DEVICES) {
        const x = s.tensor([1, 5, 2, 0, 3, 4, 8, 7, 6, 1, 0, 2, 9, 3, 4, 1], { shape: [1, 1, 4, 4], device });
        x.requiresGrad = true;
        const y = s.maxPool2d(x, 2);
        expect(await arr(y)).toEqual([5, 8, 9, 4]);
        y.mul(s.tensor([1, 2, 3, 4], { shape: [1, 1, 2, 2], device })).sum().backward();
        expect(await arr(x.grad!)).toEqual([0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 3, 0, 4, 0]);
        const t = s.tensor([7, 7, 7, 7], { shape: [1, 1, 2, 2], device });
        t.requiresGrad = true;
        s.maxPool2d(t, 2).sum().backward();
        expect(await arr(t.grad!), `${device}: the tie goes to the first tap`).toEqual([1, 0, 0, 0]);
        x.zeroGrad();
        t.zeroGrad();
        // padding is -inf: an all-negative edge window keeps its real maximum
        const neg = s.tensor([-5, -4, -3, -2], { shape: [1, 1, 2, 2], device });
        expect(await arr(s.maxPool2d(neg, 3, { stride: 1, padding: 1 }))).toEqual([-2, -2, -2, -2]);
      }
    }),
  );

  test(
    "NaN wins its windows (the first NaN takes the gradient); -inf inputs still take theirs",
    scoped(async () => {
      for (const device of DEVICES) {
        const x = s.tensor([1, NaN, NaN, 2, -Infinity, -Infinity, -Infinity, -Infinity], {
          shape: [1, 2, 2, 2],
          device,
        });
        x.requiresGrad = true;
        const y = s.maxPool2d(x, 2);
        const v = await arr(y);
        expect(Number.isNaN(v[0]), `${device}: ${v}`).toBe(true);
        expect(v[1]).toBe(-Infinity);
        y.sum().backward();
        expect(await arr(x.grad!)).toEqual([0, 1, 0, 0, 1, 0, 0, 0]);
        x.zeroGrad();
      }
    }),
  );

  for (const [N, C, H, W, kernel, stride, padding, dilation] of WINDOW_CASES) {
    test(
      `values and dx equal the reference: x ${N}x${C}x${H}x${W}, kernel ${kernel}, stride ${stride}, padding ${padding}, dilation ${dilation}`,
      scoped(async () => {
        const opts = { stride, padding, dilation };
        const g = s.poolGeometry("maxPool2d", [N, C, H, W], kernel, opts);
        const ref = (x: Strided4) => maxPool2dRef(g, x);
        let idx: Int32Array | null = null;
        await checkAgainstRef(
          [N, C, H, W],
          (x) => s.maxPool2d(x, kernel, opts),
          (x) => {
            const r = ref(x);
            idx = r.idx;
            return r.y;
          },
          (dy) => maxPool2dBackwardRef(g, idx!, dy),
          N === 2,
        );
      }),
    );
  }

  test(
    "testOp: both backends and finite differences, on a transposed input",
    scoped(async () => {
      await testOp([[2, 2, 5, 4]], (x) => s.maxPool2d(x.transpose(2, 3), 2, { stride: 1, padding: 1 }));
      await testOp([[1, 3, 5, 5]], (x) => s.maxPool2d(x, [3, 2], { stride: [2, 1], dilation: [1, 2] }));
    }),
  );
});

describe("avgPool2d", () => {
  test(
    "hand-computed: count_include_pad divides by the kernel's taps, else by those inside",
    scoped(async () => {
      for (const device of DEVICES) {
        const x = s.tensor([1, 2, 3, 4], { shape: [1, 1, 2, 2], device });
        x.requiresGrad = true;
        const y = s.avgPool2d(x, 3, { stride: 1, padding: 1 });
        assertClose(await arr(y), [10 / 9, 10 / 9, 10 / 9, 10 / 9]);
        y.sum().backward();
        assertClose(await arr(x.grad!), [4 / 9, 4 / 9, 4 / 9, 4 / 9]);
        x.zeroGrad();
        const z = s.avgPool2d(x, [1, 2], { stride: 1, padding: [0, 1], countIncludePad: false });
        assertClose(await arr(z), [1, 1.5, 2, 3, 3.5, 4]);
        z.sum().backward();
        assertClose(await arr(x.grad!), [1.5, 1.5, 1.5, 1.5]);
        x.zeroGrad();
      }
    }),
  );

  for (const [N, C, H, W, kernel, stride, padding] of WINDOW_CASES) {
    for (const include of [true, false]) {
      test(
        `values and dx equal the reference: x ${N}x${C}x${H}x${W}, kernel ${kernel}, stride ${stride}, padding ${padding}, countIncludePad ${include}`,
        scoped(async () => {
          const opts = { stride, padding, countIncludePad: include };
          const g = s.poolGeometry("avgPool2d", [N, C, H, W], kernel, { stride, padding });
          await checkAgainstRef(
            [N, C, H, W],
            (x) => s.avgPool2d(x, kernel, opts),
            (x) => avgPool2dRef(g, x, include),
            (dy) => avgPool2dBackwardRef(g, dy, include),
            N === 2,
          );
        }),
      );
    }
  }

  test(
    "testOp: both backends and finite differences",
    scoped(async () => {
      await testOp([[2, 2, 5, 4]], (x) => s.avgPool2d(x.transpose(2, 3), 3, { stride: 2, padding: 1 }));
      await testOp(
        [[1, 3, 5, 5]],
        (x) => s.avgPool2d(x, 2, { stride: 1, padding: 1, countIncludePad: false }),
      );
    }),
  );
});

describe("adaptiveAvgPool2d", () => {
  test(
    "hand-computed: PyTorch's overlapping bins",
    scoped(async () => {
      for (const device of DEVICES) {
        const x = s.arange(0, 10, 1, { device }).reshape([1, 1, 2, 5]);
        expect(await arr(s.adaptiveAvgPool2d(x, [1, 3]))).toEqual([3, 4.5, 6]);
        // 5 columns into 3 bins: [0, 2), [1, 4), [3, 5); 2 rows into 3 bins: [0, 1), [0, 2), [1, 2)
        const y = s.adaptiveAvgPool2d(x, 3);
        assertClose(await arr(y), [0.5, 2, 3.5, 3, 4.5, 6, 5.5, 7, 8.5]);
      }
    }),
  );

  // [N, C, H, W, OH, OW]
  const CASES: [number, number, number, number, number, number][] = [
    [2, 3, 7, 6, 3, 4], // bins that overlap
    [1, 2, 9, 9, 1, 1], // global
    [1, 2, 8, 8, 4, 4], // bins that tile
    [2, 1, 3, 5, 7, 6], // more outputs than inputs: repeated rows and columns
    [1, 1, 1, 1, 1, 1],
    [1, 3, 10, 7, 10, 7], // identity bins
  ];
  for (const [N, C, H, W, OH, OW] of CASES) {
    test(
      `values and dx equal the reference: x ${N}x${C}x${H}x${W} to ${OH}x${OW}`,
      scoped(async () => {
        const g = { N, C, H, W, OH, OW };
        await checkAgainstRef(
          [N, C, H, W],
          (x) => s.adaptiveAvgPool2d(x, [OH, OW]),
          (x) => adaptiveAvgPool2dRef(g, x),
          (dy) => adaptiveAvgPool2dBackwardRef(g, dy),
          N === 2,
        );
      }),
    );
  }

  test(
    "global pooling of 200x200 (bins over MAX_LOOP) runs as two passes with the reference's values",
    scoped(async () => {
      requireGpu();
      const g = { N: 1, C: 2, H: 200, W: 200, OH: 1, OW: 1 };
      await checkAgainstRef(
        [1, 2, 200, 200],
        (x) => s.adaptiveAvgPool2d(x, 1),
        (x) => adaptiveAvgPool2dRef(g, x),
        (dy) => adaptiveAvgPool2dBackwardRef(g, dy),
      );
    }),
  );

  test(
    "testOp: both backends and finite differences",
    scoped(async () => {
      await testOp([[2, 2, 5, 4]], (x) => s.adaptiveAvgPool2d(x.transpose(2, 3), [3, 2]));
    }),
  );
});

describe("pooling: bad input", () => {
  test(
    "throws a ConvError naming what is wrong",
    scoped(() => {
      const x = s.zeros([1, 2, 5, 5]);
      expectConvError(
        () => s.maxPool2d(x, 7),
        "the kernel 7x7 (dilation 1x1: extent 7x7) is larger than the padded input 5x5",
      );
      expectConvError(
        () => s.maxPool2d(x, 3, { padding: 2 }),
        "padding 2x2 is more than half the kernel 3x3",
      );
      expectConvError(
        () => s.avgPool2d(x, [2, 4], { padding: [1, 3] }),
        "padding 1x3 is more than half the kernel 2x4",
      );
      expectConvError(
        () => s.maxPool2d(x, 3, { dilation: 3 }),
        "extent 7x7) is larger than the padded input 5x5",
      );
      expectConvError(() => s.maxPool2d(x, 0), "kernel must be an integer >= 1 or two of them, got 0");
      expectConvError(() => s.avgPool2d(x, 2, { stride: [1, 0] }), "stride must be an integer >= 1");
      expectConvError(
        () => s.avgPool2d(s.zeros([2, 5, 5]), 2),
        "avgPool2d: x must be (N, C, H, W), got [2, 5, 5]",
      );
      expectConvError(
        () => s.maxPool2d(s.zeros([1, 1, 4, 4], { dtype: "i32" }), 2),
        "x must be a float tensor",
      );
      expectConvError(() => s.adaptiveAvgPool2d(x, [0, 2]), "outputSize must be an integer >= 1");
      expectConvError(() => s.adaptiveAvgPool2d(s.zeros([1, 1, 0, 3]), 1), "has an empty plane");
    }),
  );
});
