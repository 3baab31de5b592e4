import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, gpu32, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const f64 = { device: "cpu" as const, dtype: "f64" as const };
const TOL = { atol: 1e-5, rtol: 1e-5 };

describe("causalConv1d reference", () => {
  test(
    "hand-computed taps, bias, initial state",
    scoped(() => {
      // W = 3, weights [1, 10, 100]: out_t = x_t-2 + 10 x_t-1 + 100 x_t + 0.5, state supplies x_-2, x_-1
      const x = new Float64Array([1, 2, 3]);
      const out = s.causalConv1dRef(x, [1, 1, 3], [1, 10, 100], 3, [0.5], [7, 8]);
      expect(Array.from(out)).toEqual([7 + 80 + 100 + 0.5, 8 + 10 + 200 + 0.5, 1 + 20 + 300 + 0.5]);
      expect(Array.from(s.causalConv1dRef(x, [1, 1, 3], [1, 10, 100], 3, null, null))).toEqual([
        100,
        210,
        321,
      ]);
    }),
  );
});

describe("causalConv1d on WebGPU against the reference", () => {
  const cases: [number, number, number, number][] = [
    [1, 1, 1, 1],
    [2, 3, 17, 4],
    [1, 5, 64, 2],
    [2, 2, 9, 7],
    [
      1,
      3,
      30,
      12,
    ],
    [2, 2, 5, 9],
  ];
  for (const [Bn, D, L, W] of cases) {
    test(
      `B ${Bn}, D ${D}, L ${L}, W ${W}`,
      scoped(async () => {
        const x = s.randn([Bn, D, L], { seed: L, ...f64 }), w = s.randn([D, W], { seed: W, ...f64 });
        const b = s.randn([D], { seed: 3, ...f64 }), st = s.randn([Bn, D, W - 1], { seed: 4, ...f64 });
        const g = await gpu32([x, w, b, st]);
        for (const [bias, state] of [[false, false], [true, true], [true, false]]) {
          const ref = s.causalConv1d(x, w, { bias: bias ? b : null, initialState: state ? st : null });
          for (const version of W <= 8 ? ["v1", "v2"] as const : ["v1"] as const) {
            const y = s.causalConv1d(g[0], g[1], {
              bias: bias ? g[2] : null,
              initialState: state ? g[3] : null,
              version,
            });
            assertClose(await arr(y), await arr(ref), TOL);
          }
        }
      }),
    );
  }
});

describe("causalConv1d backward", () => {
  for (const device of ["cpu", "webgpu"] as const) {
    test(
      `gradcheck (x, weight, bias, initial state; with SiLU), ${device}`,
      scoped(async () => {
        const mk = async (shape: number[], seed: number) => {
          const t = s.randn(shape, { seed, ...f64 });
          return device === "cpu" ? t : await s.cast(t, "f32").to("webgpu");
        };
        const xs = [await mk([2, 3, 7], 1), await mk([3, 4], 2), await mk([3], 3), await mk([2, 3, 3], 4)];
        const tol = device === "cpu" ? {} : { atol: 1e-3, rtol: 1e-2, eps: 1e-3 };
        await s.gradcheck((x, w, b, st) => s.causalConv1d(x, w, { bias: b, initialState: st }), xs, tol);
        await s.gradcheck((x, w) => s.causalConv1d(x, w, { activation: "silu" }), xs.slice(0, 2), tol);
      }),
    );
  }
});

describe("stepping", () => {
  for (const device of ["cpu", "webgpu"] as const) {
    test(
      `final state, then causalConv1dStep token by token, equals the full conv (${device})`,
      scoped(async () => {
        const dev = async (t: Tensor) => (device === "cpu" ? t : await s.cast(t, "f32").to("webgpu"));
        const x = await dev(s.randn([2, 3, 11], { seed: 1, ...f64 })),
          w = await dev(s.randn([3, 4], { seed: 2, ...f64 }));
        const b = await dev(s.randn([3], { seed: 3, ...f64 }));
        const full = s.causalConv1d(x, w, { bias: b, activation: "silu" });
        const pre = 2; // shorter than W - 1: the final state still holds zeros from before t = 0
        let [, state] = s.causalConv1d(x.slice([null, null, [0, pre]]), w, {
          bias: b,
          activation: "silu",
          returnFinalState: true,
        });
        const ys: Tensor[] = [
          s.causalConv1d(x.slice([null, null, [0, pre]]), w, { bias: b, activation: "silu" }),
        ];
        for (let t = pre; t < 11; t++) {
          const r = s.causalConv1dStep(state, x.slice([null, null, t]), w, { bias: b, activation: "silu" });
          ys.push(r.y.unsqueeze(-1));
          state = r.state;
        }
        assertClose(
          await arr(s.concat(ys, 2)),
          await arr(full),
          device === "cpu" ? { atol: 1e-12, rtol: 1e-12 } : TOL,
        );
        const [, last] = s.causalConv1d(x, w, { returnFinalState: true });
        assertClose(await arr(state), await arr(last), { atol: 0, rtol: 0 });
      }),
    );
  }

  test(
    "the fused WebGPU step (conv step v1) equals the composed one; x read through its strides",
    scoped(async () => {
      requireGpu();
      const g = async (t: Tensor) => await s.cast(t, "f32").to("webgpu");
      const xz = await g(s.randn([3, 10], { seed: 4, ...f64 })); // x is the column slice [2, 7)
      const st = await g(s.randn([3, 5, 3], { seed: 5, ...f64 }));
      const w = await g(s.randn([5, 4], { seed: 6, ...f64 })), b = await g(s.randn([5], { seed: 7, ...f64 }));
      const x = xz.slice([null, [2, 7]]);
      for (const o of [{ bias: b, activation: "silu" as const }, {}]) {
        const f = s.causalConv1dStep(st, x, w, { ...o, version: "fused" });
        const c = s.causalConv1dStep(st, x, w, { ...o, version: "composed" });
        assertClose(await arr(f.y), await arr(c.y), TOL);
        assertClose(await arr(f.state), await arr(c.state), { atol: 0, rtol: 0 });
      }
      // with a gradient to record, "auto" composes and "fused" is refused
      const wp = w.detach();
      wp.requiresGrad = true;
      expect(() => s.causalConv1dStep(st, x, wp, { version: "fused" })).toThrow(
        'causalConv1dStep: version "fused" runs on webgpu in f32 with W > 1 and no gradient recorded',
      );
      expect(s.causalConv1dStep(st, x, wp).y.requiresGrad).toBe(true);
    }),
  );

  test(
    "bad inputs name the shapes",
    scoped(async () => {
      const x = s.zeros([2, 3, 5], { device: "cpu" });
      expect(() => s.causalConv1d(x, s.zeros([4, 4], { device: "cpu" }))).toThrow(
        "causalConv1d: weight must be (D, W) with D = 3 (from x [2, 3, 5]), got [4, 4]",
      );
      expect(() =>
        s.causalConv1d(x, s.zeros([3, 4], { device: "cpu" }), {
          initialState: s.zeros([2, 3, 4], { device: "cpu" }),
        })
      ).toThrow(
        "causalConv1d: the state must be (B, D, W - 1) = [2, 3, 3] (x [2, 3, 5], weight [3, 4]), got [2, 3, 4]",
      );
      // version options: the same error on both backends, before the cpu branch computes anything
      const w9 = s.zeros([3, 9], { device: "cpu" });
      const [xg, wg] = await Promise.all([x, w9].map((t) => t.to("webgpu")));
      for (const [a, b] of [[x, w9], [xg, wg]]) {
        expect(() => s.causalConv1d(a, b, { version: "v2" }), a.device).toThrow(
          'causalConv1d: version "v2" takes widths up to 8, got weight [3, 9] (W = 9); use "v1" or "auto"',
        );
        expect(() => s.causalConv1d(a, b, { version: "v3" as never }), a.device).toThrow(
          'causalConv1d: version must be "auto", "v1" or "v2", got "v3"',
        );
      }
    }),
  );
});
