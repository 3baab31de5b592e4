// The fused softmax cross-entropy (forward, reduce, backward kernels) against the float64 reference, the
// unfused composition and finite differences; targets out of range as shader diagnostics.
import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import {
  assertClose,
  data,
  leakCheck,
  requireDevice,
  requireGpu,
  scoped,
  testOp,
} from "../../test/helpers.ts";
import { gpu } from "../../runtime/device.ts";
import { MAX_LOOP } from "../../runtime/webgpu.ts";
import { crossEntropyComposed } from "../../models/loss.ts";
import type { CrossEntropyOptions } from "./cross_entropy.ts";

leakCheck();

/** Targets for `rows` rows of C classes: every third ignored (-100), the others spread over [0, C). */
function targetsFor(rows: number, C: number): number[] {
  return Array.from({ length: rows }, (_, i) => (i % 3 === 2 ? -100 : (i * 7 + 1) % C));
}

const OPTIONS: CrossEntropyOptions[] = [
  {},
  { reduction: "sum" },
  { reduction: "none" },
  { labelSmoothing: 0.1 },
  { labelSmoothing: 1, reduction: "sum" },
  { labelSmoothing: 0.2, reduction: "none" },
];

describe("softmaxCrossEntropy (crossEntropy's fused kernels)", () => {
  test("against the float64 reference: values and gradients, every reduction, vec4 and scalar rows", async () => {
    for (const [rows, C] of [[1, 1], [7, 3], [5, 4], [33, 64], [4, 65], [300, 12]]) {
      const t = { values: targetsFor(rows, C), dtype: "i32" } as const;
      const x = { shape: [rows, C], low: -4, high: 4 };
      for (const o of OPTIONS) {
        await testOp([x, t], (x, t) => s.crossEntropy(x, t, o), {
          atol: 2e-6,
          rtol: 2e-6,
          name: JSON.stringify(o),
        });
      }
      // a view at an odd offset (scalar loads), u32 targets, (B, T, C) logits
      const u = { values: targetsFor(rows, C).map((v) => (v < 0 ? 7 : v)), dtype: "u32" } as const;
      await testOp(
        [{ shape: [rows * C + 1], low: -4, high: 4 }, u],
        (x, t) =>
          s.crossEntropy(x.slice([[1, rows * C + 1]]).reshape([1, rows, C]), t.reshape([1, rows]), {
            ignoreIndex: 7,
          }),
        { atol: 2e-6, rtol: 2e-6 },
      );
    }
  });

  test("against the unfused composition on webgpu: values and gradients (f32, and f16 where supported)", async () => {
    requireGpu();
    const dtypes: ("f32" | "f16")[] = gpu().hasF16 ? ["f32", "f16"] : ["f32"];
    for (const dtype of dtypes) {
      const tol = dtype === "f16" ? { atol: 4e-3, rtol: 4e-3 } : { atol: 2e-6, rtol: 2e-5 };
      for (const [rows, C] of [[9, 16], [6, 5], [64, 64]]) {
        for (const o of OPTIONS) {
          await scoped(async () => {
            const x = s.param(
              s.tensor(data(rows * C, rows, 3), { shape: [rows, C], device: "webgpu", dtype }),
            );
            const t = s.tensor(targetsFor(rows, C), { dtype: "i32", device: "webgpu" });
            const run = async (fused: boolean) => {
              const l = fused ? s.crossEntropy(x, t, o) : crossEntropyComposed(x, t, o);
              const cot = s.randn(l.shape, { seed: 2, device: "webgpu" }).cast(dtype);
              l.mul(cot).sum().backward();
              const r = [await l.toArray(), await x.grad!.toArray()];
              x.zeroGrad();
              return r;
            };
            const [fl, fg] = await run(true), [cl, cg] = await run(false);
            assertClose(fl, cl, tol);
            assertClose(fg, cg, tol);
            x.dispose();
          })();
        }
      }
    }
  });

  test("gradcheck on webgpu (ignored rows, label smoothing, every reduction)", async () => {
    requireGpu();
    await scoped(async () => {
      const x = s.tensor(data(6 * 8, 5, 2), { shape: [6, 8], device: "webgpu" });
      const t = s.tensor(targetsFor(6, 8), { dtype: "i32", device: "webgpu" });
      for (const o of OPTIONS) await s.gradcheck((x, t) => s.crossEntropy(x, t, o), [x, t]);
    })();
  });

  test("special logits: NaN, +inf, -inf rows and a huge spread match the composition", async () => {
    const values = [
      [1e4, -1e4, 0, 5],
      [NaN, 1, 2, 3],
      [-Infinity, 0, 1, 2],
      [Infinity, 0, 1, 2],
      [-Infinity, -Infinity, -Infinity, -Infinity],
      [3e38, -3e38, 0, 1],
    ];
    const t = { values: [0, 1, 1, 2, 3, 0], dtype: "i32" } as const;
    for (
      const o of [{ reduction: "none" }, { reduction: "none", labelSmoothing: 0.1 }] as CrossEntropyOptions[]
    ) {
      await testOp([{ values }, t], (x, t) => s.crossEntropy(x, t, o), {
        reference: (x, t) => crossEntropyComposed(x, t, o),
        grad: false,
      });
    }
  });

  test("no rows: mean and sum are 0, none is empty", async () => {
    const t = { values: [], shape: [0], dtype: "i32" } as const;
    for (const reduction of ["mean", "sum", "none"] as const) {
      const r = await testOp([{ shape: [0, 5] }, t], (x, t) => s.crossEntropy(x, t, { reduction }));
      if (reduction !== "none") expect(Array.from(r.outputs.webgpu!)).toEqual([0]);
    }
  });

  test("rows longer than MAX_LOOP take the composition, with the same target check", async () => {
    requireGpu();
    const C = MAX_LOOP + 5;
    const t = { values: [3, C - 1, -100], dtype: "i32" } as const;
    await testOp([{ shape: [3, C], low: -3, high: 3 }, t], (x, t) => s.crossEntropy(x, t), {
      atol: 1e-5,
      rtol: 1e-5,
    });
    await scoped(async () => {
      const x = s.zeros([2, C], { device: "webgpu" });
      const l = s.crossEntropy(x, s.tensor([1, C], { dtype: "i32", device: "webgpu" }));
      await expect(l.item()).rejects.toThrow(`crossEntropy: target ${C} is outside [0, ${C})`);
    })();
  });

  test("forward and backward outside tidy leave nothing allocated (saved lse and count freed)", async () => {
    for (const device of ["cpu", "webgpu"] as const) {
      requireDevice(device);
      const x = s.param(s.randn([6, 8], { seed: 1, device }));
      const t = s.tensor(targetsFor(6, 8), { dtype: "i32", device });
      const before = s.memory(device).bytesInUse;
      for (const reduction of ["mean", "sum", "none"] as const) {
        const l = s.crossEntropy(x, t, { reduction, labelSmoothing: 0.1 });
        const total = reduction === "none" ? l.sum() : l;
        total.backward();
        await x.grad!.toArray();
        if (total !== l) total.dispose();
        l.dispose();
        x.zeroGrad();
        expect(s.memory(device).bytesInUse, `${reduction} on ${device}`).toBe(before);
        s.crossEntropy(x, t, { reduction }).dispose();
        expect(s.memory(device).bytesInUse, `${reduction} on ${device}, no backward`).toBe(before);
      }
      x.dispose();
      t.dispose();
    }
  });

  test(
    "a target out of range on webgpu throws at the next readback, naming crossEntropy (i32 and u32)",
    scoped(async () => {
      requireGpu();
      const x = s.tensor(data(12, 1, 2), { shape: [4, 3], device: "webgpu" });
      for (const reduction of ["mean", "sum", "none"] as const) {
        const l = s.crossEntropy(x, s.tensor([0, 3, 1, -100], { dtype: "i32", device: "webgpu" }), {
          reduction,
        });
        await expect(l.toArray()).rejects.toThrow(
          /crossEntropy: target 3 is outside \[0, 3\) and is not the ignoreIndex; results computed since/,
        );
      }
      const neg = s.crossEntropy(x, s.tensor([0, -5, 1, 2], { dtype: "i32", device: "webgpu" }));
      await expect(neg.item()).rejects.toThrow(/crossEntropy: target -5 is outside \[0, 3\)/);
      const big = s.crossEntropy(x, s.tensor([0, 4000000000, 1, 2], { dtype: "u32", device: "webgpu" }));
      await expect(big.item()).rejects.toThrow(/crossEntropy: target 4000000000 is outside \[0, 3\)/);
      // the device stays usable and the flag is cleared
      const ok = s.crossEntropy(x, s.tensor([0, 2, 1, -100], { dtype: "i32", device: "webgpu" }));
      expect(Number.isFinite(await ok.item())).toBe(true);
      // cpu: checked before anything runs, as before
      const xc = await x.to("cpu");
      expect(() => s.crossEntropy(xc, s.tensor([0, 3, 1, 1], { dtype: "i32", device: "cpu" }))).toThrow(
        "crossEntropy: target 3 at flat index 1 is outside [0, 3) and is not ignoreIndex -100",
      );
    }),
  );
});
