/**
 * An iteration-level serving simulator, for the scales the adapter cannot run: how KV-cache policy
 * limits batch size, and so throughput and latency (the PagedAttention paper's Figures 2 and 12).
 *
 * Each iteration: every running request decodes one token; then waiting requests are admitted first come,
 * first served (the head of the queue blocks those behind it) while the limits on sequences, batched tokens
 * and KV memory allow, and each admitted prompt is prefilled in the same iteration, producing its first
 * token (iteration-level scheduling with mixed prefill and decode, as Orca's selective batching). A request
 * with prompt I and output O holds I + g token states after generating g tokens (the slot of a generated
 * token counts from the iteration that produces it: a real engine writes it one iteration later, one slot
 * per request) and leaves when g = O.
 *
 * Policies (what a request's KV memory is when it is admitted):
 * - `"static-max"`: one contiguous region of `maxLen` slots (FasterTransformer, Orca-Max);
 * - `"static-pow2"`: contiguous, the next power of two of I + O, at most `maxLen` (Orca-Pow2);
 * - `"static-oracle"`: contiguous, exactly I + O (Orca-Oracle: the true output length is known);
 * - `{ paged: B }`: blocks of B slots, ceil((I + 1) / B) at admission and one more whenever a token crosses
 *   a block boundary (vLLM). Admission keeps `watermark` of the blocks free. When a running request needs a
 *   block and none is free, the latest-admitted running request is preempted by recomputation: its blocks
 *   are freed, it goes back to the head of the queue, and on readmission its prompt and the tokens it had
 *   generated are prefilled again. No request is admitted in an iteration that preempted.
 *
 * Contiguous regions are placed first-fit in the slot address space [0, kvTokens).
 *
 * Memory breakdown (after the paper's Figure 2 categories; shares of the `kvTokens` slots, averaged over
 * iterations weighted by their duration; they sum to 1). For a running request with A allocated slots,
 * I + g stored tokens and final length F = I + O:
 * - `tokens`: I + g, slots holding token states;
 * - `reservation`: min(A, F) - (I + g), allocated slots the request will fill later;
 * - `internal`: A - min(A, F), allocated slots it will never fill (internal fragmentation);
 * - `external`: slots allocated to no request during an iteration in which a waiting request was refused
 *   for lack of KV memory or a request was preempted (free, yet too little or too scattered for the next
 *   request: external fragmentation; the paper's bar is "external fragmentation & others"), plus the
 *   slots past the last whole block under paging;
 * - `free`: slots allocated to no request while nothing waited for memory (load, not waste).
 *
 * Step time: t = base + perToken * (batched tokens) + perContextToken * (context tokens read), where the
 * batched tokens are the prefill tokens plus one per decode, and the context tokens are each decode's
 * context (I + g + 1 with its own token) plus each prefill's own tokens (a fused causal prefill reads each
 * of its keys once per query tile; tile re-reads are folded into perToken).
 * @module
 */

import { kvBytesPerToken, OPT_13B, ServingConfigError } from "./kv_math.ts";
import { poissonTrace, type PoissonTraceOptions, type TraceRequest } from "./traces.ts";

/** How KV memory is given to a request (see the module comment). */
export type KVPolicy = "static-max" | "static-pow2" | "static-oracle" | { paged: number };

/** Seconds per iteration: base + perToken * batched tokens + perContextToken * context tokens read. */
export interface StepTimeModel {
  /** Fixed cost per iteration (s): weights read, launches. */
  base: number;
  /** Per batched token (s): the matmuls' FLOPs. */
  perToken: number;
  /** Per context token whose K and V are read (s): attention's memory traffic. */
  perContextToken: number;
}

/**
 * A roofline estimate for OPT-13B on one A100-40GB (1.555 TB/s HBM, 312 TFLOP/s fp16), not a measurement:
 * base = 26 GB of weights / bandwidth = 16.7 ms; perToken = 2 x 13e9 FLOPs / peak = 83 us; perContextToken
 * = 819,200 bytes / bandwidth = 0.53 us. Calibrate from the engine's measured steps with
 * {@link calibrateStepTime} for anything else.
 */
export const OPT_13B_A100_STEP: Readonly<StepTimeModel> = Object.freeze({
  base: 26e9 / 1.555e12,
  perToken: (2 * 13e9) / 312e12,
  perContextToken: kvBytesPerToken(OPT_13B) / 1.555e12,
});

/** Options of {@link simulateServing}. Give `kvTokens`, or `kvBytes` and `bytesPerToken`. */
export interface SimulateOptions {
  /** KV slots (tokens) in the cache. */
  kvTokens?: number;
  /** KV bytes in the cache (with `bytesPerToken`: kvTokens = floor(kvBytes / bytesPerToken)). */
  kvBytes?: number;
  /** KV bytes per token, e.g. `kvBytesPerToken(OPT_13B)`. */
  bytesPerToken?: number;
  /** The policy. */
  policy: KVPolicy;
  /** The model's maximum sequence length, and static-max's reservation (default 2048). */
  maxLen?: number;
  /** Most sequences per iteration (default 256). */
  maxNumSeqs?: number;
  /** Most tokens per iteration, prefill plus decode (default 2048); a prefill alone in its batch may exceed it. */
  maxNumBatchedTokens?: number;
  /** The step-time model (default {@link OPT_13B_A100_STEP}). */
  stepTime?: StepTimeModel;
  /** Paged: share of blocks kept free when admitting (default 0.01). */
  watermark?: number;
  /** Paged: factor on perContextToken for the paged kernel's overhead (default 1; the paper measures 1.20-1.26). */
  pagedReadFactor?: number;
  /** Stop with an error after this many iterations (default 10,000,000). */
  maxIterations?: number;
}

/** Shares of the KV slots, averaged over the run (they sum to 1). */
export interface MemoryBreakdown {
  /** Holding token states. */
  tokens: number;
  /** Allocated, to be filled later by the same request. */
  reservation: number;
  /** Allocated, never filled (internal fragmentation). */
  internal: number;
  /** Free while a request waited for memory (external fragmentation and others). */
  external: number;
  /** Free while nothing waited for memory. */
  free: number;
}

/** What happened to one request. */
export interface RequestRecord {
  /** The trace's id. */
  id: number;
  /** Arrival (s). */
  arrival: number;
  /** When its first token was produced (s). */
  firstToken: number;
  /** When its last token was produced (s). */
  finish: number;
  /** Output tokens. */
  outputLen: number;
  /** Times it was preempted. */
  preemptions: number;
}

/** The result of {@link simulateServing}. */
export interface SimulationResult {
  /** The policy's label: "static-max", "static-pow2", "static-oracle" or "paged(16)". */
  policy: string;
  /** KV slots. */
  kvTokens: number;
  /** Requests finished. */
  finished: number;
  /** Requests refused before starting, with the reason (e.g. longer than the whole cache). */
  rejected: { id: number; reason: string }[];
  /** Iterations run. */
  iterations: number;
  /** First arrival to last finish (s). */
  duration: number;
  /** Finished requests per second over `duration`. */
  requestsPerSecond: number;
  /** Output tokens per second over `duration`. */
  tokensPerSecond: number;
  /** Mean over requests of (finish - arrival) / outputLen (s per token): the paper's normalized latency. */
  normalizedLatency: number;
  /** Mean of finish - arrival (s). */
  meanLatency: number;
  /** Mean of firstToken - arrival (s). */
  meanFirstTokenLatency: number;
  /** Sequences per iteration: mean over iterations, and the most. */
  batch: { mean: number; max: number };
  /** Where the KV memory went. */
  memory: MemoryBreakdown;
  /** Preemptions (paged). */
  preemptions: number;
  /** Prompt and output tokens prefilled again after preemption. */
  recomputedTokens: number;
  /** Per finished request, in trace order. */
  requests: RequestRecord[];
}

interface Seq {
  req: TraceRequest;
  generated: number;
  /** Allocated slots: the region's size (static) or blocks x B (paged). */
  allocated: number;
  /** Static: the region's first slot. */
  start: number;
  firstToken: number;
  preemptions: number;
}

function fail(msg: string): never {
  throw new ServingConfigError(`simulateServing: ${msg}`);
}

function checkInt(name: string, v: unknown, min: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
    fail(`${name} must be an integer >= ${min}, got ${v}`);
  }
  return v;
}

function checkStepTime(op: string, m: StepTimeModel): StepTimeModel {
  if (m === null || typeof m !== "object") throw new ServingConfigError(`${op}: stepTime must be an object`);
  for (const k of ["base", "perToken", "perContextToken"] as const) {
    if (typeof m[k] !== "number" || !Number.isFinite(m[k]) || m[k] < 0) {
      throw new ServingConfigError(`${op}: stepTime.${k} must be a finite number >= 0, got ${m[k]}`);
    }
  }
  if (m.base + m.perToken === 0) throw new ServingConfigError(`${op}: stepTime gives zero-time iterations`);
  return m;
}

/**
 * The policy's label, e.g. "paged(16)".
 *
 * @example
 * ```ts
 * import { policyName } from "seqlab";
 * console.log(policyName({ paged: 16 }), policyName("static-max")); // paged(16) static-max
 * ```
 */
export function policyName(p: KVPolicy): string {
  return typeof p === "string" ? p : `paged(${p.paged})`;
}

function resolvePolicy(p: KVPolicy): { kind: "max" | "pow2" | "oracle" | "paged"; block: number } {
  if (p === "static-max") return { kind: "max", block: 1 };
  if (p === "static-pow2") return { kind: "pow2", block: 1 };
  if (p === "static-oracle") return { kind: "oracle", block: 1 };
  if (p !== null && typeof p === "object" && "paged" in p) {
    return { kind: "paged", block: checkInt("policy.paged (block size)", p.paged, 1) };
  }
  return fail(
    `policy must be "static-max", "static-pow2", "static-oracle" or {paged: blockSize}, got ${
      JSON.stringify(p)
    }`,
  );
}

/** First-fit placement of contiguous regions in [0, capacity); `regions` is kept sorted by start. */
class Contiguous {
  regions: Seq[] = [];
  constructor(readonly capacity: number) {}
  /** The first start where `size` slots are free, or -1. */
  find(size: number): number {
    let at = 0;
    for (const r of this.regions) {
      if (r.start - at >= size) return at;
      at = r.start + r.allocated;
    }
    return this.capacity - at >= size ? at : -1;
  }
  insert(s: Seq): void {
    let i = 0;
    while (i < this.regions.length && this.regions[i].start < s.start) i++;
    this.regions.splice(i, 0, s);
  }
  remove(s: Seq): void {
    this.regions.splice(this.regions.indexOf(s), 1);
  }
}

/**
 * Simulates serving `trace` under a KV policy (see the module comment for the schedule, the memory
 * categories and the step-time model). Deterministic: the same trace and options give the same result.
 *
 * @example
 * ```ts
 * import { poissonTrace, simulateServing } from "seqlab";
 * const trace = poissonTrace({ rate: 1, count: 20, seed: 1, dataset: "alpaca" });
 * const r = simulateServing(trace, { kvTokens: 4096, policy: { paged: 16 } });
 * console.log(r.finished, r.normalizedLatency > 0); // 20 true
 * ```
 */
export function simulateServing(trace: readonly TraceRequest[], options: SimulateOptions): SimulationResult {
  if (!Array.isArray(trace)) fail(`trace must be an array of requests`);
  if (options === null || typeof options !== "object") fail(`options required`);
  const o = options;
  let kvTokens: number;
  if (o.kvTokens !== undefined) {
    if (o.kvBytes !== undefined) fail(`give kvTokens or kvBytes, not both`);
    kvTokens = checkInt("kvTokens", o.kvTokens, 1);
  } else {
    if (o.kvBytes === undefined) fail(`give kvTokens, or kvBytes with bytesPerToken`);
    if (typeof o.kvBytes !== "number" || !(o.kvBytes > 0) || !Number.isFinite(o.kvBytes)) {
      fail(`kvBytes must be a finite number > 0, got ${o.kvBytes}`);
    }
    if (typeof o.bytesPerToken !== "number" || !(o.bytesPerToken > 0) || !Number.isFinite(o.bytesPerToken)) {
      fail(`kvBytes needs bytesPerToken > 0, got ${o.bytesPerToken}`);
    }
    kvTokens = Math.floor(o.kvBytes / o.bytesPerToken);
    if (kvTokens < 1) fail(`kvBytes ${o.kvBytes} holds no token of ${o.bytesPerToken} bytes`);
  }
  const pol = resolvePolicy(o.policy);
  const maxLen = checkInt("maxLen", o.maxLen ?? 2048, 2);
  const maxNumSeqs = checkInt("maxNumSeqs", o.maxNumSeqs ?? 256, 1);
  const maxBatched = checkInt("maxNumBatchedTokens", o.maxNumBatchedTokens ?? 2048, 1);
  const maxIterations = checkInt("maxIterations", o.maxIterations ?? 10_000_000, 1);
  const step = checkStepTime("simulateServing", o.stepTime ?? OPT_13B_A100_STEP);
  const watermark = o.watermark ?? 0.01;
  if (typeof watermark !== "number" || !(watermark >= 0 && watermark < 1)) {
    fail(`watermark must be a number in [0, 1), got ${watermark}`);
  }
  const readFactor = o.pagedReadFactor ?? 1;
  if (typeof readFactor !== "number" || !(readFactor > 0) || !Number.isFinite(readFactor)) {
    fail(`pagedReadFactor must be a finite number > 0, got ${readFactor}`);
  }
  const paged = pol.kind === "paged", B = pol.block;
  const numBlocks = paged ? Math.floor(kvTokens / B) : 0;
  if (paged && numBlocks < 1) fail(`kvTokens ${kvTokens} holds no block of ${B}`);
  const watermarkBlocks = Math.floor(watermark * numBlocks);
  const perCtx = step.perContextToken * (paged ? readFactor : 1);

  // Static reservation of a request (slots), at most maxLen.
  const reserve = (r: TraceRequest): number => {
    const F = r.inputLen + r.outputLen;
    if (pol.kind === "max") return maxLen;
    if (pol.kind === "pow2") return Math.min(maxLen, 2 ** Math.ceil(Math.log2(F)));
    return F;
  };

  // Refuse what can never run; accept the rest in arrival order.
  const rejected: { id: number; reason: string }[] = [];
  const accepted: TraceRequest[] = [];
  let lastArrival = -Infinity;
  for (let i = 0; i < trace.length; i++) {
    const r = trace[i];
    if (r === null || typeof r !== "object") fail(`trace[${i}] is not a request`);
    checkInt(`trace[${i}].inputLen`, r.inputLen, 1);
    checkInt(`trace[${i}].outputLen`, r.outputLen, 1);
    if (typeof r.arrival !== "number" || !Number.isFinite(r.arrival) || r.arrival < 0) {
      fail(`trace[${i}].arrival must be a finite number >= 0, got ${r.arrival}`);
    }
    if (r.arrival < lastArrival) {
      fail(`trace must be in arrival order: trace[${i}] arrives before trace[${i - 1}]`);
    }
    lastArrival = r.arrival;
    const F = r.inputLen + r.outputLen;
    if (F > maxLen) rejected.push({ id: r.id, reason: `prompt + output ${F} > maxLen ${maxLen}` });
    else if (!paged && reserve(r) > kvTokens) {
      rejected.push({ id: r.id, reason: `reservation ${reserve(r)} > kvTokens ${kvTokens}` });
    } else if (paged && Math.ceil(F / B) > numBlocks - watermarkBlocks) {
      rejected.push({
        id: r.id,
        reason: `${Math.ceil(F / B)} blocks > ${numBlocks - watermarkBlocks} admissible blocks`,
      });
    } else accepted.push(r);
  }

  const space = new Contiguous(kvTokens);
  let freeBlocks = numBlocks;
  const waiting: Seq[] = []; // FCFS; preempted requests return to the front
  let running: Seq[] = []; // in admission order
  const done: RequestRecord[] = [];
  let t = 0, next = 0, iterations = 0, preemptions = 0, recomputed = 0;
  let batchSum = 0, batchMax = 0, timeSum = 0;
  const mem = { tokens: 0, reservation: 0, internal: 0, external: 0, free: 0 };
  const tailSlots = paged ? kvTokens - numBlocks * B : 0;

  const release = (s: Seq) => {
    if (paged) freeBlocks += s.allocated / B;
    else space.remove(s);
    s.allocated = 0;
  };

  while (next < accepted.length || waiting.length || running.length) {
    if (!waiting.length && !running.length) t = Math.max(t, accepted[next].arrival);
    while (next < accepted.length && accepted[next].arrival <= t) {
      const req = accepted[next++];
      waiting.push({ req, generated: 0, allocated: 0, start: -1, firstToken: -1, preemptions: 0 });
    }
    if (++iterations > maxIterations) fail(`more than maxIterations = ${maxIterations} iterations`);

    // Decodes: every running request appends one token; paging may need a block, preempting the latest.
    let memoryBound = false;
    if (paged) {
      for (let i = 0; i < running.length; i++) {
        const s = running[i];
        if (s.req.inputLen + s.generated + 1 <= s.allocated) continue;
        while (freeBlocks === 0 && running.length - 1 > i) {
          const victim = running.pop()!;
          release(victim);
          victim.preemptions++;
          preemptions++;
          waiting.unshift(victim);
          memoryBound = true;
        }
        if (freeBlocks === 0) {
          // s is the latest itself: preempt it (the oldest always fits: checked at acceptance)
          running.pop();
          release(s);
          s.preemptions++;
          preemptions++;
          waiting.unshift(s);
          memoryBound = true;
          break;
        }
        freeBlocks--;
        s.allocated += B;
      }
    }
    const decodes = running;
    let batched = decodes.length, context = 0;
    for (const s of decodes) context += s.req.inputLen + s.generated + 1;

    // Admissions, first come first served.
    const prefills: Seq[] = [];
    if (!memoryBound) {
      while (waiting.length && decodes.length + prefills.length < maxNumSeqs) {
        const s = waiting[0];
        const n = s.req.inputLen + s.generated; // prompt, plus what it had generated if preempted
        if (batched + n > maxBatched && batched > 0) break;
        if (paged) {
          const need = Math.ceil((n + 1) / B);
          if (freeBlocks - need < watermarkBlocks) {
            memoryBound = true;
            break;
          }
          freeBlocks -= need;
          s.allocated = need * B;
        } else {
          const size = reserve(s.req), at = space.find(size);
          if (at < 0) {
            memoryBound = true;
            break;
          }
          s.start = at;
          s.allocated = size;
          space.insert(s);
        }
        waiting.shift();
        prefills.push(s);
        batched += n;
        context += n;
        if (s.generated > 0) recomputed += n;
      }
    }
    const batch = decodes.length + prefills.length;
    if (batch === 0) {
      // Nothing can run: only possible while nothing is running and the head waits for an arrival-free
      // resource, which acceptance rules out.
      fail(`internal: no request can be scheduled at t = ${t}`);
    }

    const dt = step.base + step.perToken * batched + perCtx * context;
    running = decodes.concat(prefills);
    // Memory during the iteration, with this iteration's tokens stored.
    let allocated = 0;
    for (const s of running) {
      const stored = s.req.inputLen + s.generated + 1, F = s.req.inputLen + s.req.outputLen;
      const used = Math.min(s.allocated, F);
      mem.tokens += dt * stored;
      mem.reservation += dt * (used - stored);
      mem.internal += dt * (s.allocated - used);
      allocated += s.allocated;
    }
    const freeSlots = kvTokens - tailSlots - allocated;
    if (memoryBound) mem.external += dt * (freeSlots + tailSlots);
    else {
      mem.free += dt * freeSlots;
      mem.external += dt * tailSlots;
    }
    timeSum += dt;
    batchSum += batch;
    batchMax = Math.max(batchMax, batch);

    t += dt;
    const still: Seq[] = [];
    for (const s of running) {
      s.generated++;
      if (s.firstToken < 0) s.firstToken = t;
      if (s.generated === s.req.outputLen) {
        release(s);
        done.push({
          id: s.req.id,
          arrival: s.req.arrival,
          firstToken: s.firstToken,
          finish: t,
          outputLen: s.req.outputLen,
          preemptions: s.preemptions,
        });
      } else still.push(s);
    }
    running = still;
  }

  done.sort((a, b) => a.id - b.id);
  const n = done.length;
  let norm = 0, lat = 0, ttft = 0, outTokens = 0, first = Infinity, last = 0;
  for (const r of done) {
    norm += (r.finish - r.arrival) / r.outputLen;
    lat += r.finish - r.arrival;
    ttft += r.firstToken - r.arrival;
    outTokens += r.outputLen;
    first = Math.min(first, r.arrival);
    last = Math.max(last, r.finish);
  }
  const duration = n ? last - first : 0;
  const share = (v: number) => (timeSum > 0 ? v / (timeSum * kvTokens) : 0);
  return {
    policy: policyName(o.policy),
    kvTokens,
    finished: n,
    rejected,
    iterations,
    duration,
    requestsPerSecond: duration > 0 ? n / duration : 0,
    tokensPerSecond: duration > 0 ? outTokens / duration : 0,
    normalizedLatency: n ? norm / n : 0,
    meanLatency: n ? lat / n : 0,
    meanFirstTokenLatency: n ? ttft / n : 0,
    batch: { mean: iterations ? batchSum / iterations : 0, max: batchMax },
    memory: {
      tokens: share(mem.tokens),
      reservation: share(mem.reservation),
      internal: share(mem.internal),
      external: share(mem.external),
      free: share(mem.free),
    },
    preemptions,
    recomputedTokens: recomputed,
    requests: done,
  };
}

/** One point of a rate sweep: the rate and the simulation's result without its per-request records. */
export type SweepPoint = Omit<SimulationResult, "requests"> & { rate: number };

/**
 * Simulates one seeded Poisson trace per rate (same seed, so the same lengths at every rate) under the same
 * options: throughput and normalized latency against request rate.
 *
 * @example
 * ```ts
 * import { sweepRates } from "seqlab";
 * const pts = sweepRates([0.5, 1], { count: 20, seed: 1, dataset: "alpaca" }, { kvTokens: 4096, policy: "static-oracle" });
 * console.log(pts.map((p) => p.rate)); // [ 0.5, 1 ]
 * ```
 */
export function sweepRates(
  rates: readonly number[],
  trace: Omit<PoissonTraceOptions, "rate">,
  options: SimulateOptions,
): SweepPoint[] {
  if (!Array.isArray(rates) || rates.length === 0) {
    throw new ServingConfigError(`sweepRates: rates must be a non-empty array, got ${JSON.stringify(rates)}`);
  }
  return rates.map((rate) => {
    const { requests: _, ...r } = simulateServing(poissonTrace({ ...trace, rate }), options);
    return { rate, ...r };
  });
}

/**
 * The highest swept rate at and below which every point's normalized latency is at most `maxLatency`
 * (s per token), or 0 when even the lowest exceeds it: the paper's "request rate sustained at the same
 * latency". Points are taken in increasing rate.
 *
 * @example
 * ```ts
 * import { sustainableRate } from "seqlab";
 * const pts = [{ rate: 1, normalizedLatency: 0.1 }, { rate: 2, normalizedLatency: 0.3 }];
 * console.log(sustainableRate(pts, 0.2)); // 1
 * ```
 */
export function sustainableRate(
  points: readonly { rate: number; normalizedLatency: number }[],
  maxLatency: number,
): number {
  if (!(maxLatency > 0)) {
    throw new ServingConfigError(`sustainableRate: maxLatency must be > 0 (s per token), got ${maxLatency}`);
  }
  let best = 0;
  for (const p of [...points].sort((a, b) => a.rate - b.rate)) {
    if (!(p.normalizedLatency <= maxLatency)) break;
    best = p.rate;
  }
  return best;
}

/** One measured iteration: tokens it batched, context tokens it read, and its time. */
export interface StepSample {
  /** Prefill tokens plus one per decode. */
  batchTokens: number;
  /** Context tokens whose keys and values the iteration read. */
  contextTokens: number;
  /** Measured seconds. */
  seconds: number;
}

/**
 * Fits the step-time model t = base + perToken * batchTokens + perContextToken * contextTokens by least
 * squares to measured iterations (e.g. the engine's steps). Needs three samples that vary the batch and
 * the context independently. Coefficients are returned as fitted (a negative one says the samples do not
 * support the model) with the root-mean-square residual.
 *
 * @example
 * ```ts
 * import { calibrateStepTime } from "seqlab";
 * const m = calibrateStepTime([
 *   { batchTokens: 1, contextTokens: 100, seconds: 0.0101 + 0.001 },
 *   { batchTokens: 8, contextTokens: 100, seconds: 0.0101 + 0.008 },
 *   { batchTokens: 8, contextTokens: 900, seconds: 0.0109 + 0.008 },
 * ]);
 * console.log(m.base.toFixed(4), m.perToken.toFixed(4), m.perContextToken.toExponential(1)); // 0.0100 0.0010 1.0e-6
 * ```
 */
export function calibrateStepTime(samples: readonly StepSample[]): StepTimeModel & { rmsError: number } {
  const op = "calibrateStepTime";
  if (!Array.isArray(samples) || samples.length < 3) {
    throw new ServingConfigError(`${op}: needs at least 3 samples, got ${samples?.length}`);
  }
  // Normal equations (X^T X) w = X^T y with rows [1, batchTokens, contextTokens], in float64; columns are
  // scaled to unit size first so the pivots compare fairly.
  const sc = [1, 0, 0];
  for (const [i, s] of samples.entries()) {
    for (const k of ["batchTokens", "contextTokens", "seconds"] as const) {
      if (typeof s?.[k] !== "number" || !Number.isFinite(s[k]) || s[k] < 0) {
        throw new ServingConfigError(`${op}: samples[${i}].${k} must be a finite number >= 0, got ${s?.[k]}`);
      }
    }
    sc[1] = Math.max(sc[1], s.batchTokens);
    sc[2] = Math.max(sc[2], s.contextTokens);
  }
  if (sc[1] === 0 || sc[2] === 0) {
    throw new ServingConfigError(`${op}: samples do not vary batchTokens and contextTokens (all zero)`);
  }
  const A = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]];
  for (const s of samples) {
    const x = [1, s.batchTokens / sc[1], s.contextTokens / sc[2]];
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 3; j++) A[i][j] += x[i] * x[j];
      A[i][3] += x[i] * s.seconds;
    }
  }
  const scale = Math.max(A[0][0], A[1][1], A[2][2]);
  for (let c = 0; c < 3; c++) {
    let p = c;
    for (let r = c + 1; r < 3; r++) if (Math.abs(A[r][c]) > Math.abs(A[p][c])) p = r;
    if (Math.abs(A[p][c]) <= 1e-12 * scale) {
      throw new ServingConfigError(
        `${op}: the samples do not determine the model (batchTokens, contextTokens and a constant are ` +
          `collinear over ${samples.length} samples): vary the batch and the context independently`,
      );
    }
    [A[c], A[p]] = [A[p], A[c]];
    for (let r = 0; r < 3; r++) {
      if (r === c) continue;
      const f = A[r][c] / A[c][c];
      for (let k = c; k < 4; k++) A[r][k] -= f * A[c][k];
    }
  }
  const w = [0, 1, 2].map((i) => A[i][3] / A[i][i] / sc[i]);
  let sq = 0;
  for (const s of samples) {
    const e = w[0] + w[1] * s.batchTokens + w[2] * s.contextTokens - s.seconds;
    sq += e * e;
  }
  return { base: w[0], perToken: w[1], perContextToken: w[2], rmsError: Math.sqrt(sq / samples.length) };
}
