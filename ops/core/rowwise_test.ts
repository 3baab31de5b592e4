import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import { leakCheck, testOp } from "../../test/helpers.ts";

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
    // found: [2e19, -2e19, 1e19] gave 0, 0, 0 (or NaN) on webgpu; values only (the backward is composed)
    const rows = [
      [2e19, -2e19, 1e19],
      [3e38, -3e38, 1e38, 0],
      [3.4e38, 3.4e38, 3.4e38],
      [3.4e38, -3.4e38, 3.4e38, -3.4e38, 1],
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
    const r = await testOp([{ values: [[2e19, -2e19, 1e19]] }], (t) => s.rmsNorm(t), tol);
    expect(Array.from(r.outputs.webgpu!).map((v) => Number(v.toFixed(3)))).toEqual([1.155, -1.155, 0.577]);
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
