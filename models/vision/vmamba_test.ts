import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, GPU, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";
import { backendsAgree, fitSideTask } from "../../test/models.ts";
import { PatchMerging, SS2D, VMamba } from "./vmamba.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());

describe("VMamba", () => {
  test(
    "shapes, parameter count, and cpu == webgpu for logits and every gradient",
    scoped(async () => {
      const cfg = {
        imageSize: 8,
        patchSize: 2,
        numClasses: 3,
        dims: [8, 16],
        depths: [1, 1],
        dState: 4,
        seed: 3,
      };
      const cpu = new VMamba(cfg);
      const ss2d = (C: number) => {
        const E = 2 * C, N = 4, R = Math.ceil(C / 16);
        return C * 2 * E + E * 9 + E + 4 * E * (R + 2 * N) + 4 * R * E + 4 * E + 4 * E * N + 4 * E + 2 * E +
          E * C;
      };
      const block = (C: number) => 2 * C + ss2d(C);
      const expected = 8 * 4 + 8 + 2 * 8 + block(8) + (2 * 32 + 32 * 16) + block(16) + 2 * 16 + 16 * 3 + 3;
      expect(cpu.numParameters()).toBe(expected);
      const x = s.randn([2, 1, 8, 8], { seed: 4 });
      expect(cpu.forward(x).shape).toEqual([2, 3]);
      expect(cpu.flops(2)).toBeGreaterThan(0);
      if (GPU) {
        const gpu = new VMamba({ ...cfg, device: "webgpu" });
        await backendsAgree(cpu, gpu, x);
        gpu.dispose();
      }
      cpu.dispose(); // on the cpu-only path too: the leak check counts it
    }),
  );

  test(
    "SS2D: every position sees the whole map (the four scan orders), beyond the conv's 3x3 reach",
    scoped(async () => {
      const m = new SS2D(4, { dState: 4, seed: 5 });
      const x = s.randn([1, 6, 6, 4], { seed: 6 });
      const far = x.add(0);
      s.copyInto(far.slice([null, 5, 5]), s.full([1, 4], 3)); // the bottom-right pixel
      const y0 = await arr(m.forward(x).slice([null, 0, 0])),
        y1 = await arr(m.forward(far).slice([null, 0, 0]));
      expect(y1.some((v, i) => Math.abs(v - y0[i]) > 1e-6)).toBe(true); // the top-left output moved
      m.dispose();
    }),
  );

  test(
    "patch merging takes Swin's 2x2 order",
    scoped(async () => {
      const pm = new PatchMerging(1, { seed: 1 });
      // with an identity-like check: the LayerNorm'd 4-vector of one neighbourhood, in order (0,0), (1,0), (0,1), (1,1)
      const x = s.tensor([[[[1], [2]], [[3], [4]]]]); // (1, 2, 2, 1): rows [1, 2], [3, 4]
      s.noGrad(() => s.copyInto(pm.reduction.weight, s.tensor([[1, 0], [0, 1], [0, 0], [0, 0]])));
      const y = await arr(pm.forward(x)); // the normalised values of 1 and 3 (the first two picks)
      const v = [1, 3, 2, 4], mu = 2.5, sd = Math.sqrt(v.reduce((a, e) => a + (e - mu) ** 2, 0) / 4 + 1e-5);
      assertClose(y, [(1 - mu) / sd, (3 - mu) / sd], { atol: 1e-5, rtol: 1e-5 });
      expect(() => pm.forward(s.zeros([1, 3, 2, 1]))).toThrow(
        "PatchMerging: the map 3x2 must have even sides",
      );
      pm.dispose();
    }),
  );

  test(
    "trains: a few Adam steps fit a batch whose label is the side of a bright pixel (webgpu)",
    scoped(async () => {
      requireGpu();
      const m = new VMamba({
        imageSize: 8,
        patchSize: 2,
        numClasses: 2,
        dims: [8, 16],
        depths: [1, 1],
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
      const ok = { imageSize: 8, patchSize: 2, numClasses: 2, dims: [8, 16], depths: [1, 1] };
      expect(() => new VMamba({ ...ok, dims: [8, 12] })).toThrow("each stage has twice the last's channels");
      expect(() => new VMamba({ ...ok, depths: [1] })).toThrow(
        "dims and depths must be non-empty and of one length",
      );
      expect(() => new VMamba({ ...ok, imageSize: 6 })).toThrow(
        "the 3x3 map after the stem cannot be halved 1 times",
      );
      expect(() => new VMamba({ ...ok, patchSize: 3 })).toThrow("patchSize 3 does not divide the image 8x8");
      const m = new VMamba(ok);
      expect(() => m.forward(s.zeros([1, 1, 7, 8]))).toThrow("VMamba: images must be (B, 1, 8, 8)");
      m.dispose();
    }),
  );
});
