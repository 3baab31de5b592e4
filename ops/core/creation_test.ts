import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import { assertClose, leakCheck, requireDevice, requireGpu, scoped } from "../../test/helpers.ts";
import { philox } from "./random_ref.ts";

leakCheck();

describe("creation", () => {
  test(
    "tensor infers shapes and dtypes; rejects ragged and bad values",
    scoped(() => {
      requireGpu();
      const t = s.tensor([[1, 2, 3], [4, 5, 6]], { device: "cpu" });
      expect(t.shape).toEqual([2, 3]);
      expect(t.dtype).toBe("f32");
      expect(s.tensor(5, { device: "cpu" }).shape).toEqual([]);
      expect(s.tensor(new Int32Array([1, 2]), { device: "cpu" }).dtype).toBe("i32");
      expect(s.tensor([true, false], { device: "cpu" }).shape).toEqual([2]);
      expect(s.tensor([1, 2, 3, 4], { shape: [2, 2], device: "webgpu" }).shape).toEqual([2, 2]);
      expect(() => s.tensor([[1, 2], [3]], { device: "cpu" })).toThrow(/tensor: ragged nested array/);
      expect(() => s.tensor([1, 2, 3], { shape: [2, 2], device: "cpu" })).toThrow(
        "tensor: 3 values do not fill shape [2, 2] (4 elements)",
      );
      expect(() => s.tensor([1.5], { dtype: "i32", device: "cpu" })).toThrow(
        /tensor: 1.5 is not a valid i32 value/,
      );
      expect(() => s.tensor([1], { dtype: "bf16" as never, device: "cpu" })).toThrow(
        /tensor: unknown dtype "bf16"/,
      );
      expect(() => s.tensor([1], { dtype: "f64", device: "webgpu" })).toThrow(
        /f64 lives on the cpu backend only/,
      );
      expect(() => s.tensor([1], { device: "tpu" as never })).toThrow(/tensor: unknown device "tpu"/);
      expect(() => s.zeros([2, -1], { device: "cpu" })).toThrow(
        /full: shape \[2, -1\] has an invalid dimension -1/,
      );
    }),
  );

  test(
    "zeros, ones, full, arange agree across backends",
    scoped(async () => {
      for (const device of ["cpu", "webgpu"] as const) {
        requireDevice(device);
        expect(Array.from(await s.zeros([3], { device }).toArray())).toEqual([0, 0, 0]);
        expect(Array.from(await s.ones([2], { device, dtype: "i32" }).toArray())).toEqual([1, 1]);
        expect(Array.from(await s.full([2], -7, { device, dtype: "i32" }).toArray())).toEqual([-7, -7]);
        expect(Array.from(await s.full([2], 4000000000, { device, dtype: "u32" }).toArray())).toEqual([
          4e9,
          4e9,
        ]);
        expect(Array.from(await s.arange(5, { device }).toArray())).toEqual([0, 1, 2, 3, 4]);
        expect(Array.from(await s.arange(10, 0, -3, { device, dtype: "i32" }).toArray())).toEqual([
          10,
          7,
          4,
          1,
        ]);
        assertClose(
          await s.arange(0, 1, 0.1, { device }).toArray(),
          Array.from({ length: 10 }, (_, i) => i * 0.1),
          { atol: 1e-6 },
        );
        expect(s.arange(3, 3, { device }).shape).toEqual([0]);
        expect(s.zeros([0, 5], { device }).size).toBe(0);
      }
      expect(() => s.arange(0, 5, 0)).toThrow(/arange: .*step non-zero/);
    }),
  );

  test("Philox4x32-10 matches the published known-answer vectors", () => {
    // Random123 kat_vectors: philox4x32 10 rounds
    expect(Array.from(philox(0, 0, 0, 0, 0, 0)).map((x) => x.toString(16))).toEqual([
      "6627e8d5",
      "e169c58d",
      "bc57ac4c",
      "9b00dbd8",
    ]);
    expect(
      Array.from(philox(0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff)).map((x) =>
        x.toString(16)
      ),
    )
      .toEqual(["408f276d", "41c83b0e", "a20bc7c6", "6d5451fd"]);
    expect(
      Array.from(philox(0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0)).map((x) =>
        x.toString(16)
      ),
    )
      .toEqual(["d16cfe09", "94fdcceb", "5001e420", "24126ea1"]);
  });

  test(
    "the same seed gives the same random tensor on both backends",
    scoped(async () => {
      requireGpu();
      for (const n of [1, 3, 4, 1001]) {
        const ru = await s.rand([n], { seed: 42, device: "cpu" }).toArray();
        const gu = await s.rand([n], { seed: 42, device: "webgpu" }).toArray();
        expect(Array.from(gu)).toEqual(Array.from(ru)); // bit-identical: integer math and exact scaling
        const rn = await s.randn([n], { seed: 42, device: "cpu" }).toArray();
        const gn = await s.randn([n], { seed: 42, device: "webgpu" }).toArray();
        assertClose(gn, rn, { atol: 1e-5, rtol: 1e-5 }); // log/cos differ by ulps between f32 and float64
      }
      const a = await s.rand([5], { seed: 1, device: "webgpu" }).toArray();
      const b = await s.rand([5], { seed: 2, device: "webgpu" }).toArray();
      expect(Array.from(a)).not.toEqual(Array.from(b));
      s.manualSeed(123);
      const c1 = await s.randn([8], { device: "webgpu" }).toArray();
      const c2 = await s.randn([8], { device: "webgpu" }).toArray();
      s.manualSeed(123);
      const d1 = await s.randn([8], { device: "cpu" }).toArray();
      expect(Array.from(c1)).not.toEqual(Array.from(c2)); // successive calls draw new streams
      assertClose(c1, d1, { atol: 1e-5, rtol: 1e-5 });
    }),
  );

  test(
    "random numbers have the right moments and range",
    scoped(async () => {
      requireGpu();
      const n = 200_000;
      const u = s.rand([n], { seed: 9, low: -2, high: 2, device: "webgpu" });
      const z = s.randn([n], { seed: 9, mean: 3, std: 0.5, device: "webgpu" });
      const uv = await u.toArray();
      expect(uv.reduce((a, b) => Math.min(a, b))).toBeGreaterThanOrEqual(-2);
      expect(uv.reduce((a, b) => Math.max(a, b))).toBeLessThan(2);
      expect(await u.mean().item()).toBeCloseTo(0, 1);
      expect(await z.mean().item()).toBeCloseTo(3, 2);
      const sd = Math.sqrt(await z.sub(3).pow(2).mean().item());
      expect(sd).toBeCloseTo(0.5, 2);
    }),
  );
});
