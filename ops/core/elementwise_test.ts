import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { leakCheck, requireGpu, testOp } from "../../test/helpers.ts";

leakCheck();

const SPECIALS = [NaN, 1e4, -1e4, Infinity, -Infinity, 0, -0, 1e-30, 88, -88];
const SHAPES = [[], [1], [7], [3, 5], [2, 3, 17], [0, 4], [65, 33], [4099]];
/** Inputs in [-3, 3) with every special value mixed in. */
const WIDE = { low: -3, high: 3, specials: SPECIALS };
const UNARY = [
  "neg",
  "abs",
  "exp",
  "log",
  "sqrt",
  "rsqrt",
  "relu",
  "gelu",
  "silu",
  "sigmoid",
  "tanh",
  "softplus",
] as const;
const BINARY = [
  "add",
  "sub",
  "mul",
  "div",
  "pow",
  "maximum",
  "minimum",
  "eq",
  "ne",
  "lt",
  "le",
  "gt",
  "ge",
] as const;
/** The second operand's special values. */
const B_SPECIALS = [NaN, 0, 2, -3, Infinity, 1e4];

describe("unary ops: every backend against the float64 reference, values and gradients", () => {
  for (const op of UNARY) {
    test(op, async () => {
      const f = s[op] as (x: Tensor) => Tensor;
      // exp of large arguments: the Vulkan precision bound is 3 + 2|x| ulp
      const tol = op === "exp" ? { rtol: 3e-5 } : {};
      for (const shape of SHAPES) await testOp([shape], f, { ...WIDE, ...tol });
    });
  }

  test("integer inputs: neg/abs/relu keep i32, math ops give f32", async () => {
    const x = { values: [-3, 0, 5, -2147483647], dtype: "i32" } as const;
    for (const op of UNARY) {
      const r = await testOp([x], s[op] as (x: Tensor) => Tensor);
      expect(r.dtype, op).toBe(["neg", "abs", "relu"].includes(op) ? "i32" : "f32");
    }
    const u = s.tensor([1], { dtype: "u32", device: "cpu" });
    expect(() => s.neg(u)).toThrow(/neg: .*unsigned/);
    u.dispose();
  });

  test("reference values", async () => {
    const x = s.tensor([-1, 0, 1, 2], { device: "cpu" });
    const close = async (t: Tensor, want: number[]) => {
      const got = await t.toArray();
      want.forEach((w, i) => expect(got[i]).toBeCloseTo(w, 6));
      t.dispose();
    };
    await close(x.gelu(), [-0.15865525393145707, 0, 0.8413447460685429, 1.9544997361036416]);
    await close(x.silu(), [-0.2689414213699951, 0, 0.7310585786300049, 1.7615941559557649]);
    await close(x.softplus(), [
      0.31326168751822286,
      0.6931471805599453,
      1.3132616875182228,
      2.1269280110429727,
    ]);
    await close(x.tanh(), [-0.7615941559557649, 0, 0.7615941559557649, 0.9640275800758169]);
    x.dispose();
  });
});

describe("binary ops", () => {
  const PAIRS: [number[], number[]][] = [
    [[7], [7]],
    [[3, 1], [1, 4]],
    [[2, 3, 17], [17]],
    [[5], []],
    [[], []],
    [[0, 3], [1, 3]],
    [[65, 33], [65, 1]],
    [[2, 1, 4, 1], [3, 1, 5]],
  ];
  for (const op of BINARY) {
    test(`${op} with broadcasting, specials and views`, async () => {
      const f = s[op] as (a: Tensor, b: Tensor) => Tensor;
      for (const [sa, sb] of PAIRS) await testOp([sa, { shape: sb, specials: B_SPECIALS }], f, WIDE);
      // non-contiguous views: transposed and strided slices
      await testOp(
        [[6, 9], [9, 6]],
        (x, y) => f(x.slice([[0, 6, 2], [1, 9, 3]]), y.transpose().slice([[1, 6, 2], [0, 3]])),
        WIDE,
      );
    });
  }

  test("integer arithmetic wraps like 32-bit integers on both backends", async () => {
    const a = { values: [2147483647, -2147483648, 123456789, -7, 0, 65537], dtype: "i32" } as const;
    const b = { values: [2, 3, 7, -7, 5, 65537], dtype: "i32" } as const;
    for (const op of ["add", "sub", "mul", "maximum", "minimum", "lt", "eq"] as const) {
      await testOp([a, b], s[op] as (a: Tensor, b: Tensor) => Tensor);
    }
    const r = await testOp([a, b], (x, y) => s.add(x, y));
    expect(r.dtype).toBe("i32");
    expect(r.outputs.webgpu![0]).toBe(-2147483647); // wrapped
    const ua = { values: [1, 4000000000], dtype: "u32" } as const;
    const ub = { values: [2, 500000000], dtype: "u32" } as const;
    await testOp([ua, ub], (x, y) => s.sub(x, y));
    await testOp([ua, ub], (x, y) => s.add(x, y));
    // division of integers is true division
    expect((await testOp([a, b], (x, y) => s.div(x, y))).dtype).toBe("f32");
  });

  test("dtype promotion and scalar operands", async () => {
    const i = s.tensor([1, 2, 3], { dtype: "i32", device: "cpu" });
    const f = s.tensor([0.5, 0.5, 0.5], { device: "cpu" });
    const r = s.add(i, f);
    expect(r.dtype).toBe("f32");
    expect(Array.from(await r.toArray())).toEqual([1.5, 2.5, 3.5]);
    const h = s.mul(i, 0.5);
    expect(h.dtype).toBe("f32");
    expect(Array.from(await h.toArray())).toEqual([0.5, 1, 1.5]);
    const k = s.sub(10, i);
    expect(k.dtype).toBe("i32");
    expect(Array.from(await k.toArray())).toEqual([9, 8, 7]);
    const c = i.gt(1);
    expect(c.dtype).toBe("u32");
    for (const t of [i, f, r, h, k, c]) t.dispose();
    // the same on every backend, with the gradient of the float operand
    await testOp([{ values: [1, 2, 3], dtype: "i32" }, [3]], (x, y) => s.add(x, y));
    await testOp([{ values: [1, 2, 3], dtype: "i32" }], (x) => s.mul(x, 0.5));
    await testOp([[3]], (x) => s.sub(10, x));
  });

  test("bad input names the op, the shapes and devices", () => {
    requireGpu();
    const a = s.zeros([2, 3], { device: "cpu" }), b = s.zeros([4], { device: "cpu" });
    expect(() => s.add(a, b)).toThrow("add: shapes cannot be broadcast together: [2, 3] and [4]");
    const g = s.zeros([2, 3], { device: "webgpu" });
    expect(() => s.mul(a, g)).toThrow(/mul: tensors are on different devices/);
    const d = s.zeros([1], { device: "cpu" });
    d.dispose();
    expect(() => s.exp(d)).toThrow(/exp: tensor \[1\] f32 on cpu was disposed/);
    for (const t of [a, b, g]) t.dispose();
  });
});

describe("where, cast, contiguous", () => {
  test("where broadcasts condition and branches", async () => {
    const cond = { shape: [3, 4], dtype: "u32", low: 0, high: 2 } as const;
    await testOp([cond, [4], [3, 1]], (c, a, b) => s.where(c, a, b), WIDE);
    const r = await testOp([cond, [4]], (c, a) => s.where(c, a, 0), WIDE);
    expect(r.shape).toEqual([3, 4]);
  });

  test("cast between all dtypes", async () => {
    const x = { values: [1.7, -2.5, 3e9, -3e9, NaN, 0, 255.9] };
    for (const d of ["i32", "u32", "f32"] as const) {
      await testOp([x], (t) => s.cast(t, d));
      for (const d2 of ["i32", "u32", "f32"] as const) await testOp([x], (t) => s.cast(s.cast(t, d), d2));
    }
    // WGSL saturates to the largest f32 inside the i32 range; the reference does the same
    const i = await testOp([x], (t) => s.cast(t, "i32"));
    expect(Array.from(i.outputs.webgpu!)).toEqual([1, -2, 2147483520, -2147483648, 0, 0, 255]);
  });

  test("contiguous copies permuted, sliced and expanded views", async () => {
    await testOp([[4, 5, 6]], (t) => s.contiguous(t.permute([2, 0, 1])), WIDE);
    await testOp([[4, 5, 6]], (t) => s.contiguous(t.slice([[1, 4], null, [0, 6, 4]])), WIDE);
    await testOp([[4, 5, 6]], (t) => s.contiguous(t.slice([null, 2]).unsqueeze(1).expand([4, 3, 6])), WIDE);
    const x = s.tensor(Float32Array.from({ length: 120 }, (_, i) => i), { shape: [4, 5, 6], device: "cpu" });
    const p = x.permute([2, 0, 1]);
    expect(p.isContiguous).toBe(false);
    const c = p.contiguous();
    expect(c.isContiguous).toBe(true);
    const col = x.slice([0, [0, 3], 0]);
    expect(Array.from((await c.toArray()).slice(0, 3))).toEqual(Array.from(await col.toArray()));
    for (const t of [x, p, c, col]) t.dispose();
  });
});
