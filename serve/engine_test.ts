import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import type { RequestOutput } from "../mod.ts";
import { leakCheck, requireDevice, scoped } from "../test/helpers.ts";

leakCheck();

const devices = ["cpu", "webgpu"] as const;
const V = 17;

function model(device: "cpu" | "webgpu", posenc: "rope" | "alibi" | "learned" = "rope") {
  return new s.TransformerLM({
    vocabSize: V,
    dModel: 16,
    nLayer: 2,
    nHead: 4,
    nKvHead: 2,
    posenc,
    seed: 5,
    device,
  });
}

function prompt(n: number, seed: number): number[] {
  let x = seed;
  return Array.from({ length: n }, () => (x = (x * 1103515245 + 12345) % 2147483648) % V);
}

/** Greedy tokens by the contiguous cache (prefill then step), one prompt at a time. */
async function greedyContiguous(lm: s.TransformerLM, p: number[], n: number): Promise<number[]> {
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

describe("LLMEngine", () => {
  for (const device of devices) {
    test(
      `${device}: greedy tokens equal contiguous-cache decoding, all blocks free at the end`,
      scoped(async () => {
        requireDevice(device);
        const lm = model(device);
        const prompts = [prompt(5, 1), prompt(19, 2), prompt(1, 3), prompt(33, 4)];
        const lens = [6, 9, 12, 4];
        const want = [];
        for (let i = 0; i < prompts.length; i++) want.push(await greedyContiguous(lm, prompts[i], lens[i]));
        // a small token budget: the long prompt is prefilled in chunks beside the others' decodes
        const engine = new s.LLMEngine(lm, { numBlocks: 24, blockSize: 8, maxNumBatchedTokens: 16 });
        prompts.forEach((p, i) => engine.addRequest(p, { id: `r${i}`, maxTokens: lens[i], temperature: 0 }));
        const got = byId(await engine.run());
        for (let i = 0; i < prompts.length; i++) {
          expect(got[`r${i}`].outputs[0].tokens).toEqual(want[i]);
          expect(got[`r${i}`].outputs[0].finishReason).toBe("length");
        }
        expect(engine.scheduler.allocator.numUsed).toBe(0);
        expect(engine.hasUnfinished()).toBe(false);
        engine.dispose();
        lm.dispose();
      }),
    );
  }

  test(
    "webgpu: preemption by recompute and by swap gives the same greedy tokens",
    scoped(async () => {
      requireDevice("webgpu");
      const lm = model("webgpu", "alibi");
      const prompts = [prompt(9, 11), prompt(14, 12), prompt(7, 13)];
      const run = async (opts: Partial<s.EngineOptions>, n = 1) => {
        const engine = new s.LLMEngine(lm, { numBlocks: 40, blockSize: 4, watermark: 0, ...opts });
        prompts.forEach((p, i) =>
          engine.addRequest(p, { id: `r${i}`, maxTokens: 14, temperature: n > 1 ? 1 : 0, n, seed: 3 })
        );
        const out = byId(await engine.run());
        const st = engine.stats();
        expect(engine.scheduler.allocator.numUsed).toBe(0);
        engine.dispose();
        return { out, st };
      };
      const roomy = await run({});
      expect(roomy.st.preemptions.recompute + roomy.st.preemptions.swap).toBe(0);
      // 12 blocks of 4: the three sequences need up to 6 each, so the latest is preempted
      const recompute = await run({ numBlocks: 12, preemptionMode: "recompute" });
      expect(recompute.st.preemptions.recompute).toBeGreaterThan(0);
      const swap = await run({ numBlocks: 12, preemptionMode: "swap", swapBlocks: 16 });
      expect(swap.st.preemptions.swap).toBeGreaterThan(0);
      expect(swap.st.swappedBlocks.out).toBeGreaterThan(0);
      expect(swap.st.swappedBlocks.in).toBe(swap.st.swappedBlocks.out);
      for (const id of ["r0", "r1", "r2"]) {
        expect(recompute.out[id].outputs[0].tokens).toEqual(roomy.out[id].outputs[0].tokens);
        expect(swap.out[id].outputs[0].tokens).toEqual(roomy.out[id].outputs[0].tokens);
      }
      // parallel samples (groups of 3) swap as a group and still draw the same seeded tokens
      const roomyN = await run({}, 3);
      const swapN = await run({ numBlocks: 16, preemptionMode: "swap", swapBlocks: 32 }, 3);
      expect(swapN.st.preemptions.swap).toBeGreaterThan(0);
      for (const id of ["r0", "r1", "r2"]) {
        expect(swapN.out[id].outputs.map((o) => o.tokens)).toEqual(
          roomyN.out[id].outputs.map((o) => o.tokens),
        );
      }
      lm.dispose();
    }),
  );

  test(
    "cpu: seeded sampling does not depend on the batch; n samples share the prompt's blocks",
    scoped(async () => {
      const lm = model("cpu");
      const p = prompt(20, 7);
      const alone = new s.LLMEngine(lm, { numBlocks: 32, blockSize: 8 });
      alone.addRequest(p, { id: "x", maxTokens: 8, temperature: 0.9, topK: 8, topP: 0.9, seed: 42, n: 3 });
      const a = byId(await alone.run()).x;
      alone.dispose();
      const busy = new s.LLMEngine(lm, { numBlocks: 32, blockSize: 8 });
      busy.addRequest(prompt(11, 8), { id: "other", maxTokens: 5, seed: 1 });
      busy.addRequest(p, { id: "x", maxTokens: 8, temperature: 0.9, topK: 8, topP: 0.9, seed: 42, n: 3 });
      // the prompt's step holds the prompt's 3 blocks once: the samples fork it
      await busy.step();
      expect(busy.scheduler.allocator.numUsed).toBe(Math.ceil(11 / 8) + Math.ceil(20 / 8));
      const b = byId([...(await busy.step()), ...(await busy.run())]).x;
      expect(b.outputs.map((o) => o.tokens)).toEqual(a.outputs.map((o) => o.tokens));
      expect(a.outputs).toHaveLength(3);
      expect(new Set(a.outputs.map((o) => o.tokens.join())).size).toBeGreaterThan(1);
      busy.dispose();
      lm.dispose();
    }),
  );

  test(
    "cpu: beam search keeps the best beams; its scores are the model's log probabilities",
    scoped(async () => {
      const lm = model("cpu");
      const p = prompt(6, 9);
      const engine = new s.LLMEngine(lm, { numBlocks: 32, blockSize: 4 });
      engine.addRequest(p, { id: "b", maxTokens: 5, beamWidth: 4, n: 4, lengthPenalty: 0 });
      const b = byId(await engine.run()).b;
      expect(engine.scheduler.allocator.numUsed).toBe(0);
      expect(engine.stats().copiedBlocks).toBeGreaterThan(0); // beams forked a shared last block
      engine.dispose();
      expect(b.outputs).toHaveLength(4);
      const scores = b.outputs.map((o) => o.cumulativeLogprob);
      expect([...scores].sort((x, y) => y - x)).toEqual(scores);
      const greedy = await greedyContiguous(lm, p, 5);
      // the best beam is at least as likely as the greedy path
      const lp = async (toks: number[]) => {
        const all = [...p, ...toks];
        const logits = lm.forward(s.tensor(all, { dtype: "i32", shape: [1, all.length], device: "cpu" }));
        const a = await logits.toArray();
        logits.dispose();
        let sum = 0;
        toks.forEach((t, i) =>
          sum += s.logSoftmaxRow(a.subarray((p.length - 1 + i) * V, (p.length + i) * V))[t]
        );
        return sum;
      };
      expect(await lp(b.outputs[0].tokens)).toBeCloseTo(scores[0], 4);
      expect(scores[0]).toBeGreaterThanOrEqual((await lp(greedy)) - 1e-9);
      lm.dispose();
    }),
  );

  test(
    "cpu: a prefix-cache hit gives the same tokens and reuses the prompt's blocks",
    scoped(async () => {
      const lm = model("cpu", "learned");
      const system = prompt(24, 21);
      const engine = new s.LLMEngine(lm, { numBlocks: 32, blockSize: 8, enablePrefixCaching: true });
      engine.addRequest([...system, 1, 2], { id: "a", maxTokens: 4, temperature: 0 });
      const a = byId(await engine.run()).a;
      engine.addRequest([...system, 1, 2], { id: "b", maxTokens: 4, temperature: 0 });
      const b = byId(await engine.run()).b;
      expect(b.outputs[0].tokens).toEqual(a.outputs[0].tokens);
      expect(engine.stats().blocks.hits).toBeGreaterThanOrEqual(3);
      expect(engine.scheduler.allocator.numUsed).toBe(0);
      engine.dispose();
      lm.dispose();
    }),
  );

  test(
    "cpu: stop tokens, streaming, aborts, static-max reservation and refusals",
    scoped(async () => {
      const lm = model("cpu");
      const engine = new s.LLMEngine(lm, { numBlocks: 8, blockSize: 4, maxModelLen: 24 });
      const first = await greedyContiguous(lm, prompt(5, 3), 3);
      engine.addRequest(prompt(5, 3), { id: "stop", maxTokens: 10, temperature: 0, stop: [first[2]] });
      const stop = byId(await engine.run()).stop.outputs[0];
      expect(stop.tokens).toEqual(first.slice(0, 2));
      expect(stop.finishReason).toBe("stop");
      const seen: number[] = [];
      for await (const o of engine.generate(prompt(4, 4), { maxTokens: 3, temperature: 0 })) {
        seen.push(o.outputs[0].tokens.length);
      }
      expect(seen).toEqual([1, 2, 3]);
      const id = engine.addRequest(prompt(4, 5), { maxTokens: 10 });
      await engine.step();
      expect(engine.abort(id)).toBe(true);
      expect(engine.abort(id)).toBe(false);
      expect(engine.scheduler.allocator.numUsed).toBe(0);
      expect(() => engine.addRequest(prompt(40, 1))).toThrow(/maxModelLen 24/);
      expect(() => engine.addRequest([1, 99])).toThrow(/prompt token 1 .* is 99, outside the vocabulary/);
      expect(() => engine.addRequest([])).toThrow(/empty/);
      expect(() => engine.addRequest([1], { topP: 0 })).toThrow(/topP/);
      expect(() => engine.addRequest([1], { n: 9, beamWidth: 4 })).toThrow(/beamWidth/);
      engine.dispose();
      expect(() => engine.addRequest([1])).toThrow(/disposed/);
      // static-max: 24 tokens reserve 6 of the 8 blocks, so one request runs at a time
      const st = new s.LLMEngine(lm, {
        numBlocks: 8,
        blockSize: 4,
        maxModelLen: 24,
        reservation: "static-max",
      });
      st.addRequest(prompt(3, 1), { id: "s0", maxTokens: 3, temperature: 0 });
      st.addRequest(prompt(3, 2), { id: "s1", maxTokens: 3, temperature: 0 });
      await st.step();
      expect(st.scheduler.numRunning).toBe(1);
      const outs = byId(await st.run());
      expect(Object.keys(outs).sort()).toEqual(["s0", "s1"]);
      expect(() => st.addRequest([1], { n: 2 })).toThrow(/cannot fit/);
      st.dispose();
      lm.dispose();
    }),
  );
});
