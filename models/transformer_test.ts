import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import type { Tensor, TransformerConfig } from "../mod.ts";
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
const F32 = { atol: 2e-4, rtol: 2e-4 };
const F64 = { atol: 1e-10, rtol: 1e-10 };

/** (B, T) i32 tokens from a fixed pseudo-random stream. */
function tokens(B: number, T: number, V: number, device: "cpu" | "webgpu", seed = 1): Tensor {
  let x = seed;
  const data = Int32Array.from({ length: B * T }, () => (x = (x * 1103515245 + 12345) % 2147483648) % V);
  return s.tensor(data, { shape: [B, T], dtype: "i32", device });
}

/**
 * Logits (B, T, V) of `toks` (B, T) run as prefill chunks of the given lengths (each after the cache's
 * contents), then one step per remaining token.
 */
async function stepped(lm: s.TransformerLM, toks: Tensor, chunks: number[]): Promise<number[]> {
  const [B, T] = toks.shape;
  const cache = lm.initCache(B, T + 3);
  const parts: Tensor[] = [];
  let t = 0;
  for (const n of chunks) {
    parts.push(lm.prefill(toks.slice([null, [t, t + n]]), cache));
    t += n;
  }
  for (; t < T; t++) parts.push(lm.step(toks.slice([null, t]), cache).logits.unsqueeze(1));
  expect(cache.length).toBe(T);
  const out = await arr(s.concat(parts, 1));
  cache.dispose();
  return out;
}

describe("TransformerLM", () => {
  test(
    "parameters: names, shapes (GQA) and defaults",
    scoped(() => {
      const lm = new s.TransformerLM({
        vocabSize: 10,
        dModel: 16,
        nLayer: 1,
        nHead: 4,
        nKvHead: 2,
        device: "cpu",
      });
      expect(lm.namedParameters().map(([n, t]) => `${n} ${t.shape}`)).toEqual([
        "embed.weight 10,16",
        "blocks.0.ln1.weight 16",
        "blocks.0.ln1.bias 16",
        "blocks.0.wq.weight 16,16",
        "blocks.0.wk.weight 16,8",
        "blocks.0.wv.weight 16,8",
        "blocks.0.wo.weight 16,16",
        "blocks.0.ln2.weight 16",
        "blocks.0.ln2.bias 16",
        "blocks.0.fc1.weight 16,64",
        "blocks.0.fc1.bias 64",
        "blocks.0.fc2.weight 64,16",
        "blocks.0.fc2.bias 16",
        "lnF.weight 16",
        "lnF.bias 16",
        "head.weight 16,10",
      ]);
      expect(lm.config.posenc).toBe("rope");
      expect(lm.config.dFf).toBe(64);
      const learned = new s.TransformerLM({
        vocabSize: 10,
        dModel: 16,
        nLayer: 1,
        nHead: 2,
        posenc: "learned",
        maxLen: 32,
        device: "cpu",
      });
      expect(learned.pos!.weight.shape).toEqual([32, 16]);
      learned.dispose();
      lm.dispose();
    }),
  );

  for (const device of devices) {
    const dtype = device === "cpu" ? "f64" as const : "f32" as const;
    const cases: [string, Partial<TransformerConfig>][] = [
      ["rope, GQA", { posenc: "rope", nKvHead: 2 }],
      ["alibi, GQA", { posenc: "alibi", nKvHead: 2 }],
      ["alibi, MQA", { posenc: "alibi", nKvHead: 1 }],
      ["learned", { posenc: "learned" }],
      ["none", { posenc: "none" }],
    ];
    for (const [name, extra] of cases) {
      test(
        `step equals forward token by token; prefill (in chunks) then step too (${name}, ${device})`,
        scoped(async () => {
          requireDevice(device);
          const lm = new s.TransformerLM({
            vocabSize: 13,
            dModel: 16,
            nLayer: 2,
            nHead: 4,
            maxLen: 32,
            initStd: 0.5, // large weights, so that a wrong position or cache entry shows in the logits
            seed: 3,
            device,
            dtype,
            ...extra,
          });
          const toks = tokens(2, 9, 13, device);
          const full = await arr(lm.forward(toks));
          const tol = device === "cpu" ? F64 : F32;
          assertClose(await stepped(lm, toks, []), full, tol);
          assertClose(await stepped(lm, toks, [4]), full, tol);
          assertClose(await stepped(lm, toks, [3, 4]), full, tol); // a chunk after cached keys
          // causal: changing the last token leaves earlier logits alone
          const other = s.concat(
            [toks.slice([null, [0, 8]]), s.full([2, 1], 5, { dtype: "i32", device })],
            1,
          );
          const alt = await arr(lm.forward(other));
          assertClose(alt.slice(0, 8 * 13), full.slice(0, 8 * 13), tol);
          lm.dispose();
        }),
      );
    }
  }

  test(
    "forward and parameter gradients: webgpu equals cpu",
    scoped(async () => {
      requireGpu();
      const run = async (device: "cpu" | "webgpu", posenc: "rope" | "alibi") => {
        const lm = new s.TransformerLM({
          vocabSize: 11,
          dModel: 16,
          nLayer: 2,
          nHead: 4,
          nKvHead: 2,
          posenc,
          initStd: 0.2,
          seed: 5,
          device,
        });
        const toks = tokens(2, 20, 11, device, 7);
        const logits = lm.forward(toks);
        const loss = s.crossEntropy(logits.reshape([40, 11]), tokens(2, 20, 11, device, 8).reshape([40]));
        loss.backward();
        const out = {
          logits: await arr(logits),
          grads: await Promise.all(lm.parameters().map(async (p) => await arr(p.grad!))),
          names: lm.namedParameters().map(([n]) => n),
        };
        lm.dispose();
        return out;
      };
      for (const posenc of ["rope", "alibi"] as const) {
        const c = await run("cpu", posenc), g = await run("webgpu", posenc);
        assertClose(g.logits, c.logits, { atol: 1e-4, rtol: 1e-4 });
        c.names.forEach((n, i) => {
          try {
            assertClose(g.grads[i], c.grads[i], { atol: 1e-4, rtol: 2e-3 });
          } catch (e) {
            throw new Error(`${posenc} ${n}: ${(e as Error).message}`);
          }
        });
      }
    }),
  );

  test(
    "training: the loss of a periodic sequence drops within 25 AdamW steps",
    scoped(async () => {
      requireGpu();
      const device = "webgpu" as const;
      const [B, T, V] = [4, 24, 8];
      const lm = new s.TransformerLM({ vocabSize: V, dModel: 32, nLayer: 1, nHead: 2, seed: 11, device });
      const losses = await periodicLmLosses(lm, B, T, V, device);
      expect(losses[0]).toBeGreaterThan(1.5); // about ln 8 = 2.08 at init
      expect(losses[1]).toBeLessThan(0.3 * losses[0]);
      lm.dispose();
    }),
  );

  test(
    "setRope: plain-equivalent scalings leave the logits alone, real ones change them; bad options throw",
    scoped(async () => {
      const lm = new s.TransformerLM({
        vocabSize: 9,
        dModel: 16,
        nLayer: 1,
        nHead: 2,
        initStd: 0.5,
        seed: 2,
      });
      const device = lm.embed.weight.device;
      const toks = tokens(1, 12, 9, device, 3);
      const plain = await arr(lm.forward(toks));
      const logitsWith = async (rope: s.RopeOptions) => {
        lm.setRope(rope);
        return await arr(lm.forward(toks));
      };
      const tol = { atol: 1e-5, rtol: 1e-5 };
      assertClose(await logitsWith({ scaling: { type: "linear", factor: 1 } }), plain, tol);
      // dynamic NTK keeps plain RoPE inside the original context (T = 12 <= 16) ...
      assertClose(
        await logitsWith({ scaling: { type: "dynamic", factor: 2, originalLength: 16, length: 1 } }),
        plain,
        tol,
      );
      // ... and rescales beyond it (T = 12 > 8), whatever `length` says
      const dyn = await logitsWith({ scaling: { type: "dynamic", factor: 2, originalLength: 8, length: 1 } });
      const ntk = await logitsWith({ scaling: { type: "ntk", factor: 2 * 12 / 8 - 1 } });
      assertClose(dyn, ntk, tol); // base * (s L / L0 - (s - 1))^(d/(d-2)) is NTK with factor s L / L0 - (s - 1)
      for (
        const sc of [
          { type: "linear", factor: 4 },
          { type: "ntk", factor: 4 },
          { type: "yarn", factor: 4, originalLength: 4 },
        ] as s.RopeScaling[]
      ) {
        const l = await logitsWith({ scaling: sc });
        expect(Math.max(...l.map((v, i) => Math.abs(v - plain[i]))), sc.type).toBeGreaterThan(1e-3);
      }
      expect(() => lm.setRope({ scaling: { type: "linear", factor: -1 } })).toThrow(
        "ropeFrequencies: factor must be a positive finite number, got -1",
      );
      expect(lm.rope.scaling?.type).toBe("yarn"); // unchanged by the failed call
      lm.dispose();
      const al = new s.TransformerLM({ vocabSize: 9, dModel: 16, nLayer: 1, nHead: 2, posenc: "alibi" });
      expect(() => al.setRope({})).toThrow(
        'TransformerLM.setRope: the model uses posenc "alibi", not "rope"',
      );
      al.dispose();
    }),
  );

  test(
    "bad inputs",
    scoped(() => {
      const o = { vocabSize: 9, dModel: 16, nLayer: 1, nHead: 2, device: "cpu" as const };
      expect(() => new s.TransformerLM({ ...o, nHead: 3 })).toThrow(
        "TransformerLM: nHead = 3 must divide dModel = 16",
      );
      expect(() => new s.TransformerLM({ ...o, nHead: 4, nKvHead: 3 })).toThrow(
        "TransformerLM: nKvHead = 3 must divide nHead = 4",
      );
      expect(() => new s.TransformerLM({ ...o, dModel: 6, nHead: 2 })).toThrow(
        "TransformerLM: RoPE needs an even head width, got dModel / nHead = 3",
      );
      expect(() => new s.TransformerLM({ ...o, nLayer: 0 })).toThrow(
        "TransformerLM: nLayer must be a positive integer, got 0",
      );
      expect(() => new s.TransformerLM({ ...o, posenc: "sinusoid" as "rope" })).toThrow(
        'TransformerLM: posenc must be "rope", "alibi", "learned" or "none", got "sinusoid"',
      );
      const lm = new s.TransformerLM(o);
      expect(() => lm.forward(s.zeros([2, 3], { device: "cpu" }))).toThrow(
        "TransformerLM.forward: tokens must be (B, T) i32 or u32, got tensor [2, 3] f32 on cpu",
      );
      const cache = lm.initCache(2, 3);
      const tok = s.zeros([2], { dtype: "i32", device: "cpu" });
      expect(() => lm.step(s.zeros([3], { dtype: "i32", device: "cpu" }), cache)).toThrow(
        "TransformerLM.step: tokens have batch 3 but the cache was made for 2",
      );
      lm.prefill(s.zeros([2, 3], { dtype: "i32", device: "cpu" }), cache);
      expect(() => lm.step(tok, cache)).toThrow(
        "TransformerLM.step: the cache holds 3 of 3 positions; 1 more would overflow it",
      );
      cache.dispose();
      const learned = new s.TransformerLM({ ...o, posenc: "learned", maxLen: 4 });
      expect(() => learned.forward(s.zeros([1, 5], { dtype: "i32", device: "cpu" }))).toThrow(
        "TransformerLM.forward: positions up to 5 exceed maxLen = 4 of the learned position table",
      );
      learned.dispose();
      lm.dispose();
    }),
  );
});
