/**
 * Synthetic serving workloads: Poisson arrivals, with prompt and output lengths drawn to match the means
 * of the PagedAttention paper's two datasets (Section 6.1, Figure 11: ShareGPT input 161.31 / output
 * 337.99 tokens, Alpaca 19.31 / 58.45).
 *
 * The paper prints the means and histograms, not a distribution. We draw each length from a discretised
 * lognormal (the mass of (k - 1/2, k + 1/2], k >= 1): lengths are positive, right-skewed and long-tailed,
 * as the histograms are. The log-spread `sigma` is our choice (read by eye from the histograms, not
 * fitted); the log-location is then solved so that the expected length, after the caps, equals the
 * paper's mean exactly. Caps: a prompt of at most `maxInput` tokens (default 1024, half the context, so
 * a prompt leaves room to generate) and prompt + output at most `maxTotal` (default 2048, OPT's maximum
 * sequence length). The output is drawn given the prompt, truncated to the room left.
 * @module
 */

import { erf } from "../ops/core/elementwise_ref.ts";
import { ServingConfigError } from "./kv_math.ts";
import { Rng } from "./sampling.ts";

/** One request of a trace. */
export interface TraceRequest {
  /** Index in the trace (0, 1, ...), in arrival order. */
  id: number;
  /** Arrival time in seconds from the start of the trace. */
  arrival: number;
  /** Prompt tokens. */
  inputLen: number;
  /** Output tokens the request generates before it stops (the "true" length an oracle would know). */
  outputLen: number;
}

/** A length distribution: the means to match and the lognormal log-spreads. */
export interface LengthModel {
  /** Mean prompt length (tokens) after the caps. */
  inputMean: number;
  /** Mean output length (tokens) after the caps. */
  outputMean: number;
  /** Log-spread of the prompt lengths. */
  inputSigma: number;
  /** Log-spread of the output lengths. */
  outputSigma: number;
}

/** The paper's datasets (Section 6.1, Figure 11); the sigmas are ours. */
export const DATASETS: Readonly<Record<"sharegpt" | "alpaca", Readonly<LengthModel>>> = Object.freeze({
  /** ShareGPT: long conversations, 8.4x longer prompts and 5.8x longer outputs than Alpaca. */
  sharegpt: Object.freeze({ inputMean: 161.31, outputMean: 337.99, inputSigma: 1.0, outputSigma: 1.0 }),
  /** Alpaca: short instructions and answers. */
  alpaca: Object.freeze({ inputMean: 19.31, outputMean: 58.45, inputSigma: 0.6, outputSigma: 0.9 }),
});

/** Options of {@link poissonTrace}. */
export interface PoissonTraceOptions {
  /** Mean arrivals per second; `Infinity` puts every request at time 0. */
  rate: number;
  /** Requests in the trace. */
  count: number;
  /** Seed (integer >= 0). The lengths depend on the seed only, not on the rate. */
  seed: number;
  /** A named dataset or a length model. */
  dataset: "sharegpt" | "alpaca" | LengthModel;
  /** Most prompt tokens (default 1024). */
  maxInput?: number;
  /** Most prompt + output tokens (default 2048). */
  maxTotal?: number;
}

/** A seeded uniform stream in (0, 1) (the engine's generator); streams of one seed are independent. */
function uniforms(seed: number, stream: number): () => number {
  const r = new Rng(seed, stream);
  return () => r.nextOpen();
}

/** P(X <= x) for ln X ~ N(mu, sigma^2). */
function lognormalCdf(x: number, mu: number, sigma: number): number {
  if (x <= 0) return 0;
  return 0.5 * (1 + erf((Math.log(x) - mu) / (sigma * Math.SQRT2)));
}

/** Prefix sums over k = 1..n of the discretised lognormal's mass (s0) and of k times it (s1). */
function prefix(n: number, mu: number, sigma: number): { s0: Float64Array; s1: Float64Array } {
  const s0 = new Float64Array(n + 1), s1 = new Float64Array(n + 1);
  let prev = 0;
  for (let k = 1; k <= n; k++) {
    const c = lognormalCdf(k + 0.5, mu, sigma), p = c - prev;
    prev = c;
    s0[k] = s0[k - 1] + p;
    s1[k] = s1[k - 1] + k * p;
  }
  return { s0, s1 };
}

/** The largest k in 1..n with s0[k - 1] <= u * s0[n] (inverse CDF by bisection). */
function draw(s0: Float64Array, n: number, u: number): number {
  const target = u * s0[n];
  let lo = 1, hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (s0[mid] > target) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/**
 * Solves mu in [-4 sigma, ln(cap) + 4 sigma] so that meanOf(mu) = target; meanOf increases with mu. Past
 * that range the mass left under the cap underflows the float64 CDF.
 */
function solveMu(
  what: string,
  target: number,
  meanOf: (mu: number) => number,
  sigma: number,
  cap: number,
): number {
  let lo = -4 * sigma, hi = Math.log(cap) + 4 * sigma;
  const reach = [meanOf(lo), meanOf(hi)];
  if (!(target > reach[0] && target < reach[1])) {
    throw new ServingConfigError(
      `poissonTrace: ${what} mean must lie in (${reach[0].toFixed(2)}, ${reach[1].toFixed(2)}) under ` +
        `these caps and sigma, got ${target}`,
    );
  }
  for (let i = 0; i < 100; i++) {
    const mid = (lo + hi) / 2;
    if (meanOf(mid) < target) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/** The fitted length sampler of a length model under the caps (cached: traces of a sweep share it). */
interface LengthSampler {
  inS0: Float64Array;
  outS0: Float64Array;
  maxInput: number;
  maxTotal: number;
  /** The solved log-locations (exposed for tests and tables). */
  inputMu: number;
  outputMu: number;
}

const samplers = new Map<string, LengthSampler>();

function lengthSampler(m: LengthModel, maxInput: number, maxTotal: number): LengthSampler {
  const key = JSON.stringify([m.inputMean, m.outputMean, m.inputSigma, m.outputSigma, maxInput, maxTotal]);
  const hit = samplers.get(key);
  if (hit) return hit;
  for (const f of ["inputSigma", "outputSigma"] as const) {
    if (!(m[f] > 0 && Number.isFinite(m[f]))) {
      throw new ServingConfigError(`poissonTrace: ${f} must be a finite number > 0, got ${m[f]}`);
    }
  }
  const inputMu = solveMu(
    "input",
    m.inputMean,
    (mu) => {
      const { s0, s1 } = prefix(maxInput, mu, m.inputSigma);
      return s1[maxInput] / s0[maxInput];
    },
    m.inputSigma,
    maxInput,
  );
  const inS0 = prefix(maxInput, inputMu, m.inputSigma).s0;
  const pIn = (i: number) => (inS0[i] - inS0[i - 1]) / inS0[maxInput];
  // The output of a prompt of i tokens is drawn from 1..maxTotal - i: its expected mean averages the
  // truncated means over the prompt distribution.
  const outputMean = (mu: number) => {
    const { s0, s1 } = prefix(maxTotal - 1, mu, m.outputSigma);
    let e = 0;
    for (let i = 1; i <= maxInput; i++) e += pIn(i) * (s1[maxTotal - i] / s0[maxTotal - i]);
    return e;
  };
  const outputMu = solveMu("output", m.outputMean, outputMean, m.outputSigma, maxTotal - 1);
  const s: LengthSampler = {
    inS0,
    outS0: prefix(maxTotal - 1, outputMu, m.outputSigma).s0,
    maxInput,
    maxTotal,
    inputMu,
    outputMu,
  };
  samplers.set(key, s);
  return s;
}

function resolveModel(dataset: PoissonTraceOptions["dataset"]): LengthModel {
  if (dataset === "sharegpt" || dataset === "alpaca") return DATASETS[dataset];
  if (dataset === null || typeof dataset !== "object") {
    throw new ServingConfigError(
      `poissonTrace: dataset must be "sharegpt", "alpaca" or a length model, got ${JSON.stringify(dataset)}`,
    );
  }
  return dataset;
}

/**
 * The log-locations (mu) that {@link poissonTrace} solves for a dataset under its caps, with the sigmas:
 * ln(length) ~ N(mu, sigma^2) before discretisation and truncation.
 *
 * @example
 * ```ts
 * import { lengthDistribution } from "seqlab";
 * const d = lengthDistribution("alpaca");
 * console.log(d.inputSigma, d.inputMu > 0); // 0.6 true
 * ```
 */
export function lengthDistribution(
  dataset: PoissonTraceOptions["dataset"],
  caps: { maxInput?: number; maxTotal?: number } = {},
): LengthModel & { inputMu: number; outputMu: number; maxInput: number; maxTotal: number } {
  const m = resolveModel(dataset);
  const { maxInput, maxTotal } = resolveCaps(caps.maxInput, caps.maxTotal);
  const s = lengthSampler(m, maxInput, maxTotal);
  return { ...m, inputMu: s.inputMu, outputMu: s.outputMu, maxInput, maxTotal };
}

function resolveCaps(maxInput = 1024, maxTotal = 2048): { maxInput: number; maxTotal: number } {
  if (!Number.isInteger(maxTotal) || maxTotal < 2 || maxTotal > 1 << 20) {
    throw new ServingConfigError(`poissonTrace: maxTotal must be an integer in [2, 2^20], got ${maxTotal}`);
  }
  if (!Number.isInteger(maxInput) || maxInput < 1 || maxInput >= maxTotal) {
    throw new ServingConfigError(
      `poissonTrace: maxInput must be an integer in [1, maxTotal - 1 = ${maxTotal - 1}], got ${maxInput}`,
    );
  }
  return { maxInput, maxTotal };
}

/**
 * A seeded trace of `count` requests with Poisson arrivals at `rate` per second (exponential gaps; the
 * first request arrives after one gap) and lengths drawn as the module comment describes. The same seed
 * gives the same lengths at every rate, and arrival times that scale as 1 / rate (common random numbers
 * across a rate sweep).
 *
 * @example
 * ```ts
 * import { poissonTrace } from "seqlab";
 * const t = poissonTrace({ rate: 2, count: 3, seed: 1, dataset: "sharegpt" });
 * console.log(t.length, t[0].inputLen + t[0].outputLen <= 2048); // 3 true
 * ```
 */
export function poissonTrace(o: PoissonTraceOptions): TraceRequest[] {
  if (o === null || typeof o !== "object") throw new ServingConfigError(`poissonTrace: options required`);
  const { rate, count, seed } = o;
  if (typeof rate !== "number" || !(rate > 0)) {
    throw new ServingConfigError(`poissonTrace: rate must be a number > 0 (or Infinity), got ${rate}`);
  }
  if (!Number.isInteger(count) || count < 0) {
    throw new ServingConfigError(`poissonTrace: count must be an integer >= 0, got ${count}`);
  }
  if (!Number.isInteger(seed) || seed < 0) {
    throw new ServingConfigError(`poissonTrace: seed must be an integer >= 0, got ${seed}`);
  }
  const { maxInput, maxTotal } = resolveCaps(o.maxInput, o.maxTotal);
  const s = lengthSampler(resolveModel(o.dataset), maxInput, maxTotal);
  const lengths = uniforms(seed, 1), gaps = uniforms(seed, 2);
  const out: TraceRequest[] = [];
  let t = 0;
  for (let id = 0; id < count; id++) {
    t += rate === Infinity ? 0 : -Math.log(gaps()) / rate;
    const inputLen = draw(s.inS0, maxInput, lengths());
    const outputLen = draw(s.outS0, maxTotal - inputLen, lengths());
    out.push({ id, arrival: t, inputLen, outputLen });
  }
  return out;
}

/** Summary of a trace: count, mean and largest lengths, duration and the realised arrival rate. */
export interface TraceStats {
  /** Requests. */
  count: number;
  /** Mean prompt tokens. */
  meanInput: number;
  /** Mean output tokens. */
  meanOutput: number;
  /** Longest prompt + output. */
  maxTotal: number;
  /** Last arrival time (s). */
  duration: number;
  /** count / duration (Infinity when every request arrives at 0). */
  rate: number;
}

/**
 * Summarises a trace.
 *
 * @example
 * ```ts
 * import { poissonTrace, traceStats } from "seqlab";
 * const s = traceStats(poissonTrace({ rate: 1, count: 2000, seed: 3, dataset: "alpaca" }));
 * console.log(Math.abs(s.meanInput - 19.31) < 1); // true
 * ```
 */
export function traceStats(trace: readonly TraceRequest[]): TraceStats {
  let si = 0, so = 0, mt = 0, d = 0;
  for (const r of trace) {
    si += r.inputLen;
    so += r.outputLen;
    mt = Math.max(mt, r.inputLen + r.outputLen);
    d = Math.max(d, r.arrival);
  }
  const n = trace.length;
  return {
    count: n,
    meanInput: n ? si / n : 0,
    meanOutput: n ? so / n : 0,
    maxTotal: mt,
    duration: d,
    rate: n ? (d > 0 ? n / d : Infinity) : 0,
  };
}
