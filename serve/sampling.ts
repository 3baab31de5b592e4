/**
 * Token sampling for the serving engine, on the host: temperature, top-k, top-p (nucleus), greedy, seeded
 * per sequence so a request's tokens do not depend on what else shares its batch, and the candidate
 * expansion of beam search. Logits arrive as one Float32Array row per sequence (one readback per step).
 * @module
 */

import { Rng } from "../runtime/rng.ts";

export { Rng };

/** How a request samples (the engine's `addRequest` options). */
export interface SamplingParams {
  /** Most new tokens per sequence (default 16). */
  maxTokens?: number;
  /** Softmax temperature; 0 is greedy argmax (default 1). */
  temperature?: number;
  /** Keep only the k most likely tokens; 0 keeps all (default 0). */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p (default 1: all). */
  topP?: number;
  /** Seed of the request's random streams (default: from the request id). */
  seed?: number;
  /** Independent samples of one prompt, sharing its KV blocks (default 1). */
  n?: number;
  /** Beam search with this many beams (0 or 1: sampling; default 0). Returns the best `n`. */
  beamWidth?: number;
  /** Token ids that end a sequence (not included in its output). */
  stop?: readonly number[];
  /** Beam search's length penalty: score = logprob / length^lengthPenalty (default 1). */
  lengthPenalty?: number;
}

/** {@link SamplingParams} with every default filled in. */
export type ResolvedSampling = Required<Omit<SamplingParams, "seed">> & { seed: number };

/** Validates sampling options and fills in defaults; throws a named error for each bad field. */
export function resolveSampling(op: string, p: SamplingParams, defaultSeed: number): ResolvedSampling {
  const r: ResolvedSampling = {
    maxTokens: p.maxTokens ?? 16,
    temperature: p.temperature ?? 1,
    topK: p.topK ?? 0,
    topP: p.topP ?? 1,
    seed: p.seed ?? defaultSeed,
    n: p.n ?? 1,
    beamWidth: p.beamWidth ?? 0,
    stop: [...(p.stop ?? [])],
    lengthPenalty: p.lengthPenalty ?? 1,
  };
  const int = (name: string, v: number, min: number) => {
    if (!Number.isInteger(v) || v < min) {
      throw new Error(`${op}: ${name} must be an integer >= ${min}, got ${v}`);
    }
  };
  int("maxTokens", r.maxTokens, 1);
  int("topK", r.topK, 0);
  int("n", r.n, 1);
  int("beamWidth", r.beamWidth, 0);
  int("seed", r.seed, 0);
  if (!(r.temperature >= 0) || !Number.isFinite(r.temperature)) {
    throw new Error(`${op}: temperature must be a finite number >= 0, got ${r.temperature}`);
  }
  if (!(r.topP > 0 && r.topP <= 1)) throw new Error(`${op}: topP must be in (0, 1], got ${r.topP}`);
  if (!Number.isFinite(r.lengthPenalty)) {
    throw new Error(`${op}: lengthPenalty must be finite, got ${r.lengthPenalty}`);
  }
  if (r.beamWidth > 1 && r.n > r.beamWidth) {
    throw new Error(`${op}: n = ${r.n} beams asked for but beamWidth is ${r.beamWidth}`);
  }
  for (const t of r.stop) {
    if (!Number.isInteger(t) || t < 0) {
      throw new Error(`${op}: stop token ids must be integers >= 0, got ${t}`);
    }
  }
  return r;
}

/** log softmax of a logits row (float64), with the temperature applied when positive. */
export function logSoftmaxRow(logits: ArrayLike<number>, temperature = 1): Float64Array {
  const t = temperature > 0 ? temperature : 1;
  const V = logits.length, out = new Float64Array(V);
  let m = -Infinity;
  for (let i = 0; i < V; i++) m = Math.max(m, logits[i] / t);
  let s = 0;
  for (let i = 0; i < V; i++) s += Math.exp(logits[i] / t - m);
  const lse = m + Math.log(s);
  for (let i = 0; i < V; i++) out[i] = logits[i] / t - lse;
  return out;
}

/** The token id with the largest logit (the lowest id among ties). */
function argmaxRow(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/**
 * Draws the next token from a logits row: greedy when the temperature is 0, else softmax(logits / T)
 * restricted to the top-k tokens and then to the top-p nucleus (ties ordered by token id), one uniform
 * draw from `rng`. Returns the token and its log probability under the unrestricted softmax at T = 1.
 *
 * @example
 * ```ts
 * import { Rng, sampleToken } from "seqlab";
 * const row = new Float32Array([0, 3, 1]);
 * console.log(sampleToken(row, { temperature: 0, topK: 0, topP: 1 }, new Rng(1)).token); // 1
 * ```
 */
export function sampleToken(
  row: ArrayLike<number>,
  p: Pick<ResolvedSampling, "temperature" | "topK" | "topP">,
  rng: Rng,
): { token: number; logprob: number } {
  for (let i = 0; i < row.length; i++) {
    if (Number.isNaN(row[i])) throw new Error(`sampleToken: logit ${i} is NaN`);
  }
  const lp = logSoftmaxRow(row);
  if (p.temperature === 0) {
    const token = argmaxRow(row);
    return { token, logprob: lp[token] };
  }
  const lt = logSoftmaxRow(row, p.temperature);
  const ids = Array.from({ length: row.length }, (_, i) => i).sort((a, b) => lt[b] - lt[a] || a - b);
  const k = p.topK > 0 ? Math.min(p.topK, ids.length) : ids.length;
  let keep = k, mass = 0;
  if (p.topP < 1) {
    for (let i = 0; i < k; i++) {
      mass += Math.exp(lt[ids[i]]);
      if (mass >= p.topP) {
        keep = i + 1;
        break;
      }
    }
  }
  let total = 0;
  for (let i = 0; i < keep; i++) total += Math.exp(lt[ids[i]]);
  let u = rng.next() * total, token = ids[keep - 1];
  for (let i = 0; i < keep; i++) {
    u -= Math.exp(lt[ids[i]]);
    if (u < 0) {
      token = ids[i];
      break;
    }
  }
  return { token, logprob: lp[token] };
}

/** A candidate continuation of a beam: its parent beam's index, the token and the new cumulative logprob. */
export interface BeamCandidate {
  /** Index of the parent beam in the list given. */
  parent: number;
  /** The next token. */
  token: number;
  /** The parent's cumulative log probability plus the token's. */
  score: number;
}

/**
 * One step of beam search: from each live beam's logits row and cumulative log probability, the best
 * `2 * width` continuations overall (so that `width` remain after some end), ordered by score, ties by
 * parent then token.
 *
 * @example
 * ```ts
 * import { expandBeams } from "seqlab";
 * const c = expandBeams([new Float32Array([0, 2]), new Float32Array([1, 0])], [0, -5], 1);
 * console.log(c.map((x) => [x.parent, x.token])); // [ [ 0, 1 ], [ 0, 0 ] ]
 * ```
 */
export function expandBeams(
  rows: readonly ArrayLike<number>[],
  cumLogprobs: readonly number[],
  width: number,
): BeamCandidate[] {
  const all: BeamCandidate[] = [];
  rows.forEach((row, parent) => {
    const lp = logSoftmaxRow(row);
    const ids = Array.from({ length: row.length }, (_, i) => i).sort((a, b) => lp[b] - lp[a] || a - b);
    for (const token of ids.slice(0, 2 * width)) {
      all.push({ parent, token, score: cumLogprobs[parent] + lp[token] });
    }
  });
  all.sort((a, b) => b.score - a.score || a.parent - b.parent || a.token - b.token);
  return all.slice(0, 2 * width);
}
