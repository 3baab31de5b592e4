import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { leakCheck, type OpInput, requireGpu, testOp } from "../../test/helpers.ts";
import { gpu } from "../../runtime/device.ts";
import { ewOptions } from "./elementwise_wgsl.ts";

leakCheck();

/** Whether the adapter can hold f16 tensors (the f16 test is skipped, by name, where it cannot). */
const F16 = s.adapterInfo().includes("shader-f16");

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

/** The keys of the programs `fn` records on webgpu (gpu().run wrapped while it runs). */
function programKeys(fn: () => Tensor): string[] {
  const ctx = gpu(), run = ctx.run;
  const keys: string[] = [];
  ctx.run = (p) => {
    keys.push(p.key);
    return run.call(ctx, p);
  };
  try {
    s.tidy(() => s.noGrad(fn)).dispose();
  } finally {
    ctx.run = run;
  }
  return keys;
}

/** Runs `body` with every version on: v4 and v3 where they serve, v3 in place of v4, then v1/v2 only. */
async function bothVersions(body: () => Promise<void>): Promise<void> {
  for (const [vec4, tiles] of [[true, true], [true, false], [false, false]]) {
    Object.assign(ewOptions, { vec4, tiles });
    try {
      await body();
    } finally {
      Object.assign(ewOptions, { vec4: true, tiles: true });
    }
  }
}

/** The version a program key names, with its load kinds: "v4 tw", "v3 crc" or "v1/v2". */
function versionOf(key: string): string {
  if (key.startsWith("v4|")) return `v4 ${key.split("|").at(-3)}`;
  if (key.startsWith("v3|")) return `v3 ${key.split("|").at(-3)}`;
  return "v1/v2";
}

describe("v3 vec4 and v4 tiles: every input layout against the reference and v1/v2", () => {
  // [case, inputs, fn, the version: v3 with the load kinds of the inputs, the output's, "t" for a partial
  // last vec4]
  const CASES: [string, OpInput[], (...xs: Tensor[]) => Tensor, string][] = [
    ["contiguous", [[6, 8], [6, 8]], (a, b) => a.mul(b), "v3 ccc"],
    ["row over the last dim (bias)", [[2, 3, 16], [16]], (a, b) => a.add(b), "v3 crc"],
    ["column (per-row scale)", [[2, 3, 16], [2, 3, 1]], (a, b) => a.mul(b), "v3 cqc"],
    ["rows repeated over a middle dim", [[3, 4, 8], [3, 1, 8]], (a, b) => a.sub(b), "v3 cvc"],
    ["a column repeated over the first dim", [[3, 4, 8], [4, 1]], (a, b) => a.mul(b), "v3 csc"],
    ["scalar", [[5, 8], []], (a, b) => a.sub(b), "v3 ckc"],
    ["inner dim contiguous, outer permuted", [[4, 3, 8]], (a) => a.permute([1, 0, 2]).exp(), "v3 vc"],
    ["transposed", [[8, 12]], (a) => a.transpose().tanh(), "v4 t"],
    ["transposed, a batch dim between", [[3, 4, 8, 12]], (a) => a.permute([1, 0, 3, 2]).exp(), "v4 t"],
    ["two transposed", [[8, 12], [8, 12]], (a, b) => a.transpose().add(b.transpose()), "v4 tt"],
    ["transposed and row-major", [[8, 12], [12, 8]], (a, b) => a.transpose().mul(b), "v4 tw"],
    ["transposed and a bias", [[2, 8, 12], [8]], (a, b) => a.transpose(1, 2).sub(b), "v4 tw"],
    ["transposed and cast", [[8, 12]], (a) => a.transpose().cast("i32"), "v4 t"],
    ["transposed, 6 rows", [[8, 6]], (a) => a.transpose().tanh(), "v3 gc"],
    [
      "transposed, offset not a multiple of 4",
      [[33]],
      (a) => a.slice([[1, 33]]).reshape([4, 8]).transpose().neg(),
      "v3 gc",
    ],
    ["rank 6, inner dim kept", [[2, 3, 2, 3, 2, 4]], (a) => a.permute([4, 3, 2, 1, 0, 5]).relu(), "v3 vc"],
    ["rank 6 reversed (v1)", [[2, 3, 2, 3, 2, 4]], (a) => a.permute([5, 4, 3, 2, 1, 0]).relu(), "v1/v2"],
    ["offset not a multiple of 4", [[33]], (a) => a.slice([[1, 33]]).neg(), "v3 gc"],
    ["rows not 4-aligned in storage", [[6, 9]], (a) => a.slice([null, [1, 9]]).abs(), "v3 gc"],
    ["flat, partial last vec4", [[4099], [4099]], (a, b) => a.maximum(b), "v3 ccct"],
    ["flat, 3 elements", [[3]], (a) => a.gelu(), "v3 cct"],
    ["flat view, partial, stride 2", [[14]], (a) => a.slice([[0, 14, 2]]).sigmoid(), "v3 gct"],
    [
      "where over three layouts",
      [
        { shape: [6, 16], dtype: "u32", low: 0, high: 2 },
        [16],
        [6, 1],
      ],
      (c, a, b) => s.where(c, a, b),
      "v3 rqcc",
    ], // mapOp's inputs: a, b, then c
    ["inner dim not a multiple of 4", [[6, 9], [9]], (a, b) => a.add(b), "v1/v2"],
  ];
  for (const [name, inputs, fn, version] of CASES) {
    test(name, async () => {
      requireGpu();
      const xs = inputs.map((inp) => {
        const spec = Array.isArray(inp)
          ? { shape: inp as number[] }
          : inp as { shape: number[]; dtype?: "u32" };
        return s.zeros(spec.shape, { dtype: spec.dtype ?? "f32", device: "webgpu" });
      });
      try {
        const keys = programKeys(() => fn(...xs));
        expect(versionOf(keys[keys.length - 1])).toBe(version);
      } finally {
        xs.forEach((x) => x.dispose());
      }
      await bothVersions(() => testOp(inputs, fn, WIDE).then(() => {}));
    });
  }

  test("copyInto a strided destination: vec4 stores where rows are 4-aligned", async () => {
    requireGpu();
    for (const [cols, version] of [[[4, 12], "v3 cv"], [[1, 9], "v1/v2"]] as const) {
      const dst = s.zeros([4, 12], { device: "webgpu" });
      const src = s.randn([4, cols[1] - cols[0]], { seed: 3, device: "webgpu" });
      const keys = programKeys(() => s.copyInto(dst.slice([null, [cols[0], cols[1]]]), src));
      expect(versionOf(keys[keys.length - 1])).toBe(version);
      const want = new Float32Array(48);
      const got = await src.toArray();
      for (let r = 0; r < 4; r++) {
        for (let c = cols[0]; c < cols[1]; c++) want[r * 12 + c] = got[r * (cols[1] - cols[0]) + c - cols[0]];
      }
      expect(Array.from(await dst.toArray())).toEqual(Array.from(want));
      dst.dispose();
      src.dispose();
    }
  });

  test("copyInto a strided destination from a transposed source: v4 where its rows are 4-aligned", async () => {
    requireGpu();
    for (const [rows, version] of [[[4, 12], "v4 td"], [[3, 10], "v3 gv"]] as const) {
      const n = rows[1] - rows[0];
      const dst = s.zeros([2, 16, 12], { device: "webgpu" });
      const src = s.randn([2, 12, n], { seed: 3, device: "webgpu" });
      const keys = programKeys(() => s.copyInto(dst.slice([null, [rows[0], rows[1]]]), src.transpose(1, 2)));
      expect(versionOf(keys[keys.length - 1])).toBe(version);
      const got = await dst.toArray(), sv = await src.toArray();
      const want = new Float32Array(2 * 16 * 12);
      for (let b = 0; b < 2; b++) {
        for (let r = 0; r < n; r++) {
          for (let c = 0; c < 12; c++) want[(b * 16 + rows[0] + r) * 12 + c] = sv[(b * 12 + c) * n + r];
        }
      }
      expect(Array.from(got)).toEqual(Array.from(want));
      dst.dispose();
      src.dispose();
    }
  });

  test("integer dtypes", async () => {
    requireGpu();
    await bothVersions(async () => {
      const a = { shape: [4, 8], dtype: "i32" } as const, b = { shape: [8], dtype: "i32" } as const;
      await testOp([a, b], (x, y) => s.mul(x, y));
      expect((await testOp([a, b], (x, y) => s.lt(x, y))).dtype).toBe("u32");
      await testOp([{ values: [1.5, -2.5, 3e9, NaN, 7, 8, -9, 0.5] }], (x) => s.cast(x, "i32"));
      await testOp([{ values: [1.5, -2.5, 3e9, NaN, 7, 8, -9, 0.5] }], (x) => s.cast(x, "u32"));
      await testOp([{ shape: [8, 12], dtype: "i32" }], (x) => x.transpose().neg());
    });
  });

  test.skipIf(!F16)("f16 (needs shader-f16)", async () => {
    await bothVersions(async () => {
      await testOp([{ shape: [4, 8], dtype: "f16" }, { shape: [8], dtype: "f16" }], (x, y) => s.add(x, y));
      await testOp([{ shape: [7], dtype: "f16" }], (x) => s.gelu(x));
      await testOp([{ shape: [8, 12], dtype: "f16" }], (x) => x.transpose().gelu());
      // no finite differences: a step of 1e-6 vanishes when the float64 reference rounds to f16
      await testOp([[4, 8]], (x) => s.cast(x, "f16"), { gradcheck: false });
    });
  });
});
