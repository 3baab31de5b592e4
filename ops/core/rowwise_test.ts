import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import { assertClose, leakCheck, requireDevice, requireGpu, scoped, testOp } from "../../test/helpers.ts";
import { gpu } from "../../runtime/device.ts";
import { MAX_LOOP } from "../../runtime/webgpu.ts";
import { normComposed } from "./rowwise.ts";

leakCheck();

const SHAPES = [[1], [7], [3, 5], [2, 3, 17], [65, 33], [0, 4], [4, 0], [2, 1000]];

describe("softmax and logSumExp", () => {
  test("every axis, against the float64 reference, values and gradients", async () => {
    const range = { low: -5, high: 5 };
    for (const shape of SHAPES) {
      for (let a = -shape.length; a < shape.length; a++) {
        await testOp([shape], (t) => s.softmax(t, a), { ...range, atol: 1e-6, rtol: 1e-5 });
        await testOp([shape], (t) => s.logSumExp(t, a), { ...range, atol: 1e-5, rtol: 1e-6 });
        await testOp([shape], (t) => s.logSumExp(t, a, true), { ...range, atol: 1e-5, rtol: 1e-6 });
      }
    }
  });

  test("stable for inputs like 1e4; NaN propagates; -inf rows", async () => {
    const x = {
      values: [[1e4, 1e4, 0], [-1e4, 1e4 - 1, 1e4], [NaN, 1, 2], [-Infinity, -Infinity, -Infinity]],
    };
    const sm = await testOp([x], (t) => s.softmax(t));
    const l = await testOp([x], (t) => s.logSumExp(t));
    const v = sm.outputs.webgpu!, lv = l.outputs.webgpu!;
    expect(v[0]).toBeCloseTo(0.5, 6);
    expect(lv[0]).toBeCloseTo(1e4 + Math.log(2), 2);
    expect(lv[3]).toBe(-Infinity);
  });

  test("views and bad input", async () => {
    await testOp([[5, 6]], (t) => s.softmax(t.transpose(), 1), { low: -3, high: 3, atol: 1e-6, rtol: 1e-5 });
    const x = s.zeros([5, 6], { device: "cpu" });
    const i = s.tensor([1, 2], { dtype: "i32", device: "cpu" });
    expect(() => s.softmax(i)).toThrow(/softmax: needs a float tensor, got tensor \[2\] i32/);
    expect(() => s.softmax(x, 2)).toThrow("softmax: axis 2 is out of range for a tensor of rank 2");
    x.dispose();
    i.dispose();
  });
});

describe("layerNorm and rmsNorm", () => {
  test("with and without weight and bias, against the reference, values and gradients", async () => {
    const tol = { atol: 1e-4, rtol: 1e-4 };
    for (const shape of [[1], [7], [3, 5], [2, 3, 17], [65, 33], [0, 4], [3, 4096]]) {
      const D = shape[shape.length - 1];
      // x in [-10, 10) with one outlier of 1e4; weight and bias in [-3, 3)
      const x = { shape, low: -10, high: 10, specials: [1e4] }, w = { shape: [D], low: -3, high: 3 };
      await testOp([x], (t) => s.layerNorm(t), tol);
      await testOp([x, w, w], (t, w, b) => s.layerNorm(t, w, b, 1e-3), tol);
      await testOp([x, w], (t, w) => s.layerNorm(t, w), tol);
      await testOp([x], (t) => s.rmsNorm(t), tol);
      await testOp([x, w], (t, w) => s.rmsNorm(t, w, 1e-5), tol);
    }
  });

  test("large offsets normalise stably (two-pass variance)", async () => {
    const r = await testOp([{ values: [[1e4 + 1, 1e4 + 2, 1e4 + 3]] }], (t) => s.layerNorm(t), {
      atol: 1e-3,
      rtol: 1e-3,
    });
    expect(r.outputs.webgpu![0]).toBeCloseTo(-1.2247, 3);
  });

  test("rows of any finite scale normalise right (no sum of squares overflows f32)", async () => {
    // found: [2e19, -2e19, 1e19] gave 0, 0, 0 (or NaN) on webgpu; values here, gradients in the next test
    const rows = [
      [2e19, -2e19, 1e19],
      [3e38, -3e38, 1e38, 0],
      [3.4e38, 3.4e38, 3.4e38],
      [3.4e38, -3.4e38, 3.4e38, -3.4e38, 1],
      [3.4e38, -3.4e38, 1, 2, 3e38, -1e38, 0, 5], // D 8: the vec4 forward (v2)
      [1e-30, 2e-30, -1e-30],
      [0, 0, 0],
      [5, 5, 5, 5, 5],
    ];
    const tol = { atol: 1e-5, rtol: 1e-5, grad: false };
    for (const values of rows) {
      const x = { values: [values] }, w = { values: values.map((_, i) => i - 1.5) };
      await testOp([x], (t) => s.layerNorm(t), tol);
      await testOp([x, w, w], (t, w, b) => s.layerNorm(t, w, b), tol);
      await testOp([x], (t) => s.rmsNorm(t), tol);
      await testOp([x, w], (t, w) => s.rmsNorm(t, w), tol);
    }
    // rows far below sqrt(eps): relative accuracy (found: 1.1e-20, 4.6e-20, -5.7e-20 instead of 1e-28 ...)
    for (const values of [[1e-30, 2e-30, -1e-30], [3e-25, -1e-25, 0, 2e-25]]) {
      const rel = { atol: 0, rtol: 1e-5, grad: false };
      await testOp([{ values: [values] }], (t) => s.layerNorm(t), rel);
      await testOp([{ values: [values] }], (t) => s.rmsNorm(t, null, 1e-5), rel);
      const composed = { ...rel, reference: (t: s.Tensor) => s.layerNorm(t) };
      await testOp([{ values: [values] }], (t) => normComposed(t, null, null, 1e-5, false), composed);
    }
    const r = await testOp([{ values: [[2e19, -2e19, 1e19]] }], (t) => s.rmsNorm(t), tol);
    expect(Array.from(r.outputs.webgpu!).map((v) => Number(v.toFixed(3)))).toEqual([1.155, -1.155, 0.577]);
  });

  test("gradients at any finite scale: the fused backward against the float64 reference", async () => {
    // found: the composed backward squared 2e19 in f32 (inf) and gave dx 0, 0, 0 for [2e19, -2e19, 1e19]
    // (the reference: -4.75e-20, -1.58e-20, 6.34e-20 for g = 1, 2, 3). dx scales as 1/sigma:
    // relative tolerances, and an atol below the f32 normal range (dx of a 3e38 row is subnormal, and a
    // flush-to-zero adapter may give 0 there)
    const rows = [
      [2e19, -2e19, 1e19],
      [3e38, -3e38, 1e38, 0],
      [3.4e38, -3.4e38, 3.4e38, -3.4e38, 1],
      [3.4e38, -3.4e38, 1, 2, 3e38, -1e38, 0, 5],
      [1e-30, 2e-30, -1e-30],
      [1e-38, -3e-38, 2e-38, 5e-39],
      [5, 5, 5, 5.5, 5],
    ];
    // dx is about g / sigma: an atol of that scale (never below the smallest normal f32)
    const tolFor = (values: number[]) => {
      const m = values.reduce((a, b) => a + b) / values.length;
      const sigma = Math.sqrt(values.reduce((a, v) => a + (v - m) ** 2, 0) / values.length);
      return { atol: 1e-5, rtol: 1e-5, gradAtol: Math.max(1e-5 / sigma, 2 ** -126), gradRtol: 1e-4 };
    };
    for (const values of rows) {
      const tol = tolFor(values);
      const x = { values: [values, values.map((v) => -v / 2)] },
        w = { values: values.map((_, i) => i - 1.5) };
      await testOp([x], (t) => s.layerNorm(t), tol);
      await testOp([x, w, w], (t, w, b) => s.layerNorm(t, w, b, 0), tol);
      await testOp([x], (t) => s.rmsNorm(t), tol);
      await testOp([x, w], (t, w) => s.rmsNorm(t, w, 0), tol);
    }
    // the composition (the long-row path) too: rows scaled by a power of two before any square
    for (const values of rows.slice(0, 4)) {
      const tol = tolFor(values);
      const x = { values: [values] }, w = { values: values.map((_, i) => i - 1.5) };
      await testOp([x, w, w], (t, w, b) => normComposed(t, w, b, 0, false), {
        ...tol,
        reference: (t, w, b) => s.layerNorm(t, w, b, 0),
      });
      await testOp([x, w], (t, w) => normComposed(t, w, null, 0, true), {
        ...tol,
        reference: (t, w) => s.rmsNorm(t, w, 0),
      });
    }
  });

  test(
    "layerNorm backward of 64-wide rows: dx and the param partials in one pass, then the column sums",
    scoped(() => {
      requireGpu();
      const x = s.param(s.randn([512, 64], { seed: 1, device: "webgpu" }));
      const w = s.param(s.randn([64], { seed: 2, device: "webgpu" }));
      const b = s.param(s.randn([64], { seed: 3, device: "webgpu" }));
      const y = s.layerNorm(x, w, b, 1e-5).sum();
      const ctx = gpu();
      const keys: string[] = [];
      const run = ctx.run.bind(ctx);
      ctx.run = (p) => (p.name === "layerNorm backward" && keys.push(String(p.key).split("|")[0]), run(p));
      try {
        y.backward();
      } finally {
        ctx.run = run;
      }
      expect(keys).toEqual(["dx+part", "sum"]);
      for (const p of [x, w, b]) p.zeroGrad(), p.dispose();
    }),
  );

  test("the fused backward against the unfused composition (vec4 and scalar loads, views, f16)", async () => {
    requireGpu();
    // one pass for dx and the param grads' partials (v2) up to 32 column vectors (vec4 or scalar: [9, 30],
    // and the odd-offset views), chunks of several rows with a partial last one ([1003, 16]); three
    // dispatches (v1) past that ([65, 33] and [7, 300] scalar, [6, 320] vec4)
    const cases: [number[], string][] = [
      [[2, 3, 64], "f32"],
      [[65, 33], "f32"],
      [[5, 12], "f32"],
      [
        [1, 1],
        "f32",
      ],
      [[1003, 16], "f32"],
      [[9, 30], "f32"],
      [[7, 300], "f32"],
      [[6, 320], "f32"],
    ];
    if (gpu().hasF16) cases.push([[9, 32], "f16"], [[4, 7], "f16"]);
    else expect(() => s.zeros([1], { dtype: "f16", device: "webgpu" })).toThrow(/f16 needs the adapter/);
    for (const [shape, dtype] of cases) {
      const D = shape[shape.length - 1];
      const tol = dtype === "f16" ? { atol: 2e-2, rtol: 2e-2 } : { atol: 1e-4, rtol: 1e-4 };
      for (const rms of [false, true]) {
        for (const affine of [false, true]) {
          // a view at an odd offset (the scalar path) and the whole tensor (vec4 where D allows)
          for (const offset of [0, 1]) {
            await scoped(async () => {
              const all = s.randn([shape.reduce((a, b) => a * b) + offset], { seed: 3, device: "webgpu" });
              const x = s.param(all.slice([[offset, all.size]]).reshape(shape).cast(dtype as "f32"));
              const w = s.param(s.randn([D], { seed: 4, device: "webgpu" }).cast(dtype as "f32"));
              const b = s.param(s.randn([D], { seed: 5, device: "webgpu" }).cast(dtype as "f32"));
              const cot = s.randn(shape, { seed: 6, device: "webgpu" }).cast(dtype as "f32");
              const grads = async (fused: boolean) => {
                const fw = affine ? w : null, fb = affine && !rms ? b : null;
                const y = fused
                  ? (rms ? s.rmsNorm(x, fw, 1e-5) : s.layerNorm(x, fw, fb, 1e-5))
                  : normComposed(x, fw, fb, 1e-5, rms);
                y.mul(cot).sum().backward();
                const out = [await x.grad!.toArray()];
                if (fw) out.push(await w.grad!.toArray());
                if (fb) out.push(await b.grad!.toArray());
                for (const p of [x, w, b]) p.zeroGrad();
                return out;
              };
              const fused = await grads(true), composed = await grads(false);
              fused.forEach((g, k) => assertClose(g, composed[k], tol));
              for (const p of [x, w, b]) p.dispose();
            })();
          }
        }
      }
    }
  });

  test("gradcheck of the fused kernels on webgpu (f32 against float64 finite differences)", async () => {
    requireGpu();
    await scoped(async () => {
      const x = s.randn([3, 8], { seed: 1, device: "webgpu" });
      const w = s.randn([8], { seed: 2, device: "webgpu" }), b = s.randn([8], { seed: 3, device: "webgpu" });
      await s.gradcheck((x, w, b) => s.layerNorm(x, w, b), [x, w, b]);
      await s.gradcheck((x, w) => s.rmsNorm(x, w), [x, w]);
      await s.gradcheck((x) => s.layerNorm(x.mul(1e25)), [x]);
    })();
  });

  test("rows longer than MAX_LOOP / 4 and MAX_LOOP (composed path): huge and tiny scales, values and gradients", async () => {
    // D past MAX_LOOP / 4 leaves the fused kernels; past MAX_LOOP the reductions split into chunks too
    for (
      const [D, low, high] of [
        [MAX_LOOP / 4 + 3, -3e38, 3e38],
        [MAX_LOOP / 4 + 3, -2e19, 2e19],
        [MAX_LOOP / 4 + 3, -1e-30, 1e-30],
        [MAX_LOOP / 4 + 3, -3, 3],
        [MAX_LOOP + 5, -3e38, 3e38],
      ]
    ) {
      const x = { shape: [2, D], low, high }, w = { shape: [D], low: -2, high: 2 };
      // dx scales as 1 / sigma; dw sums 2 rows of g xhat, with cancellation in some columns
      const tol = { atol: 1e-4, rtol: 1e-4, gradAtol: Math.max(1e-5 / high, 2 ** -126), gradRtol: 2e-3 };
      await testOp([x], (t) => s.layerNorm(t, null, null, 0), tol);
      await testOp([x], (t) => s.rmsNorm(t), tol);
      await testOp([x, w, w], (t, w, b) => s.layerNorm(t, w, b), { ...tol, gradAtol: 1e-5 });
      await testOp([x, w], (t, w) => s.rmsNorm(t, w), { ...tol, gradAtol: 1e-5 });
    }
  });

  test("forward and fused backward outside tidy leave nothing allocated (saved statistics freed)", async () => {
    for (const device of ["cpu", "webgpu"] as const) {
      requireDevice(device);
      const x = s.param(s.randn([6, 8], { seed: 1, device }));
      const w = s.param(s.randn([8], { seed: 2, device })), b = s.param(s.randn([8], { seed: 3, device }));
      const before = s.memory(device).bytesInUse;
      for (const f of [() => s.layerNorm(x, w, b), () => s.rmsNorm(x, w), () => s.layerNorm(x)]) {
        const y = f(), l = y.sum();
        y.dispose();
        l.backward();
        await x.grad!.toArray();
        l.dispose();
        for (const p of [x, w, b]) p.zeroGrad();
        expect(s.memory(device).bytesInUse, device).toBe(before);
        f().dispose(); // a forward whose graph is never used frees its statistics with it
        expect(s.memory(device).bytesInUse, device).toBe(before);
      }
      for (const p of [x, w, b]) p.dispose();
    }
  });

  test("bad weight shape names it", () => {
    const x = s.zeros([2, 4], { device: "cpu" }), w = s.zeros([3], { device: "cpu" });
    expect(() => s.layerNorm(x, w)).toThrow(
      "layerNorm: weight must have shape [4] (the last dim of x [2, 4]), got [3]",
    );
    expect(() => s.rmsNorm(x, w)).toThrow(/rmsNorm: weight must have shape \[4\]/);
    x.dispose();
    w.dispose();
  });
});
