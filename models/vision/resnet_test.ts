import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import { leakCheck, requireGpu, scoped } from "../../test/helpers.ts";
import { backendsAgree, fitSideTask } from "../../test/models.ts";
import { BatchNorm2d, ResNet } from "./resnet.ts";

leakCheck();

describe("ResNet", () => {
  test(
    "each attention module plugs in where its paper puts it; shapes, FLOPs grow with the module",
    scoped(() => {
      const base = new ResNet({ numClasses: 10, widths: [16, 32], depths: [1, 1], seed: 1 });
      const x = s.randn([2, 1, 12, 12], { seed: 2 });
      expect(base.forward(x).shape).toEqual([2, 10]);
      for (const attention of ["se", "eca", "cbam", "bam", "nonlocal"] as const) {
        const m = new ResNet({ numClasses: 10, widths: [16, 32], depths: [1, 1], attention, seed: 1 });
        expect(m.forward(x).shape, attention).toEqual([2, 10]);
        const names = m.namedParameters().map(([n]) => n);
        const where = attention === "bam" || attention === "nonlocal"
          ? "stages.0.after." // BAM between stages; NonLocal after the second stage (here the last)
          : "stages.0.blocks.0.attn.";
        if (attention === "nonlocal") expect(names.some((n) => n.startsWith("stages.1.after."))).toBe(true);
        else expect(names.some((n) => n.startsWith(where)), `${attention} at ${where}`).toBe(true);
        expect(m.numParameters()).toBeGreaterThan(base.numParameters());
        expect(m.flops(1, 12, 12)).toBeGreaterThan(base.flops(1, 12, 12));
        m.dispose();
      }
      base.dispose();
    }),
  );

  test(
    "BatchNorm2d: training updates the running statistics, evaluation uses them",
    scoped(async () => {
      const bn = new BatchNorm2d(2);
      const x = s.randn([4, 2, 3, 3], { seed: 3 }).mul(2).add(5);
      bn.forward(x);
      const rm = Array.from(await bn.runningMean.toArray());
      rm.forEach((v) => expect(v).toBeGreaterThan(0.3)); // 0.1 x a batch mean near 5
      const ev = await bn.eval().forward(x).toArray();
      const want = await s.batchNorm2d(x, {
        training: false,
        runningMean: bn.runningMean,
        runningVar: bn.runningVar,
        weight: bn.weight,
        bias: bn.bias,
      }).toArray();
      expect(Array.from(ev)).toEqual(Array.from(want));
      expect(bn.namedBuffers().map(([n]) => n)).toEqual(["runningMean", "runningVar"]);
      bn.dispose();
    }),
  );

  test(
    "cpu == webgpu for logits and every gradient (with SE), and training fits a toy batch (webgpu)",
    scoped(async () => {
      requireGpu();
      const cfg = { numClasses: 2, widths: [16, 32], depths: [1, 1], attention: "se" as const, seed: 4 };
      const cpu = new ResNet(cfg), gpu = new ResNet({ ...cfg, device: "webgpu" });
      await backendsAgree(cpu, gpu, s.randn([2, 1, 8, 8], { seed: 5 }));
      cpu.dispose();
      gpu.dispose();
      const m = new ResNet({ ...cfg, attention: "cbam", device: "webgpu" });
      const { first, last } = await fitSideTask(m, 40, 1e-2);
      expect(last).toBeLessThan(0.5 * first);
      m.dispose();
    }),
  );

  test(
    "bad configurations throw naming the problem",
    scoped(() => {
      expect(() => new ResNet({ numClasses: 2, widths: [16], depths: [1, 1] })).toThrow(
        "widths and depths must be",
      );
      expect(() => new ResNet({ numClasses: 2, attention: "senet" as "se" })).toThrow(
        'attention must be "none"',
      );
      expect(() => new ResNet({ numClasses: 2, widths: [8, 16], depths: [1, 1], attention: "se" })).toThrow(
        "SE's reduction r = 16 needs widths of at least 16",
      );
      const m = new ResNet({ numClasses: 2, widths: [16], depths: [1] });
      expect(() => m.forward(s.zeros([1, 3, 8, 8]))).toThrow("ResNet: images must be (N, 1, H, W)");
      m.dispose();
    }),
  );
});
