import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { assertClose, leakCheck, requireDevice, requireGpu, scoped } from "../test/helpers.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const TOL = { atol: 2e-3, rtol: 6e-4 };
const devices = ["cpu", "webgpu"] as const;

describe("Mamba block", () => {
  test(
    "parameters: shapes and the paper's initialisation",
    scoped(async () => {
      const m = new s.Mamba({ dModel: 16, seed: 1, device: "cpu" });
      expect(m.namedParameters().map(([n, t]) => `${n} ${t.shape}`)).toEqual([
        "inProj.weight 16,64",
        "convWeight 32,4",
        "convBias 32",
        "xProj.weight 32,33",
        "dtProj.weight 1,32",
        "dtProj.bias 32",
        "ALog 32,16",
        "D 32",
        "outProj.weight 32,16",
      ]);
      const A = await arr(m.A());
      expect(A.slice(0, 4).map((v) => +v.toFixed(5))).toEqual([-1, -2, -3, -4]);
      expect(A[16 + 15]).toBeCloseTo(-16, 4);
      const dt = await arr(s.softplus(m.dtProj.bias!));
      for (const v of dt) expect(v >= 1e-3 * 0.999 && v <= 0.1 * 1.001).toBe(true);
      for (const v of await arr(m.dtProj.weight)) expect(Math.abs(v) <= 1).toBe(true); // U(+-1/sqrt(dtRank = 1))
      expect(await arr(m.D)).toEqual(new Array(32).fill(1));
      m.dispose();
    }),
  );

  test(
    "training on WebGPU (the fused mambaInner node) gives the float64 block's output and gradients",
    scoped(async () => {
      requireGpu();
      const mk = (device: "cpu" | "webgpu") =>
        new s.Mamba({ dModel: 8, dState: 6, seed: 5, device, dtype: device === "cpu" ? "f64" : "f32" });
      const mc = mk("cpu"), mg = mk("webgpu");
      // the same initial values on both devices (copied, so the check does not depend on the RNGs)
      for (const [[, c], [, g]] of mc.namedParameters().map((e, i) => [e, mg.namedParameters()[i]])) {
        s.copyInto(g, await s.cast(c, "f32").to("webgpu"));
      }
      const x = s.randn([2, 300, 8], { seed: 6, device: "cpu", dtype: "f64" }); // L 300: the scan's v2
      const w = s.randn([2, 300, 8], { seed: 7, device: "cpu", dtype: "f64" });
      const yc = mc.forward(x);
      yc.mul(w).sum().backward();
      const yg = mg.forward(await s.cast(x, "f32").to("webgpu"));
      yg.mul(await s.cast(w, "f32").to("webgpu")).sum().backward();
      assertClose(await arr(yg), await arr(yc), TOL);
      const pg = mg.namedParameters();
      for (const [i, [name, pc]] of mc.namedParameters().entries()) {
        try {
          assertClose(await arr(pg[i][1].grad!), await arr(pc.grad!), { atol: 3e-3, rtol: 3e-3 });
        } catch (e) {
          throw new Error(`${name}: ${(e as Error).message}`);
        }
      }
      mc.dispose();
      mg.dispose();
    }),
  );

  for (const device of devices) {
    test(
      `step over a sequence equals forward; prefill then step continues it (${device})`,
      scoped(async () => {
        requireDevice(device);
        const dtype = device === "cpu" ? "f64" as const : "f32" as const;
        const m = new s.Mamba({ dModel: 8, dState: 6, seed: 3, device, dtype, scan: { chunkSize: 8 } });
        const [Bn, L] = [2, 13];
        const x = s.randn([Bn, L, 8], { seed: 4, device, dtype });
        const full = m.forward(x);
        let state = m.initialState(Bn);
        const ys: Tensor[] = [];
        for (let t = 0; t < L; t++) {
          const r = m.step(x.slice([null, t]), state);
          ys.push(r.y.unsqueeze(1));
          state = r.state;
        }
        const tol = device === "cpu" ? { atol: 1e-10, rtol: 1e-10 } : TOL;
        assertClose(await arr(s.concat(ys, 1)), await arr(full), tol);
        // prefill 9 tokens, step the rest: same outputs and the same final states
        const p = m.prefill(x.slice([null, [0, 9]]));
        let st = p.state;
        const tail: Tensor[] = [];
        for (let t = 9; t < L; t++) {
          const r = m.step(x.slice([null, t]), st);
          tail.push(r.y.unsqueeze(1));
          st = r.state;
        }
        assertClose(await arr(s.concat([p.y, ...tail], 1)), await arr(full), tol);
        assertClose(await arr(st.ssm), await arr(state.ssm), tol);
        assertClose(await arr(st.conv), await arr(state.conv), tol);
        m.dispose();
      }),
    );
  }

  test(
    "gradients: float64 gradcheck in x (cpu); WebGPU parameter gradients equal cpu's",
    scoped(async () => {
      const m = new s.Mamba({ dModel: 4, dState: 3, seed: 5, device: "cpu", dtype: "f64" });
      await s.gradcheck((x) => m.forward(x), [s.randn([1, 5, 4], { seed: 6, device: "cpu", dtype: "f64" })]);
      m.dispose();
      requireGpu();
      const grads = async (device: "cpu" | "webgpu") => {
        const net = new s.Mamba({ dModel: 8, dState: 4, seed: 7, device });
        const x = s.randn([2, 40, 8], { seed: 8, device });
        const w = s.randn([2, 40, 8], { seed: 9, device });
        net.forward(x).mul(w).sum().backward();
        const out = await Promise.all(net.parameters().map(async (p) => await arr(p.grad!)));
        net.dispose();
        return out;
      };
      const c = await grads("cpu"), g = await grads("webgpu");
      const names = new s.Mamba({ dModel: 8, dState: 4, device: "cpu" });
      names.namedParameters().forEach(([n], i) => {
        try {
          assertClose(g[i], c[i], { atol: 2e-3, rtol: 3e-3 });
        } catch (e) {
          throw new Error(`${n}: ${(e as Error).message}`);
        }
      });
      names.dispose();
    }),
  );

  test(
    "mambaLayerStep: the fused WebGPU layer (in-step, x_proj, ssm-step, out-step) equals the composed ops",
    scoped(async () => {
      requireGpu();
      const m = new s.Mamba({ dModel: 12, dState: 6, seed: 3, device: "webgpu" });
      const nw = s.randn([12], { seed: 4, device: "webgpu" });
      let st = {
        conv: s.randn([2, 24, 3], { seed: 5, device: "webgpu" }),
        ssm: s.randn([2, 24, 6], { seed: 6, device: "webgpu" }),
      };
      for (let t = 0; t < 3; t++) {
        const x = s.randn([2, 12], { seed: 7 + t, device: "webgpu" });
        for (const norm of [nw, null]) {
          const p = m.stepParams(norm, 1e-5);
          const f = s.noGrad(() => s.mambaLayerStep(x, p, st, { version: "fused" }));
          const c = s.noGrad(() => s.mambaLayerStep(x, p, st, { version: "composed" }));
          assertClose(await arr(f.y), await arr(c.y), TOL);
          assertClose(await arr(f.state.conv), await arr(c.state.conv), TOL);
          assertClose(await arr(f.state.ssm), await arr(c.state.ssm), TOL);
          if (norm) st = f.state;
        }
      }
      // with gradients to record, "fused" is refused and "auto" composes
      const x = s.randn([2, 12], { seed: 20, device: "webgpu" });
      expect(() => s.mambaLayerStep(x, m.stepParams(null, 1e-5), st, { version: "fused" })).toThrow(
        'mambaLayerStep: version "fused" runs on webgpu with dense f32 operands',
      );
      expect(s.mambaLayerStep(x, m.stepParams(null, 1e-5), st).y.requiresGrad).toBe(true);
      m.dispose();
    }),
  );

  test(
    "bad inputs",
    scoped(() => {
      const m = new s.Mamba({ dModel: 8, device: "cpu" });
      expect(() => m.forward(s.zeros([2, 5, 7], { device: "cpu" }))).toThrow(
        "Mamba: x must be (B, L, D) with D = 8, got tensor [2, 5, 7] f32 on cpu",
      );
      expect(() => m.step(s.zeros([2, 5, 8], { device: "cpu" }), m.initialState(2))).toThrow(
        "Mamba.step: x must be (B, D) with D = 8, got tensor [2, 5, 8] f32 on cpu",
      );
      expect(() => new s.Mamba({ dModel: 8, dState: 0 })).toThrow(
        "Mamba: dState must be a positive integer, got 0",
      );
      m.dispose();
    }),
  );
});
