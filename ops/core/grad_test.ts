// Every op's backward: the float64 reference's gradient against central differences (gradcheck), and every
// backend's values and gradients (f32) against the float64 reference, one line per case (testOp).
import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { type InputSpec, leakCheck, requireGpu, scoped, testOp } from "../../test/helpers.ts";

leakCheck();

type F = (...xs: Tensor[]) => Tensor;
/** An input of shape `shape` uniform in [low, high). */
const r = (shape: number[], low = -2, high = 2): InputSpec => ({ shape, low, high });
const idx = (values: number[] | number[][]): InputSpec => ({ values, dtype: "i32" });

/** [name, fn, inputs]: inputs in [-2, 2) unless given; integer ones are indices. */
const CASES: [string, F, (number[] | InputSpec)[]][] = [
  ["neg", (x) => x.neg(), [[3, 4]]],
  ["abs", (x) => x.abs(), [[3, 4]]],
  ["exp", (x) => x.exp(), [[3, 4]]],
  ["log", (x) => x.log(), [r([3, 4], 0.5, 3)]],
  ["sqrt", (x) => x.sqrt(), [r([3, 4], 0.5, 3)]],
  ["rsqrt", (x) => x.rsqrt(), [r([3, 4], 0.5, 3)]],
  ["relu", (x) => x.relu(), [[3, 4]]],
  ["gelu", (x) => x.gelu(), [[3, 4]]],
  ["silu", (x) => x.silu(), [[3, 4]]],
  ["sigmoid", (x) => x.sigmoid(), [[3, 4]]],
  ["tanh", (x) => x.tanh(), [[3, 4]]],
  ["softplus", (x) => x.softplus(), [[3, 4]]],
  ["erf", (x) => s.erf(x), [[3, 4]]],
  ["add (broadcast)", (a, b) => a.add(b), [[3, 4], [4]]],
  ["sub (broadcast)", (a, b) => a.sub(b), [[3, 1], [1, 4]]],
  ["mul (broadcast)", (a, b) => a.mul(b), [[2, 3, 4], [3, 1]]],
  ["div", (a, b) => a.div(b), [[3, 4], r([3, 4], 0.5, 2)]],
  ["pow", (a, b) => a.pow(b), [r([3, 4], 0.5, 2), [4]]],
  ["pow scalar", (a) => a.pow(3), [[3, 4]]],
  ["maximum", (a, b) => a.maximum(b), [[3, 4], [3, 4]]],
  ["minimum", (a, b) => a.minimum(b), [[3, 4], [4]]],
  ["where", (a, b) => s.where(a.gt(0), a, b), [[3, 4], [4]]],
  ["sum", (x) => x.sum(), [[3, 4]]],
  ["sum axes keepdims", (x) => x.sum([0, 2], true), [[2, 3, 4]]],
  ["mean", (x) => x.mean(1), [[3, 4]]],
  ["max", (x) => x.max(1), [[3, 4]]],
  ["min all", (x) => x.min(), [[3, 4]]],
  ["cumsum", (x) => x.cumsum(0), [[3, 4]]],
  ["softmax", (x) => x.softmax(-1), [[3, 4]]],
  ["softmax axis 0", (x) => x.softmax(0), [[3, 4]]],
  ["logSumExp", (x) => x.logSumExp(1), [[3, 4]]],
  ["logSumExp keepdims", (x) => x.logSumExp(0, true), [[3, 4]]],
  ["layerNorm", (x, w, b) => x.layerNorm(w, b), [[3, 5], [5], [5]]],
  ["layerNorm plain", (x) => x.layerNorm(), [[2, 3, 4]]],
  ["rmsNorm", (x, w) => x.rmsNorm(w), [[3, 5], [5]]],
  ["concat", (a, b) => s.concat([a, b], 1), [[2, 3], [2, 2]]],
  ["stack", (a, b) => s.stack([a, b], 1), [[2, 3], [2, 3]]],
  ["gather", (x, i) => s.gather(x, i), [[5, 3], idx([4, 0, 4, 2])]],
  ["gather axis 1", (x, i) => s.gather(x, i, 1), [[2, 5], idx([[1, 1], [3, 0]])]],
  ["scatterAdd", (x, i) => s.scatterAdd(x, i, 4), [[3, 2], idx([3, 0, 3])]],
  ["reshape + permute", (x) => x.reshape([4, 3]).permute([1, 0]).mul(x.reshape([3, 4])), [[2, 6]]],
  ["transpose + contiguous", (x) => x.transpose().contiguous().exp(), [[3, 4]]],
  ["slice with steps", (x) => x.slice([[0, 3, 2], [1, null]]).mul(3), [[3, 4]]],
  ["expand", (x) => x.expand([3, 2, 4]).tanh(), [[2, 1]]],
  ["unsqueeze + squeeze", (x) => x.unsqueeze(1).squeeze(1).sigmoid(), [[3, 4]]],
];

describe("gradients: float64 finite differences, then every backend against the float64 reference", () => {
  // gradcheck: true checks the reference by finite differences whatever the case's size; a seed per case
  CASES.forEach(([name, f, inputs], k) =>
    test(name, async () => void await testOp(inputs, f, { gradcheck: true, seed: k + 1 }))
  );
});

describe("the autograd engine", () => {
  test(
    "accumulates into .grad across backward calls and through shared subgraphs",
    scoped(async () => {
      requireGpu();
      const x = s.param(s.tensor([1, 2, 3], { device: "webgpu" }));
      const y = x.mul(x); // used twice below
      y.add(y).sum().backward();
      expect(Array.from(await x.grad!.toArray())).toEqual([4, 8, 12]);
      x.mul(3).sum().backward();
      expect(Array.from(await x.grad!.toArray())).toEqual([7, 11, 15]);
      x.zeroGrad();
      expect(x.grad).toBeNull();
      x.dispose();
    }),
  );

  test(
    "noGrad records nothing; detach cuts the graph; bad calls are clear errors",
    scoped(async () => {
      requireGpu();
      const x = s.param(s.tensor([1, 2], { device: "webgpu" }));
      const y = s.noGrad(() => x.mul(2));
      expect(y.requiresGrad).toBe(false);
      expect(y.gradFn).toBeNull();
      expect(x.mul(2).detach().requiresGrad).toBe(false);
      expect(() => y.sum().backward()).toThrow(/backward: tensor \[\] f32 on webgpu does not require grad/);
      expect(() => x.mul(2).backward()).toThrow(
        /backward: tensor \[2\] f32 on webgpu is not a one-element loss/,
      );
      const z = x.mul(2).sum();
      z.backward();
      expect(() => z.backward()).toThrow(/does not require grad|already used/);
      const asyncOk = await s.noGrad(async () => {
        await Promise.resolve();
        return s.isGradEnabled();
      });
      expect(asyncOk).toBe(false);
      expect(s.isGradEnabled()).toBe(true);
      x.dispose();
      x.grad?.dispose();
    }),
  );

  test(
    "an explicit output gradient (vector-Jacobian product)",
    scoped(async () => {
      requireGpu();
      const x = s.param(s.tensor([1, 2, 3], { device: "webgpu" }));
      x.mul(x).backward(s.tensor([1, 0, 2], { device: "webgpu" }));
      expect(Array.from(await x.grad!.toArray())).toEqual([2, 0, 12]);
      x.grad!.dispose();
      x.dispose();
    }),
  );

  test("saved tensors are freed once backward has used them", async () => {
    requireGpu();
    const before = s.memory("webgpu").bytesInUse;
    const w = s.param(s.randn([64, 64], { seed: 1, device: "webgpu" }));
    for (let step = 0; step < 5; step++) {
      s.tidy(() => {
        const loss = w.tanh().mul(w).softmax().sum();
        loss.backward();
      });
      w.zeroGrad();
      if (step === 0) await w.toArray();
    }
    w.dispose();
    expect(s.memory("webgpu").bytesInUse).toBe(before);
  });

  test("a graph that is never backpropagated is freed by dispose and tidy", () => {
    requireGpu();
    const before = s.memory("webgpu").bytesInUse;
    const w = s.param(s.randn([32, 32], { seed: 2, device: "webgpu" }));
    s.tidy(() => void w.exp().mul(w).softmax().sum()); // forward only
    const t = w.tanh(), kept = t.add(1); // outside any scope: freed by dispose, in any order
    kept.dispose();
    t.dispose();
    w.dispose();
    expect(s.memory("webgpu").bytesInUse).toBe(before);
  });

  test(
    "record registers a custom op's backward",
    scoped(async () => {
      const cube = (x: Tensor) => {
        const out = s.noGrad(() => x.mul(x).mul(x));
        return s.record("cube", out, [x], [x], (g, [xs]) => [g.mul(xs.mul(xs).mul(3))]);
      };
      const r = await s.gradcheck(cube, [s.tensor([0.5, -1, 2], { device: "cpu", dtype: "f64" })]);
      expect(r.maxError[0]).toBeLessThan(1e-6);
    }),
  );
});
