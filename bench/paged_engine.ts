/**
 * Paged attention benchmark (issue 12), the engine section: `LLMEngine` throughput at a fixed KV budget on
 * a ShareGPT-like trace, paged allocation against the same engine with static-max reservation (a request
 * is admitted only when maxModelLen slots per sequence can be set aside: FasterTransformer / Orca-Max),
 * with the memory breakdown of both and the step-time model calibrated from the measured steps.
 *
 * The trace: `poissonTrace` with ShareGPT's length model (means 161.31 in, 337.99 out), every length divided
 * by `SCALE` so the trace runs on the software adapter; all requests arrive at time 0 (offline throughput).
 * The model: a TransformerLM with random weights (throughput does not depend on them: greedy decoding with
 * no stop token runs each request to exactly its trace output length).
 *
 * Also the pieces notebook 05 runs: {@link scaleTrace} (a paper-scale trace shrunk for the adapter),
 * {@link serveTrace} (a Poisson trace served in simulated time: per-request and normalized latency, batch,
 * memory and what sharing saves), {@link warmEngine}, {@link promptTokens}, and {@link swapVsRecompute}
 * (the cost of preempting a sequence by swapping against recomputation, per block size).
 * @module
 */

import * as s from "../mod.ts";
import type { RequestOutput, StepRecord } from "../mod.ts";
import { median, table, verdict } from "./util.ts";

const SCALE = 8;
const TARGET = 2;

/**
 * A trace with every length divided by `scale` (rounded up, at least 1) and each output cut so that
 * prompt + output stays below `maxModelLen` (the engine's limit): a paper-scale workload shrunk to what the
 * software adapter can run.
 *
 * @example
 * ```ts
 * import { poissonTrace } from "../mod.ts";
 * import { scaleTrace } from "./paged_engine.ts";
 * const t = scaleTrace(poissonTrace({ rate: 1, count: 4, seed: 1, dataset: "sharegpt" }), 8, 256);
 * console.log(t.every((r) => r.inputLen + r.outputLen < 256)); // true
 * ```
 */
export function scaleTrace(
  trace: readonly s.TraceRequest[],
  scale: number,
  maxModelLen: number,
): s.TraceRequest[] {
  return trace.map((r) => {
    const inputLen = Math.max(1, Math.min(Math.ceil(r.inputLen / scale), maxModelLen - 2));
    return {
      ...r,
      inputLen,
      outputLen: Math.max(1, Math.min(Math.ceil(r.outputLen / scale), maxModelLen - 1 - inputLen)),
    };
  });
}

/** Deterministic prompt tokens for request `id` (a linear congruential stream), in [0, vocab). */
export function promptTokens(id: number, length: number, vocab: number, seed = 7): number[] {
  let x = (seed * 2654435761 + id * 40503) >>> 0;
  return Array.from({ length }, () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return (x >>> 8) % vocab;
  });
}

/**
 * Runs a few short requests through `engine` (prefill and decode, two at once) and forgets their step
 * records, so that shader compilation and first allocations fall outside a timed run.
 */
export async function warmEngine(engine: s.LLMEngine): Promise<void> {
  const V = engine.model.vocabSize;
  engine.addRequest(promptTokens(1_000_001, 40, V), { maxTokens: 4, temperature: 0 });
  engine.addRequest(promptTokens(1_000_002, 3, V), { maxTokens: 6, temperature: 0 });
  await engine.run();
  engine.records.length = 0;
}

/** One request served by {@link serveTrace}; times are simulated seconds from the trace's origin. */
export interface ServedRequest {
  id: number;
  arrival: number;
  /** When its first output token was produced. */
  firstToken: number;
  /** When it ended. */
  finish: number;
  /** Tokens generated (the longest of its samples). */
  outputLen: number;
  /** finish - arrival. */
  latency: number;
  /** latency / outputLen (s per token): the paper's normalized latency. */
  normalizedLatency: number;
  preemptions: number;
  /** Set when the request was aborted. */
  abortReason?: string;
}

/** What {@link serveTrace} measured. */
export interface ServeResult {
  requests: ServedRequest[];
  /** Requests aborted (by the engine or a refusal at addRequest). */
  aborted: number;
  /** First arrival to last finish, simulated seconds. */
  duration: number;
  /** Seconds spent in steps (the engine busy). */
  busySeconds: number;
  /** Finished requests and generated tokens per simulated second over `duration`. */
  requestsPerS: number;
  outputTokensPerS: number;
  /** Means over finished requests. */
  normalizedLatency: number;
  meanLatency: number;
  meanFirstTokenLatency: number;
  steps: number;
  /** Sequences per step: mean and most. */
  meanBatch: number;
  maxBatch: number;
  /** 1 - blocksUsed / logicalBlocks, averaged over the steps that ran sequences: what block sharing saves. */
  memorySaved: number;
  /**
   * 1 - (sum of blocksUsed) / (sum of logicalBlocks) over those steps: the share of block-steps sharing saved,
   * each step weighted by the blocks it holds (a burst's drain, when few requests remain, counts little).
   */
  memorySavedWeighted: number;
  /** Shares of the KV slots averaged over the steps (as {@link EngineRun}'s memory, every step). */
  memory: { tokens: number; allocatedUnused: number; reservedUnused: number; free: number };
  preemptions: number;
  /** The steps' records. */
  records: StepRecord[];
}

/** Options of {@link serveTrace}. */
export interface ServeOptions {
  /** Sampling options for every request (default greedy: `temperature: 0`); maxTokens is the trace's. */
  params?: s.SamplingParams;
  /** Prompt tokens per request; default {@link promptTokens}. */
  prompt?: (r: s.TraceRequest) => number[];
}

/**
 * Serves `trace` through `engine` in simulated time: a clock starts at 0, advances by each step's measured
 * wall time, and jumps over idle gaps to the next arrival; a request is added once the clock has passed its
 * arrival. Without stop tokens each request generates exactly its trace output length. Returns per-request
 * latencies (normalized latency = latency / output tokens) and the run's throughput, batch, memory and
 * sharing figures. The engine should be warm ({@link warmEngine}) and idle.
 */
export async function serveTrace(
  engine: s.LLMEngine,
  trace: readonly s.TraceRequest[],
  o: ServeOptions = {},
): Promise<ServeResult> {
  if (engine.hasUnfinished()) throw new Error("serveTrace: the engine must be idle");
  const V = engine.model.vocabSize;
  const prompt = o.prompt ?? ((r: s.TraceRequest) => promptTokens(r.id, r.inputLen, V));
  const order = [...trace].sort((a, b) => a.arrival - b.arrival);
  const rec0 = engine.records.length;
  const live = new Map<string, { r: s.TraceRequest; first: number }>();
  const served: ServedRequest[] = [];
  let clock = 0, busy = 0, next = 0, aborted = 0;
  const endWith = (r: s.TraceRequest, first: number, out: RequestOutput | null, reason?: string) => {
    const len = out ? Math.max(0, ...out.outputs.map((c) => c.tokens.length)) : 0;
    const latency = clock - r.arrival;
    served.push({
      id: r.id,
      arrival: r.arrival,
      firstToken: first,
      finish: clock,
      outputLen: len,
      latency,
      normalizedLatency: latency / Math.max(1, len),
      preemptions: out?.preemptions ?? 0,
      ...(reason !== undefined ? { abortReason: reason } : {}),
    });
    if (reason !== undefined) aborted++;
  };
  while (next < order.length || engine.hasUnfinished()) {
    if (!engine.hasUnfinished() && order[next].arrival > clock) clock = order[next].arrival;
    while (next < order.length && order[next].arrival <= clock) {
      const r = order[next++];
      try {
        engine.addRequest(prompt(r), { temperature: 0, ...o.params, id: `t${r.id}`, maxTokens: r.outputLen });
        live.set(`t${r.id}`, { r, first: NaN });
      } catch (e) {
        endWith(r, NaN, null, (e as Error).message);
      }
    }
    const t0 = performance.now();
    const outs = await engine.step();
    const dt = (performance.now() - t0) / 1000;
    clock += dt;
    busy += dt;
    for (const out of outs) {
      const l = live.get(out.id);
      if (!l) continue;
      if (Number.isNaN(l.first) && out.outputs.some((c) => c.tokens.length > 0)) l.first = clock;
      if (out.finished) {
        live.delete(out.id);
        endWith(l.r, l.first, out, out.abortReason);
      }
    }
  }
  const recs = engine.records.slice(rec0);
  const ok = served.filter((q) => q.abortReason === undefined);
  const mean = <T>(xs: T[], f: (x: T) => number) =>
    xs.length ? xs.reduce((a, x) => a + f(x), 0) / xs.length : NaN;
  const first = Math.min(...served.map((q) => q.arrival)), last = Math.max(...served.map((q) => q.finish));
  const duration = served.length ? last - first : 0;
  const ran = recs.filter((r) => r.logicalBlocks > 0);
  const { blockSize: bs, numBlocks } = engine.options;
  const total = numBlocks * bs;
  const tokens = mean(recs, (r) => r.tokenSlots / total);
  const allocated = mean(recs, (r) => (r.blocksUsed * bs) / total);
  const reserved = mean(recs, (r) => (Math.max(r.reservedBlocks, r.blocksUsed) * bs) / total);
  served.sort((a, b) => a.id - b.id);
  return {
    requests: served,
    aborted,
    duration,
    busySeconds: busy,
    requestsPerS: duration > 0 ? ok.length / duration : NaN,
    outputTokensPerS: duration > 0 ? ok.reduce((a, q) => a + q.outputLen, 0) / duration : NaN,
    normalizedLatency: mean(ok, (q) => q.normalizedLatency),
    meanLatency: mean(ok, (q) => q.latency),
    meanFirstTokenLatency: mean(ok, (q) => q.firstToken - q.arrival),
    steps: recs.length,
    meanBatch: mean(recs, (r) => r.sequences),
    maxBatch: Math.max(0, ...recs.map((r) => r.sequences)),
    memorySaved: mean(ran, (r) => 1 - r.blocksUsed / r.logicalBlocks),
    memorySavedWeighted: ran.length
      ? 1 - ran.reduce((a, r) => a + r.blocksUsed, 0) / ran.reduce((a, r) => a + r.logicalBlocks, 0)
      : NaN,
    memory: {
      tokens,
      allocatedUnused: allocated - tokens,
      reservedUnused: reserved - allocated,
      free: 1 - reserved,
    },
    preemptions: ok.reduce((a, q) => a + q.preemptions, 0),
    records: recs,
  };
}

/** One engine run's results. */
export interface EngineRun {
  reservation: "paged" | "static-max";
  requests: number;
  seconds: number;
  requestsPerS: number;
  outputTokensPerS: number;
  steps: number;
  /** Sequences per step (mean over steps, and the most). */
  meanBatch: number;
  maxBatch: number;
  /**
   * Under load: requests ended and tokens generated per second over the steps while requests were still
   * waiting for memory or a batch slot (a serving system under sustained arrivals never drains its queue;
   * the whole-run figures include the drain, where the last long requests run alone).
   */
  loadedRequestsPerS: number;
  loadedTokensPerS: number;
  /** Median wall ms of a decode-only step. */
  decodeStepMs: number;
  preemptions: number;
  /** Shares of the KV slots, averaged over steps with requests waiting for memory (sum to 1). */
  memory: { tokens: number; allocatedUnused: number; reservedUnused: number; free: number };
}

/** Runs the trace through one engine; returns its numbers and the step records. */
async function runEngine(
  lm: s.TransformerLM,
  trace: s.TraceRequest[],
  reservation: "paged" | "static-max",
  o: { numBlocks: number; blockSize: number; maxModelLen: number },
): Promise<{ run: EngineRun; records: StepRecord[] }> {
  const engine = new s.LLMEngine(lm, { ...o, maxNumSeqs: 32, maxNumBatchedTokens: 512, reservation });
  // warm the pipelines (prefill and decode shapes) outside the timed run
  engine.addRequest([1, 2, 3], { maxTokens: 3, temperature: 0 });
  await engine.run();
  engine.records.length = 0;
  let x = 7;
  const t0 = performance.now();
  for (const r of trace) {
    const prompt = Array.from(
      { length: r.inputLen },
      () => (x = (x * 1103515245 + 12345) % 2147483648) % lm.vocabSize,
    );
    engine.addRequest(prompt, { id: `r${r.id}`, maxTokens: r.outputLen, temperature: 0 });
  }
  const done: RequestOutput[] = await engine.run();
  const seconds = (performance.now() - t0) / 1000;
  const out = done.reduce((n, d) => n + d.outputs[0].tokens.length, 0);
  const recs = [...engine.records];
  const total = o.numBlocks * o.blockSize;
  const pressured = recs.filter((r) => r.waiting > 0);
  const use = pressured.length ? pressured : recs;
  const mean = (f: (r: StepRecord) => number) => use.reduce((a, r) => a + f(r), 0) / use.length;
  const tokens = mean((r) => r.tokenSlots / total);
  const allocated = mean((r) => (r.blocksUsed * o.blockSize) / total);
  const reserved = mean((r) => Math.max(r.reservedBlocks, r.blocksUsed) * o.blockSize / total);
  const lastWait = recs.findLastIndex((r) => r.waiting > 0);
  const window = recs.slice(0, lastWait + 1);
  const wSec = window.reduce((a, r) => a + r.seconds, 0);
  const decodes = recs.filter((r) => r.batchTokens === r.sequences).map((r) => r.seconds * 1000);
  const st = engine.stats();
  if (done.length !== trace.length || engine.scheduler.allocator.numUsed !== 0) {
    throw new Error(
      `bench paged engine: ${done.length} of ${trace.length} requests ended; blocks left in use`,
    );
  }
  engine.dispose();
  return {
    run: {
      reservation,
      requests: trace.length,
      seconds,
      requestsPerS: trace.length / seconds,
      outputTokensPerS: out / seconds,
      loadedRequestsPerS: wSec > 0 ? window.reduce((a, r) => a + r.ended, 0) / wSec : NaN,
      loadedTokensPerS: wSec > 0 ? window.reduce((a, r) => a + r.generated, 0) / wSec : NaN,
      steps: recs.length,
      meanBatch: recs.reduce((a, r) => a + r.sequences, 0) / recs.length,
      maxBatch: Math.max(...recs.map((r) => r.sequences)),
      decodeStepMs: decodes.length ? median(decodes) : NaN,
      preemptions: st.preemptions.recompute + st.preemptions.swap,
      memory: {
        tokens,
        allocatedUnused: allocated - tokens,
        reservedUnused: reserved - allocated,
        free: 1 - reserved,
      },
    },
    records: recs,
  };
}

/** The engine section: paged vs static-max on one trace, printed and returned for the results file. */
export async function engineSection(count = 96): Promise<{ text: string; result: Record<string, unknown> }> {
  const cfg = { vocabSize: 128, dModel: 64, nLayer: 2, nHead: 4, nKvHead: 2, seed: 1 };
  const lm = new s.TransformerLM(cfg);
  const o = { numBlocks: 96, blockSize: 16, maxModelLen: 256 };
  const trace = scaleTrace(
    s.poissonTrace({ rate: Infinity, count, seed: 1, dataset: "sharegpt" }),
    SCALE,
    o.maxModelLen,
  );
  const stats = s.traceStats(trace);
  const staticRun = await runEngine(lm, trace, "static-max", o);
  const paged = await runEngine(lm, trace, "paged", o);
  lm.dispose();
  const ratio = paged.run.loadedRequestsPerS / staticRun.run.loadedRequestsPerS;
  const ratioAll = paged.run.requestsPerS / staticRun.run.requestsPerS;
  const samples = [...paged.records, ...staticRun.records].map((r) => ({
    batchTokens: r.batchTokens,
    contextTokens: r.contextTokens,
    seconds: r.seconds,
  }));
  let calibration: Record<string, number> | string;
  try {
    calibration = { ...s.calibrateStepTime(samples) };
  } catch (e) {
    calibration = (e as Error).message;
  }
  const pct = (x: number) => (100 * x).toFixed(1);
  const runs = [staticRun.run, paged.run];
  const text = [
    `engine: TransformerLM V ${cfg.vocabSize} d ${cfg.dModel} L ${cfg.nLayer} H ${cfg.nHead}/${cfg.nKvHead}, ` +
    `KV budget ${o.numBlocks} blocks x ${o.blockSize} tokens, maxModelLen ${o.maxModelLen}; ` +
    `${count} ShareGPT-like requests / ${SCALE} (mean in ${stats.meanInput.toFixed(1)}, out ${
      stats.meanOutput.toFixed(1)
    }), all at t = 0`,
    table(
      [
        "reservation",
        "req/s loaded",
        "tok/s loaded",
        "req/s run",
        "tok/s run",
        "s",
        "steps",
        "mean batch",
        "max batch",
        "decode step ms",
        "preempt",
      ],
      runs.map((r) => [
        r.reservation,
        r.loadedRequestsPerS.toFixed(2),
        r.loadedTokensPerS.toFixed(0),
        r.requestsPerS.toFixed(2),
        r.outputTokensPerS.toFixed(0),
        r.seconds.toFixed(1),
        String(r.steps),
        r.meanBatch.toFixed(1),
        String(r.maxBatch),
        r.decodeStepMs.toFixed(1),
        String(r.preemptions),
      ]),
    ),
    "KV memory while requests wait (% of slots): token states / allocated, not yet holding a token / " +
    "reserved, not allocated / free",
    table(
      ["reservation", "tokens", "allocated unused", "reserved unused", "free"],
      runs.map((r) => [
        r.reservation,
        pct(r.memory.tokens),
        pct(r.memory.allocatedUnused),
        pct(r.memory.reservedUnused),
        pct(r.memory.free),
      ]),
    ),
    `"loaded": over the steps while requests still waited; "run": the whole run, drain included ` +
    `(paged / static ${ratioAll.toFixed(2)}x)`,
    `target: paged >= ${TARGET}x static-max requests/s under load (${ratio.toFixed(2)}x): ${
      verdict(ratio >= TARGET)
    }`,
    `step-time model fitted to ${samples.length} steps: ${
      typeof calibration === "string"
        ? calibration
        : `${(calibration.base * 1000).toFixed(2)} ms + ${
          (calibration.perToken * 1000).toFixed(3)
        } ms/token + ${(calibration.perContextToken * 1e6).toFixed(2)} us/context token (rms ${
          (calibration.rmsError * 1000).toFixed(2)
        } ms)`
    }`,
  ].join("\n");
  return {
    text,
    result: {
      config: { model: cfg, ...o, count, scale: SCALE, trace: stats, target: TARGET },
      runs,
      ratio,
      ratioWholeRun: ratioAll,
      verdict: verdict(ratio >= TARGET),
      stepTimeModel: calibration,
    },
  };
}

/** One block size in {@link swapVsRecompute}: ms per preemption of one sequence (medians). */
export interface PreemptionCostRow {
  blockSize: number;
  /** Blocks the sequence holds. */
  blocks: number;
  /** Every layer's K and V blocks copied to host pools (one staged readback). */
  swapOutMs: number;
  /** Copied back into the device pools, until the device has them (a one-value readback). */
  swapInMs: number;
  /** Its prefill run again (chunks of at most 512 tokens, the logits read back). */
  recomputeMs: number;
  /** recomputeMs / (swapOutMs + swapInMs). */
  ratio: number;
}

/**
 * The two ways to preempt a sequence of `length` tokens, timed at each block size: swapping its blocks out
 * to host pools and back in (what `LLMEngine` does with `preemptionMode: "swap"`: `swapBlocks` per layer, K
 * and V), against recomputing its KV by prefilling its tokens again (`preemptionMode: "recompute"`).
 * Interleaved trials, medians; the first round (compilation, first allocations) is not counted.
 */
export async function swapVsRecompute(
  lm: s.TransformerLM,
  length: number,
  o: { blockSizes?: number[]; trials?: number; chunk?: number } = {},
): Promise<PreemptionCostRow[]> {
  const { blockSizes = [8, 16, 32, 64, 128], trials = 5, chunk = 512 } = o;
  const V = lm.vocabSize, toks = Int32Array.from(promptTokens(0, length, V));
  const rows: PreemptionCostRow[] = [];
  for (const bs of blockSizes) {
    const nb = Math.ceil(length / bs);
    const cache = lm.initPagedCache({ numBlocks: nb + 1, blockSize: bs });
    const [, Hkv, , Dh] = cache.k[0].shape;
    const host = cache.k.map(() => s.pagedPools(nb, Hkv, bs, Dh, { device: "cpu", dtype: cache.k[0].dtype }));
    // the sequence owns blocks nb .. 1 (reversed: not the identity map)
    const table = Int32Array.from({ length: nb }, (_, i) => nb - i);
    const prefill = async () => {
      for (let c0 = 0; c0 < length; c0 += chunk) {
        const c1 = Math.min(length, c0 + chunk), n = c1 - c0;
        const positions = Int32Array.from({ length: n }, (_, i) => c0 + i);
        const logits = lm.forwardPaged({
          tokens: toks.slice(c0, c1),
          positions,
          slots: positions.map((p) => table[Math.floor(p / bs)] * bs + (p % bs)),
          queryStarts: new Int32Array([0, n]),
          contextLens: new Int32Array([c1]),
          blockTables: table,
          maxBlocks: nb,
        }, cache);
        await logits.toArray();
        logits.dispose();
      }
    };
    const settle = async () => {
      const t = cache.v[cache.v.length - 1].reshape([-1]).slice([[0, 1]]);
      await t.toArray();
      t.dispose();
    };
    const out = [...table].map((b, i) => [b, i] as [number, number]);
    const back = [...table].map((b, i) => [i, b] as [number, number]);
    const swap = (pairs: [number, number][], toHost: boolean) =>
      Promise.all(cache.k.flatMap((k, l) => {
        const v = cache.v[l], h = host[l];
        return toHost
          ? [s.swapBlocks(k, h.k, pairs), s.swapBlocks(v, h.v, pairs)]
          : [s.swapBlocks(h.k, k, pairs), s.swapBlocks(h.v, v, pairs)];
      }));
    const ms = { out: [] as number[], in: [] as number[], rec: [] as number[] };
    try {
      await prefill();
      await settle();
      for (let t = 0; t <= trials; t++) {
        let t0 = performance.now();
        await swap(out, true);
        const a = performance.now() - t0;
        t0 = performance.now();
        await swap(back, false);
        await settle();
        const b = performance.now() - t0;
        t0 = performance.now();
        await prefill();
        const c = performance.now() - t0;
        if (t === 0) continue;
        ms.out.push(a);
        ms.in.push(b);
        ms.rec.push(c);
      }
    } finally {
      cache.dispose();
      for (const h of host) {
        h.k.dispose();
        h.v.dispose();
      }
    }
    const [so, si, rc] = [median(ms.out), median(ms.in), median(ms.rec)];
    rows.push({
      blockSize: bs,
      blocks: nb,
      swapOutMs: so,
      swapInMs: si,
      recomputeMs: rc,
      ratio: rc / (so + si),
    });
  }
  return rows;
}
