import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import { compareBackends, data, leakCheck, TOL } from "../../test/helpers.ts";

leakCheck();

const cpu = (shape: number[], seed = 1, scale = 3, specials: number[] = []) =>
  s.tensor(data(shape.reduce((a, b) => a * b, 1), seed, scale, specials), { shape, device: "cpu" });

const SHAPES = [[1], [7], [3, 5], [2, 3, 17], [65, 33], [0, 4], [4, 0], [2, 1000]];

describe("softmax and logSumExp", () => {
  test("every axis, against the float64 reference", async () => {
    for (const shape of SHAPES) {
      const x = cpu(shape, 3, 5);
      for (let a = -shape.length; a < shape.length; a++) {
        await compareBackends((t) => s.softmax(t, a), [x], { atol: 1e-6, rtol: 1e-5 });
        await compareBackends((t) => s.logSumExp(t, a), [x], { atol: 1e-5, rtol: 1e-6 });
        await compareBackends((t) => s.logSumExp(t, a, true), [x], { atol: 1e-5, rtol: 1e-6 });
      }
      x.dispose();
    }
  });

  test("stable for inputs like 1e4; NaN propagates; -inf rows", async () => {
    const x = s.tensor(
      [[1e4, 1e4, 0], [-1e4, 1e4 - 1, 1e4], [NaN, 1, 2], [-Infinity, -Infinity, -Infinity]],
      { device: "cpu" },
    );
    await compareBackends((t) => s.softmax(t), [x], TOL.f32);
    await compareBackends((t) => s.logSumExp(t), [x], TOL.f32);
    const sm = s.softmax(x), l = s.logSumExp(x);
    const v = await sm.toArray(), lv = await l.toArray();
    expect(v[0]).toBeCloseTo(0.5, 6);
    expect(lv[0]).toBeCloseTo(1e4 + Math.log(2), 2);
    expect(lv[3]).toBe(-Infinity);
    for (const t of [x, sm, l]) t.dispose();
  });

  test("views and bad input", async () => {
    const x = cpu([5, 6], 9);
    await compareBackends((t) => s.softmax(t.transpose(), 1), [x], { atol: 1e-6, rtol: 1e-5 });
    const i = s.tensor([1, 2], { dtype: "i32", device: "cpu" });
    expect(() => s.softmax(i)).toThrow(/softmax: needs a float tensor, got tensor \[2\] i32/);
    expect(() => s.softmax(x, 2)).toThrow("softmax: axis 2 is out of range for a tensor of rank 2");
    x.dispose();
    i.dispose();
  });
});

describe("layerNorm and rmsNorm", () => {
  test("with and without weight and bias, against the reference", async () => {
    for (const shape of [[1], [7], [3, 5], [2, 3, 17], [65, 33], [0, 4], [3, 4096]]) {
      const D = shape[shape.length - 1];
      const x = cpu(shape, 4, 10, [1e4]), w = cpu([D], 5), b = cpu([D], 6);
      await compareBackends((t) => s.layerNorm(t), [x], { atol: 1e-4, rtol: 1e-4 });
      await compareBackends((t, w, b) => s.layerNorm(t, w, b, 1e-3), [x, w, b], { atol: 1e-4, rtol: 1e-4 });
      await compareBackends((t, w) => s.layerNorm(t, w), [x, w], { atol: 1e-4, rtol: 1e-4 });
      await compareBackends((t) => s.rmsNorm(t), [x], { atol: 1e-4, rtol: 1e-4 });
      await compareBackends((t, w) => s.rmsNorm(t, w, 1e-5), [x, w], { atol: 1e-4, rtol: 1e-4 });
      for (const t of [x, w, b]) t.dispose();
    }
  });

  test("large offsets normalise stably (two-pass variance)", async () => {
    const x = s.tensor([[1e4 + 1, 1e4 + 2, 1e4 + 3]], { device: "cpu" });
    await compareBackends((t) => s.layerNorm(t), [x], { atol: 1e-3, rtol: 1e-3 });
    const g = await x.to("webgpu");
    const y = s.layerNorm(g);
    const v = await y.toArray();
    expect(v[0]).toBeCloseTo(-1.2247, 3);
    for (const t of [x, g, y]) t.dispose();
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
