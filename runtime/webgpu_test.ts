import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import { gpu } from "./device.ts";
import { GpuContext, sizeClass } from "./webgpu.ts";
import { assertClose, leakCheck, requireGpu, scoped, TOL } from "../test/helpers.ts";

leakCheck();

describe("webgpu backend machinery", () => {
  test(
    "dispatches are batched: only a readback submits",
    scoped(async () => {
      const ctx = gpu();
      const x = s.randn([256], { seed: 3, device: "webgpu" });
      await x.toArray();
      const submits = ctx.counters.submits, dispatches = ctx.counters.dispatches;
      let y = x;
      for (let i = 0; i < 50; i++) y = y.mul(1.01).add(0.5).tanh();
      expect(ctx.counters.dispatches - dispatches).toBeGreaterThanOrEqual(150);
      expect(ctx.counters.submits).toBe(submits);
      await y.toArray();
      expect(ctx.counters.submits - submits).toBeLessThanOrEqual(2);
    }),
  );

  test(
    "the pool reuses freed buffers by size class",
    scoped(async () => {
      const ctx = gpu();
      const a = s.zeros([10000], { device: "webgpu" });
      await a.toArray();
      const size = sizeClass(40000);
      a.dispose();
      await ctx.sync();
      const pooled = s.memory("webgpu").pooledBytes;
      expect(pooled).toBeGreaterThanOrEqual(size);
      const b = s.zeros([9500], { device: "webgpu" }); // same size class
      expect(s.memory("webgpu").pooledBytes).toBe(pooled - size);
      b.dispose();
      expect(sizeClass(1000)).toBe(1024);
      expect(sizeClass(1025)).toBe(1280);
      expect(sizeClass(3)).toBe(16);
    }),
  );

  test(
    "one pipeline serves every shape (shapes travel in uniforms)",
    scoped(async () => {
      const ctx = gpu();
      // elementwise v3 has two variants, with and without a partial last vec4: warm both (and `ones`)
      for (const n of [3, 4]) await s.ones([n], { device: "webgpu" }).exp().toArray();
      const misses = ctx.cacheStats.misses;
      for (const n of [5, 17, 1000, 4097, 100000]) await s.ones([n], { device: "webgpu" }).exp().toArray();
      expect(ctx.cacheStats.misses).toBe(misses);
    }),
  );

  test("a tensor over maxStorageBufferBindingSize is a clear error naming it", () => {
    const limit = gpu().maxBinding;
    const n = Math.floor(limit / 4) + 1024;
    expect(() => s.zeros([n], { device: "webgpu" })).toThrow(
      new RegExp(
        `cannot allocate full output \\[${n}\\] f32: .* MiB is over the adapter's maxStorageBufferBindingSize`,
      ),
    );
    const big = s.zeros([n], { device: "cpu" }); // the cpu backend has no such limit
    expect(big.size).toBe(n);
    big.dispose();
  });

  test("a lost device is reported as an error, never garbage or a hang", async () => {
    requireGpu();
    const ctx = await GpuContext.create();
    expect(ctx).not.toBeNull();
    const buf = ctx!.alloc(64, "probe");
    ctx!.device.destroy();
    await ctx!.device.lost;
    await new Promise((r) => setTimeout(r, 0));
    expect(() => ctx!.alloc(64, 'tensor "x" [16] f32')).toThrow(
      /allocating tensor "x" \[16\] f32: the WebGPU device was lost/,
    );
    await expect(ctx!.read(buf, 0, 64)).rejects.toThrow(/readback: the WebGPU device was lost/);
    // accounting for the probe buffer (this context shares the process-wide ledger)
    ctx!.release(buf);
  });
});

describe("f16", () => {
  test(
    "f16 tensors on webgpu match the f16 cpu reference",
    scoped(async () => {
      expect(gpu().hasF16).toBe(true); // lavapipe has shader-f16; other adapters may not (then f16 throws)
      const x = s.tensor([0.5, -1.25, 3, 100, -0.001, 7], { dtype: "f16", device: "cpu", shape: [2, 3] });
      const g = await x.to("webgpu");
      const pairs: [s.Tensor, s.Tensor][] = [
        [x.exp(), g.exp()],
        [x.mul(x).add(1), g.mul(g).add(1)],
        [x.sum(1), g.sum(1)],
        [x.softmax(), g.softmax()],
        [x.layerNorm(), g.layerNorm()],
        [x.matmul(x.transpose()), g.matmul(g.transpose())],
        [x.cast("f32"), g.cast("f32")],
      ];
      for (const [c, w] of pairs) {
        expect(w.dtype).toBe(c.dtype);
        assertClose(await w.toArray(), await c.toArray(), TOL.f16, { actual: w.shape, expected: c.shape });
      }
    }),
  );
});
