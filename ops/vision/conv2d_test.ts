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
import { gpu } from "../../runtime/device.ts";
import { conv2dBackwardRef, conv2dRef } from "./conv2d_ref.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const DEVICES = GPU ? ["cpu", "webgpu"] as const : ["cpu"] as const;

// [N, C, H, W, O, KH, KW, stride, padding, dilation, groups, bias]
type Case = [number, number, number, number, number, number, number, number, number, number, number, boolean];
const CASES: Case[] = [
  [2, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1, true], // odd sizes, same padding
  [1, 4, 9, 9, 6, 3, 3, 2, 1, 1, 2, false], // stride 2, 2 groups
  [2, 5, 8, 7, 5, 3, 3, 1, 1, 1, 5, true], // depthwise
  [1, 2, 10, 11, 3, 3, 2, 1, 2, 2, 1, true], // dilation 2, rectangular kernel, padding 2
  [3, 1, 5, 5, 2, 5, 5, 1, 0, 1, 1, false], // kernel the size of the input: 1x1 output
  [1, 6, 6, 6, 4, 1, 1, 1, 0, 1, 2, true], // 1x1 convolution, grouped
  [2, 5, 4, 3, 6, 1, 1, 1, 0, 1, 1, true], // 1x1 convolution: the pointwise path (a matmul, no im2col)
  [2, 3, 12, 12, 8, 7, 7, 2, 3, 1, 1, true], // a ResNet stem
  [1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, false], // 1x1 everything
];

describe("conv2d", () => {
  test(
    "hand-computed: a 4x4 of ones under a 3x3 kernel of ones with padding 1, plus a bias",
    scoped(async () => {
      for (const device of DEVICES) {
        const y = s.conv2d(s.ones([1, 1, 4, 4], { device }), s.ones([1, 1, 3, 3], { device }), {
          padding: 1,
          bias: s.tensor([0.5], { device }),
        });
        expect(y.shape).toEqual([1, 1, 4, 4]);
        expect(await arr(y)).toEqual([4, 6, 6, 4, 6, 9, 9, 6, 6, 9, 9, 6, 4, 6, 6, 4].map((v) => v + 0.5));
      }
    }),
  );

  for (const c of CASES) {
    const [N, C, H, W, O, KH, KW, stride, padding, dilation, groups, hasBias] = c;
    test(
      `values and every gradient equal the direct-loop reference: x ${N}x${C}x${H}x${W}, w ${O}x${
        C / groups
      }x${KH}x${KW}, stride ${stride}, padding ${padding}, dilation ${dilation}, groups ${groups}${
        hasBias ? ", bias" : ""
      }`,
      scoped(async () => {
        const o = { device: "cpu" as const, dtype: "f64" as const };
        const x0 = s.randn([N, C, H, W], { seed: 1, ...o });
        const w0 = s.randn([O, C / groups, KH, KW], { seed: 2, ...o });
        const b0 = s.randn([O], { seed: 3, ...o });
        const g = s.conv2dGeometry(x0.shape, w0.shape, { stride, padding, dilation, groups });
        const dy = s.randn([N, O, g.OH, g.OW], { seed: 4, ...o });
        const strided = (t: Tensor) => ({ data: t.storage.data!, off: t.offset, s: t.strides });
        const yRef = Array.from(
          conv2dRef(g, strided(x0), strided(w0), hasBias ? { data: b0.storage.data!, off: 0, s: 1 } : null),
        );
        const gRef = conv2dBackwardRef(g, strided(x0), strided(w0), dy.storage.data!);
        for (const device of DEVICES) {
          for (const dtype of device === "cpu" ? ["f64", "f32"] as const : ["f32"] as const) {
            const leaf = async (t: Tensor) => {
              const l = (await s.cast(t, dtype).to(device)).detach();
              l.requiresGrad = true;
              return l;
            };
            const [x, w, b] = [await leaf(x0), await leaf(w0), await leaf(b0)];
            const y = s.conv2d(x, w, { stride, padding, dilation, groups, bias: hasBias ? b : null });
            y.mul(await s.cast(dy, dtype).to(device)).sum().backward();
            const tol = dtype === "f64" ? { atol: 1e-10, rtol: 1e-10 } : { atol: 2e-4, rtol: 2e-4 };
            const what = `${device} ${dtype}`;
            for (
              const [name, got, want] of [
                ["y", y, yRef],
                ["dx", x.grad!, gRef.dx],
                ["dw", w.grad!, gRef.dw],
                ...(hasBias ? [["db", b.grad!, gRef.db]] : []),
              ] as [string, Tensor, ArrayLike<number>][]
            ) {
              try {
                assertClose(await arr(got), Array.from(want), tol);
              } catch (e) {
                throw new Error(`${what} ${name}: ${(e as Error).message}`);
              }
            }
            if (!hasBias) expect(b.grad).toBeNull();
            for (const l of [x, w, b]) l.zeroGrad();
          }
        }
      }),
    );
  }

  test(
    "direct v4 (x through a texture) and v2 (one output channel per group: depthwise) equal im2col, gradients too",
    scoped(async () => {
      requireGpu();
      for (
        const [N, C, H, W, KH, stride, padding, dilation, mult] of [
          [2, 6, 9, 7, 3, 1, 1, 1, 1],
          [1, 4, 11, 10, 5, 2, 2, 1, 1],
          [3, 3, 8, 8, 3, 1, 2, 2, 1],
          [1, 8, 6, 5, 3, 1, 1, 1, 1],
          [2, 5, 13, 17, 3, 1, 1, 1, 1], // rows of x not aligned to texels: every span alignment
          [1, 3, 14, 9, 7, 2, 3, 1, 1], // a 7x7 stride-2 kernel, padding 3 (spans start 3 before a row)
          [1, 2, 10, 12, 3, 3, 0, 2, 1], // stride 3, dilation 2
          [2, 3, 9, 12, 3, 1, 1, 1, 1], // OW 12: a half block last
        ]
      ) {
        const o = { device: "webgpu" as const };
        const x = s.randn([N, C, H, W], { seed: 11, ...o });
        const w = s.randn([C * mult, 1, KH, KH], { seed: 12, ...o });
        x.requiresGrad = true;
        w.requiresGrad = true;
        const run = async (version: "direct" | "direct v2" | "im2col") => {
          const y = s.conv2d(x, w, { stride, padding, dilation, groups: C, version });
          y.mul(y).sum().backward();
          const out = [await arr(y), await arr(x.grad!), await arr(w.grad!)];
          x.zeroGrad();
          w.zeroGrad();
          return out;
        };
        const [d, d2, i] = [await run("direct"), await run("direct v2"), await run("im2col")];
        for (let k = 0; k < 3; k++) {
          assertClose(d[k], i[k], { atol: 1e-4, rtol: 1e-4 });
          assertClose(d2[k], i[k], { atol: 1e-4, rtol: 1e-4 });
        }
      }
      const x = s.zeros([1, 4, 5, 5], { device: "webgpu" });
      expect(() => s.conv2d(x, s.zeros([8, 1, 3, 3], { device: "webgpu" }), { groups: 4, version: "direct" }))
        .toThrow('version "direct" takes one output channel per group and at most 64 taps');
      expect(() => s.conv2d(x, s.zeros([4, 4, 3, 3], { device: "webgpu" }), { version: "fast" as "direct" }))
        .toThrow('version must be "auto", "im2col", "direct" or "direct v2", got "fast"');
    }),
  );

  test(
    "direct v4's texture: views at texel-aligned and unaligned offsets, and an x over one texture layer",
    scoped(async () => {
      requireGpu();
      const o = { device: "webgpu" as const };
      const run = async (x: Tensor, w: Tensor, version: "direct" | "direct v2") =>
        await arr(s.conv2d(x, w, { padding: 1, groups: x.shape[1], version }));
      // offsets 1 x 3 x 7 x 5 = 105 elements (off a texel: v2 reads it) and 2 x 105 = 210 (on one when even)
      const base = s.randn([4, 3, 7, 5], { seed: 21, ...o });
      const w = s.randn([3, 1, 3, 3], { seed: 22, ...o });
      for (const [a, b] of [[1, 3], [2, 4], [0, 4]]) {
        const x = base.slice([[a, b]]);
        assertClose(await run(x, w, "direct"), await run(x, w, "direct v2"), { atol: 1e-5, rtol: 1e-5 });
      }
      // more rows of 256 floats than a texture layer holds: the copy and the reads span layers
      const limit = gpu().limits.maxTextureDimension2D;
      const H = Math.ceil((limit * 256 * 1.1) / (2 * 64 * 64));
      const big = s.randn([2, 64, H, 64], { seed: 23, ...o });
      const wb = s.randn([64, 1, 3, 3], { seed: 24, ...o });
      assertClose(await run(big, wb, "direct"), await run(big, wb, "direct v2"), { atol: 1e-5, rtol: 1e-5 });
    }),
  );

  test(
    "testOp: both backends and finite differences, on a strided (transposed) input",
    scoped(async () => {
      await testOp([[2, 3, 5, 4], [4, 3, 2, 2], [4]], (x, w, b) => s.conv2d(x, w, { bias: b, padding: 1 }));
      await testOp(
        [[1, 4, 5, 6], [4, 1, 3, 3]],
        (x, w) => s.conv2d(x.transpose(2, 3), w, { groups: 4, stride: [2, 1], padding: [1, 0] }),
      );
    }),
  );

  test(
    "a batch larger than the im2col cap runs in chunks with the same values and gradients",
    scoped(async () => {
      requireGpu();
      const x = s.randn([5, 2, 6, 6], { seed: 5, device: "webgpu" });
      const w = s.randn([3, 2, 3, 3], { seed: 6, device: "webgpu" });
      x.requiresGrad = true;
      const run = async () => {
        const y = s.conv2d(x, w, { padding: 1 });
        y.sum().backward();
        const out = [await arr(y), await arr(x.grad!)];
        x.zeroGrad();
        return out;
      };
      const whole = await run();
      const cap = s.conv2dLimits.im2colBytes;
      s.conv2dLimits.im2colBytes = 2 * 36 * 18 * 4; // two images' cols per chunk: 3 chunks
      try {
        const chunked = await run();
        assertClose(chunked[0], whole[0], { atol: 1e-6, rtol: 1e-6 });
        assertClose(chunked[1], whole[1], { atol: 1e-6, rtol: 1e-6 });
      } finally {
        s.conv2dLimits.im2colBytes = cap;
      }
    }),
  );

  test(
    "bad input throws a ConvError naming what is wrong",
    scoped(() => {
      const x = s.zeros([1, 4, 5, 5]);
      const bad: [() => unknown, string][] = [
        [
          () => s.conv2d(x, s.zeros([2, 3, 3, 3])),
          "expects 3 input channels (3 per group, 1 group) but x [1, 4, 5, 5] has 4",
        ],
        [
          () => s.conv2d(x, s.zeros([2, 4, 7, 7])),
          "the kernel 7x7 (dilation 1x1: extent 7x7) is larger than the padded input 5x5",
        ],
        [
          () => s.conv2d(x, s.zeros([2, 2, 3, 3]), { groups: 3 }),
          "groups = 3 must divide the input channels (4) and the output channels (2)",
        ],
        [
          () => s.conv2d(x, s.zeros([2, 4, 3, 3]), { stride: 0 }),
          "stride must be an integer >= 1 or two of them, got 0",
        ],
        [() => s.conv2d(x, s.zeros([2, 4, 3, 3]), { padding: [1, -1] }), "padding must be an integer >= 0"],
        [
          () => s.conv2d(x, s.zeros([2, 4, 3, 3]), { bias: s.zeros([3]) }),
          "bias must be (2), one per output channel",
        ],
        [() => s.conv2d(s.zeros([4, 5, 5]), s.zeros([2, 4, 3, 3])), "x must be (N, C, H, W), got [4, 5, 5]"],
        [
          () => s.conv2d(x, s.zeros([2, 4, 3, 3]), { dilation: 3 }),
          "extent 7x7) is larger than the padded input 5x5",
        ],
      ];
      for (const [f, msg] of bad) expectThrowsNamed(f, s.ConvError, msg);
    }),
  );
});
