import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { gpu } from "../../runtime/device.ts";
import {
  assertClose,
  compareBackends,
  data,
  leakCheck,
  requireGpu,
  scoped,
  testOp,
} from "../../test/helpers.ts";

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
      // rows of 8 (v2, vec4), at a row offset of 8 (vec4) and of 4 columns into the table (a copy first)
      const wide = { shape: [10, 8], ...WIDE };
      await testOp([wide, idx], (t, i) => s.gather(t, i));
      const idx8 = { values: [[3, 0, 8], [8, 8, 1]], dtype: "i32" } as const;
      await testOp([wide, idx8], (t, i) => s.gather(t.slice([[1, 10]]), i));
      await testOp([wide, idx], (t, i) => s.gather(t.slice([null, [4, 8]]), i));
      await testOp([{ shape: [3, 10, 4] }, uidx], (t, i) => s.gather(t, i, 1));
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
      const wide = s.tensor(new Float32Array(16).fill(2), { shape: [4, 4], device: "webgpu" });
      await expect(s.gather(wide, gb).toArray()).rejects.toThrow(/gather: index 4 is out of range/); // v2
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
      for (const t of [table, bad, gt, gb, wide, r, ok, neg, r2, f]) t.dispose();
    }),
  );
});

describe("scatterAdd", () => {
  const VERSIONS = ["v1", "v2"] as const;
  for (const version of VERSIONS) {
    test(
      `${version} against the reference: repeated indices, odd widths, other axes, views, u32, empty`,
      scoped(async () => {
        const o = { version };
        // inner 5: the scalar path; inner 8: v2's vec4 path; an offset view: scalar again
        const rep = { values: [2, 0, 2, 5, 5, 5], dtype: "i32" } as const;
        await testOp([[6, 5], rep], (x, i) => s.scatterAdd(x, i, 7, 0, o), WIDE);
        await testOp([[6, 8], rep], (x, i) => s.scatterAdd(x, i, 6, 0, o), WIDE);
        await testOp([[7, 8], rep], (x, i) => s.scatterAdd(x.slice([[1, 7]]), i, 6, 0, o));
        const cols = { values: [1, 1, 0, 0, 1, 0], dtype: "i32" } as const;
        await testOp([[6, 3], cols], (x, i) => s.scatterAdd(x.transpose(), i, 2, 1, o)); // src [3, 6]
        const u = { values: [3, 1, 3, 3], dtype: "u32" } as const;
        await testOp([[2, 4, 8], u], (x, i) => s.scatterAdd(x, i, 4, 1, o));
        const grid = { values: [[0, 2], [2, 2], [1, 0]], dtype: "i32" } as const;
        const r = await testOp([[3, 2, 4], grid], (x, i) => s.scatterAdd(x, i, 3, 0, o));
        expect(r.shape).toEqual([3, 4]);
        const z = await testOp([[0, 4], { values: [], dtype: "i32" }], (x, i) => s.scatterAdd(x, i, 3, 0, o));
        expect(Array.from(z.outputs.webgpu!)).toEqual(new Array(12).fill(0));
      }),
    );
  }

  test(
    "v2 at scale: a large vocabulary, many tokens, a row used more than MAX_LOOP times",
    scoped(async () => {
      requireGpu();
      // 70,000 tokens (the sort places them over 3 dispatches, the sums over 3 windows), half into row 0
      const I = 70000;
      const many = Int32Array.from({ length: I }, (_, j) => (j % 2 ? 0 : (j * 7919) % 100));
      const wide = Int32Array.from({ length: 3000 }, (_, j) => (j * 7919 + 11) % 50000);
      for (const [idx, A, D] of [[many, 100, 4], [wide, 50000, 8], [wide, 50000, 3]] as const) {
        const x = s.tensor(data(idx.length * D, 3), { shape: [idx.length, D], device: "cpu" });
        const i = s.tensor(idx, { dtype: "i32", device: "cpu" });
        await compareBackends((x, i) => s.scatterAdd(x, i, A, 0, { version: "v2" }), [x, i], {
          atol: 1e-5,
          rtol: 1e-5,
        });
        x.dispose();
        i.dispose();
      }
    }),
  );

  test(
    "v2 is deterministic (the same bits every run) and two dispatches for an embedding gradient",
    scoped(async () => {
      requireGpu();
      const I = 2048, A = 64;
      const src = s.randn([I, 64], { seed: 4, device: "webgpu" });
      const idx = s.tensor(Int32Array.from({ length: I }, (_, j) => (j * j) % A), {
        dtype: "i32",
        device: "webgpu",
      });
      const d0 = gpu().counters.dispatches;
      const a = s.scatterAdd(src, idx, A);
      expect(gpu().counters.dispatches - d0).toBe(2); // the sort and the row sums
      const runs = [await a.toArray()];
      for (let k = 0; k < 3; k++) runs.push(await s.scatterAdd(src, idx, A, 0, { version: "v2" }).toArray());
      for (const r of runs.slice(1)) expect(r).toEqual(runs[0]);
      const v1 = await s.scatterAdd(src, idx, A, 0, { version: "v1" }).toArray();
      assertClose(runs[0], v1, { atol: 1e-5, rtol: 1e-5 });
    }),
  );

  test(
    "bad input: an index out of range (v2, both index dtypes), an unknown version, v2 past its sort",
    scoped(async () => {
      requireGpu();
      // uploaded host data: never poisoned by the failing batch, so it serves every case
      const ones = s.tensor(new Float32Array(12).fill(1), { shape: [3, 4], device: "webgpu" });
      const bad = s.scatterAdd(ones, s.tensor([0, 7, 1], { dtype: "i32", device: "webgpu" }), 4, 0, {
        version: "v2",
      });
      await expect(bad.toArray()).rejects.toThrow(
        /scatterAdd: index 7 is out of range for an axis of size 4/,
      );
      const neg = s.scatterAdd(ones, s.tensor([0, -2, 1], { dtype: "i32", device: "webgpu" }), 4);
      await expect(neg.toArray()).rejects.toThrow(/scatterAdd: index -2 is out of range/);
      const big = s.scatterAdd(ones, s.tensor([0, 4000000000, 1], { dtype: "u32", device: "webgpu" }), 4);
      await expect(big.toArray()).rejects.toThrow(/scatterAdd: index 4000000000 is out of range/);
      // the device stays usable
      const ok = s.scatterAdd(ones, s.tensor([3, 3, 3], { dtype: "i32", device: "webgpu" }), 4);
      expect(Array.from(await ok.toArray()).slice(12)).toEqual([3, 3, 3, 3]);
      for (const device of ["cpu", "webgpu"] as const) {
        const x = s.ones([2, 2], { device }), i = s.tensor([0, 1], { dtype: "i32", device });
        // deno-lint-ignore no-explicit-any
        expect(() => s.scatterAdd(x, i, 2, 0, { version: "v3" as any })).toThrow(
          'scatterAdd: version must be one of auto, v1, v2, got "v3"',
        );
        expect(() => s.scatterAdd(x, i, 400000, 0, { version: "v2" })).toThrow(
          /scatterAdd v2: 2 indices into 400000 rows are past its one-workgroup sort/,
        );
      }
      expect(s.scatterAddV2Fits(400000, 2)).toBe(false);
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
