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

describe("causalConv1d v3 / bwd v2: strided x, channels-last output, fused SiLU", () => {
  // [B, D, L, W]: D = 8 takes the vec4 paths when x is channels-last, D = 5 the scalar ones; L = 300
  // runs 19 chunks, L = 1 one step
  const cases: [number, number, number, number][] = [[2, 8, 37, 4], [1, 5, 300, 4], [3, 4, 1, 2], [
    2,
    8,
    20,
    1,
  ], [1, 12, 70, 8]];
  for (const [Bn, D, L, W] of cases) {
    test(
      `B ${Bn}, D ${D}, L ${L}, W ${W}: values and gradients against the reference and the composition`,
      scoped(async () => {
        requireGpu();
        // x is the first half of an in-projection output (B, L, 2D), viewed as (B, D, L): Mamba's split
        const xz = s.randn([Bn, L, 2 * D], { seed: L + D, ...f64 });
        const w = s.randn([D, W], { seed: W, ...f64 }), b = s.randn([D], { seed: 3, ...f64 });
        const st = s.randn([Bn, D, W - 1], { seed: 4, ...f64 });
        const gy = s.randn([Bn, D, L], { seed: 5, ...f64 });
        const [xzg, wg, bg, stg, gyg] = await gpu32([xz, w, b, st, gy]);
        const xOf = (t: Tensor) => t.transpose(1, 2).slice([null, [0, D]]);
        for (
          const [bias, state, act] of [[true, false, "silu"], [false, true, null], [
            true,
            true,
            "silu",
          ]] as const
        ) {
          // the reference: float64 on cpu, SiLU as a separate op (the unfused composition)
          const refRun = () => {
            const xr = xz.detach();
            xr.requiresGrad = true;
            const wr = w.detach(), br = b.detach(), sr = st.detach();
            for (const t of [wr, br, sr]) t.requiresGrad = true;
            const c = s.causalConv1d(xOf(xr), wr, {
              bias: bias ? br : null,
              initialState: state ? sr : null,
            });
            const y = act ? s.silu(c) : c;
            y.mul(gy).sum().backward();
            return {
              y,
              grads: [xr.grad!, wr.grad!, ...(bias ? [br.grad!] : []), ...(state ? [sr.grad!] : [])],
            };
          };
          const ref = refRun();
          for (const channelsLast of [false, true]) {
            for (const version of ["v3", "auto"] as const) {
              const xp = xzg.detach(), wp = wg.detach(), bp = bg.detach(), sp = stg.detach();
              for (const t of [xp, wp, bp, sp]) t.requiresGrad = true;
              const y = s.causalConv1d(xOf(xp), wp, {
                bias: bias ? bp : null,
                initialState: state ? sp : null,
                activation: act,
                channelsLast,
                version,
              });
              expect(y.shape).toEqual([Bn, D, L]);
              // channels-last: the (B, L, D) transpose is contiguous
              if (channelsLast) expect(y.transpose(1, 2).isContiguous).toBe(true);
              assertClose(await arr(y), await arr(ref.y), TOL);
              y.mul(gyg).sum().backward();
              const got = [xp.grad!, wp.grad!, ...(bias ? [bp.grad!] : []), ...(state ? [sp.grad!] : [])];
              for (let i = 0; i < got.length; i++) {
                assertClose(await arr(got[i]), await arr(ref.grads[i]), { atol: 1e-4, rtol: 1e-4 });
                got[i].dispose();
              }
            }
          }
          // the cpu path of the same options equals the reference too
          const yc = s.causalConv1d(xOf(xz), w, {
            bias: bias ? b : null,
            initialState: state ? st : null,
            activation: act,
            channelsLast: true,
          });
          assertClose(await arr(yc), await arr(ref.y), { atol: 1e-12, rtol: 1e-12 });
          ref.grads.forEach((t) => t.dispose());
        }
      }),
    );
  }

  for (const device of ["cpu", "webgpu"] as const) {
    test(
      `gradcheck, fused SiLU, channels-last, strided x (${device})`,
      scoped(async () => {
        const mk = async (shape: number[], seed: number) => {
          const t = s.randn(shape, { seed, ...f64 });
          return device === "cpu" ? t : await s.cast(t, "f32").to("webgpu");
        };
        // xz (B, L, 6) with x its channels [1, 5) viewed as (B, 4, L)
        const xs = [await mk([2, 7, 6], 1), await mk([4, 3], 2), await mk([4], 3), await mk([2, 4, 2], 4)];
        const tol = device === "cpu" ? {} : { atol: 1e-3, rtol: 1e-2, eps: 1e-3 };
        await s.gradcheck(
          (xz, w, b, st) =>
            s.causalConv1d(xz.slice([null, null, [1, 5]]).transpose(1, 2), w, {
              bias: b,
              initialState: st,
              activation: "silu",
              channelsLast: true,
            }),
          xs,
          tol,
        );
      }),
    );
  }

  test(
    "dweight and dbias are deterministic (fixed-order column sums), bit for bit",
    scoped(async () => {
      requireGpu();
      const [x, w, b] = await gpu32([
        s.randn([4, 8, 500], { seed: 1, ...f64 }),
        s.randn([8, 4], { seed: 2, ...f64 }),
        s.randn([8], { seed: 3, ...f64 }),
      ]);
      const run = async () => {
        const wp = w.detach(), bp = b.detach();
        wp.requiresGrad = bp.requiresGrad = true;
        s.causalConv1d(x, wp, { bias: bp, activation: "silu" }).sum().backward();
        const r = [...(await arr(wp.grad!)), ...(await arr(bp.grad!))];
        wp.grad!.dispose();
        bp.grad!.dispose();
        return r;
      };
      expect(await run()).toEqual(await run());
    }),
  );
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
        expect(() => s.causalConv1d(a, b, { version: "v4" as never }), a.device).toThrow(
          'causalConv1d: version must be "auto", "v1", "v2" or "v3", got "v4"',
        );
      }
    }),
  );
});
