/**
 * Fused activation passes: each unary op's one-pass backward against the composed chain it replaced, by
 * finite differences on both backends, and `biasAct` against act(add(x, bias)) (values, dx and db).
 * @module
 */

import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, leakCheck, requireGpu, testOp } from "../../test/helpers.ts";
import { gpu } from "../../runtime/device.ts";
import { ewOptions } from "./elementwise_wgsl.ts";

leakCheck();

/** Whether the adapter can hold f16 tensors (the f16 test is skipped, by name, where it cannot). */
const F16 = s.adapterInfo().includes("shader-f16");

/** Finite values of every kind the rules meet (the infinities differ by design: see LIMITS). */
const SPECIALS = [NaN, 1e4, -1e4, 0, -0, 1e-30, 88, -88, 30, -30];
const RANGE = { low: -3, high: 3, specials: SPECIALS };
const SHAPES = [[7], [3, 16], [2, 3, 17], [4096]];

/** The composed backward rules the fused passes replace, as they were: (g, x, y) -> dx. */
const COMPOSED: Record<string, (g: Tensor, x: Tensor, y: Tensor) => Tensor> = {
  abs: (g, x) => s.where(x.gt(0), g, s.where(x.lt(0), s.neg(g), 0)),
  sqrt: (g, _x, y) => s.div(g, s.mul(y, 2)),
  rsqrt: (g, _x, y) => s.mul(g, s.mul(s.pow(y, 3), -0.5)),
  relu: (g, x) => s.where(x.gt(0), g, 0),
  gelu: (g, x) =>
    s.mul(
      g,
      s.add(
        s.mul(s.add(s.erf(s.mul(x, Math.SQRT1_2)), 1), 0.5),
        s.mul(x, s.mul(s.exp(s.mul(s.mul(x, x), -0.5)), 1 / Math.sqrt(2 * Math.PI))),
      ),
    ),
  silu: (g, x) => {
    const sg = s.sigmoid(x);
    return s.mul(g, s.mul(sg, s.add(s.mul(x, s.sub(1, sg)), 1)));
  },
  sigmoid: (g, _x, y) => s.mul(g, s.mul(y, s.sub(1, y))),
  tanh: (g, _x, y) => s.mul(g, s.sub(1, s.mul(y, y))),
  softplus: (g, x) => s.mul(g, s.sigmoid(x)),
  erf: (g, x) => s.mul(g, s.mul(s.exp(s.neg(s.mul(x, x))), 2 / Math.sqrt(Math.PI))),
};

/** `op` with the composed backward rule (the forward is the op itself). */
function composed(op: string): (x: Tensor) => Tensor {
  const f = s[op as "gelu"];
  return (x) =>
    s.record(`${op} (composed backward)`, s.noGrad(() => f(x)), [x], [x], (g, [xs]) => {
      const y = f(xs);
      return [COMPOSED[op](g, xs, y)];
    });
}

/** The ops whose backward is one fused pass, with the inputs their domain allows. */
const FUSED: [string, typeof RANGE][] = [
  ["abs", RANGE],
  ["sqrt", { ...RANGE, low: 0.1 }],
  ["rsqrt", { ...RANGE, low: 0.1, specials: [NaN, 1e4, 0, 1e-20, 88, -3] }],
  ["relu", RANGE],
  ["gelu", RANGE],
  ["silu", RANGE],
  ["sigmoid", RANGE],
  ["tanh", RANGE],
  ["softplus", RANGE],
  ["erf", RANGE],
];

/** The op names the programs recorded by `fn` carry. */
function opsRun(fn: () => void): string[] {
  const ctx = gpu(), run = ctx.run;
  const names: string[] = [];
  ctx.run = (p) => {
    names.push(p.name);
    return run.call(ctx, p);
  };
  try {
    fn();
  } finally {
    ctx.run = run;
  }
  return names;
}

describe("fused unary backward: against the composed chain and finite differences", () => {
  for (const [op, range] of FUSED) {
    test(op, async () => {
      const f = s[op as "gelu"] as (x: Tensor) => Tensor;
      for (const vec4 of [true, false]) {
        ewOptions.vec4 = vec4;
        try {
          for (const shape of SHAPES) await testOp([shape], f, { ...range, reference: composed(op) });
        } finally {
          ewOptions.vec4 = true;
        }
      }
      // the fused rule itself by finite differences: float64 on cpu, f32 on webgpu
      const low = range.low ?? -3;
      for (const device of ["cpu", "webgpu"] as const) {
        if (device === "webgpu") requireGpu();
        const x = s.rand([24], { seed: 5, low, high: 3, device, dtype: device === "cpu" ? "f64" : "f32" });
        await s.gradcheck(f, [x], device === "cpu" ? {} : { eps: 1e-3 });
        x.dispose();
      }
    });
  }

  test("limits at +-inf where the product forms give inf * 0", async () => {
    const x = { values: [Infinity, -Infinity, NaN, 0] };
    // gelu' -> 1, 0; silu' -> 1, 0; NaN stays NaN
    for (const op of ["gelu", "silu"] as const) {
      const r = await testOp([x], (t) => t[op](), { grad: true, gradcheck: false });
      expect(r.shape).toEqual([4]);
    }
    for (const device of ["cpu", "webgpu"] as const) {
      if (device === "webgpu") requireGpu();
      for (const [op, want] of [["gelu", [1, 0, NaN, 0.5]], ["silu", [1, 0, NaN, 0.5]]] as const) {
        const t = s.param(s.tensor([Infinity, -Infinity, NaN, 0], { device }));
        s.tidy(() => t[op]().backward(s.ones([4], { device })));
        expect(Array.from(await t.grad!.toArray()), `${op} on ${device}`).toEqual(want);
        t.zeroGrad();
        t.dispose();
      }
    }
  });

  test("one dispatch per backward", () => {
    requireGpu();
    for (const [op] of FUSED) {
      const x = s.param(s.rand([8, 64], { seed: 1, low: 0.1, high: 2, device: "webgpu" }));
      const y = (s[op as "gelu"] as (x: Tensor) => Tensor)(x);
      const g = s.ones([8, 64], { device: "webgpu" });
      expect(opsRun(() => y.backward(g)), op).toEqual([`${op} backward`]);
      x.zeroGrad();
      for (const t of [x, y, g]) t.dispose();
    }
  });
});

describe("biasAct: act(x + bias) in one pass", () => {
  // [x shape, bias shape]: vec4 rows, rows not a multiple of 4 (v1/v2), one row, 1-D x
  const CASES = [[[2, 3, 16], [16]], [[5, 7], [7]], [[1, 8], [8]], [[12], [12]], [[4, 64, 32], [32]]];
  for (const act of ["gelu", "silu", "relu"] as const) {
    test(`${act}: values, dx and db against ${act}(add(x, bias))`, async () => {
      for (const vec4 of [true, false]) {
        ewOptions.vec4 = vec4;
        try {
          for (const [sx, sb] of CASES) {
            await testOp([sx, sb], (x, b) => s.biasAct(x, b, act), {
              ...RANGE,
              reference: (x, b) => s.add(x, b)[act](),
            });
          }
        } finally {
          ewOptions.vec4 = true;
        }
      }
      // finite differences on the fused op itself, both inputs
      for (const device of ["cpu", "webgpu"] as const) {
        if (device === "webgpu") requireGpu();
        const dtype = device === "cpu" ? "f64" : "f32";
        const x = s.rand([3, 8], { seed: 2, low: -3, high: 3, device, dtype });
        const b = s.rand([8], { seed: 3, low: -1, high: 1, device, dtype });
        await s.gradcheck((x, b) => s.biasAct(x, b, act), [x, b], device === "cpu" ? {} : { eps: 1e-3 });
        x.dispose();
        b.dispose();
      }
    });
  }

  test.skipIf(!F16)("f16 inputs (needs shader-f16)", async () => {
    await testOp(
      [{ shape: [4, 8], dtype: "f16" }, { shape: [8], dtype: "f16" }],
      (x, b) => s.biasAct(x, b, "gelu"),
      { reference: (x, b) => s.add(x, b).gelu() },
    );
  });

  test("a bias that does not require grad, an x that does not", () => {
    requireGpu();
    for (const device of ["cpu", "webgpu"] as const) {
      const x = s.param(s.rand([4, 8], { seed: 1, device }));
      const b = s.rand([8], { seed: 2, device });
      s.tidy(() => s.biasAct(x, b, "silu").sum().backward());
      expect(x.grad!.shape).toEqual([4, 8]);
      expect(b.grad).toBe(null);
      const x2 = s.rand([4, 8], { seed: 1, device });
      const b2 = s.param(s.rand([8], { seed: 2, device }));
      s.tidy(() => s.biasAct(x2, b2, "silu").sum().backward());
      expect(b2.grad!.shape).toEqual([8]);
      x.zeroGrad();
      b2.zeroGrad();
      for (const t of [x, b, x2, b2]) t.dispose();
    }
  });

  test("one dispatch forward; dx in one and db in one reduction", () => {
    requireGpu();
    const x = s.param(s.rand([8, 64], { seed: 1, device: "webgpu" }));
    const b = s.param(s.rand([64], { seed: 2, device: "webgpu" }));
    const g = s.ones([8, 64], { device: "webgpu" });
    let y: Tensor | null = null;
    expect(opsRun(() => void (y = s.biasAct(x, b, "gelu")))).toEqual(["biasAct"]);
    expect(opsRun(() => y!.backward(g))).toEqual(["biasAct backward", "sum"]);
    x.zeroGrad();
    b.zeroGrad();
    for (const t of [x, b, g, y!]) t.dispose();
  });

  test("Linear.forward(x, act) (the TransformerLM MLP): act(forward(x)) to f32 rounding, gradients too", async () => {
    for (const device of ["cpu", "webgpu"] as const) {
      if (device === "webgpu") requireGpu();
      for (const act of ["gelu", "silu", "relu"] as const) {
        for (const bias of [true, false]) {
          const fc = new s.Linear(16, 64, { seed: 3, device, bias });
          const x = s.param(s.randn([2, 8, 16], { seed: 4, device }));
          const g = s.randn([2, 8, 64], { seed: 5, device });
          const leaves = [x, ...fc.parameters()];
          const run = async (fused: boolean) => {
            const f = () => fused ? fc.forward(x, act) : fc.forward(x)[act]();
            s.tidy(() => f().backward(g));
            const vals = await Promise.all(leaves.map((t) => t.grad!.toArray()));
            leaves.forEach((t) => t.zeroGrad());
            const y = s.tidy(() => s.noGrad(f));
            vals.push(await y.toArray());
            y.dispose();
            return vals;
          };
          const [fused, plain] = [await run(true), await run(false)];
          fused.forEach((v, i) => assertClose(v, plain[i], { atol: 1e-6, rtol: 1e-5 }));
          for (const t of [fc, x, g]) t.dispose();
        }
      }
    }
  });

  test("bad input names the op and what was wrong", () => {
    requireGpu();
    const x = s.zeros([2, 4], { device: "cpu" }), b = s.zeros([4], { device: "cpu" });
    const b3 = s.zeros([3], { device: "cpu" }), b2d = s.zeros([1, 4], { device: "cpu" });
    const xi = s.zeros([2, 4], { dtype: "i32", device: "cpu" }), g = s.zeros([4], { device: "webgpu" });
    expect(() => s.biasAct(x, b, "tanh" as "gelu")).toThrow(
      'biasAct: act must be one of gelu, silu, relu, got "tanh"',
    );
    expect(() => s.biasAct(x, b3, "gelu")).toThrow(
      "biasAct: bias must be 1-D with x's last dim: x is [2, 4], bias [3]",
    );
    expect(() => s.biasAct(x, b2d, "gelu")).toThrow("x is [2, 4], bias [1, 4]");
    expect(() => s.biasAct(xi, b, "gelu")).toThrow(/biasAct: x and bias must be float tensors/);
    expect(() => s.biasAct(x, g, "gelu")).toThrow(/biasAct: tensors are on different devices/);
    for (const t of [x, b, b3, b2d, xi, g]) t.dispose();
  });
});
