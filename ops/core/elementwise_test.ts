import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { compareBackends, data, leakCheck, TOL } from "../../test/helpers.ts";

leakCheck();

const SPECIALS = [NaN, 1e4, -1e4, Infinity, -Infinity, 0, -0, 1e-30, 88, -88];
const SHAPES = [[], [1], [7], [3, 5], [2, 3, 17], [0, 4], [65, 33], [4099]];
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

const cpu = (shape: number[], seed = 1, scale = 3, specials = SPECIALS) => {
  const n = shape.reduce((a, b) => a * b, 1);
  return s.tensor(data(n, seed, scale, specials), { shape, device: "cpu" });
};

describe("unary ops: webgpu against the float64 cpu reference", () => {
  for (const op of UNARY) {
    test(op, async () => {
      const f = s[op] as (x: Tensor) => Tensor;
      for (const shape of SHAPES) {
        const x = cpu(shape);
        // exp of large arguments: the Vulkan precision bound is 3 + 2|x| ulp
        await compareBackends(f, [x], op === "exp" ? { atol: 1e-5, rtol: 3e-5 } : { atol: 1e-5, rtol: 1e-5 });
        x.dispose();
      }
    });
  }

  test("integer inputs: neg/abs/relu keep i32, math ops give f32", async () => {
    const x = s.tensor([-3, 0, 5, -2147483647], { dtype: "i32", device: "cpu" });
    for (const op of UNARY) {
      const f = s[op] as (x: Tensor) => Tensor;
      const r = f(x);
      expect(r.dtype, op).toBe(["neg", "abs", "relu"].includes(op) ? "i32" : "f32");
      r.dispose();
      await compareBackends(f, [x], { atol: 1e-5, rtol: 1e-5 });
    }
    const u = s.tensor([1], { dtype: "u32", device: "cpu" });
    expect(() => s.neg(u)).toThrow(/neg: .*unsigned/);
    x.dispose();
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
      for (const [sa, sb] of PAIRS) {
        const a = cpu(sa, 3), b = cpu(sb, 5, 3, [NaN, 0, 2, -3, Infinity, 1e4]);
        await compareBackends(f, [a, b], { atol: 1e-5, rtol: 1e-5 });
        a.dispose();
        b.dispose();
      }
      // non-contiguous views: transposed and strided slices
      const a = cpu([6, 9], 11), b = cpu([9, 6], 12);
      await compareBackends(
        (x, y) => f(x.slice([[0, 6, 2], [1, 9, 3]]), y.transpose().slice([[1, 6, 2], [0, 3]])),
        [a, b],
      );
      a.dispose();
      b.dispose();
    });
  }

  test("integer arithmetic wraps like 32-bit integers on both backends", async () => {
    const big = [2147483647, -2147483648, 123456789, -7, 0, 65537];
    const a = s.tensor(big, { dtype: "i32", device: "cpu" });
    const b = s.tensor([2, 3, 7, -7, 5, 65537], { dtype: "i32", device: "cpu" });
    for (const op of ["add", "sub", "mul", "maximum", "minimum", "lt", "eq"] as const) {
      await compareBackends(s[op] as (a: Tensor, b: Tensor) => Tensor, [a, b], TOL.i32);
    }
    const r = s.add(a, b);
    expect(r.dtype).toBe("i32");
    expect((await r.toArray())[0]).toBe(-2147483647); // wrapped
    r.dispose();
    const ua = s.tensor([1, 4000000000], { dtype: "u32", device: "cpu" }),
      ub = s.tensor([2, 500000000], { dtype: "u32", device: "cpu" });
    await compareBackends(s.sub as (a: Tensor, b: Tensor) => Tensor, [ua, ub], TOL.u32);
    await compareBackends(s.add as (a: Tensor, b: Tensor) => Tensor, [ua, ub], TOL.u32);
    // division of integers is true division
    const d = s.div(a, b);
    expect(d.dtype).toBe("f32");
    for (const t of [a, b, ua, ub, d]) t.dispose();
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
  });

  test("bad input names the op, the shapes and devices", () => {
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
    const raw = s.tensor(data(12, 4), { shape: [3, 4], device: "cpu" });
    const c = raw.gt(0);
    raw.dispose();
    const a = cpu([4], 5), b = cpu([3, 1], 6);
    await compareBackends((c, a, b) => s.where(c, a, b), [c, a, b], TOL.f32);
    const r = s.where(c, a, 0);
    expect(r.shape).toEqual([3, 4]);
    for (const t of [a, b, c, r]) t.dispose();
  });

  test("cast between all dtypes", async () => {
    const x = s.tensor([1.7, -2.5, 3e9, -3e9, NaN, 0, 255.9], { device: "cpu" });
    for (const d of ["i32", "u32", "f32"] as const) {
      await compareBackends((t) => s.cast(t, d), [x], TOL[d]);
      const i = s.cast(x, d);
      for (const d2 of ["i32", "u32", "f32"] as const) {
        await compareBackends((t) => s.cast(t, d2), [i], TOL[d2]);
      }
      i.dispose();
    }
    const i = s.cast(x, "i32");
    // WGSL saturates to the largest f32 inside the i32 range; the reference does the same
    expect(Array.from(await i.toArray())).toEqual([1, -2, 2147483520, -2147483648, 0, 0, 255]);
    i.dispose();
    x.dispose();
  });

  test("contiguous copies permuted, sliced and expanded views", async () => {
    const x = cpu([4, 5, 6], 9);
    await compareBackends((t) => s.contiguous(t.permute([2, 0, 1])), [x]);
    await compareBackends((t) => s.contiguous(t.slice([[1, 4], null, [0, 6, 4]])), [x]);
    await compareBackends((t) => s.contiguous(t.slice([null, 2]).unsqueeze(1).expand([4, 3, 6])), [x]);
    const p = x.permute([2, 0, 1]);
    expect(p.isContiguous).toBe(false);
    const c = p.contiguous();
    expect(c.isContiguous).toBe(true);
    const col = x.slice([0, [0, 3], 0]);
    expect(Array.from((await c.toArray()).slice(0, 3))).toEqual(Array.from(await col.toArray()));
    for (const t of [x, p, c, col]) t.dispose();
  });
});
