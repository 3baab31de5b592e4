// Losses against float64 hand computations (ignoreIndex, label smoothing, every reduction) and their
// gradients against finite differences, on both backends.
import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import { assertClose, data, leakCheck, requireDevice, scoped } from "../test/helpers.ts";

leakCheck();

const DEVICES = ["cpu", "webgpu"] as const;

/** Per-row cross-entropy in float64: (1 - eps) (lse - x[t]) + eps (lse - mean(x)), 0 where ignored. */
function crossEntropyRef(
  logits: ArrayLike<number>,
  C: number,
  targets: ArrayLike<number>,
  eps: number,
  ignore: number,
): { rows: Float64Array; mean: number; sum: number } {
  const n = targets.length, rows = new Float64Array(n);
  let sum = 0, count = 0;
  for (let i = 0; i < n; i++) {
    if (targets[i] === ignore) continue;
    const row = Array.from({ length: C }, (_, c) => logits[i * C + c]);
    const m = Math.max(...row);
    const lse = m + Math.log(row.reduce((a, x) => a + Math.exp(x - m), 0));
    const mean = row.reduce((a, b) => a + b) / C;
    rows[i] = (1 - eps) * (lse - row[targets[i]]) + eps * (lse - mean);
    sum += rows[i];
    count++;
  }
  return { rows, sum, mean: count ? sum / count : 0 };
}

const B = 7, C = 5;
const LOGITS = data(B * C, 3, 4);
const TARGETS = new Int32Array([0, 4, -100, 2, 2, -100, 1]);

describe("crossEntropy", () => {
  for (const device of DEVICES) {
    const dtype = device === "cpu" ? "f64" : "f32";
    const tol = device === "cpu" ? { atol: 1e-12, rtol: 1e-12 } : { atol: 2e-6, rtol: 2e-6 };
    for (const eps of [0, 0.1]) {
      test(
        `mean, sum and none against float64 (labelSmoothing ${eps}, ${device})`,
        scoped(async () => {
          requireDevice(device);
          const logits = s.tensor(LOGITS, { shape: [B, C], device, dtype });
          const targets = s.tensor(TARGETS, { device });
          const ref = crossEntropyRef(LOGITS, C, TARGETS, eps, -100);
          const o = { labelSmoothing: eps };
          assertClose([await s.crossEntropy(logits, targets, o).item()], [ref.mean], tol);
          assertClose(
            [await s.crossEntropy(logits, targets, { ...o, reduction: "sum" }).item()],
            [ref.sum],
            tol,
          );
          const none = s.crossEntropy(logits, targets, { ...o, reduction: "none" });
          expect(none.shape).toEqual([B]);
          assertClose(await none.toArray(), ref.rows, tol);
        }),
      );
    }

    test(
      `a custom ignoreIndex, u32 targets and (B, T, C) logits (${device})`,
      scoped(async () => {
        requireDevice(device);
        const targets = new Int32Array([3, 1, 7, 0, 7, 4, 2]);
        const ref = crossEntropyRef(LOGITS, C, targets, 0, 7);
        const logits = s.tensor(LOGITS, { shape: [B, C], device, dtype });
        const t = s.tensor(targets, { device });
        assertClose([await s.crossEntropy(logits, t, { ignoreIndex: 7 }).item()], [ref.mean], tol);
        const tu = s.tensor(Uint32Array.from(targets), { device });
        assertClose([await s.crossEntropy(logits, tu, { ignoreIndex: 7 }).item()], [ref.mean], tol);
        // 3-D: the same 6 rows laid out as (2, 3, C)
        const l3 = s.tensor(LOGITS.slice(0, 6 * C), { shape: [2, 3, C], device, dtype });
        const t3 = s.tensor(targets.slice(0, 6), { shape: [2, 3], device });
        const ref3 = crossEntropyRef(LOGITS, C, targets.slice(0, 6), 0, 7);
        assertClose([await s.crossEntropy(l3, t3, { ignoreIndex: 7 }).item()], [ref3.mean], tol);
      }),
    );

    test(
      `gradcheck with ignored targets and label smoothing (${device})`,
      scoped(async () => {
        requireDevice(device);
        const logits = s.tensor(LOGITS, { shape: [B, C], device, dtype });
        const targets = s.tensor(TARGETS, { device });
        await s.gradcheck((x, t) => s.crossEntropy(x, t), [logits, targets]);
        await s.gradcheck((x, t) => s.crossEntropy(x, t, { labelSmoothing: 0.2 }), [logits, targets]);
        await s.gradcheck((x, t) => s.crossEntropy(x, t, { reduction: "none", labelSmoothing: 0.1 }), [
          logits,
          targets,
        ]);
      }),
    );

    test(
      `every target ignored: loss 0 and zero gradients, not NaN (${device})`,
      scoped(async () => {
        requireDevice(device);
        const logits = s.param(s.tensor(LOGITS.slice(0, 3 * C), { shape: [3, C], device, dtype }));
        const loss = s.crossEntropy(logits, s.tensor([-100, -100, -100], { dtype: "i32", device }));
        expect(await loss.item()).toBe(0);
        loss.backward();
        expect(Array.from(await logits.grad!.toArray()).every((v) => v === 0)).toBe(true);
        logits.zeroGrad();
        logits.dispose();
      }),
    );

    test(
      `an ignored row's inf logits do not poison the loss (${device})`,
      scoped(async () => {
        requireDevice(device);
        const l = s.tensor([[1, 2, 3], [Infinity, -Infinity, NaN]], { device, dtype });
        const loss = await s.crossEntropy(l, s.tensor([2, -100], { dtype: "i32", device })).item();
        const want = crossEntropyRef([1, 2, 3], 3, [2], 0, -100).mean;
        assertClose([loss], [want], tol);
      }),
    );
  }

  test(
    "the gradient is softmax - onehot over the counted rows",
    scoped(async () => {
      const logits = s.param(s.tensor(LOGITS, { shape: [B, C], device: "cpu", dtype: "f64" }));
      s.crossEntropy(logits, s.tensor(TARGETS, { device: "cpu" })).backward();
      const g = await logits.grad!.toArray();
      const n = TARGETS.filter((t) => t !== -100).length;
      for (let i = 0; i < B; i++) {
        const row = Array.from(LOGITS.slice(i * C, i * C + C));
        const z = row.reduce((a, x) => a + Math.exp(x), 0);
        for (let c = 0; c < C; c++) {
          const want = TARGETS[i] === -100 ? 0 : (Math.exp(row[c]) / z - (c === TARGETS[i] ? 1 : 0)) / n;
          expect(g[i * C + c]).toBeCloseTo(want, 12);
        }
      }
      logits.zeroGrad();
      logits.dispose();
    }),
  );

  test(
    "bad input throws with a clear message",
    scoped(() => {
      const l = s.zeros([4, 3], { device: "cpu" });
      const t = s.tensor([0, 1, 2, 1], { dtype: "i32", device: "cpu" });
      expect(() => s.crossEntropy(l, s.zeros([4], { device: "cpu" }))).toThrow(/targets must be i32 or u32/);
      expect(() => s.crossEntropy(l, s.tensor([0, 1], { dtype: "i32", device: "cpu" }))).toThrow(
        /targets \[2\] must have the logits' shape without the class dim \(\[4\]\)/,
      );
      expect(() => s.crossEntropy(l, s.tensor([0, 3, 1, 1], { dtype: "i32", device: "cpu" }))).toThrow(
        /target 3 at flat index 1 is outside \[0, 3\)/,
      );
      expect(() => s.crossEntropy(l, t, { labelSmoothing: 1.5 })).toThrow(
        /labelSmoothing must be in \[0, 1\]/,
      );
      expect(() => s.crossEntropy(l, t, { reduction: "avg" as "mean" })).toThrow(/reduction must be/);
      expect(() => s.crossEntropy(s.zeros([4, 3], { dtype: "i32", device: "cpu" }), t)).toThrow(
        /logits must be a float tensor/,
      );
    }),
  );
});

describe("mse", () => {
  for (const device of DEVICES) {
    test(
      `value and gradcheck, with broadcasting (${device})`,
      scoped(async () => {
        requireDevice(device);
        const dtype = device === "cpu" ? "f64" : "f32";
        const p = s.tensor(data(12, 5, 2), { shape: [3, 4], device, dtype });
        const t = s.tensor(data(4, 6, 2), { shape: [4], device, dtype });
        const pd = await p.toArray(), td = await t.toArray();
        let want = 0;
        for (let i = 0; i < 12; i++) want += (pd[i] - td[i % 4]) ** 2;
        const tol = { atol: 1e-6, rtol: 1e-6 };
        assertClose([await s.mse(p, t).item()], [want / 12], tol);
        assertClose([await s.mse(p, t, { reduction: "sum" }).item()], [want], tol);
        expect(s.mse(p, t, { reduction: "none" }).shape).toEqual([3, 4]);
        await s.gradcheck((a, b) => s.mse(a, b), [p, t]);
      }),
    );
  }
});

describe("accuracy", () => {
  test(
    "argmax hits over non-ignored targets",
    scoped(async () => {
      const l = s.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], { device: "cpu" });
      expect(await s.accuracy(l, s.tensor([1, 0, 0, 0], { dtype: "i32", device: "cpu" })).item()).toBe(0.75);
      expect(await s.accuracy(l, s.tensor([1, 1, -100, 0], { dtype: "i32", device: "cpu" })).item())
        .toBeCloseTo(
          2 / 3,
          6,
        );
    }),
  );
});
