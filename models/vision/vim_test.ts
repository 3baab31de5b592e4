import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, GPU, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";
import { backendsAgree, fitSideTask } from "../../test/models.ts";
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
      if (GPU) {
        const gpu = new Vim({ ...cfg, device: "webgpu" });
        await backendsAgree(cpu, gpu, x);
        gpu.dispose();
      }
      cpu.dispose(); // on the cpu-only path too: the leak check counts it
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
      const { first, last } = await fitSideTask(m);
      expect(last).toBeLessThan(0.5 * first);
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
