import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import { GPU, leakCheck, requireGpu, scoped, testOp } from "../../test/helpers.ts";

leakCheck();

/** topk's values, with the indices folded in (a float copy) so one testOp checks both. */
const both = (k: number, axis = -1) => (x: s.Tensor) => {
  const { values, indices } = s.topk(x, k, axis);
  return s.concat([values, indices.cast(values.dtype)], axis);
};

describe("topk", () => {
  test(
    "values and indices against the reference over shapes, axes and k (gradient through the values)",
    scoped(async () => {
      await testOp([[3, 7]], (x) => s.topk(x, 2).values);
      await testOp([[3, 7]], both(2), { grad: false });
      await testOp([[3, 7]], (x) => s.topk(x, 3).values, { dtype: "f16" });
      for (
        const [shape, k, axis] of [[[5], 1, 0], [[5], 5, 0], [[4, 9], 3, 1], [[2, 6, 3], 4, 1], [
          [7, 5],
          7,
          0,
        ]]
      ) {
        await testOp([shape as number[]], both(k as number, axis as number), { grad: false });
        await testOp([shape as number[]], (x) => s.topk(x, k as number, axis as number).values);
      }
      // a long odd row, k at the limit, and a view
      await testOp([[2, 1001]], both(16), { grad: false });
      await testOp([[6, 4]], (x) => s.topk(x.transpose(), 3).values);
    }),
  );

  test(
    "ties keep the lower index first; NaN ranks above every number",
    scoped(async () => {
      for (const device of GPU ? ["cpu", "webgpu"] as const : ["cpu"] as const) {
        const x = s.tensor([[2, 7, 2, 7, 1, 7], [NaN, 3, NaN, -Infinity, Infinity, 0]], { device });
        const { values, indices } = s.topk(x, 4);
        expect(Array.from(await indices.toArray())).toEqual([1, 3, 5, 0, 0, 2, 4, 1]);
        expect(Array.from(await values.toArray())).toEqual([7, 7, 7, 2, NaN, NaN, Infinity, 3]);
      }
    }),
  );

  test(
    "long rows run over several dispatches (the loop cap), ascending rows included",
    scoped(async () => {
      requireGpu();
      const n = 70001;
      const host = new Float32Array(n).map((_, i) => Math.sin(i * 12.9898) * 1000);
      host[n - 1] = 5000;
      host[3] = 5000;
      const r = s.topk(s.tensor(host, { device: "webgpu" }), 3);
      const sorted = Array.from(host.keys()).sort((a, b) => host[b] - host[a] || a - b).slice(0, 3);
      expect(Array.from(await r.indices.toArray())).toEqual(sorted);
      // the worst case for the loop cap: an ascending row, where every entry enters and shifts k - 1
      const up = s.topk(s.arange(8192, { device: "webgpu" }), 16);
      expect(Array.from(await up.indices.toArray())).toEqual(Array.from({ length: 16 }, (_, j) => 8191 - j));
    }),
  );

  test(
    "bad k, axis and dtype throw named errors on both backends",
    scoped(() => {
      for (const device of GPU ? ["cpu", "webgpu"] as const : ["cpu"] as const) {
        const x = s.zeros([3, 20], { device });
        expect(() => s.topk(x, 0)).toThrow(
          "topk: k must be an integer in [1, 20] (the size of axis 1 of [3, 20]), got 0",
        );
        expect(() => s.topk(x, 2, 0.5)).toThrow(/topk/);
        expect(() => s.topk(x, 4, 0)).toThrow("topk: k must be an integer in [1, 3]");
        expect(() => s.topk(x, 17)).toThrow("topk: k 17 is past the limit 16");
        expect(() => s.topk(x, 1, 2)).toThrow(/topk: axis 2/);
        expect(() => s.topk(s.zeros([3], { device, dtype: "i32" }), 1)).toThrow(
          "topk: x must be a float tensor",
        );
        expect(() => s.topk(s.tensor(1, { device }), 1)).toThrow(
          "topk: tensor [] f32 on cpu is a scalar".replace("cpu", device),
        );
      }
    }),
  );
});
