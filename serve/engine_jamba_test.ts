import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import type { JambaLMConfig, RequestOutput } from "../mod.ts";
import { leakCheck, requireDevice, scoped } from "../test/helpers.ts";
import { tinyJamba } from "../test/models.ts";

leakCheck();

const V = 17;

/** A tiny Jamba: attention at layer 2 of 4, MoE at layers 1 and 3. */
function model(device: "cpu" | "webgpu", mixer: JambaLMConfig["mixer"] = "hybrid") {
  return new s.JambaLM(tinyJamba({ vocabSize: V, mixer, seed: 5, device }));
}

function prompt(n: number, seed: number): number[] {
  let x = seed;
  return Array.from({ length: n }, () => (x = (x * 1103515245 + 12345) % 2147483648) % V);
}

/** Greedy tokens by JambaLM's contiguous mixed cache (prefill then step), one prompt at a time. */
async function greedyContiguous(lm: s.JambaLM, p: number[], n: number): Promise<number[]> {
  const device = lm.embed.weight.device;
  const cache = lm.initCache(1, p.length + n + 1);
  const logits = lm.prefill(s.tensor(p, { dtype: "i32", shape: [1, p.length], device }), cache);
  let last = Float32Array.from((await logits.toArray()).slice((p.length - 1) * V, p.length * V));
  logits.dispose();
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let v = 1; v < V; v++) if (last[v] > last[best]) best = v;
    out.push(best);
    if (i === n - 1) break;
    const r = lm.step(s.tensor([best], { dtype: "i32", device }), cache);
    last = Float32Array.from(await r.logits.toArray());
    r.logits.dispose();
  }
  cache.dispose();
  return out;
}

const byId = (outs: RequestOutput[]) => Object.fromEntries(outs.map((o) => [o.id, o]));

describe("LLMEngine over JambaLM (K/V pages for attention, state slots for Mamba)", () => {
  const prompts = [prompt(5, 1), prompt(19, 2), prompt(1, 3), prompt(26, 4), prompt(9, 5)];
  const lens = [10, 9, 12, 6, 11];

  for (const device of ["cpu", "webgpu"] as const) {
    test(
      `${device}: concurrent greedy requests equal JambaLM.prefill/step, with chunked prefill and with preemption`,
      scoped(async () => {
        requireDevice(device);
        const lm = model(device);
        const want: number[][] = [];
        for (let i = 0; i < prompts.length; i++) want.push(await greedyContiguous(lm, prompts[i], lens[i]));
        const run = async (opts: Partial<s.EngineOptions>) => {
          const engine = new s.LLMEngine(lm, { numBlocks: 40, blockSize: 4, watermark: 0, ...opts });
          prompts.forEach((p, i) =>
            engine.addRequest(p, { id: `r${i}`, maxTokens: lens[i], temperature: 0 })
          );
          const got = byId(await engine.run());
          for (let i = 0; i < prompts.length; i++) {
            expect(got[`r${i}`].outputs[0].tokens).toEqual(want[i]);
            expect(got[`r${i}`].outputs[0].finishReason).toBe("length");
          }
          const st = engine.stats();
          expect(engine.scheduler.allocator.numUsed).toBe(0);
          expect(st.stateSlots).toEqual({ used: 0, total: engine.options.maxNumSeqs });
          engine.dispose();
          return st;
        };
        // a small token budget: the long prompts are prefilled in chunks (later chunks continue a state)
        const chunked = await run({ maxNumBatchedTokens: 8, maxNumSeqs: 4 });
        expect(chunked.preemptions.recompute).toBe(0);
        // 12 blocks of 4 for sequences of up to 9 blocks: the latest arrivals are preempted and recomputed
        const tight = await run({ numBlocks: 12, maxNumBatchedTokens: 16, maxNumSeqs: 4 });
        expect(tight.preemptions.recompute).toBeGreaterThan(0);
        expect(tight.preemptions.swap).toBe(0);
        lm.dispose();
      }),
    );
  }

  test(
    "cpu: an aborted request frees its state slot; the slots are reused by later requests",
    scoped(async () => {
      const lm = model("cpu");
      const engine = new s.LLMEngine(lm, { numBlocks: 32, blockSize: 4, maxNumSeqs: 2 });
      engine.addRequest(prompts[0], { id: "a", maxTokens: 20, temperature: 0 });
      engine.addRequest(prompts[1], { id: "b", maxTokens: 3, temperature: 0 });
      await engine.step();
      expect(engine.stats().stateSlots.used).toBe(2);
      expect(engine.abort("a")).toBe(true);
      expect(engine.stats().stateSlots.used).toBe(1);
      engine.addRequest(prompts[4], { id: "c", maxTokens: 4, temperature: 0 });
      const got = byId(await engine.run());
      expect(got.c.outputs[0].tokens).toEqual(await greedyContiguous(lm, prompts[4], 4));
      expect(got.b.outputs[0].tokens).toEqual(await greedyContiguous(lm, prompts[1], 3));
      expect(engine.stats().stateSlots.used).toBe(0);
      engine.dispose();
      lm.dispose();
    }),
  );

  test(
    "cpu: prefix caching, swapping, n > 1 and beam search are refused for a model with state",
    scoped(() => {
      const lm = model("cpu");
      const ctor = (o: Partial<s.EngineOptions>, msg: RegExp) => {
        expect(() => new s.LLMEngine(lm, { numBlocks: 8, blockSize: 4, ...o })).toThrow(msg);
        expect(() => new s.LLMEngine(lm, { numBlocks: 8, blockSize: 4, ...o })).toThrow(s.EngineError);
      };
      ctor(
        { enablePrefixCaching: true },
        /LLMEngine: the model keeps per-sequence recurrent state; prefix caching/,
      );
      ctor({ preemptionMode: "swap" }, /swapping \(preemptionMode "swap", swapBlocks 0\)/);
      ctor({ swapBlocks: 4 }, /swapping \(preemptionMode "auto", swapBlocks 4\)/);
      const engine = new s.LLMEngine(lm, { numBlocks: 8, blockSize: 4 });
      expect(() => engine.addRequest([1, 2], { n: 2, temperature: 1 })).toThrow(
        /LLMEngine.addRequest: parallel sampling \(n 2\) for "req-0" forks sequences/,
      );
      expect(() => engine.addRequest([1, 2], { beamWidth: 3 })).toThrow(/beam search \(beamWidth 3\)/);
      expect(() => engine.addRequest([1, 2], { beamWidth: 3 })).toThrow(s.EngineError);
      expect(engine.hasUnfinished()).toBe(false);
      engine.dispose();
      lm.dispose();
    }),
  );

  test(
    "cpu: a pure-attention JambaLM keeps no state: prefix caching and n > 1 are served",
    scoped(async () => {
      const lm = model("cpu", "attention");
      const engine = new s.LLMEngine(lm, { numBlocks: 32, blockSize: 4, enablePrefixCaching: true });
      expect(engine.cache.stateSlots).toBe(0);
      const p = prompts[1];
      engine.addRequest(p, { id: "a", maxTokens: 5, temperature: 0 });
      await engine.run();
      engine.addRequest(p, { id: "b", maxTokens: 5, temperature: 0 });
      engine.addRequest(p, { id: "n", maxTokens: 3, temperature: 1, seed: 2, n: 2 });
      const got = byId(await engine.run());
      expect(got.b.outputs[0].tokens).toEqual(await greedyContiguous(lm, p, 5));
      expect(got.n.outputs.length).toBe(2);
      expect(engine.stats().blocks.hits).toBeGreaterThan(0);
      engine.dispose();
      lm.dispose();
    }),
  );
});
