import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import {
  assertClose,
  leakCheck,
  periodicLmLosses,
  requireDevice,
  requireGpu,
  scoped,
} from "../test/helpers.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const devices = ["cpu", "webgpu"] as const;

/** (B, L) i32 tokens from a fixed pseudo-random stream. */
function tokens(B: number, L: number, V: number, device: "cpu" | "webgpu", seed = 1): Tensor {
  let x = seed;
  const data = Int32Array.from({ length: B * L }, () => (x = (x * 1103515245 + 12345) % 2147483648) % V);
  return s.tensor(data, { shape: [B, L], dtype: "i32", device });
}

describe("MambaLM", () => {
  test(
    "parameters: names and shapes, selective and LTI",
    scoped(() => {
      const lm = new s.MambaLM({ vocabSize: 10, dModel: 8, nLayer: 1, dState: 4, device: "cpu" });
      expect(lm.namedParameters().map(([n, t]) => `${n} ${t.shape}`)).toEqual([
        "embed.weight 10,8",
        "norms.0.weight 8",
        "mixers.0.inProj.weight 8,32",
        "mixers.0.convWeight 16,4",
        "mixers.0.convBias 16",
        "mixers.0.xProj.weight 16,9",
        "mixers.0.dtProj.weight 1,16",
        "mixers.0.dtProj.bias 16",
        "mixers.0.ALog 16,4",
        "mixers.0.D 16",
        "mixers.0.outProj.weight 16,8",
        "normF.weight 8",
        "head.weight 8,10",
      ]);
      const lti = new s.MambaLM({
        vocabSize: 10,
        dModel: 8,
        nLayer: 1,
        dState: 4,
        selective: false,
        device: "cpu",
      });
      expect(lti.namedParameters().map(([n, t]) => `${n} ${t.shape}`).slice(2, 11)).toEqual([
        "mixers.0.inProj.weight 8,32",
        "mixers.0.convWeight 16,4",
        "mixers.0.convBias 16",
        "mixers.0.dtBias 16",
        "mixers.0.B 16,4",
        "mixers.0.C 16,4",
        "mixers.0.ALog 16,4",
        "mixers.0.D 16",
        "mixers.0.outProj.weight 16,8",
      ]);
      expect(lti.mixers[0].xProj).toBe(null);
      expect(lti.config.selective).toBe(false);
      lti.dispose();
      lm.dispose();
    }),
  );

  for (const device of devices) {
    for (const selective of [true, false]) {
      test(
        `step equals forward token by token; prefill then step too (${selective ? "S6" : "LTI"}, ${device})`,
        scoped(async () => {
          requireDevice(device);
          const dtype = device === "cpu" ? "f64" as const : "f32" as const;
          const lm = new s.MambaLM({
            vocabSize: 11,
            dModel: 8,
            nLayer: 2,
            dState: 5,
            selective,
            initStd: 1, // logits of order 1, so that a wrong state shows
            scan: { chunkSize: 8 },
            seed: 3,
            device,
            dtype,
          });
          const [B, L] = [2, 13];
          const toks = tokens(B, L, 11, device);
          const full = await arr(lm.forward(toks));
          const tol = device === "cpu" ? { atol: 1e-10, rtol: 1e-10 } : { atol: 2e-4, rtol: 2e-4 };
          const run = async (pre: number) => {
            const parts: Tensor[] = [];
            let st: s.MambaLMState;
            if (pre > 0) {
              const p = lm.prefill(toks.slice([null, [0, pre]]));
              parts.push(p.logits);
              st = p.state;
            } else st = lm.initialState(B);
            for (let t = pre; t < L; t++) {
              const r = lm.step(toks.slice([null, t]), st);
              lm.disposeState(st);
              st = r.state;
              parts.push(r.logits.unsqueeze(1));
            }
            lm.disposeState(st);
            return await arr(s.concat(parts, 1));
          };
          assertClose(await run(0), full, tol);
          assertClose(await run(9), full, tol);
          lm.dispose();
        }),
      );
    }
  }

  test(
    "LTI block: the SSM is a fixed causal convolution with K[d, k] = sum_n C exp(dt A k) dt B",
    scoped(async () => {
      const o = { device: "cpu" as const, dtype: "f64" as const };
      const [Bn, L, Dm, N] = [2, 11, 4, 3];
      const m = new s.Mamba({ dModel: Dm, dState: N, selective: false, seed: 5, ...o });
      const ED = m.dims.ED;
      const x = s.randn([Bn, L, Dm], { seed: 6, ...o });
      const xz = m.inProj.forward(x).transpose(1, 2); // (B, 2 ED, L)
      const xi = xz.slice([null, [0, ED]]).contiguous(), z = xz.slice([null, [ED, 2 * ED]]);
      const xc = s.causalConv1d(xi, m.convWeight, { bias: m.convBias, activation: "silu" }); // (B, ED, L)
      // the kernel on the host, float64
      const dt = (await s.softplus(m.dtBias).toArray()) as Float64Array;
      const [A, Bp, Cp] = await Promise.all([m.A().toArray(), m.B.toArray(), m.C.toArray()]);
      const K = new Float64Array(ED * L);
      for (let d = 0; d < ED; d++) {
        for (let k = 0; k < L; k++) {
          for (let n = 0; n < N; n++) {
            const i = d * N + n;
            K[d * L + k] += Cp[i] * Math.exp(dt[d] * A[i] * k) * dt[d] * Bp[i];
          }
        }
      }
      const Kt = s.tensor(K, { shape: [ED, L], ...o });
      const ssm = s.ssmConvolution(xc, Kt, { method: "direct" }).add(xc.mul(m.D.reshape([ED, 1])));
      const y = m.outProj.forward(ssm.mul(z.silu()).transpose(1, 2)); // (B, L, D)
      assertClose(await arr(m.forward(x)), await arr(y), { atol: 1e-10, rtol: 1e-9 });
      m.dispose();
    }),
  );

  test(
    "gradients: float64 gradcheck of an LTI block (cpu); LTI parameter gradients on WebGPU equal cpu's",
    scoped(async () => {
      const m = new s.Mamba({ dModel: 4, dState: 3, selective: false, seed: 5, device: "cpu", dtype: "f64" });
      await s.gradcheck((x) => m.forward(x), [s.randn([1, 5, 4], { seed: 6, device: "cpu", dtype: "f64" })]);
      m.dispose();
      requireGpu();
      const grads = async (device: "cpu" | "webgpu") => {
        const net = new s.Mamba({ dModel: 8, dState: 4, selective: false, seed: 7, device });
        const x = s.randn([2, 40, 8], { seed: 8, device });
        const w = s.randn([2, 40, 8], { seed: 9, device });
        net.forward(x).mul(w).sum().backward();
        const out = await Promise.all(
          net.namedParameters().map(async ([n, p]) => [n, await arr(p.grad!)] as const),
        );
        net.dispose();
        return out;
      };
      const c = await grads("cpu"), g = await grads("webgpu");
      c.forEach(([n, ref], i) => {
        try {
          assertClose(g[i][1], ref, { atol: 2e-3, rtol: 3e-3 });
        } catch (e) {
          throw new Error(`${n}: ${(e as Error).message}`);
        }
      });
    }),
  );

  test(
    "training: forward on webgpu equals cpu, and the loss of a periodic sequence drops",
    scoped(async () => {
      requireGpu();
      const device = "webgpu" as const;
      const [B, L, V] = [4, 24, 8];
      const cfg = { vocabSize: V, dModel: 16, nLayer: 1, dState: 4, initStd: 0.5, seed: 11 };
      const a = new s.MambaLM({ ...cfg, device: "cpu" }), b = new s.MambaLM({ ...cfg, device: "webgpu" });
      const la = await arr(a.forward(tokens(2, 30, V, "cpu"))),
        lb = await arr(b.forward(tokens(2, 30, V, "webgpu")));
      assertClose(lb, la, { atol: 2e-4, rtol: 2e-4 });
      a.dispose();
      b.dispose();
      const lm = new s.MambaLM({ ...cfg, initStd: 0.02, device });
      const losses = await periodicLmLosses(lm, B, L, V, device);
      expect(losses[0]).toBeGreaterThan(1.5); // about ln 8 = 2.08 at init
      expect(losses[1]).toBeLessThan(0.3 * losses[0]);
      lm.dispose();
    }),
  );

  test(
    "bad inputs",
    scoped(() => {
      expect(() => new s.MambaLM({ vocabSize: 0, dModel: 8, nLayer: 1 })).toThrow(
        "MambaLM: vocabSize must be a positive integer, got 0",
      );
      const lm = new s.MambaLM({ vocabSize: 5, dModel: 8, nLayer: 2, device: "cpu" });
      expect(() => lm.forward(s.zeros([1, 3], { device: "cpu" }))).toThrow(
        "MambaLM.forward: tokens must be (B, L) i32 or u32, got tensor [1, 3] f32 on cpu",
      );
      const st = lm.initialState(2);
      expect(() => lm.step(s.zeros([3], { dtype: "i32", device: "cpu" }), st)).toThrow(
        "MambaLM.step: tokens have batch 3 but the state has batch 2",
      );
      expect(() => lm.step(s.zeros([2], { dtype: "i32", device: "cpu" }), { layers: st.layers.slice(1) }))
        .toThrow(
          "MambaLM.step: state must have one entry per block (2); use initialState or prefill",
        );
      lm.disposeState(st);
      lm.dispose();
    }),
  );
});
