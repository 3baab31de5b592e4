import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import { assertClose, leakCheck } from "../../test/helpers.ts";

leakCheck();

describe("alibiSlopes", () => {
  test("powers of two: 2^(-8h/n)", () => {
    assertClose(s.alibiSlopes(8), [1, 2, 3, 4, 5, 6, 7, 8].map((h) => 2 ** -h), { atol: 0, rtol: 0 });
    assertClose(s.alibiSlopes(1), [2 ** -8], { atol: 0, rtol: 0 });
    assertClose(s.alibiSlopes(16).slice(0, 3), [2 ** -0.5, 2 ** -1, 2 ** -1.5], { atol: 0, rtol: 1e-15 });
  });

  test("other head counts interleave every other slope of the next power of two", () => {
    // 6 heads: the 4-head slopes, then slopes 1 and 3 of the 8-head list
    assertClose(s.alibiSlopes(6), [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3], {
      atol: 0,
      rtol: 0,
    });
    // 12 heads: the 8-head slopes, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 from the 16-head list
    const twelve = [1, 2, 3, 4, 5, 6, 7, 8].map((h) => 2 ** -h).concat(
      [0.5, 1.5, 2.5, 3.5].map((e) => 2 ** -e),
    );
    assertClose(s.alibiSlopes(12), twelve, { atol: 0, rtol: 1e-15 });
    assertClose(s.alibiSlopes(3), [2 ** -4, 2 ** -8, 2 ** -2], { atol: 0, rtol: 0 });
    for (const n of [5, 7, 24, 40]) {
      const sl = s.alibiSlopes(n);
      expect(sl.length).toBe(n);
      expect(new Set(sl).size).toBe(n); // all distinct
    }
  });

  test("bad head counts throw", () => {
    expect(() => s.alibiSlopes(0)).toThrow("alibiSlopes: nHeads must be a positive integer, got 0");
    expect(() => s.alibiSlopes(2.5)).toThrow(/positive integer/);
  });
});

describe("alibiBias", () => {
  test("hand-computed values; queries aligned to the end of the keys", async () => {
    const b = s.alibiBias([0.5, 0.25], 2, 3, { device: "cpu" });
    expect(b.shape).toEqual([2, 2, 3]);
    // query i sits at position i + 1: distances [[1, 0, 1], [2, 1, 0]]
    assertClose(await b.toArray(), [-0.5, 0, -0.5, -1, -0.5, 0, -0.25, 0, -0.25, -0.5, -0.25, 0], {
      atol: 0,
      rtol: 0,
    });
    b.dispose();
  });

  test("webgpu against the reference (odd sizes, Tq = 1, one head)", async () => {
    for (const [H, Tq, Tk] of [[3, 5, 7], [8, 1, 9], [1, 1, 1], [5, 33, 33], [2, 0, 4]]) {
      const sl = s.alibiSlopes(H);
      const g = s.alibiBias(sl, Tq, Tk, { device: "webgpu" }), r = s.alibiBiasRef(sl, Tq, Tk, "f64");
      assertClose(await g.toArray(), await r.toArray(), { atol: 0, rtol: 1e-7 }, {
        actual: g.shape,
        expected: r.shape,
      });
      g.dispose();
      r.dispose();
    }
  });

  test("bad inputs throw clear errors", () => {
    expect(() => s.alibiBias([], 2, 2)).toThrow("alibiBias: slopes is empty");
    expect(() => s.alibiBias([1], 3, 2)).toThrow("alibiBias: Tq = 3 queries cannot be aligned");
    expect(() => s.alibiBias([1], -1, 2)).toThrow("alibiBias: Tq must be an integer >= 0, got -1");
    expect(() => s.alibiBias([NaN], 1, 2)).toThrow("alibiBias: slope 0 is NaN, not finite");
    expect(() => s.alibiBias([1], 1, 2, { dtype: "i32" })).toThrow("alibiBias: dtype must be a float type");
  });
});
