import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import { gpu } from "./device.ts";
import { grid } from "./webgpu.ts";
import { leakCheck, scoped } from "../test/helpers.ts";

leakCheck();

/** A test program: doubles a texture's texels into an output buffer (one invocation per texel of a row). */
const doubleTexels = (n: number) => ({
  name: "test double texels",
  key: "v1",
  source: () => `
struct U { w: vec4<u32> };
@group(0) @binding(0) var<uniform> u: U;
@group(0) @binding(1) var src: texture_2d_array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  if (g.x >= u.w.x) { return; }
  out[g.x] = 2.0 * textureLoad(src, vec2<i32>(i32(g.x), 0), 0, 0);
}`,
  uniforms: new Uint32Array([n, 0, 0, 0]),
  workgroups: grid(n, 64),
});

describe("one program model", () => {
  test(
    "a buffer packed into a texture, read by a shader, unpacked: all in one batch, one submit at the readback",
    scoped(async () => {
      const ctx = gpu();
      const n = 40; // texels
      const x = s.arange(0, 4 * n, 1, { device: "webgpu" });
      await x.toArray();
      const out = s.zeros([4 * n], { device: "webgpu" });
      const back = s.zeros([4 * n], { device: "webgpu" });
      await back.toArray();
      const submits = ctx.counters.submits;
      const tex = ctx.acquireTexture({ width: n, height: 1 }, "test texture");
      try {
        ctx.copyBufferToTexture(
          "test pack",
          { buffer: x.storage.buffer!, offset: 0, bytesPerRow: 256 * 16 },
          {
            texture: tex,
            origin: [0, 0, 0],
          },
          [n, 1, 1],
        );
        ctx.run({
          ...doubleTexels(n),
          bindings: [{ texture: tex, access: "sampled" }, {
            buffer: out.storage.buffer!,
            access: "read_write",
          }],
        });
        ctx.copyTextureToBuffer("test unpack", { texture: tex, origin: [0, 0, 0] }, {
          buffer: back.storage.buffer!,
          offset: 0,
          bytesPerRow: 256 * 16,
        }, [n, 1, 1]);
      } finally {
        tex.release();
      }
      expect(ctx.counters.submits).toBe(submits);
      const got = await out.toArray();
      expect(ctx.counters.submits).toBe(submits + 1); // the copies and the dispatch went with this readback
      const round = await back.toArray();
      expect(Array.from(got)).toEqual(Array.from({ length: 4 * n }, (_, i) => 2 * i));
      expect(Array.from(round)).toEqual(Array.from({ length: 4 * n }, (_, i) => i));
    }),
  );

  test(
    "more dispatches than one uniform arena holds (512) still make one submit",
    scoped(async () => {
      const ctx = gpu();
      const x = s.ones([64], { device: "webgpu" });
      await x.toArray();
      const submits = ctx.counters.submits;
      let y = x;
      for (let i = 0; i < 1200; i++) y = y.add(1);
      expect(ctx.counters.submits).toBe(submits);
      expect((await y.toArray())[0]).toBe(1201);
      expect(ctx.counters.submits).toBe(submits + 1);
    }),
  );

  test("the ledger counts a texture as in use while held, pooled after; emptyCache frees every pooled byte", () => {
    const ctx = gpu();
    ctx.emptyCache();
    expect(s.memory().pooledBytes).toBe(0);
    const m0 = s.memory();
    s.resetPeak();
    const t = ctx.acquireTexture({ width: 100, height: 3, layers: 2 }, "ledger probe");
    // rounded to classes: 104 x 8 x 2 texels of 16 bytes
    expect(t.bytes).toBe(104 * 8 * 2 * 16);
    expect(s.memory().bytesInUse - m0.bytesInUse).toBe(t.bytes);
    expect(s.memory().peakBytes - m0.bytesInUse).toBe(t.bytes);
    t.release();
    t.release(); // idempotent
    expect(s.memory().bytesInUse).toBe(m0.bytesInUse);
    expect(s.memory().pooledBytes).toBe(t.bytes);
    // the same size class comes back from the pool
    const again = ctx.acquireTexture({ width: 97, height: 5, layers: 2 }, "ledger probe 2");
    expect(again.texture).toBe(t.texture);
    expect(s.memory().pooledBytes).toBe(0);
    again.release();
    const z = s.zeros([1000], { device: "webgpu" });
    z.dispose();
    ctx.emptyCache();
    expect(s.memory().pooledBytes).toBe(0);
    expect(ctx.cacheSizes.pooledTextures).toBe(0);
  });

  test("a copy that does not fit is refused when recorded, naming the op", () => {
    const ctx = gpu();
    const x = s.zeros([64], { device: "webgpu" });
    const tex = ctx.acquireTexture({ width: 8, height: 1 }, "small");
    try {
      expect(() =>
        ctx.copyBufferToTexture("my op", { buffer: x.storage.buffer!, offset: 0, bytesPerRow: 256 }, {
          texture: tex,
          origin: [4, 0, 0],
        }, [16, 1, 1])
      ).toThrow(/my op: copy of 16 x 1 x 1 texels .* reaches past the texture/);
      expect(() =>
        ctx.copyBufferToTexture("my op", { buffer: x.storage.buffer!, offset: 0, bytesPerRow: 100 }, {
          texture: tex,
          origin: [0, 0, 0],
        }, [4, 2, 1])
      ).toThrow(/my op: .*bytesPerRow divisible by 256/);
    } finally {
      tex.release();
      x.dispose();
    }
  });

  test(
    "an error inside a pass throws at the next readback of another tensor, naming the op; what the failed batch computed throws when read",
    scoped(async () => {
      const ctx = gpu();
      const a = s.randn([8, 8], { seed: 1, device: "webgpu" });
      const before = a.mul(3);
      await before.toArray(); // computed before the failure: stays readable
      ctx.injectFault("mul");
      const bad = a.mul(2); // its bind group misses a binding
      const other = a.add(1);
      await expect(other.toArray()).rejects.toThrow(/webgpu validation error in mul: .*bind/);
      await expect(bad.toArray()).rejects.toThrow(/computed by \(or from\) a failed pass: .* in mul/);
      // computed later from the failed result: carries the error
      const later = bad.exp();
      await expect(later.toArray()).rejects.toThrow(/failed pass/);
      // computed later from good data: fine
      const fresh = a.mul(4);
      expect((await fresh.toArray()).length).toBe(64);
      expect((await before.toArray()).length).toBe(64);
    }),
  );

  test(
    "a repeated step reuses its bind groups (no new ones once warm): native memory stays flat",
    scoped(async () => {
      const ctx = gpu();
      const w = s.param(s.randn([32, 16], { seed: 1, device: "webgpu" }));
      const x = s.randn([8, 32], { seed: 2, device: "webgpu" });
      const step = async () => {
        const l = s.tidy(() => x.matmul(w).relu().sum());
        await l.item();
        l.dispose();
      };
      for (let i = 0; i < 3; i++) await step();
      const misses = ctx.cacheStats.bindGroupMisses, hits = ctx.cacheStats.bindGroupHits;
      for (let i = 0; i < 5; i++) await step();
      expect(ctx.cacheStats.bindGroupHits - hits).toBeGreaterThan(0);
      expect(ctx.cacheStats.bindGroupMisses - misses).toBe(0);
      w.dispose();
      x.dispose();
    }),
  );
});
