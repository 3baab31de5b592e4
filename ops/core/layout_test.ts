import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { leakCheck, requireGpu, scoped, testOp } from "../../test/helpers.ts";

leakCheck();

/** Inputs in [-3, 3) with a NaN and a 1e30 mixed in. */
const WIDE = { low: -3, high: 3, specials: [NaN, 1e30] };

describe("concat and stack", () => {
  test(
    "along every axis, with views, empties and dtype promotion",
    scoped(async () => {
      await testOp([[2, 3, 4], [2, 5, 4], [2, 0, 4]], (x, y, z) => s.concat([x, y, z], 1), WIDE);
      await testOp([[2, 3, 4]], (x) => s.concat([x, x], 0), WIDE);
      await testOp([[2, 3, 4]], (x) => s.concat([x, x.slice([null, null, [0, 4, 2]])], -1), WIDE);
      await testOp([[2, 3, 4]], (x) => s.concat([x.transpose(0, 2), x.transpose(0, 2)], 1), WIDE);
      await testOp([[2, 3, 4]], (x) => s.stack([x, x, x], 0), WIDE);
      await testOp([[2, 3, 4]], (x) => s.stack([x, x], 3), WIDE);
      const i = { values: [[1, 2, 3, 4]], dtype: "i32" } as const;
      const m = await testOp([{ values: [[0.5, 0.5, 0.5, 0.5]] }, i], (f, i) => s.concat([f, i], 0));
      expect(m.dtype).toBe("f32");
      expect(Array.from(m.outputs.webgpu!)).toEqual([0.5, 0.5, 0.5, 0.5, 1, 2, 3, 4]);
    }),
  );

  test(
    "mismatched shapes throw with all shapes named",
    scoped(() => {
      const a = s.zeros([2, 3], { device: "cpu" }), b = s.zeros([3, 3], { device: "cpu" });
      expect(() => s.concat([a, b], 1)).toThrow("concat: shapes must match except on axis 1: [2, 3], [3, 3]");
      expect(() => s.stack([a, b])).toThrow("stack: all tensors must have one shape: [2, 3], [3, 3]");
      expect(() => s.concat([])).toThrow(/concat: needs a non-empty array/);
      a.dispose();
      b.dispose();
    }),
  );
});

describe("gather", () => {
  test(
    "embedding lookup and other axes, against the reference",
    scoped(async () => {
      const table = { shape: [10, 6], ...WIDE };
      const idx = { values: [[3, 0, 9], [9, 9, 1]], dtype: "i32" } as const;
      const uidx = { values: [5, 2], dtype: "u32" } as const;
      const e = await testOp([table, idx], (t, i) => s.gather(t, i));
      expect(e.shape).toEqual([2, 3, 6]);
      await testOp([table, uidx], (t, i) => s.gather(t, i, 1));
      await testOp([table, uidx], (t, i) => s.gather(t.transpose(), i, 0));
      const z = await testOp([table, { values: [], dtype: "i32" }], (t, i) => s.gather(t, i));
      expect(z.shape).toEqual([0, 6]);
    }),
  );

  test(
    "an index out of range is an error on both backends, never garbage",
    scoped(async () => {
      requireGpu();
      const table = s.tensor(new Float32Array(8).fill(1.5), { shape: [4, 2], device: "cpu" });
      const bad = s.tensor([1, 4], { dtype: "i32", device: "cpu" });
      expect(() => s.gather(table, bad)).toThrow("gather: index 4 is out of range for an axis of size 4");
      const gt = await table.to("webgpu"), gb = await bad.to("webgpu");
      const r = s.gather(gt, gb);
      await expect(r.toArray()).rejects.toThrow(/gather: index 4 is out of range for an axis of size 4/);
      // the device stays usable and the flag is cleared
      const ok = s.gather(gt, s.tensor([0, 3], { dtype: "i32", device: "webgpu" }));
      expect((await ok.toArray()).length).toBe(4);
      const neg = s.tensor([-1], { dtype: "i32", device: "webgpu" });
      const r2 = s.gather(gt, neg);
      await expect(r2.toArray()).rejects.toThrow(/index -1 is out of range/);
      const sa = s.scatterAdd(
        s.ones([2, 3], { device: "webgpu" }),
        s.tensor([0, 7], { dtype: "i32", device: "webgpu" }),
        4,
      );
      await expect(sa.toArray()).rejects.toThrow(/scatterAdd: index 7 is out of range for an axis of size 4/);
      const f = s.tensor([1.0], { device: "cpu" });
      expect(() => s.gather(table, f)).toThrow(/gather: indices must be i32 or u32/);
      for (const t of [table, bad, gt, gb, r, ok, neg, r2, f]) t.dispose();
    }),
  );
});

describe("views", () => {
  test(
    "reshape, permute, transpose, slice, expand, squeeze compose on both backends",
    scoped(async () => {
      const chains: ((t: Tensor) => Tensor)[] = [
        (t) => t.reshape([24, 5]).contiguous(),
        (t) => t.permute([1, 2, 0]).reshape([-1]).contiguous(),
        (t) => t.slice([[1, 3], [0, 6, 2], -1]).contiguous(),
        (t) => t.slice([[-3, null], null, [4, 100]]).contiguous(),
        (t) => t.slice([0, 0]).unsqueeze(0).expand([3, 5]).contiguous(),
        (t) => t.transpose(0, 2).slice([[1, 3]]).transpose().reshape([2, -1]).contiguous(),
        (t) => t.slice([[0, 1]]).squeeze(0).add(1),
      ];
      for (const f of chains) await testOp([[4, 6, 5]], f, WIDE);
    }),
  );

  test(
    "views share storage and errors name the tensor",
    scoped(async () => {
      const x = s.arange(12, { device: "cpu", name: "x" });
      const v = x.reshape([3, 4]);
      expect(v.storage).toBe(x.storage);
      expect(() => x.reshape([5, -1])).toThrow(/reshape: cannot infer -1 in \[5, -1\] for tensor "x" \[12\]/);
      expect(() => v.expand([2, 4])).toThrow(
        /expand: cannot expand tensor "x" \[3, 4\] f32 on cpu to \[2, 4\]/,
      );
      expect(() => v.slice([5])).toThrow(/slice: index 5 is out of range for dimension 0 \(size 3\)/);
      expect(() => v.permute([0, 0])).toThrow(/permute: axes \[0, 0\] are not a permutation/);
      expect(() => v.slice([[0, 3, -1]])).toThrow(
        /slice: step -1 for dimension 0 must be a positive integer/,
      );
      x.dispose();
      // the view keeps storage alive after the base is disposed
      expect(Array.from(await v.slice([1]).toArray())).toEqual([4, 5, 6, 7]);
      v.dispose();
    }),
  );
});
