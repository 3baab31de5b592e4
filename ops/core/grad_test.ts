// Every op's backward against float64 central differences (gradcheck), on the f64 reference backend with
// tight tolerances and on webgpu (f32 analytic gradients) with f32 tolerances.
import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { data, gpu32, leakCheck, scoped } from "../../test/helpers.ts";

leakCheck();

type F = (...xs: Tensor[]) => Tensor;
const rnd = (shape: number[], seed: number, lo = -2, hi = 2) => {
  const n = shape.reduce((a, b) => a * b, 1);
  const d = data(n, seed, 1).map((v) => lo + ((v + 1) / 2) * (hi - lo));
  return s.tensor(d, { shape, device: "cpu", dtype: "f64" });
};

/** [name, fn, input factories] — inputs are created per backend from float64 data. */
const CASES: [string, F, () => Tensor[]][] = [
  ["neg", (x) => x.neg(), () => [rnd([3, 4], 1)]],
  ["abs", (x) => x.abs(), () => [rnd([3, 4], 2)]],
  ["exp", (x) => x.exp(), () => [rnd([3, 4], 3)]],
  ["log", (x) => x.log(), () => [rnd([3, 4], 4, 0.5, 3)]],
  ["sqrt", (x) => x.sqrt(), () => [rnd([3, 4], 5, 0.5, 3)]],
  ["rsqrt", (x) => x.rsqrt(), () => [rnd([3, 4], 6, 0.5, 3)]],
  ["relu", (x) => x.relu(), () => [rnd([3, 4], 7)]],
  ["gelu", (x) => x.gelu(), () => [rnd([3, 4], 8)]],
  ["silu", (x) => x.silu(), () => [rnd([3, 4], 9)]],
  ["sigmoid", (x) => x.sigmoid(), () => [rnd([3, 4], 10)]],
  ["tanh", (x) => x.tanh(), () => [rnd([3, 4], 11)]],
  ["softplus", (x) => x.softplus(), () => [rnd([3, 4], 12)]],
  ["erf", (x) => s.erf(x), () => [rnd([3, 4], 13)]],
  ["add (broadcast)", (a, b) => a.add(b), () => [rnd([3, 4], 14), rnd([4], 15)]],
  ["sub (broadcast)", (a, b) => a.sub(b), () => [rnd([3, 1], 16), rnd([1, 4], 17)]],
  ["mul (broadcast)", (a, b) => a.mul(b), () => [rnd([2, 3, 4], 18), rnd([3, 1], 19)]],
  ["div", (a, b) => a.div(b), () => [rnd([3, 4], 20), rnd([3, 4], 21, 0.5, 2)]],
  ["pow", (a, b) => a.pow(b), () => [rnd([3, 4], 22, 0.5, 2), rnd([4], 23)]],
  ["pow scalar", (a) => a.pow(3), () => [rnd([3, 4], 24)]],
  ["maximum", (a, b) => a.maximum(b), () => [rnd([3, 4], 25), rnd([3, 4], 26)]],
  ["minimum", (a, b) => a.minimum(b), () => [rnd([3, 4], 27), rnd([4], 28)]],
  ["where", (a, b) => s.where(a.gt(0), a, b), () => [rnd([3, 4], 29), rnd([4], 30)]],
  ["sum", (x) => x.sum(), () => [rnd([3, 4], 31)]],
  ["sum axes keepdims", (x) => x.sum([0, 2], true), () => [rnd([2, 3, 4], 32)]],
  ["mean", (x) => x.mean(1), () => [rnd([3, 4], 33)]],
  ["max", (x) => x.max(1), () => [rnd([3, 4], 34)]],
  ["min all", (x) => x.min(), () => [rnd([3, 4], 35)]],
  ["cumsum", (x) => x.cumsum(0), () => [rnd([3, 4], 36)]],
  ["softmax", (x) => x.softmax(-1), () => [rnd([3, 4], 37)]],
  ["softmax axis 0", (x) => x.softmax(0), () => [rnd([3, 4], 38)]],
  ["logSumExp", (x) => x.logSumExp(1), () => [rnd([3, 4], 39)]],
  ["logSumExp keepdims", (x) => x.logSumExp(0, true), () => [rnd([3, 4], 40)]],
  ["layerNorm", (x, w, b) => x.layerNorm(w, b), () => [rnd([3, 5], 41), rnd([5], 42), rnd([5], 43)]],
  ["layerNorm plain", (x) => x.layerNorm(), () => [rnd([2, 3, 4], 44)]],
  ["rmsNorm", (x, w) => x.rmsNorm(w), () => [rnd([3, 5], 45), rnd([5], 46)]],
  ["concat", (a, b) => s.concat([a, b], 1), () => [rnd([2, 3], 47), rnd([2, 2], 48)]],
  ["stack", (a, b) => s.stack([a, b], 1), () => [rnd([2, 3], 49), rnd([2, 3], 50)]],
  [
    "gather",
    (x, i) => s.gather(x, i),
    () => [rnd([5, 3], 51), s.tensor([4, 0, 4, 2], { dtype: "i32", device: "cpu" })],
  ],
  [
    "gather axis 1",
    (x, i) => s.gather(x, i, 1),
    () => [rnd([2, 5], 52), s.tensor([[1, 1], [3, 0]], { dtype: "i32", device: "cpu" })],
  ],
  [
    "scatterAdd",
    (x, i) => s.scatterAdd(x, i, 4),
    () => [rnd([3, 2], 53), s.tensor([3, 0, 3], { dtype: "i32", device: "cpu" })],
  ],
  [
    "reshape + permute",
    (x) => x.reshape([4, 3]).permute([1, 0]).mul(x.reshape([3, 4])),
    () => [rnd([2, 6], 54)],
  ],
  ["transpose + contiguous", (x) => x.transpose().contiguous().exp(), () => [rnd([3, 4], 55)]],
  ["slice with steps", (x) => x.slice([[0, 3, 2], [1, null]]).mul(3), () => [rnd([3, 4], 56)]],
  ["expand", (x) => x.expand([3, 2, 4]).tanh(), () => [rnd([2, 1], 57)]],
  ["unsqueeze + squeeze", (x) => x.unsqueeze(1).squeeze(1).sigmoid(), () => [rnd([3, 4], 58)]],
];

describe("gradients against float64 finite differences", () => {
  for (const [name, f, make] of CASES) {
    test(
      name,
      scoped(async () => {
        const inputs = make();
        // the reference backend in float64: tight
        const r64 = await s.gradcheck(f, inputs, { atol: 1e-7, rtol: 1e-6 });
        for (const e of r64.maxError) expect(e).toBeLessThan(1e-6);
        // webgpu in f32 against the same float64 numbers
        const gpuInputs = await gpu32(inputs);
        await s.gradcheck(f, gpuInputs, { atol: 2e-4, rtol: 2e-3 });
        // cpu f32 too
        const cpu32 = inputs.map((t) => (t.dtype === "f64" ? s.cast(t, "f32") : t));
        await s.gradcheck(f, cpu32, { atol: 2e-4, rtol: 2e-3 });
      }),
    );
  }
});

describe("the autograd engine", () => {
  test(
    "accumulates into .grad across backward calls and through shared subgraphs",
    scoped(async () => {
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
      const x = s.param(s.tensor([1, 2, 3], { device: "webgpu" }));
      x.mul(x).backward(s.tensor([1, 0, 2], { device: "webgpu" }));
      expect(Array.from(await x.grad!.toArray())).toEqual([2, 0, 12]);
      x.grad!.dispose();
      x.dispose();
    }),
  );

  test("saved tensors are freed once backward has used them", async () => {
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
