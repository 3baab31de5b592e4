import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { compareBackends, data, leakCheck, TOL } from "../../test/helpers.ts";

leakCheck();

const cpu = (shape: number[], seed = 1, scale = 3, specials: number[] = []) =>
  s.tensor(data(shape.reduce((a, b) => a * b, 1), seed, scale, specials), { shape, device: "cpu" });

const CASES: [number[], (number | number[] | undefined)[]][] = [
  [[7], [undefined, 0, -1]],
  [[1], [0]],
  [[3, 5], [0, 1, [0, 1], undefined]],
  [[2, 3, 17], [0, 1, 2, [0, 2], [1, 2]]],
  [[65, 33], [0, 1]],
  [[4, 0, 3], [0, 2]],
  [[100003], [0]], // long single reduction: the split (v2) path
  [[3, 5000], [1]],
  [[5000, 3], [0]],
];

describe("reductions: webgpu against the float64 reference", () => {
  for (const op of ["sum", "mean", "max", "min"] as const) {
    test(`${op} over axes, with keepdims`, async () => {
      for (const [shape, axesList] of CASES) {
        const x = cpu(shape, shape.length + 3);
        for (const axes of axesList) {
          for (const keep of [false, true]) {
            const f = (t: Tensor) => s[op](t, axes, keep);
            if ((op === "max" || op === "min") && shape.includes(0)) {
              if (axes === 1 || axes === undefined) continue;
            }
            // f32 sums of up to 1e5 terms of size ~1: compensated sums keep the error near 1e-6 relative
            await compareBackends(f, [x], { atol: 1e-4, rtol: 1e-5 });
          }
        }
        x.dispose();
      }
    });
  }

  test("argmax: first maximum, NaN wins, flat and per axis", async () => {
    const x = s.tensor([[1, 5, 5, 2], [NaN, 1, 9, 9], [-Infinity, -Infinity, -Infinity, -Infinity]], {
      device: "cpu",
    });
    for (
      const [axis, keep] of [[undefined, false], [0, false], [1, false], [1, true], [
        undefined,
        true,
      ]] as const
    ) {
      await compareBackends((t) => s.argmax(t, axis, keep), [x], TOL.i32);
    }
    const r = s.argmax(x, 1);
    expect(Array.from(await r.toArray())).toEqual([1, 0, 0]);
    expect(r.dtype).toBe("i32");
    const big = cpu([3, 4097], 5);
    await compareBackends((t) => s.argmax(t, 1), [big], TOL.i32);
    for (const t of [x, r, big]) t.dispose();
  });

  test("NaN and infinities propagate; large magnitudes stay exact", async () => {
    const x = s.tensor([[1, NaN, 3], [1e30, -1e30, 5], [Infinity, 1, 2], [Infinity, -Infinity, 0]], {
      device: "cpu",
    });
    for (const op of ["sum", "mean", "max", "min"] as const) {
      await compareBackends((t) => s[op](t, 1), [x], TOL.f32);
    }
    x.dispose();
  });

  test("integer reductions stay integer (sum wraps), mean gives f32", async () => {
    const x = s.tensor([[2147483647, 1, 5], [-3, 7, 2]], { dtype: "i32", device: "cpu" });
    for (const op of ["sum", "max", "min"] as const) {
      await compareBackends((t) => s[op](t, 1), [x], TOL.i32);
      const r = s[op](x, 1);
      expect(r.dtype).toBe("i32");
      r.dispose();
    }
    await compareBackends((t) => s.mean(t, 1), [x], TOL.f32);
    const long = s.arange(0, 5000, 1, { dtype: "i32", device: "cpu" });
    await compareBackends((t) => s.sum(t), [long], TOL.i32);
    const huge = s.full([4000], 2147483647, { dtype: "i32", device: "cpu" }); // a mean must not wrap
    await compareBackends((t) => s.mean(t), [huge], TOL.f32);
    huge.dispose();
    x.dispose();
    long.dispose();
  });

  test("empty reductions: sum is 0, mean NaN, max throws", async () => {
    const x = s.zeros([3, 0], { device: "cpu" });
    const r = s.sum(x, 1), m = s.mean(x, 1);
    expect(Array.from(await r.toArray())).toEqual([0, 0, 0]);
    expect(Number.isNaN((await m.toArray())[0])).toBe(true);
    expect(() => s.max(x, 1)).toThrow(/max: cannot reduce over an empty dimension of tensor \[3, 0\]/);
    expect(() => s.sum(x, 2)).toThrow("sum: axis 2 is out of range for a tensor of rank 2");
    for (const t of [x, r, m]) t.dispose();
  });

  test("cumsum along each axis, views and long lines", async () => {
    for (
      const [shape, axes] of [[[7], [0, -1]], [[3, 5], [0, 1]], [[2, 3, 17], [0, 1, 2]], [[0, 4], [0, 1]], [[
        20000,
      ], [0]]] as [number[], number[]][]
    ) {
      const x = cpu(shape, 7, 1);
      for (const a of axes) await compareBackends((t) => s.cumsum(t, a), [x], { atol: 1e-4, rtol: 1e-5 });
      x.dispose();
    }
    const x = cpu([6, 4], 3);
    await compareBackends((t) => s.cumsum(t.transpose(), 1), [x], TOL.f32);
    const i = s.tensor([1, 2, 3, 2147483647], { dtype: "i32", device: "cpu" });
    await compareBackends((t) => s.cumsum(t), [i], TOL.i32);
    const scalar = s.tensor(1, { device: "cpu" });
    expect(() => s.cumsum(scalar)).toThrow(/cumsum: .* is a scalar/);
    scalar.dispose();
    x.dispose();
    i.dispose();
  });
});
