import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, compareBackends, data, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";
import { gpu } from "../../runtime/device.ts";

leakCheck();

const cpu = (shape: number[], seed = 1, scale = 2, dtype: s.DType = "f32") =>
  s.tensor(data(shape.reduce((a, b) => a * b, 1), seed, scale), { shape, device: "cpu", dtype });
const arr = async (t: Tensor) => Array.from(await t.toArray());
const dot = (a: number[], b: number[]) => a.reduce((acc, v, i) => acc + v * b[i], 0);

describe("ropeFrequencies", () => {
  test("plain RoPE: inv_freq_i = base^(-2i/d)", () => {
    const f = s.ropeFrequencies(8);
    assertClose(f.invFreq, [1, 0.1, 0.01, 0.001], { atol: 0, rtol: 1e-15 });
    expect(f.mscale).toBe(1);
    assertClose(s.ropeFrequencies(4, { base: 100 }).invFreq, [1, 0.1], { atol: 0, rtol: 1e-15 });
  });

  test("PI divides every frequency by s; NTK-aware and dynamic NTK change the base", () => {
    const d = 16, plain = s.ropeFrequencies(d).invFreq;
    const pi = s.ropeFrequencies(d, { scaling: { type: "linear", factor: 4 } });
    assertClose(pi.invFreq, plain.map((v) => v / 4), { atol: 0, rtol: 1e-15 });
    const ntk = s.ropeFrequencies(d, { scaling: { type: "ntk", factor: 4 } });
    expect(ntk.base).toBeCloseTo(10000 * 4 ** (16 / 14), 6); // base * s^(d/(d-2))
    expect(ntk.invFreq[0]).toBe(1); // the highest frequency is untouched
    expect(ntk.invFreq[7]).toBeCloseTo(ntk.base ** (-14 / 16), 15);
    // dynamic: inside the training context nothing changes; at L = 2 L_train with s = 2 the base is
    // base * (2 * 2 - 1)^(d/(d-2)) = base * 3^(16/14)
    const dyn = (length: number) =>
      s.ropeFrequencies(d, { scaling: { type: "dynamic", factor: 2, originalLength: 100, length } });
    assertClose(dyn(100).invFreq, plain, { atol: 0, rtol: 0 });
    expect(dyn(200).base).toBeCloseTo(10000 * 3 ** (16 / 14), 6);
  });

  test("YaRN: s = 1 is plain RoPE; the ramp keeps high frequencies and interpolates low ones", () => {
    const d = 128, plain = s.ropeFrequencies(d).invFreq;
    const y1 = s.ropeFrequencies(d, { scaling: { type: "yarn", factor: 1, originalLength: 4096 } });
    assertClose(y1.invFreq, plain, { atol: 0, rtol: 1e-15 });
    expect(y1.mscale).toBe(1);
    // d = 128, L = 4096, base 1e4: dim(32) = 128 ln(4096 / (64 pi)) / (2 ln 1e4) = 20.94 -> low 20;
    // dim(1) = 128 ln(4096 / (2 pi)) / (2 ln 1e4) = 45.03 -> high 46.
    const y = s.ropeFrequencies(d, { scaling: { type: "yarn", factor: 8, originalLength: 4096 } });
    for (let i = 0; i <= 20; i++) expect(y.invFreq[i]).toBe(plain[i]);
    for (let i = 46; i < 64; i++) expect(y.invFreq[i]).toBeCloseTo(plain[i] / 8, 15);
    const r = (33 - 20) / (46 - 20); // ramp at i = 33
    expect(y.invFreq[33]).toBeCloseTo((plain[33] / 8) * r + plain[33] * (1 - r), 15);
    expect(y.mscale).toBeCloseTo(0.1 * Math.log(8) + 1, 15);
  });

  test("bad options throw clear errors", () => {
    expect(() => s.ropeFrequencies(7)).toThrow(/head dim 7 must be a positive even integer/);
    expect(() => s.ropeFrequencies(8, { base: -1 })).toThrow(/base must be a positive finite number/);
    expect(() => s.ropeFrequencies(8, { scaling: { type: "linear", factor: 0 } })).toThrow(/factor/);
    expect(() => s.ropeFrequencies(2, { scaling: { type: "ntk", factor: 2 } })).toThrow(/needs d > 2/);
    // deno-lint-ignore no-explicit-any
    expect(() => s.ropeFrequencies(8, { scaling: { type: "xpos" } as any })).toThrow(/unknown scaling/);
  });
});

describe("RoPE reference", () => {
  test(
    "position 0 is the identity; a hand-computed rotation",
    scoped(async () => {
      const x = cpu([2, 3, 1, 6], 2);
      assertClose(await arr(s.ropeRef(x, [0], s.ropeFrequencies(6))), await arr(x), { atol: 0, rtol: 0 });
      // D = 4, p = 2: pair (0, 2) turns by 2 rad, pair (1, 3) by 2 * 0.01
      const v = s.tensor([[1, 2, 3, 4]], { device: "cpu", dtype: "f64" });
      const [c0, s0, c1, s1] = [Math.cos(2), Math.sin(2), Math.cos(0.02), Math.sin(0.02)];
      assertClose(
        await arr(s.ropeRef(v, [2], s.ropeFrequencies(4))),
        [1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1],
        { atol: 1e-15, rtol: 0 },
      );
    }),
  );

  test(
    "<R_m q, R_n k> depends only on m - n; norms are preserved",
    scoped(async () => {
      const f = s.ropeFrequencies(16);
      const q = cpu([1, 16], 3, 1, "f64"), k = cpu([1, 16], 4, 1, "f64");
      const score = async (m: number, n: number) =>
        dot(await arr(s.ropeRef(q, [m], f)), await arr(s.ropeRef(k, [n], f)));
      const ref = await score(3, 1);
      for (const [m, n] of [[2, 0], [10, 8], [1002, 1000], [-5, -7]]) {
        expect(await score(m, n)).toBeCloseTo(ref, 10);
      }
      expect(Math.abs((await score(4, 1)) - ref)).toBeGreaterThan(1e-3); // a different offset differs
      const rq = await arr(s.ropeRef(q, [37], f)), q0 = await arr(q);
      expect(dot(rq, rq)).toBeCloseTo(dot(q0, q0), 12);
    }),
  );

  test(
    "PI with factor s maps position p to p / s; YaRN scales by its temperature",
    scoped(async () => {
      const x = cpu([1, 2, 4, 8], 5, 1, "f64");
      const pi = s.ropeFrequencies(8, { scaling: { type: "linear", factor: 4 } });
      const pos = [0, 3, 10, 4097];
      assertClose(
        await arr(s.ropeRef(x, pos, pi)),
        await arr(s.ropeRef(x, pos.map((p) => p / 4), s.ropeFrequencies(8))),
        { atol: 1e-12, rtol: 0 },
      );
      const y = s.ropeFrequencies(8, { scaling: { type: "yarn", factor: 16, originalLength: 64 } });
      const rx = await arr(s.ropeRef(x, [0, 0, 0, 0], y));
      assertClose(rx, (await arr(x)).map((v) => v * y.mscale), { atol: 1e-15, rtol: 0 });
    }),
  );
});

describe("applyRope", () => {
  const yarn = s.ropeFrequencies(8, { scaling: { type: "yarn", factor: 4, originalLength: 32 } });
  const cases: [string, number[], s.RopePositions, s.RopeFrequencies | undefined][] = [
    ["T = 1, D = 2", [1, 1, 1, 2], 0, undefined],
    ["odd sizes", [2, 3, 5, 6], 7, undefined],
    ["rank 3, odd T", [3, 17, 4], [...Array(17).keys()].map((t) => t * 3 + 1), undefined],
    ["per-batch positions", [2, 2, 3, 8], [0, 1, 2, 100, 101, 102], yarn],
    ["large positions (host table)", [1, 2, 3, 8], [1e5, 2e5 + 0.5, 65537], yarn],
    ["D = 64", [1, 2, 9, 64], 3, undefined],
  ];
  for (const [name, shape, pos, f] of cases) {
    test(`webgpu against the reference: ${name}`, async () => {
      const x = cpu(shape, 6);
      await compareBackends((t) => s.applyRope(t, pos, f), [x], { atol: 2e-6, rtol: 2e-6 });
      // the cpu path is the reference
      const T = shape[shape.length - 2];
      const explicit = typeof pos === "number" ? [...Array(T).keys()].map((t) => pos + t) : pos;
      const a = s.applyRope(x, pos, f), r = s.ropeRef(x, explicit, f ?? s.ropeFrequencies(shape.at(-1)!));
      assertClose(await arr(a), await arr(r), { atol: 0, rtol: 0 });
      for (const t of [x, a, r]) t.dispose();
    });
  }

  test("strided input (a permuted view) and the T-major layout", async () => {
    const x = cpu([2, 5, 3, 8], 7); // (B, T, H, D) permuted to (B, H, T, D)
    await compareBackends((t) => s.applyRope(t.permute([0, 2, 1, 3]), 2), [x], { atol: 2e-6, rtol: 2e-6 });
    x.dispose();
  });

  test(
    "heads sliced from a fused projection are read through their strides, not copied first",
    scoped(async () => {
      requireGpu();
      const ctx = gpu();
      for (const [D, H3] of [[8, 9], [6, 7]]) { // vec4 rows (v2), and rows of 3 pairs at odd strides (v1)
        const qkv = cpu([2, 5, H3, D], 11).to("webgpu");
        const q = (await qkv).slice([null, null, [1, 4]]); // (B, T, 3, D), T stride H3 D
        const want = s.applyRope(s.contiguous(q), 2, undefined, { layout: "bthd" });
        const ops: string[] = [];
        const run = ctx.run.bind(ctx);
        ctx.run = (p) => (ops.push(p.name), run(p));
        let got: Tensor;
        try {
          got = s.applyRope(q, 2, undefined, { layout: "bthd" });
        } finally {
          ctx.run = run;
        }
        expect(ops).toEqual(["applyRope"]);
        assertClose(await arr(got), await arr(want), { atol: 0, rtol: 0 });
      }
    }),
  );

  test(
    "layout bthd: (B, T, H, D) gives the permuted (B, H, T, D) result, shared and per-batch positions",
    scoped(async () => {
      const x = cpu([2, 5, 3, 8], 9); // (B, T, H, D)
      for (const pos of [3, [0.5, 2, 9, 40, 1e4], [...Array(10).keys()].map((i) => 7 * i)]) {
        // the reference in the (B, H, T, D) layout, permuted back
        const want = s.applyRope(x.permute([0, 2, 1, 3]), pos).permute([0, 2, 1, 3]).contiguous();
        const got = s.applyRope(x, pos, undefined, { layout: "bthd" });
        assertClose(await arr(got), await arr(want), { atol: 1e-12, rtol: 1e-12 });
        await compareBackends((t) => s.applyRope(t, pos, undefined, { layout: "bthd" }), [x], {
          atol: 2e-6,
          rtol: 2e-6,
        });
        for (const t of [want, got]) t.dispose();
      }
      // gradients in float64, both layouts agree
      const x64 = cpu([2, 3, 2, 4], 10, 1, "f64");
      await s.gradcheck((t) => s.applyRope(t, [1, 2, 3, 4, 5, 6], undefined, { layout: "bthd" }), [x64], {
        atol: 1e-8,
        rtol: 1e-6,
      });
      x64.dispose();
      x.dispose();
    }),
  );

  test("layout errors name the layout", () => {
    const x = cpu([2, 5, 8]);
    expect(() => s.applyRope(x, 0, undefined, { layout: "bthd" })).toThrow(
      /layout "bthd" needs x \(B, T, H, D\)/,
    );
    // deno-lint-ignore no-explicit-any
    expect(() => s.applyRope(x, 0, undefined, { layout: "tbhd" as any })).toThrow(
      /layout must be "bhtd" or "bthd"/,
    );
    x.dispose();
  });

  test(
    "gradients: the backward is the transposed rotation (float64 finite differences)",
    scoped(async () => {
      const x = cpu([1, 2, 3, 8], 8, 1, "f64");
      const f = (t: Tensor) => s.applyRope(t, [0.5, 3, 70], yarn);
      const r64 = await s.gradcheck(f, [x], { atol: 1e-8, rtol: 1e-6 });
      expect(r64.maxError[0]).toBeLessThan(1e-7);
      await s.gradcheck(f, [await s.cast(x, "f32").to("webgpu")], { atol: 2e-4, rtol: 2e-3 });
      const per = (t: Tensor) => s.applyRope(t, [0, 1, 2, 9, 8, 7]);
      await s.gradcheck(per, [cpu([2, 1, 3, 4], 9, 1, "f64")], { atol: 1e-8, rtol: 1e-6 });
    }),
  );

  test(
    "the backward undoes the rotation when mscale is 1",
    scoped(async () => {
      const x = s.param(await cpu([1, 1, 4, 8], 10).to("webgpu"));
      const g = cpu([1, 1, 4, 8], 11);
      const y = s.applyRope(x, 5);
      y.backward(await g.to("webgpu"));
      // R^T R g = g: rotating the gradient of y back by the forward map recovers g
      assertClose(await arr(s.applyRope(x.grad!, 5)), await arr(g), { atol: 2e-6, rtol: 2e-6 });
      x.zeroGrad();
      x.dispose();
    }),
  );

  test("bad inputs throw clear errors", () => {
    const x = s.zeros([1, 2, 3, 7], { device: "cpu" }), y = s.zeros([1, 2, 3, 8], { device: "cpu" });
    const i = s.zeros([3, 8], { device: "cpu", dtype: "i32" }), v = s.zeros([8], { device: "cpu" });
    expect(() => s.applyRope(x, 0)).toThrow("applyRope: head dim D = 7 of [1, 2, 3, 7] is odd");
    expect(() => s.applyRope(y, [0, 1])).toThrow(
      "applyRope: 2 positions for x [1, 2, 3, 8]; expected T = 3 or B * T = 3",
    );
    expect(() => s.applyRope(y, 0, s.ropeFrequencies(4))).toThrow(
      "applyRope: frequencies are for head dim 4 but x [1, 2, 3, 8] has D = 8",
    );
    expect(() => s.applyRope(y, [0, NaN, 2])).toThrow("applyRope: position 1 is NaN, not finite");
    expect(() => s.applyRope(i, 0)).toThrow(/applyRope: needs a float tensor, got tensor \[3, 8\] i32/);
    expect(() => s.applyRope(v, 0)).toThrow(/applyRope: x must be \(B, H, T, D\) or \(\.\.\., T, D\)/);
    for (const t of [x, y, i, v]) t.dispose();
  });
});

test("applyRope and alibiBias leave nothing allocated (forward and backward, both devices)", () => {
  for (const device of ["cpu", "webgpu"] as const) {
    const x = s.randn([2, 2, 5, 8], { seed: 1, device });
    s.applyRope(x, 3).dispose();
    x.requiresGrad = true;
    const y = s.applyRope(x, [0, 1, 2, 3, 4, 9, 8, 7, 6, 5]), loss = y.sum();
    loss.backward();
    for (const t of [loss, y]) t.dispose();
    x.zeroGrad();
    x.dispose();
    s.alibiBias(s.alibiSlopes(3), 4, 6, { device }).dispose();
  }
});
