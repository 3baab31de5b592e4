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
 * @module
 */

import * as s from "../mod.ts";
import type { RequestOutput, StepRecord } from "../mod.ts";
import { median, table, verdict } from "./util.ts";

const SCALE = 8;
const TARGET = 2;

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
  const trace = s.poissonTrace({ rate: Infinity, count, seed: 1, dataset: "sharegpt" }).map((r) => ({
    ...r,
    inputLen: Math.max(1, Math.ceil(r.inputLen / SCALE)),
    outputLen: Math.max(
      1,
      Math.min(Math.ceil(r.outputLen / SCALE), o.maxModelLen - 1 - Math.ceil(r.inputLen / SCALE)),
    ),
  }));
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
