import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import { leakCheck, testOp } from "../../test/helpers.ts";

leakCheck();

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

describe("reductions: every backend against the float64 reference, values and gradients", () => {
  for (const op of ["sum", "mean", "max", "min"] as const) {
    test(`${op} over axes, with keepdims`, async () => {
      for (const [shape, axesList] of CASES) {
        for (const axes of axesList) {
          // max/min of an empty dim throws (tested below); over a non-empty dim of an empty tensor it is empty
          if ((op === "max" || op === "min") && shape.includes(0) && (axes === 1 || axes === undefined)) {
            continue;
          }
          for (const keep of [false, true]) {
            // f32 sums of up to 1e5 terms of size ~1: compensated sums keep the error near 1e-6 relative
            await testOp([shape], (t) => s[op](t, axes, keep), { low: -3, high: 3, atol: 1e-4, rtol: 1e-5 });
          }
        }
      }
    });
  }

  test("argmax: first maximum, NaN wins, flat and per axis", async () => {
    const x = { values: [[1, 5, 5, 2], [NaN, 1, 9, 9], [-Infinity, -Infinity, -Infinity, -Infinity]] };
    const axes = [[undefined, false], [0, false], [1, false], [1, true], [undefined, true]] as const;
    for (const [axis, keep] of axes) await testOp([x], (t) => s.argmax(t, axis, keep));
    const r = await testOp([x], (t) => s.argmax(t, 1));
    expect(Array.from(r.outputs.webgpu!)).toEqual([1, 0, 0]);
    expect(r.dtype).toBe("i32");
    await testOp([[3, 4097]], (t) => s.argmax(t, 1), { low: -3, high: 3 });
  });

  test("NaN and infinities propagate; large magnitudes stay exact", async () => {
    const x = { values: [[1, NaN, 3], [1e30, -1e30, 5], [Infinity, 1, 2], [Infinity, -Infinity, 0]] };
    for (const op of ["sum", "mean", "max", "min"] as const) await testOp([x], (t) => s[op](t, 1));
  });

  test("integer reductions stay integer (sum wraps), mean gives f32", async () => {
    const x = { values: [[2147483647, 1, 5], [-3, 7, 2]], dtype: "i32" } as const;
    for (const op of ["sum", "max", "min"] as const) {
      expect((await testOp([x], (t) => s[op](t, 1))).dtype).toBe("i32");
    }
    expect((await testOp([x], (t) => s.mean(t, 1))).dtype).toBe("f32");
    await testOp([{ values: Array.from({ length: 5000 }, (_, i) => i), dtype: "i32" }], (t) => s.sum(t));
    // a mean must not wrap
    await testOp([{ values: new Array(4000).fill(2147483647), dtype: "i32" }], (t) => s.mean(t));
  });

  test("empty reductions: sum is 0, mean NaN, max throws", async () => {
    const x = s.zeros([3, 0], { device: "cpu" });
    const r = s.sum(x, 1), m = s.mean(x, 1);
    expect(Array.from(await r.toArray())).toEqual([0, 0, 0]);
    expect(Number.isNaN((await m.toArray())[0])).toBe(true);
    expect(() => s.max(x, 1)).toThrow(/max: cannot reduce over an empty dimension of tensor \[3, 0\]/);
    expect(() => s.sum(x, 2)).toThrow("sum: axis 2 is out of range for a tensor of rank 2");
    for (const t of [x, r, m]) t.dispose();
    await testOp([[3, 0]], (t) => s.sum(t, 1));
    await testOp([[3, 0]], (t) => s.mean(t, 1));
  });

  test("cumsum along each axis, views and long lines", async () => {
    // [shape, axes, tolerances]: f32 partial sums wander like sqrt(L), and so does their rounding error; the
    // backward (sum - cumsum + g, a difference of partial sums) carries that error into small gradients too
    const near = { atol: 1e-4, rtol: 1e-5 }, long = { atol: 2e-4, rtol: 1e-5, gradAtol: 5e-4 };
    const LINES: [number[], number[], typeof long | typeof near][] = [
      [[7], [0, -1], near],
      [[3, 5], [0, 1], near],
      [[2, 3, 17], [0, 1, 2], near],
      [[0, 4], [0, 1], near],
      [[20000], [0], long],
    ];
    for (const [shape, axes, tol] of LINES) {
      for (const a of axes) await testOp([shape], (t) => s.cumsum(t, a), { low: -1, high: 1, ...tol });
    }
    await testOp([[6, 4]], (t) => s.cumsum(t.transpose(), 1), { low: -3, high: 3 });
    await testOp([{ values: [1, 2, 3, 2147483647], dtype: "i32" }], (t) => s.cumsum(t));
    const scalar = s.tensor(1, { device: "cpu" });
    expect(() => s.cumsum(scalar)).toThrow(/cumsum: .* is a scalar/);
    scalar.dispose();
  });
});
