// Scheduler: random workloads driven by a fake engine that keeps a model of the device and host KV memory
// (one token id per slot), so every step checks that each scheduled sequence reads its own tokens back through
// its block table after the step's swaps and copies; limits, FCFS order, preemption by recompute and by swap,
// swapped groups resuming before admissions, aborts with reasons, and that every request ends finished or
// aborted with every block free.
import { describe, expect, test } from "vitest";
import { Rng } from "./sampling.ts";
import { BlockAllocator } from "./block_allocator.ts";
import { packBatch, type PreemptionMode, Scheduler, type SchedulerOutput } from "./scheduler.ts";
import type { Sequence, SequenceGroup } from "./sequence.ts";

/** A seeded uniform stream in [0, 1) (the engine's sampling generator) for reproducible random operations. */
function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

/** The token a sample (child k) of request `id` produces at `position`: independent of scheduling. */
function tokenFor(id: string, k: number, position: number): number {
  let h = 2166136261;
  for (const c of `${id}/${k}/${position}`) h = Math.imul(h ^ c.charCodeAt(0), 16777619);
  return (h >>> 0) % 50;
}

interface Request {
  id: string;
  arrival: number; // step at which it is added
  prompt: number[];
  maxTokens: number;
  n: number;
}

interface RunResult {
  groups: Map<string, SequenceGroup>;
  outputs: Map<string, number[][]>; // per request, per sample index k
  steps: SchedulerOutput[];
  s: Scheduler;
}

/**
 * Drive `s` like an engine until every request ended, checking each step: limits, memory contents, FCFS and
 * preemption order. n > 1 requests fork n - 1 children after the prompt's first sample.
 */
function drive(s: Scheduler, requests: Request[], maxSteps = 5000): RunResult {
  const a = s.allocator, bs = a.blockSize, host = s.hostAllocator;
  const dev = new Int32Array(a.numBlocks * bs).fill(-1);
  const hostMem = new Int32Array((host?.numBlocks ?? 0) * bs).fill(-1);
  const groups = new Map<string, SequenceGroup>();
  const sampleIndex = new Map<Sequence, number>();
  const byId = new Map(requests.map((r) => [r.id, r]));
  const steps: SchedulerOutput[] = [];
  let step = 0;
  for (; step < maxSteps; step++) {
    for (const r of requests) {
      if (r.arrival === step) {
        const g = s.addGroup(r.prompt, { id: r.id, maxSeqs: r.n });
        groups.set(r.id, g);
        sampleIndex.set(g.seqs[0], 0);
      }
    }
    if (!s.hasUnfinished() && step > Math.max(...requests.map((r) => r.arrival))) break;
    const statusBefore = new Map([...groups].map(([id, g]) => [id, g.status]));
    const out = s.schedule();
    steps.push(out);
    const entries = [...out.prefills, ...out.decodes];

    // limits
    expect(out.numBatchedTokens).toBeLessThanOrEqual(s.maxNumBatchedTokens);
    expect(entries.reduce((n, e) => n + e.numQuery, 0)).toBe(out.numBatchedTokens);
    expect(entries.length).toBeLessThanOrEqual(s.maxNumSeqs);
    expect(new Set(entries.map((e) => e.seq)).size).toBe(entries.length);
    const liveTables = (status: string) =>
      [...groups.values()].flatMap((g) => g.liveSeqs).filter((q) => q.status === status).map((q) =>
        q.blockTable
      );
    a.checkTables(liveTables("running"));
    host?.checkTables(liveTables("swapped"));
    const runningSeqs = [...groups.values()].filter((g) => g.status === "running").reduce(
      (n, g) => n + g.liveSeqs.length,
      0,
    );
    expect(runningSeqs).toBeLessThanOrEqual(s.maxNumSeqs);

    // order: preempted groups are the latest arrivals; nothing admitted or swapped in after a preemption,
    // nothing admitted while a group stays swapped
    const scheduledArrivals = entries.map((e) => e.seq.group.arrival);
    for (const p of out.preempted) {
      for (const t of scheduledArrivals) expect(p.group.arrival).toBeGreaterThan(t);
    }
    const admitted = [...groups].filter(([id, g]) =>
      statusBefore.get(id) === "waiting" && g.status === "running"
    );
    if (out.preempted.length > 0) {
      expect(admitted).toEqual([]);
      expect(out.swapIn).toEqual([]);
    }
    if (admitted.length > 0) expect(s.numSwapped).toBe(0);
    // batching the block operations is safe
    expect(out.swapOut.length === 0 || out.swapIn.length === 0).toBe(true);
    const dsts = new Set(out.copies.map(([, d]) => d));
    for (const [src] of out.copies) expect(dsts.has(src)).toBe(false);
    // a group's sequences sample in the same step (beam search needs them together)
    for (const e of entries) {
      if (!e.sample) continue;
      for (const q of e.seq.group.liveSeqs) expect(entries.some((f) => f.seq === q && f.sample)).toBe(true);
    }
    // a decoding group runs all of its live sequences together
    for (const e of out.decodes) {
      for (const q of e.seq.group.liveSeqs) expect(entries.some((f) => f.seq === q)).toBe(true);
    }

    // the device: swaps, copies, then the step's writes; every entry reads back its own tokens
    for (const [d, h] of out.swapOut) hostMem.set(dev.subarray(d * bs, (d + 1) * bs), h * bs);
    for (const [h, d] of out.swapIn) dev.set(hostMem.subarray(h * bs, (h + 1) * bs), d * bs);
    for (const [src, dst] of out.copies) dev.copyWithin(dst * bs, src * bs, (src + 1) * bs);
    for (const e of entries) {
      expect(e.numQuery).toBe(e.tokens.length);
      expect(e.positions).toEqual(e.tokens.map((_, i) => e.contextLength - e.numQuery + i));
      expect(e.tokens).toEqual(e.seq.tokens.slice(e.contextLength - e.numQuery, e.contextLength));
      e.positions.forEach((p, i) =>
        expect(e.slots[i]).toBe(e.blockTable[Math.floor(p / bs)] * bs + (p % bs))
      );
      e.slots.forEach((slot, i) => (dev[slot] = e.tokens[i]));
    }
    for (const e of entries) {
      const ctx = Array.from(
        { length: e.contextLength },
        (_, p) => dev[e.blockTable[Math.floor(p / bs)] * bs + (p % bs)],
      );
      expect(ctx).toEqual(e.seq.tokens.slice(0, e.contextLength));
    }

    // the engine's part: sample, fork, append or finish
    for (const e of entries) {
      if (!e.sample) continue;
      const seq = e.seq, r = byId.get(seq.group.id)!;
      const family = [seq];
      if (r.n > 1 && seq.group.seqs.length === 1 && seq.outputTokens.length === 0) {
        for (let k = 1; k < r.n; k++) {
          const child = s.fork(seq);
          sampleIndex.set(child, k);
          family.push(child);
        }
      }
      for (const q of family) {
        s.appendToken(q, tokenFor(r.id, sampleIndex.get(q)!, q.length));
        if (q.outputTokens.length >= r.maxTokens) s.finishSequence(q, "length");
      }
    }
  }
  expect(step).toBeLessThan(maxSteps); // no livelock
  expect(s.hasUnfinished()).toBe(false);
  expect(a.numUsed).toBe(0);
  a.checkTables([]);
  if (host) {
    expect(host.numUsed).toBe(0);
    host.checkTables([]);
  }
  const outputs = new Map<string, number[][]>();
  for (const [id, g] of groups) {
    expect(["finished", "aborted"]).toContain(g.status);
    if (g.status === "aborted") expect(g.abortReason).toBeTruthy();
    const outs: number[][] = [];
    for (const q of g.seqs) outs[sampleIndex.get(q)!] = q.outputTokens;
    outputs.set(id, outs);
  }
  return { groups, outputs, steps, s };
}

/** The outputs a request gets when nothing goes wrong. */
function expected(r: Request): number[][] {
  return Array.from(
    { length: r.n },
    (_, k) => Array.from({ length: r.maxTokens }, (_, j) => tokenFor(r.id, k, r.prompt.length + j)),
  );
}

function randomRequests(
  seed: number,
  count: number,
  o: { maxPrompt: number; maxOut: number; nMax: number },
): Request[] {
  const r = rng(seed);
  const system = Array.from({ length: 24 }, (_, i) => (i * 7) % 50);
  let t = 0;
  return Array.from({ length: count }, (_, i) => {
    t += Math.floor(r() * 3);
    const len = 1 + Math.floor(r() * o.maxPrompt);
    const prompt = r() < 0.4
      ? [
        ...system.slice(0, Math.min(len, 24)),
        ...Array.from({ length: Math.max(0, len - 24) }, () => Math.floor(r() * 50)),
      ]
      : Array.from({ length: len }, () => Math.floor(r() * 50));
    const n = r() < 0.6 ? 1 : 1 + Math.floor(r() * o.nMax);
    return { id: `r${i}`, arrival: t, prompt, maxTokens: 1 + Math.floor(r() * o.maxOut), n };
  });
}

describe("Scheduler", () => {
  const configs: [string, PreemptionMode, boolean, boolean, number][] = [
    // name, preemption mode, prefix caching, chunked prefill, swap blocks
    ["auto, chunked", "auto", false, true, 64],
    ["auto, prefix caching", "auto", true, true, 64],
    ["recompute only", "recompute", true, true, 0],
    ["swap only", "swap", false, true, 128],
    ["swap with a small host pool", "swap", false, true, 8],
    ["no chunked prefill", "auto", true, false, 64],
  ];
  for (const [name, mode, prefix, chunked, swapBlocks] of configs) {
    test(`random workload (${name}): limits kept, memory right, every request ends, all blocks free`, () => {
      let preemptions = 0, aborted = 0, finished = 0;
      for (const seed of [1, 2, 3]) {
        const reqs = randomRequests(seed, 60, { maxPrompt: 70, maxOut: 40, nMax: 4 });
        reqs[7].prompt = new Array(200).fill(3); // longer than the whole cache: refused
        const a = new BlockAllocator(48, 4, { enablePrefixCaching: prefix, watermark: 0.05 });
        const s = new Scheduler(a, {
          maxNumSeqs: 8,
          maxNumBatchedTokens: chunked ? 24 : 80,
          preemptionMode: mode,
          swapBlocks,
          chunkedPrefill: chunked,
        });
        const { groups, outputs } = drive(s, reqs);
        expect(groups.get("r7")!.abortReason).toContain("prompt of 200 tokens needs 50 blocks");
        for (const r of reqs) {
          const g = groups.get(r.id)!;
          if (g.status === "finished") {
            finished++;
            expect(outputs.get(r.id)).toEqual(expected(r)); // preemption never changes what is generated
          } else aborted++;
        }
        preemptions += s.preemptions.recompute + s.preemptions.swap;
        if (mode === "recompute") expect(s.preemptions.swap).toBe(0);
        if (mode === "swap" && swapBlocks >= 128) expect(s.preemptions.recompute).toBe(0);
      }
      expect(preemptions).toBeGreaterThan(5); // the workload does preempt
      expect(finished).toBeGreaterThan(150);
      expect(aborted).toBeGreaterThanOrEqual(3);
    });
  }

  test("preemption by recompute: the latest arrival frees its blocks and prefills prompt + output again", () => {
    const s = new Scheduler(new BlockAllocator(6, 4, { watermark: 0 }), { preemptionMode: "auto" });
    const reqs: Request[] = [
      { id: "a", arrival: 0, prompt: [1, 2, 3, 4, 5], maxTokens: 12, n: 1 },
      { id: "b", arrival: 0, prompt: [6, 7, 8, 9, 10], maxTokens: 12, n: 1 },
    ];
    const { outputs, steps, groups } = drive(s, reqs);
    const pre = steps.flatMap((o) => o.preempted);
    expect(pre.length).toBeGreaterThan(0);
    expect(pre[0]).toMatchObject({ mode: "recompute" });
    expect(pre[0].group.id).toBe("b");
    expect(pre[0].reason).toContain("latest arrival");
    // b's recomputation is one prefill of its prompt and the tokens generated before the preemption
    const i = steps.findIndex((o) => o.preempted.length > 0);
    const redo = steps.slice(i).flatMap((o) => o.prefills).find((e) => e.seq.group.id === "b")!;
    expect(redo.positions[0]).toBe(0);
    expect(redo.numQuery).toBeGreaterThan(5);
    expect(redo.tokens.slice(0, 5)).toEqual([6, 7, 8, 9, 10]);
    expect(groups.get("b")!.numPreemptions).toBeGreaterThan(0);
    for (const r of reqs) expect(outputs.get(r.id)).toEqual(expected(r));
  });

  test("preemption by swap: a group of samples goes to the host and resumes before a newer request is admitted", () => {
    const s = new Scheduler(new BlockAllocator(12, 4, { watermark: 0 }), { swapBlocks: 16 });
    const reqs: Request[] = [
      { id: "a", arrival: 0, prompt: [1, 2, 3, 4, 5, 6], maxTokens: 10, n: 2 },
      { id: "b", arrival: 0, prompt: [7, 8, 9, 10, 11, 12], maxTokens: 10, n: 2 },
      { id: "c", arrival: 8, prompt: [13, 14], maxTokens: 3, n: 1 }, // after b is swapped out
    ];
    const { outputs, steps, groups } = drive(s, reqs);
    const i = steps.findIndex((o) => o.preempted.length > 0);
    expect(i).toBeGreaterThan(0);
    expect(steps[i].preempted[0]).toMatchObject({ mode: "swap" });
    expect(steps[i].preempted[0].group.id).toBe("b");
    expect(steps[i].swapOut.length).toBeGreaterThan(0);
    const swapIn = steps.findIndex((o) => o.swapIn.length > 0);
    expect(swapIn).toBeGreaterThan(i);
    // the swapped group's blocks come back as many as left (shared blocks stay shared: one copy each)
    expect(steps[swapIn].swapIn.length).toBe(steps[i].swapOut.length);
    // c (arrived after b was swapped out) gets its prompt scheduled only once b is back
    const cFirst = steps.findIndex((o) => o.prefills.some((e) => e.seq.group.id === "c"));
    expect(cFirst).toBeGreaterThanOrEqual(swapIn);
    expect(groups.get("b")!.status).toBe("finished");
    for (const r of reqs) expect(outputs.get(r.id)).toEqual(expected(r));
  });

  test("a prompt longer than the cache is refused at once; a sequence that outgrows the cache alone is aborted", () => {
    const s = new Scheduler(new BlockAllocator(4, 4, { watermark: 0 }));
    const g = s.addGroup(new Array(17).fill(1));
    expect(g.status).toBe("aborted");
    expect(g.abortReason).toBe(
      "prompt of 17 tokens needs 5 blocks of 4 tokens; the cache has 4 (4 after the watermark)",
    );
    expect(g.seqs[0].finishReason).toBe("abort");
    const out = s.schedule();
    expect(out.aborted.length).toBe(1);
    expect(out.aborted[0].group).toBe(g);
    expect(out.aborted[0].reason).toBe(g.abortReason);
    expect(s.schedule().aborted).toEqual([]); // reported once
    // 16 tokens fit; the 17th cannot, with nothing else to preempt
    const { groups } = drive(s, [{
      id: "long",
      arrival: 0,
      prompt: new Array(15).fill(2),
      maxTokens: 5,
      n: 1,
    }]);
    const long = groups.get("long")!;
    expect(long.status).toBe("aborted");
    expect(long.abortReason).toContain("outgrew the cache of 4 blocks");
    expect(long.seqs[0].outputTokens.length).toBe(2);
  });

  test("other refusals: maxSeqs over maxNumSeqs, a long prompt without chunked prefill", () => {
    const s = new Scheduler(new BlockAllocator(64, 4), {
      maxNumSeqs: 4,
      maxNumBatchedTokens: 8,
      chunkedPrefill: false,
    });
    expect(s.addGroup([1], { maxSeqs: 5 }).abortReason).toBe(
      "maxSeqs 5 exceeds the scheduler's maxNumSeqs 4",
    );
    expect(s.addGroup(new Array(9).fill(1)).abortReason).toBe(
      "prompt of 9 tokens exceeds maxNumBatchedTokens 8 and chunked prefill is off",
    );
    expect(s.schedule().aborted.length).toBe(2);
    expect(s.hasUnfinished()).toBe(false);
  });

  test("chunked prefill: a long prompt is fed in budget-sized chunks while running sequences keep decoding", () => {
    const s = new Scheduler(new BlockAllocator(64, 4), { maxNumSeqs: 4, maxNumBatchedTokens: 8 });
    const a = s.addGroup([1, 2, 3]);
    s.schedule();
    s.appendToken(a.seqs[0], 9);
    const long = s.addGroup(Array.from({ length: 20 }, (_, i) => i));
    const chunks: number[] = [];
    for (let step = 0; step < 3; step++) {
      const out = s.schedule();
      expect(out.decodes.map((e) => e.seq)).toEqual([a.seqs[0]]); // the decode goes first, every step
      s.appendToken(a.seqs[0], 9);
      const e = out.prefills[0];
      chunks.push(e.numQuery);
      expect(e.sample).toBe(e.contextLength === 20);
      if (e.sample) s.appendToken(long.seqs[0], 1);
    }
    expect(chunks).toEqual([7, 7, 6]);
  });

  test("prefix caching: a second request with the same system prompt starts from the cached blocks", () => {
    const a = new BlockAllocator(32, 4, { enablePrefixCaching: true });
    const s = new Scheduler(a);
    const system = [5, 5, 6, 6, 7, 7, 8, 8, 9, 9];
    const g1 = s.addGroup([...system, 1]);
    s.schedule();
    s.appendToken(g1.seqs[0], 0);
    s.schedule(); // registers g1's two full blocks, decodes
    const g2 = s.addGroup([...system, 2, 3]);
    s.appendToken(g1.seqs[0], 0);
    const out = s.schedule();
    const e = out.prefills.find((x) => x.seq.group === g2)!;
    expect(e.positions[0]).toBe(8); // blocks 0 and 1 (8 tokens) were hits
    expect(e.blockTable.slice(0, 2)).toEqual(g1.seqs[0].blockTable.slice(0, 2));
    expect(a.stats()).toMatchObject({ hits: 2 });
    // an identical prompt still computes its last token: the block holding it is never a hit
    const g3 = s.addGroup([5, 5, 6, 6, 7, 7, 8, 8]);
    s.appendToken(g1.seqs[0], 0);
    s.appendToken(g2.seqs[0], 0);
    const e3 = s.schedule().prefills.find((x) => x.seq.group === g3)!;
    expect(e3.positions).toEqual([4, 5, 6, 7]);
    for (const g of [g1, g2, g3]) s.abortGroup(g.id);
    expect(a.numUsed).toBe(0);
    expect(a.numCached).toBeGreaterThan(0);
  });

  test("beam-style fork and remove: shared blocks copied once, nothing leaked", () => {
    const a = new BlockAllocator(16, 4, { watermark: 0 });
    const s = new Scheduler(a);
    const g = s.addGroup([1, 2, 3, 4, 5, 6], { maxSeqs: 2 });
    s.schedule();
    const [p] = g.seqs;
    const c = s.fork(p);
    s.appendToken(p, 7);
    s.appendToken(c, 8);
    let out = s.schedule();
    expect(out.copies).toEqual([[1, 2]]); // the first appender copies; the last one writes in place
    expect(out.decodes.map((e) => e.slots[0])).toEqual([2 * 4 + 2, 1 * 4 + 2]);
    // prune p, fork c twice... one over maxSeqs is refused at the next schedule
    const c2 = s.fork(c);
    const c3 = s.fork(c);
    s.appendToken(c, 1);
    s.appendToken(c2, 2);
    s.appendToken(c3, 3);
    s.removeSequence(p);
    expect(() => s.schedule()).toThrow('group "0" has 3 live sequences, over its maxSeqs 2');
    s.removeSequence(c3);
    out = s.schedule();
    expect(out.decodes.length).toBe(2);
    expect(out.copies.length).toBe(1);
    s.finishSequence(c, "eos");
    s.finishSequence(c2, "stop");
    expect(g.status).toBe("finished");
    expect(g.seqs.map((q) => q.finishReason)).toEqual(["eos", "stop"]);
    expect(a.numUsed).toBe(0);
  });

  test("misuse throws a message naming the method", () => {
    const s = new Scheduler(new BlockAllocator(16, 4));
    const g = s.addGroup([1, 2]);
    const q = g.seqs[0];
    expect(() => s.fork(q)).toThrow("Scheduler.fork: sequence 0 is waiting, not running");
    expect(() => s.appendToken(q, 1)).toThrow("Scheduler.appendToken: sequence 0 is waiting, not running");
    s.schedule();
    s.appendToken(q, 1);
    expect(() => s.appendToken(q, 1)).toThrow("Scheduler.appendToken: sequence 0 still has 1 pending tokens");
    s.schedule();
    expect(() => s.schedule()).toThrow("Scheduler.schedule: sequence 0 has no token to feed");
    expect(() => s.addGroup([1], { id: "0" })).toThrow('Scheduler.addGroup: a live group already has id "0"');
    expect(() => s.addGroup([])).toThrow("is empty");
    expect(s.abortGroup("0")?.status).toBe("aborted");
    expect(() => s.finishSequence(q, "stop")).toThrow(
      "Scheduler.finishSequence: sequence 0 is not live in this scheduler",
    );
    expect(() => new Scheduler(new BlockAllocator(4, 4), { maxNumSeqs: 8, maxNumBatchedTokens: 4 })).toThrow(
      "maxNumBatchedTokens must be an integer >= maxNumSeqs (8), got 4",
    );
  });

  test("packBatch: flat arrays for the model call", () => {
    const s = new Scheduler(new BlockAllocator(16, 2));
    const g1 = s.addGroup([1, 2, 3]);
    const g2 = s.addGroup([4, 5]);
    s.schedule();
    s.appendToken(g1.seqs[0], 6);
    s.appendToken(g2.seqs[0], 8);
    s.addGroup([7]);
    const out = s.schedule();
    const b = packBatch([...out.prefills, ...out.decodes], 4);
    expect(b.numSeqs).toBe(3);
    expect([...b.tokens]).toEqual([7, 6, 8]);
    expect([...b.positions]).toEqual([0, 3, 2]);
    expect([...b.queryStarts]).toEqual([0, 1, 2, 3]);
    expect([...b.contextLens]).toEqual([1, 4, 3]);
    expect([...b.blockTables]).toEqual([4, -1, -1, -1, 0, 1, -1, -1, 2, 3, -1, -1]);
    expect([...b.slots]).toEqual([8, 3, 6]);
    expect([...b.sampleRows]).toEqual([0, 1, 2]);
    expect(() => packBatch(out.decodes, 1)).toThrow(
      "packBatch: sequence 0 has 2 blocks, more than maxBlocks 1",
    );
  });
});
