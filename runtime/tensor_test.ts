import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import { leakCheck, requireGpu, scoped } from "../test/helpers.ts";

leakCheck();

describe("Tensor", () => {
  test(
    "readback: toArray, item, toNested, to()",
    scoped(async () => {
      const g = s.tensor([[1, 2], [3, 4]], { device: "webgpu" });
      expect(Array.from(await g.toArray())).toEqual([1, 2, 3, 4]);
      expect(await g.toNested()).toEqual([[1, 2], [3, 4]]);
      expect(await g.sum().item()).toBe(10);
      await expect(g.item()).rejects.toThrow("item: tensor [2, 2] f32 on webgpu has 4 elements, not 1");
      const c = await g.to("cpu");
      expect(c.device).toBe("cpu");
      const back = await c.transpose().to("webgpu");
      expect(Array.from(await back.toArray())).toEqual([1, 3, 2, 4]);
    }),
  );

  test(
    "prints a readable summary",
    scoped(async () => {
      const c = s.arange(24, { device: "cpu", name: "x" }).reshape([2, 12]);
      expect(c.toString()).toBe(
        'Tensor([2, 12], f32, cpu, "x")\n[[0, 1, 2, ..., 9, 10, 11],\n [12, 13, 14, ..., 21, 22, 23]]',
      );
      const g = s.tensor([1.5, NaN, -Infinity, 1e-7], { device: "webgpu" });
      expect(g.toString()).toBe("Tensor([4], f32, webgpu)");
      expect(await g.format()).toBe("Tensor([4], f32, webgpu)\n[1.5, nan, -inf, 1.0000e-7]");
      const bundle = await (g as unknown as Record<symbol, () => Promise<Record<string, string>>>)
        [Symbol.for("Jupyter.display")]();
      expect(bundle["text/plain"]).toContain("[1.5, nan, -inf");
      expect(bundle["text/html"]).toContain("<td>[4]</td><td>f32</td><td>webgpu</td>");
      expect(s.tensor(3, { device: "cpu", dtype: "i32" }).toString()).toBe("Tensor([], i32, cpu)\n3");
    }),
  );

  test("dispose is idempotent, `using` frees, a disposed tensor is an error", async () => {
    const before = s.memory("webgpu").bytesInUse;
    {
      using t = s.zeros([1000], { device: "webgpu" });
      expect(s.memory("webgpu").bytesInUse).toBeGreaterThan(before);
      expect(t.size).toBe(1000);
    }
    expect(s.memory("webgpu").bytesInUse).toBe(before);
    const t = s.ones([3], { device: "webgpu", name: "w" });
    t.dispose();
    t.dispose();
    expect(t.disposed).toBe(true);
    expect(() => t.add(1)).toThrow('add: tensor "w" [3] f32 on webgpu was disposed');
    await expect(t.toArray()).rejects.toThrow(/toArray: .* was disposed/);
  });

  test("default device selection", () => {
    requireGpu();
    const was = s.getDevice();
    expect(was).toBe("webgpu");
    s.setDefaultDevice("cpu");
    const t = s.zeros([2]);
    expect(t.device).toBe("cpu");
    t.dispose();
    s.setDefaultDevice(was);
    expect(() => s.setDefaultDevice("cuda" as never)).toThrow(/setDefaultDevice: unknown device "cuda"/);
    expect(s.adapterInfo()).toMatch(/MiB/);
  });
});

describe("tidy and the memory ledger", () => {
  test("tidy frees intermediates, keeps returned tensors (nested, arrays, objects, async)", async () => {
    const before = s.memory("webgpu");
    const x = s.randn([64, 64], { seed: 1, device: "webgpu" });
    const y = s.tidy(() => x.matmul(x).relu().add(1).softmax());
    const { a, b } = s.tidy(() => ({ a: x.exp(), b: [x.neg(), s.tidy(() => x.abs().sqrt())] }));
    let kept!: s.Tensor;
    s.tidy(() => {
      kept = s.keep(x.mul(2));
      x.mul(3);
    });
    const z = await s.tidy(async () => {
      const t = x.sum(0);
      await t.toArray();
      return t.mul(2);
    });
    expect(s.memory("webgpu").liveBuffers).toBe(before.liveBuffers + 7); // x, y, a, b[0], b[1], kept, z
    expect(() =>
      s.tidy(() => {
        x.add(1);
        throw new Error("boom");
      })
    ).toThrow("boom");
    for (const t of [x, y, a, ...(b as s.Tensor[]), kept, z]) t.dispose();
    expect(s.memory("webgpu").bytesInUse).toBe(before.bytesInUse);
  });

  test("peak bytes and resetPeak", () => {
    s.resetPeak("webgpu");
    const base = s.memory("webgpu").peakBytes;
    const t = s.zeros([1 << 20], { device: "webgpu" });
    t.dispose();
    expect(s.memory("webgpu").peakBytes).toBeGreaterThanOrEqual(base + 4 * (1 << 20));
    s.resetPeak("webgpu");
    expect(s.memory("webgpu").peakBytes).toBe(s.memory("webgpu").bytesInUse);
  });
});
