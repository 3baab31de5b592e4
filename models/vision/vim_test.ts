import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, GPU, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";
import { Vim } from "./vim.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());

describe("Vim", () => {
  test(
    "shapes, class token position, parameter count, and cpu == webgpu for logits and every gradient",
    scoped(async () => {
      const cfg = { imageSize: 12, patchSize: 4, numClasses: 5, dModel: 16, nLayer: 2, dState: 4, seed: 3 };
      const cpu = new Vim(cfg);
      expect(cpu.tokens).toBe(10); // 9 patches + the class token
      expect(cpu.clsIndex).toBe(4); // the middle of 9 patches
      const first = new Vim({ ...cfg, clsPosition: "first" });
      expect(first.clsIndex).toBe(0);
      first.dispose();
      // patch conv, cls, pos, per block: norm, in_proj, two directions, out_proj; final norm, head
      const E = 32, N = 4, R = 1, W = 4;
      const dir = E * W + E + E * (R + 2 * N) + R * E + E + E * N + E;
      const block = 16 + 16 * 2 * E + 2 * dir + E * 16;
      expect(cpu.numParameters()).toBe(16 * 16 + 16 + 16 + 10 * 16 + 2 * block + 16 + 16 * 5 + 5);
      const x = s.randn([2, 1, 12, 12], { seed: 4 });
      const y = cpu.forward(x);
      expect(y.shape).toEqual([2, 5]);
      if (!GPU) return;
      const gpu = new Vim({ ...cfg, device: "webgpu" });
      const run = async (m: Vim, xx: Tensor) => {
        const out = m.forward(xx);
        out.mul(out).sum().backward();
        const grads = await Promise.all(m.parameters().map(async (p) => await arr(p.grad!)));
        for (const p of m.parameters()) p.zeroGrad();
        return { out: await arr(out), grads };
      };
      const xg = await x.to("webgpu");
      const a = await run(cpu, x), b = await run(gpu, xg);
      xg.dispose();
      assertClose(b.out, a.out, { atol: 2e-4, rtol: 2e-3 });
      const names = cpu.namedParameters().map(([n]) => n);
      a.grads.forEach((g, i) => {
        expect(g.some((v) => v !== 0), `${names[i]} gets a gradient`).toBe(true);
        try {
          assertClose(b.grads[i], g, { atol: 5e-4, rtol: 5e-3 });
        } catch (e) {
          throw new Error(`${names[i]}: ${(e as Error).message}`);
        }
      });
      cpu.dispose();
      gpu.dispose();
    }),
  );

  test(
    "bidirectional: the class token in the middle sees patches on both sides; each direction alone sees one",
    scoped(async () => {
      const m = new Vim({
        imageSize: 8,
        patchSize: 2,
        numClasses: 2,
        dModel: 8,
        nLayer: 1,
        dState: 4,
        seed: 5,
      });
      const x = s.randn([1, 1, 8, 8], { seed: 6 });
      const first = x.add(0), last = x.add(0);
      s.copyInto(first.slice([null, null, [0, 2], [0, 2]]), s.zeros([1, 1, 2, 2])); // patch 0: before the cls
      s.copyInto(last.slice([null, null, [6, 8], [6, 8]]), s.zeros([1, 1, 2, 2])); // patch 15: after it
      const h = (t: Tensor) => m.blocks[0].forward(m.embed(t)).slice([null, m.clsIndex]);
      const base = await arr(h(x));
      const moved = async (t: Tensor) => (await arr(h(t))).some((v, i) => Math.abs(v - base[i]) > 1e-6);
      expect(await moved(first)).toBe(true);
      expect(await moved(last)).toBe(true);
      // the forward direction alone: the class token's output ignores later patches
      const blk = m.blocks[0];
      const fwdOnly = (t: Tensor) =>
        blk.fwd.forward(blk.inProj.forward(blk.norm.forward(m.embed(t)))).slice([null, m.clsIndex]);
      const f0 = await arr(fwdOnly(x));
      assertClose(await arr(fwdOnly(last)), f0, { atol: 1e-6, rtol: 1e-6 });
      expect((await arr(fwdOnly(first))).some((v, i) => Math.abs(v - f0[i]) > 1e-6)).toBe(true);
      m.dispose();
    }),
  );

  test(
    "trains: a few Adam steps fit a batch whose label is the side of a bright patch (webgpu)",
    scoped(async () => {
      requireGpu();
      const m = new Vim({
        imageSize: 8,
        patchSize: 2,
        numClasses: 2,
        dModel: 16,
        nLayer: 1,
        dState: 4,
        seed: 7,
        device: "webgpu",
      });
      const B = 16;
      const img = new Float32Array(B * 64), lab = new Int32Array(B);
      for (let b = 0; b < B; b++) {
        lab[b] = b % 2;
        const r = (b * 3) % 8, c = lab[b] ? 6 + (b % 2) : (b % 2);
        img[b * 64 + r * 8 + c] = 3;
      }
      const x = s.tensor(img, { shape: [B, 1, 8, 8], device: "webgpu" });
      const y = s.tensor(lab, { dtype: "i32", device: "webgpu" });
      const opt = new s.Adam(m.parameters(), { lr: 1e-2 });
      const losses: number[] = [];
      for (let i = 0; i < 60; i++) {
        const l = s.tidy(() => {
          opt.zeroGrad();
          const loss = s.crossEntropy(m.forward(x), y);
          loss.backward();
          opt.step();
          return loss;
        });
        losses.push(await l.item());
        l.dispose();
      }
      expect(losses[59]).toBeLessThan(0.5 * losses[0]);
      opt.dispose();
      m.dispose();
    }),
  );

  test(
    "bad sizes and inputs throw naming the problem",
    scoped(() => {
      const ok = { imageSize: 8, patchSize: 4, numClasses: 2, dModel: 8, nLayer: 1 };
      expect(() => new Vim({ ...ok, patchSize: 3 })).toThrow(
        "Vim: patchSize 3 does not divide the image 8x8",
      );
      expect(() => new Vim({ ...ok, nLayer: 0 })).toThrow("Vim: nLayer must be a positive integer, got 0");
      expect(() => new Vim({ ...ok, clsPosition: "last" as "first" })).toThrow(
        'clsPosition must be "middle"',
      );
      const m = new Vim(ok);
      expect(() => m.forward(s.zeros([1, 3, 8, 8]))).toThrow(
        "Vim: images must be (B, 1, 8, 8), got tensor [1, 3, 8, 8]",
      );
      m.dispose();
    }),
  );
});
