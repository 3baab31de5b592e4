import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import type { Tensor } from "../mod.ts";
import { assertClose, leakCheck, requireDevice, scoped } from "../test/helpers.ts";
import { tinyJamba } from "../test/models.ts";

leakCheck();

const arr = async (t: Tensor) => Array.from(await t.toArray());
const devices = ["cpu", "webgpu"] as const;

/** (B, L) i32 tokens from a fixed pseudo-random stream. */
function tokens(B: number, L: number, V: number, device: "cpu" | "webgpu", seed = 1): Tensor {
  let x = seed;
  const data = Int32Array.from({ length: B * L }, () => (x = (x * 1103515245 + 12345) % 2147483648) % V);
  return s.tensor(data, { shape: [B, L], dtype: "i32", device });
}

/** The shared tiny hybrid (test/models.ts). */
const tiny = tinyJamba({ vocabSize: 11 });

describe("Mamba innerNorm (Jamba's RMSNorms on delta, B and C)", () => {
  test(
    "forward equals the block composed by hand with the norms after x_proj; step and prefill agree (cpu)",
    scoped(async () => {
      const o = { device: "cpu" as const, dtype: "f64" as const };
      const [Bn, L, Dm, N] = [2, 7, 8, 3];
      const m = new s.Mamba({ dModel: Dm, dState: N, dtRank: 2, innerNorm: true, seed: 5, ...o });
      // non-trivial norm weights, so that a swapped or missing norm shows
      s.copyInto(m.dtNorm!.weight, s.tensor([0.5, 2], o));
      s.copyInto(m.BNorm!.weight, s.tensor([1, 3, 0.25], o));
      s.copyInto(m.CNorm!.weight, s.tensor([2, 0.5, 1.5], o));
      const { ED, R } = m.dims;
      const x = s.randn([Bn, L, Dm], { seed: 6, ...o });
      const xz = m.inProj.forward(x).transpose(1, 2); // (B, 2 ED, L)
      const xi = xz.slice([null, [0, ED]]).contiguous(), z = xz.slice([null, [ED, 2 * ED]]).contiguous();
      const xc = s.causalConv1d(xi, m.convWeight, { bias: m.convBias, activation: "silu" }); // (B, ED, L)
      const xdbl = m.xProj!.forward(xc.transpose(1, 2)); // (B, L, R + 2N)
      const e = 1e-6;
      const dtIn = s.rmsNorm(xdbl.slice([null, null, [0, R]]).contiguous(), m.dtNorm!.weight, e);
      const Bm = s.rmsNorm(xdbl.slice([null, null, [R, R + N]]).contiguous(), m.BNorm!.weight, e);
      const Cm = s.rmsNorm(xdbl.slice([null, null, [R + N, R + 2 * N]]).contiguous(), m.CNorm!.weight, e);
      const dt = s.matmul(dtIn, m.dtProj!.weight).transpose(1, 2).contiguous(); // (B, ED, L)
      const y = s.selectiveScan(
        xc,
        dt,
        m.A(),
        Bm.transpose(1, 2).contiguous(),
        Cm.transpose(1, 2).contiguous(),
        { D: m.D, z, deltaBias: m.dtProj!.bias, deltaSoftplus: true },
      ); // (B, ED, L)
      const want = await arr(m.outProj.forward(y.transpose(1, 2)));
      const tol = { atol: 1e-10, rtol: 1e-10 };
      assertClose(await arr(m.forward(x)), want, tol);
      // step token by token, and prefill of 4 then steps
      const steps = async (pre: number) => {
        const ys: Tensor[] = [];
        let st: s.MambaState;
        if (pre > 0) {
          const p = m.prefill(x.slice([null, [0, pre]]));
          ys.push(p.y);
          st = p.state;
        } else st = m.initialState(Bn);
        for (let t = pre; t < L; t++) {
          const r = m.step(x.slice([null, t]), st);
          st = r.state;
          ys.push(r.y.unsqueeze(1));
        }
        return await arr(s.concat(ys, 1));
      };
      assertClose(await steps(0), want, tol);
      assertClose(await steps(4), want, tol);
      // stepResidual: mambaLayerStep with the inner norms (fused v5 on webgpu, composed on cpu)
      const norm = new s.RMSNorm(Dm, o);
      const r = m.stepResidual(x.slice([null, 0]), m.initialState(Bn), norm);
      const first = await arr(
        x.slice([null, 0]).add(m.step(norm.forward(x.slice([null, 0])), m.initialState(Bn)).y),
      );
      assertClose(await arr(r.y), first, tol);
      expect(() => m.innerParams()).toThrow(
        "Mamba.innerParams: mambaInner has no inner norms (innerNorm: true)",
      );
      expect(m.stepParams(null, 1e-5).inner?.dt).toBe(m.dtNorm!.weight);
      expect(() => new s.Mamba({ dModel: 4, selective: false, innerNorm: true })).toThrow(
        "Mamba: innerNorm needs a selective block (selective: true)",
      );
      norm.dispose();
      m.dispose();
    }),
  );

  test(
    "WebGPU: forward and gradients equal the float64 block's",
    scoped(async () => {
      requireDevice("webgpu");
      const mk = (device: "cpu" | "webgpu") =>
        new s.Mamba({
          dModel: 8,
          dState: 4,
          innerNorm: true,
          seed: 5,
          device,
          dtype: device === "cpu" ? "f64" : "f32",
        });
      const mc = mk("cpu"), mg = mk("webgpu");
      const x = s.randn([2, 20, 8], { seed: 6, device: "cpu", dtype: "f64" });
      const w = s.randn([2, 20, 8], { seed: 7, device: "cpu", dtype: "f64" });
      const yc = mc.forward(x);
      yc.mul(w).sum().backward();
      const yg = mg.forward(await s.cast(x, "f32").to("webgpu"));
      yg.mul(await s.cast(w, "f32").to("webgpu")).sum().backward();
      assertClose(await arr(yg), await arr(yc), { atol: 2e-4, rtol: 2e-4 });
      const pg = mg.namedParameters();
      for (const [i, [name, pc]] of mc.namedParameters().entries()) {
        try {
          assertClose(await arr(pg[i][1].grad!), await arr(pc.grad!), { atol: 2e-3, rtol: 3e-3 });
        } catch (e) {
          throw new Error(`${name}: ${(e as Error).message}`);
        }
      }
      mc.dispose();
      mg.dispose();
    }),
  );
});

describe("JambaLM", () => {
  test(
    "layout: Jamba's block (attention at i % 8 == 4, MoE at odd layers), the ablations",
    () => {
      const j = s.jambaLayout({ nLayer: 16 });
      expect(j.mixers.flatMap((m, i) => (m === "attention" ? [i] : []))).toEqual([4, 12]);
      expect(j.moe.flatMap((m, i) => (m ? [i] : []))).toEqual([1, 3, 5, 7, 9, 11, 13, 15]);
      expect(s.jambaLayout({ nLayer: 8, mixer: "attention" }).mixers.every((m) => m === "attention")).toBe(
        true,
      );
      expect(s.jambaLayout({ nLayer: 8, mixer: "mamba" }).mixers.every((m) => m === "mamba")).toBe(true);
      expect(s.jambaLayout({ nLayer: 8, attnRatio: [1, 3] }).mixers.join(" ")).toBe(
        "mamba mamba attention mamba mamba mamba attention mamba",
      );
      expect(s.jambaLayout({ nLayer: 4, blockLayers: 4, attnRatio: [1, 3], moeEvery: 0 }).moe).toEqual([
        false,
        false,
        false,
        false,
      ]);
      // the same layout as jamba_config's layerKinds for the same ratio and offsets
      const spec = {
        hidden: 8,
        nLayer: 16,
        nHead: 2,
        ffn: 8,
        vocab: 4,
        attnMamba: [1, 7] as const,
        moeEvery: 2,
      };
      expect(s.layerKinds(spec).map((k) => k.mixer)).toEqual(j.mixers);
      expect(s.layerKinds(spec).map((k) => k.mlp === "moe")).toEqual(j.moe);
    },
  );

  test(
    "parameters: names and shapes",
    scoped(() => {
      const lm = new s.JambaLM({
        ...tiny,
        vocabSize: 5,
        dModel: 8,
        nLayer: 2,
        blockLayers: 2,
        attnRatio: [1, 1],
        nHead: 2,
        nKvHead: 1,
        dFf: 6,
        nExperts: 3,
        device: "cpu",
      });
      expect(lm.layout.mixers).toEqual(["mamba", "attention"]);
      expect(lm.namedParameters().map(([n, t]) => `${n} ${t.shape}`)).toEqual([
        "embed.weight 5,8",
        "layers.0.norm1.weight 8",
        "layers.0.mamba.inProj.weight 8,32",
        "layers.0.mamba.convWeight 16,4",
        "layers.0.mamba.convBias 16",
        "layers.0.mamba.xProj.weight 16,9",
        "layers.0.mamba.dtProj.weight 1,16",
        "layers.0.mamba.dtProj.bias 16",
        "layers.0.mamba.dtNorm.weight 1",
        "layers.0.mamba.BNorm.weight 4",
        "layers.0.mamba.CNorm.weight 4",
        "layers.0.mamba.ALog 16,4",
        "layers.0.mamba.D 16",
        "layers.0.mamba.outProj.weight 16,8",
        "layers.0.norm2.weight 8",
        "layers.0.mlp.w1.weight 8,6",
        "layers.0.mlp.w2.weight 6,8",
        "layers.0.mlp.w3.weight 8,6",
        "layers.1.norm1.weight 8",
        "layers.1.attn.wq.weight 8,8",
        "layers.1.attn.wk.weight 8,4",
        "layers.1.attn.wv.weight 8,4",
        "layers.1.attn.wo.weight 8,8",
        "layers.1.norm2.weight 8",
        "layers.1.moe.router.weight 8,3",
        "layers.1.moe.w1 3,8,6",
        "layers.1.moe.w2 3,6,8",
        "layers.1.moe.w3 3,8,6",
        "normF.weight 8",
        "head.weight 8,5",
      ]);
      lm.dispose();
    }),
  );

  test(
    "parameter count equals jamba_config's paramCount for the same layout",
    scoped(() => {
      const lm = new s.JambaLM({ ...tiny, nLayer: 8, blockLayers: 8, device: "cpu" });
      const n = lm.parameters().reduce((a, t) => a + t.size, 0);
      const pc = s.paramCount({
        hidden: 16,
        nLayer: 8,
        nHead: 4,
        nKvHead: 2,
        ffn: 24,
        vocab: 11,
        attnMamba: [1, 3],
        moeEvery: 2,
        nExperts: 4,
        topK: 2,
        dState: 4,
        mambaNorms: true,
      });
      expect(n).toBe(pc.total);
      lm.dispose();
    }),
  );

  for (const device of devices) {
    for (const mixer of ["hybrid", "attention", "mamba"] as const) {
      test(
        `step equals forward token by token; prefill then step too (${mixer}, MoE, ${device})`,
        scoped(async () => {
          requireDevice(device);
          const dtype = device === "cpu" ? "f64" as const : "f32" as const;
          const lm = new s.JambaLM({ ...tiny, mixer, initStd: 0.5, scan: { chunkSize: 8 }, device, dtype });
          const [B, L] = [2, 9];
          const toks = tokens(B, L, 11, device);
          const full = await arr(lm.forward(toks));
          const tol = device === "cpu" ? { atol: 1e-10, rtol: 1e-10 } : { atol: 2e-4, rtol: 2e-4 };
          const run = async (pre: number[]) => {
            const parts: Tensor[] = [];
            const cache = lm.initCache(B, L);
            let t = 0;
            for (const n of pre) { // prefill chunks (the second one continues a filled cache)
              parts.push(lm.prefill(toks.slice([null, [t, t + n]]), cache));
              t += n;
            }
            for (; t < L; t++) parts.push(lm.step(toks.slice([null, t]), cache).logits.unsqueeze(1));
            expect(cache.length).toBe(L);
            cache.dispose();
            return await arr(s.concat(parts, 1));
          };
          assertClose(await run([]), full, tol);
          assertClose(await run([5]), full, tol);
          assertClose(await run([3, 2]), full, tol);
          lm.dispose();
        }),
      );
    }
  }

  test(
    "forwardAux: the MoE layers' aux losses summed, one load per MoE layer; none without MoE",
    scoped(async () => {
      const lm = new s.JambaLM({ ...tiny, device: "cpu", dtype: "f64" });
      const toks = tokens(2, 6, 11, "cpu");
      const r = lm.forwardAux(toks);
      expect(r.loads.length).toBe(2);
      const h = lm.embed.forward(toks);
      let x = h, want = 0;
      for (const l of lm.layers) {
        const n1 = l.norm1.forward(x);
        x = x.add(l.attn ? l.attn.forward(n1) : l.mamba!.forward(n1));
        if (l.moe) {
          const a = l.moe.forwardAux(l.norm2.forward(x));
          want += await a.auxLoss.item();
          x = x.add(a.y);
        } else x = x.add(l.mlp!.forward(l.norm2.forward(x)));
      }
      expect(await r.auxLoss.item()).toBeCloseTo(want, 12);
      for (const l of r.loads) expect((await arr(l)).reduce((a, b) => a + b)).toBe(2 * 6 * 2); // T K choices
      assertClose(await arr(r.logits), await arr(lm.head.forward(lm.normF.forward(x))), {
        atol: 1e-12,
        rtol: 1e-12,
      });
      lm.dispose();
      const dense = new s.JambaLM({ ...tiny, moeEvery: 0, device: "cpu" });
      const d = dense.forwardAux(toks);
      expect(await d.auxLoss.item()).toBe(0);
      expect(d.loads.length).toBe(0);
      dense.dispose();
    }),
  );

  test(
    "training: a few AdamW steps on a tiny batch (loss + aux loss) lower the loss",
    scoped(async () => {
      const V = 11, [B, T] = [2, 8];
      const lm = new s.JambaLM({ ...tiny, device: "cpu" });
      const opt = new s.AdamW(lm.parameters(), { lr: 1e-2, weightDecay: 0 });
      const x = tokens(B, T, V, "cpu", 5);
      const y = s.tensor(Int32Array.from({ length: B * T }, (_, i) => (i * 3) % V), {
        dtype: "i32",
        device: "cpu",
      });
      const losses: number[] = [];
      for (let i = 0; i < 8; i++) {
        const l = s.tidy(() => {
          opt.zeroGrad();
          const r = lm.forwardAux(x);
          const ce = s.crossEntropy(r.logits.reshape([B * T, V]), y);
          ce.add(r.auxLoss).backward();
          opt.step();
          return ce;
        });
        losses.push(await l.item());
        l.dispose();
      }
      expect(losses[7]).toBeLessThan(0.7 * losses[0]);
      opt.dispose();
      x.dispose();
      y.dispose();
      lm.dispose();
    }),
  );

  test(
    "bad configurations and caches: named errors",
    scoped(() => {
      // every configuration error is a JambaSpecError, with its message
      const spec = (cfg: Partial<s.JambaLMConfig>, msg: string) => {
        expect(() => new s.JambaLM({ ...tiny, ...cfg })).toThrow(msg);
        expect(() => new s.JambaLM({ ...tiny, ...cfg })).toThrow(s.JambaSpecError);
      };
      spec(
        { attnRatio: [1, 2] },
        "JambaLM: the attention:Mamba ratio 1:2 (groups of 3 layers) does not divide a block of 4 layers",
      );
      spec({ nLayer: 6 }, "JambaLM: nLayer = 6 is not a multiple of blockLayers = 4");
      spec({ topK: 5 }, "JambaLM: topK = 5 is more than the nExperts = 4 experts");
      spec({ nKvHead: 3 }, "JambaLM: nKvHead = 3 must divide nHead = 4");
      spec({ nHead: 3 }, "JambaLM: nHead = 3 must divide dModel = 16");
      spec({ vocabSize: 0 }, "JambaLM: vocabSize must be a positive integer, got 0");
      spec(
        { mixer: "rnn" as "hybrid" },
        'JambaLM: mixer must be "hybrid", "attention" or "mamba", got "rnn"',
      );
      spec(
        { attnRatio: [0, 0] },
        "JambaLM: attnRatio must be two non-negative integers a:m, not both 0, got 0:0",
      );
      spec({ moeEvery: 3 }, "JambaLM: moeEvery = 3 does not divide a block of 4 layers");
      spec({ attnOffset: 4 }, "JambaLM: attnOffset = 4 puts attention outside a group of 4 layers (1:3)");
      expect(() => s.jambaLayout({ nLayer: 8, topK: 17 })).toThrow(s.JambaSpecError);
      const a = new s.JambaLM({ ...tiny, device: "cpu" });
      const b = new s.JambaLM({ ...tiny, mixer: "mamba", device: "cpu" });
      const c = new s.JambaLM({ ...tiny, dState: 8, device: "cpu" });
      const cache = b.initCache(1, 4);
      const t = s.tensor([1], { dtype: "i32", device: "cpu" });
      expect(() => a.step(t, cache)).toThrow("JambaLM.step: the cache was made for another configuration");
      const ca = a.initCache(1, 2);
      expect(() => c.prefill(s.tensor([[1]], { dtype: "i32", device: "cpu" }), ca)).toThrow(
        "JambaLM.prefill: the cache was made for another configuration",
      );
      expect(() => a.step(s.tensor([1, 2], { dtype: "i32", device: "cpu" }), ca)).toThrow(
        "JambaLM.step: tokens have batch 2 but the cache was made for 1",
      );
      expect(() => a.prefill(s.tensor([[1, 2, 3]], { dtype: "i32", device: "cpu" }), ca)).toThrow(
        "JambaLM.prefill: the cache holds 0 of 2 positions; 3 more would overflow it",
      );
      expect(() => a.forward(s.zeros([1, 3], { device: "cpu" }))).toThrow(
        "JambaLM.forward: tokens must be (B, T) i32 or u32, got tensor [1, 3] f32 on cpu",
      );
      ca.dispose();
      expect(() => a.step(t, ca)).toThrow("JambaLM.step: the cache has been disposed");
      cache.dispose();
      for (const m of [a, b, c]) m.dispose();
    }),
  );
});
