// Autograd bugs found while building the training kit (models/): each test failed before its fix.
// 1. matmul had no backward: `a.matmul(b)` of params did not require grad, so no Linear layer could train.
// 2. backward rules' temporaries leaked when `loss.backward()` ran outside a tidy scope.
// 3. gradcheck of an input that requires grad (a parameter) read a zero analytic gradient: its copy was a
//    graph node passing the gradient on to the original, not a leaf.
import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { data, leakCheck, requireDevice, requireGpu, scoped } from "./helpers.ts";

leakCheck();

const rnd = (shape: number[], seed: number) => {
  const n = shape.reduce((a, b) => a * b, 1);
  return s.tensor(data(n, seed, 1), { shape, device: "cpu", dtype: "f64" });
};

const MATMUL: [string, () => Tensor[]][] = [
  ["2-D", () => [rnd([3, 4], 1), rnd([4, 2], 2)]],
  ["batched, b broadcast", () => [rnd([2, 3, 4], 3), rnd([4, 5], 4)]],
  ["batch dims broadcast both ways", () => [rnd([2, 1, 3, 4], 5), rnd([3, 4, 2], 6)]],
  ["1-D a (row vector)", () => [rnd([4], 7), rnd([2, 4, 3], 8)]],
  ["1-D b (column vector)", () => [rnd([3, 4], 9), rnd([4], 10)]],
  ["1-D both (dot)", () => [rnd([5], 11), rnd([5], 12)]],
];

describe("matmul backward", () => {
  for (const [name, make] of MATMUL) {
    test(
      `gradcheck ${name} (cpu f64)`,
      scoped(async () => {
        await s.gradcheck((a, b) => a.matmul(b), make());
      }),
    );
    test(
      `gradcheck ${name} (webgpu f32)`,
      scoped(async () => {
        requireGpu();
        const xs = await Promise.all(make().map((t) => s.cast(t, "f32").to("webgpu")));
        await s.gradcheck((a, b) => a.matmul(b), xs);
      }),
    );
  }

  test(
    "an operand without requiresGrad gets no gradient and costs no product",
    scoped(() => {
      const x = rnd([3, 4], 13), w = s.param(rnd([4, 2], 14));
      x.matmul(w).sum().backward();
      expect(x.grad).toBeNull();
      expect(w.grad!.shape).toEqual([4, 2]);
      w.zeroGrad();
      w.dispose();
    }),
  );
});

describe("backward outside tidy frees its temporaries", () => {
  const CASES: [string, (x: Tensor) => Tensor][] = [
    ["sum", (x) => x.sum()],
    ["pow", (x) => x.pow(3).sum()],
    ["maximum", (x) => x.maximum(0.1).sum()],
    ["layerNorm", (x) => x.layerNorm().sum()],
    ["softmax", (x) => x.softmax().mul(x).sum()],
    ["gelu", (x) => x.gelu().mean()],
    ["matmul", (x) => x.matmul(x.transpose()).sum()],
  ];
  for (const device of ["cpu", "webgpu"] as const) {
    for (const [name, f] of CASES) {
      test(`${name} (${device})`, () => {
        requireDevice(device);
        const x = s.param(s.randn([3, 4], { seed: 1, device }));
        const before = s.memory(device).bytesInUse;
        const loss = s.tidy(() => f(x)); // the forward's intermediates go; the graph stays for backward
        loss.backward();
        loss.dispose();
        x.zeroGrad();
        expect(s.memory(device).bytesInUse - before).toBe(0);
        x.dispose();
      });
    }
  }
});

describe("gradcheck", () => {
  test(
    "an input that requires grad (a parameter) is checked, and its own .grad is left alone",
    scoped(async () => {
      const w = s.param(rnd([3, 2], 15));
      await s.gradcheck((x, w) => x.matmul(w).tanh(), [rnd([4, 3], 16), w]);
      expect(w.grad).toBeNull();
      w.dispose();
    }),
  );
});

// 4. Slices of one tensor each built a zero-padded copy of the whole tensor in backward, summed with
//    full-size adds: a fused q/k/v projection split three ways paid three fills, three copies and two adds.
//    Now every slice writes into one gradient (autograd.ts): a copy where no earlier slice wrote, an add
//    where one did (overlapping or strided regions), and a gradient arriving from a non-slice use is summed.
describe("slices of one tensor share one gradient", () => {
  const CASES: [string, (x: Tensor) => Tensor][] = [
    [
      "three disjoint column blocks",
      (x) =>
        x.slice([null, [0, 2]]).mul(2).add(x.slice([null, [2, 3]]).mul(3)).sum().add(
          x.slice([null, [3, 5]]).mul(x.slice([null, [3, 5]])).sum(),
        ),
    ],
    ["overlapping ranges", (x) => x.slice([[0, 2]]).mul(2).sum().add(x.slice([[1, 3]]).mul(5).sum())],
    ["the same slice twice", (x) => x.slice([1]).mul(3).sum().add(x.slice([1]).exp().sum())],
    [
      "interleaved steps",
      (x) => x.slice([null, [0, 5, 2]]).mul(2).sum().add(x.slice([null, [1, 5, 2]]).sum()),
    ],
    ["a slice after a whole-tensor use", (x) => x.exp().sum().add(x.slice([[1, 3], [1, 4]]).mul(7).sum())],
    [
      "a slice of a slice, and an index",
      (x) => x.slice([[1, 3]]).slice([null, [2, 5]]).sum().add(x.slice([0, 4])),
    ],
  ];
  for (const [name, fn] of CASES) {
    test(
      `gradcheck: ${name} (cpu f64)`,
      scoped(async () => {
        await s.gradcheck(fn, [rnd([3, 5], 21)]);
      }),
    );
    test(
      `gradcheck: ${name} (webgpu f32)`,
      scoped(async () => {
        requireGpu();
        await s.gradcheck(fn, [await s.cast(rnd([3, 5], 21), "f32").to("webgpu")]);
      }),
    );
  }

  test(
    "splitting a projection three ways: one fill and three copies in backward, no add",
    scoped(async () => {
      requireGpu();
      const x = s.param(s.randn([64, 48], { seed: 3, device: "webgpu" }));
      const [a, b, c] = [x.slice([null, [0, 16]]), x.slice([null, [16, 32]]), x.slice([null, [32, 48]])];
      const loss = a.mul(2).add(b.mul(3)).add(c.mul(4)).sum();
      const ctx = (await import("../runtime/device.ts")).gpu();
      const ops: string[] = [];
      const run = ctx.run.bind(ctx);
      ctx.run = (p) => (ops.push(p.name), run(p));
      try {
        loss.backward();
      } finally {
        ctx.run = run;
      }
      expect(ops.filter((o) => o === "add")).toEqual([]);
      expect(ops.filter((o) => o === "full" || o === "zeros").length).toBeLessThanOrEqual(2);
      const g = await x.grad!.toArray();
      expect([g[0], g[16], g[47]]).toEqual([2, 3, 4]);
      x.zeroGrad();
      x.dispose();
    }),
  );
});
