import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import { GPU, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";
import { backendsAgree, fitSideTask } from "../../test/models.ts";
import { attentionRollout } from "./vit.ts";
import { ViT } from "./vit_model.ts";

leakCheck();

describe("ViT", () => {
  test(
    "shapes, parameter count, attention maps for rollout, and cpu == webgpu for logits and every gradient",
    scoped(async () => {
      const cfg = { imageSize: 8, patchSize: 4, numClasses: 3, dModel: 16, nLayer: 2, nHead: 2, seed: 3 };
      const cpu = new ViT(cfg);
      const D = 16, T = 5;
      const block = 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + 2 * D + (D * 4 * D + 4 * D) + (4 * D * D + D);
      expect(cpu.numParameters()).toBe(D * 16 + D + D + T * D + 2 * block + 2 * D + D * 3 + 3);
      const x = s.randn([2, 1, 8, 8], { seed: 4 });
      const r = cpu.forwardWithAttention(x);
      expect(r.logits.shape).toEqual([2, 3]);
      expect(r.attention.map((a) => a.shape)).toEqual([[2, 2, T, T], [2, 2, T, T]]);
      const roll = attentionRollout(r.attention); // (B, T, T), rows sum to 1
      const rows = Array.from(await roll.sum(-1).toArray());
      rows.forEach((v) => expect(v).toBeCloseTo(1, 5));
      expect(cpu.flops(2)).toBeGreaterThan(0);
      if (GPU) {
        const gpu = new ViT({ ...cfg, device: "webgpu" });
        await backendsAgree(cpu, gpu, x);
        gpu.dispose();
      }
      cpu.dispose();
    }),
  );

  test(
    "trains: a few Adam steps fit a batch whose label is the side of a bright pixel (webgpu)",
    scoped(async () => {
      requireGpu();
      const m = new ViT({
        imageSize: 8,
        patchSize: 2,
        numClasses: 2,
        dModel: 16,
        nLayer: 1,
        nHead: 2,
        seed: 7,
        device: "webgpu",
      });
      const { first, last } = await fitSideTask(m, 60, 3e-3);
      expect(last).toBeLessThan(0.5 * first);
      m.dispose();
    }),
  );

  test(
    "bad sizes and inputs throw naming the problem",
    scoped(() => {
      const ok = { imageSize: 8, patchSize: 4, numClasses: 2, dModel: 8, nLayer: 1, nHead: 2 };
      expect(() => new ViT({ ...ok, patchSize: 3 })).toThrow(
        "ViT: patchSize 3 does not divide the image 8x8",
      );
      expect(() => new ViT({ ...ok, nHead: 3 })).toThrow("ViT: dModel 8 is not a multiple of nHead 3");
      const m = new ViT(ok);
      expect(() => m.forward(s.zeros([1, 1, 4, 8]))).toThrow(
        "ViT: images must be (B, 1, 8, 8), got tensor [1, 1, 4, 8]",
      );
      m.dispose();
    }),
  );
});
