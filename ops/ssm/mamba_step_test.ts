import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";
import { normHeadStep } from "./mamba_step.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const TOL = { atol: 2e-3, rtol: 6e-4 };

// [D, N, dtRank, W, conv bias, batch]: v2 needs D, N and dtRank divisible by 4
const V2_SHAPES: [number, number, number, number, boolean, number][] = [
  [8, 4, 4, 4, true, 1],
  [16, 16, 4, 4, true, 3],
  [12, 8, 8, 2, false, 2],
  [24, 4, 4, 3, true, 1],
  [128, 16, 8, 4, true, 1], // the decode benchmark's block
  [160, 8, 4, 4, true, 1], // ED / 4 = 80 channel groups: more than ssm-step v3's 64 invocations
];

describe("mambaLayerStep v2", () => {
  test(
    "each fused version equals the composed ops over a grid of shapes, with and without the norm, 3 tokens",
    scoped(async () => {
      requireGpu();
      for (const [D, N, R, W, bias, B] of V2_SHAPES) {
        const m = new s.Mamba({
          dModel: D,
          dState: N,
          dtRank: R,
          dConv: W,
          convBias: bias,
          seed: D + N,
          device: "webgpu",
        });
        const ED = 2 * D;
        const nw = s.randn([D], { seed: 4, device: "webgpu" });
        const st0 = {
          conv: s.randn([B, ED, W - 1], { seed: 5, device: "webgpu" }),
          ssm: s.randn([B, ED, N], { seed: 6, device: "webgpu" }),
        };
        for (const version of ["v1", "v2", "v3", "v5"] as const) {
          let st = st0;
          for (let t = 0; t < 3; t++) {
            const x = s.randn([B, D], { seed: 7 + t, device: "webgpu" });
            for (const norm of [nw, null]) {
              const p = m.stepParams(norm, 1e-5);
              const f = s.noGrad(() => s.mambaLayerStep(x, p, st, { version }));
              const c = s.noGrad(() => s.mambaLayerStep(x, p, st, { version: "composed" }));
              const what =
                `${version} D ${D} N ${N} R ${R} W ${W} bias ${bias} B ${B} norm ${!!norm} token ${t}`;
              try {
                assertClose(await arr(f.y), await arr(c.y), TOL);
                assertClose(await arr(f.state.conv), await arr(c.state.conv), TOL);
                assertClose(await arr(f.state.ssm), await arr(c.state.ssm), TOL);
              } catch (e) {
                throw new Error(`${what}: ${(e as Error).message}`);
              }
              if (norm) st = f.state;
            }
          }
        }
        m.dispose();
      }
    }),
  );

  test(
    '"fused" picks v1 for shapes v2 cannot take; "v2" on them throws',
    scoped(async () => {
      requireGpu();
      const m = new s.Mamba({ dModel: 12, dState: 6, seed: 3, device: "webgpu" }); // N 6, dtRank 1
      const st = m.initialState(2);
      const x = s.randn([2, 12], { seed: 7, device: "webgpu" });
      const p = m.stepParams(null, 1e-5);
      const f = s.noGrad(() => s.mambaLayerStep(x, p, st, { version: "fused" }));
      const c = s.noGrad(() => s.mambaLayerStep(x, p, st, { version: "composed" }));
      assertClose(await arr(f.y), await arr(c.y), TOL);
      expect(() => s.noGrad(() => s.mambaLayerStep(x, p, st, { version: "v2" }))).toThrow(
        'mambaLayerStep: version "v2" needs D, ED, N and the dt rank divisible by 4, got D 12, ED 24, N 6, R 1',
      );
      expect(() => s.mambaLayerStep(x, p, st, { version: "v6" as "v2" })).toThrow(
        'mambaLayerStep: version must be "auto", "fused", "composed", "v1", "v2", "v3" or "v5", got "v6"',
      );
      m.dispose();
    }),
  );
});

describe("mambaLayerStep with Jamba's inner norms", () => {
  test(
    "v5 normalises delta's input, B and C as the composed ops do (random norm weights, 3 tokens), " +
      "and Mamba.stepResidual stepping equals Mamba.forward",
    scoped(async () => {
      requireGpu();
      for (const [D, N, R, B] of [[8, 4, 4, 1], [16, 16, 8, 3], [128, 16, 8, 1]]) {
        const m = new s.Mamba({
          dModel: D,
          dState: N,
          dtRank: R,
          innerNorm: true,
          seed: D,
          device: "webgpu",
        });
        // the norms' weights start at ones: make them matter
        for (const [i, n] of [m.dtNorm!, m.BNorm!, m.CNorm!].entries()) {
          s.noGrad(() => s.copyInto(n.weight, s.randn(n.weight.shape, { seed: 20 + i, device: "webgpu" })));
        }
        const nw = s.randn([D], { seed: 4, device: "webgpu" });
        let st = {
          conv: s.randn([B, 2 * D, 3], { seed: 5, device: "webgpu" }),
          ssm: s.randn([B, 2 * D, N], { seed: 6, device: "webgpu" }),
        };
        for (let t = 0; t < 3; t++) {
          const x = s.randn([B, D], { seed: 7 + t, device: "webgpu" });
          const p = m.stepParams(nw, 1e-5);
          expect(p.inner).toBeTruthy();
          const f = s.noGrad(() => s.mambaLayerStep(x, p, st, { version: "v5" }));
          const c = s.noGrad(() => s.mambaLayerStep(x, p, st, { version: "composed" }));
          const what = `D ${D} N ${N} R ${R} B ${B} token ${t}`;
          try {
            assertClose(await arr(f.y), await arr(c.y), TOL);
            assertClose(await arr(f.state.ssm), await arr(c.state.ssm), TOL);
          } catch (e) {
            throw new Error(`${what}: ${(e as Error).message}`);
          }
          st = f.state;
        }
        // the model's own step (fused) against its forward over a short sequence
        const xs = s.randn([B, 5, D], { seed: 30, device: "webgpu" });
        const want = await arr(s.noGrad(() => xs.add(m.forward(s.rmsNorm(xs, nw, 1e-5)))));
        let state = m.initialState(B);
        const got: number[][] = [];
        for (let t = 0; t < 5; t++) {
          const r = s.noGrad(() => m.stepResidual(xs.slice([null, t]), state, { weight: nw, eps: 1e-5 }));
          got.push(await arr(r.y));
          state = r.state;
        }
        const inter: number[] = [];
        for (let b = 0; b < B; b++) {
          for (let t = 0; t < 5; t++) inter.push(...got[t].slice(b * D, (b + 1) * D));
        }
        assertClose(inter, want, TOL);
        m.dispose();
      }
    }),
  );

  test(
    "versions without inner norms refuse them by name",
    scoped(() => {
      requireGpu();
      const m = new s.Mamba({ dModel: 8, dState: 4, dtRank: 4, innerNorm: true, seed: 1, device: "webgpu" });
      const st = m.initialState(1);
      const x = s.randn([1, 8], { seed: 2, device: "webgpu" });
      for (const version of ["v1", "v2", "v3"] as const) {
        expect(() => s.noGrad(() => s.mambaLayerStep(x, m.stepParams(null, 1e-5), st, { version }))).toThrow(
          `mambaLayerStep: version "${version}" has no inner norms (Jamba's block); use "v5", "auto" or "composed"`,
        );
      }
      m.dispose();
    }),
  );
});

describe("normHeadStep", () => {
  test(
    "the fused final norm and head equal rmsNorm then matmul, on both devices and at unaligned sizes",
    scoped(async () => {
      requireGpu();
      for (const [B, D, V] of [[1, 8, 12], [3, 128, 256], [2, 6, 10]]) {
        for (const device of ["cpu", "webgpu"] as const) {
          const x = s.randn([B, D], { seed: 1, device });
          const nw = s.randn([D], { seed: 2, device });
          const w = s.randn([D, V], { seed: 3, device });
          const want = await arr(s.matmul(s.rmsNorm(x, nw, 1e-5), w));
          assertClose(await arr(normHeadStep(x, nw, 1e-5, w)), want, TOL);
        }
      }
      expect(() => normHeadStep(s.zeros([2, 8]), s.zeros([8]), 1e-5, s.zeros([6, 4]))).toThrow(
        "normHeadStep: x must be (B, D), the norm weight (D) and the head (D, V); got tensor [2, 8] f32",
      );
    }),
  );
});
