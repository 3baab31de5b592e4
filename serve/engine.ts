/**
 * `LLMEngine`: serving a {@link PagedModel} (TransformerLM, JambaLM) with a paged KV cache, after vLLM. Each `step()`
 * asks the {@link Scheduler} what to run (continuous batching: prompt chunks and decode tokens of many
 * requests in one model call), performs its block operations (swap out, swap in, copy-on-write), runs the
 * model once, reads the sampled rows' logits back (the step's one readback) and samples on the host:
 * greedy, temperature / top-k / top-p with a seeded stream per sample, parallel sampling (n > 1, the
 * samples share the prompt's blocks) and beam search (beams fork and free blocks with copy-on-write).
 *
 * Nothing is lost: every request ends finished (stop token, length) or aborted with a stated reason, and
 * when the engine is idle every block is free. A prompt that can never fit is refused at `addRequest`.
 *
 * `reservation: "static-max"` runs the same engine the way systems before vLLM reserved memory: a request
 * is admitted only when a whole `maxModelLen` of blocks per sequence can be set aside for it, so the
 * benchmark can compare paged allocation against static reservation at the same KV budget.
 *
 * Models with per-sequence recurrent state (a JambaLM with Mamba layers: its cache has `stateSlots`) are
 * served too: the cache holds `maxNumSeqs` state slots, each running sequence owns one ({@link StateSlots})
 * and gives it back when it finishes, is aborted or is preempted; preemption recomputes (the next prefill
 * starts at position 0, from a zero state). A state cannot be rebuilt from cached blocks, copied to a fork
 * or swapped, so for such a model the engine refuses, with an {@link EngineError}, prefix caching
 * (`enablePrefixCaching`), swapping (`preemptionMode: "swap"`, `swapBlocks` > 0), parallel sampling
 * (`n` > 1) and beam search (`beamWidth` > 1).
 * @module
 */

import { PagedKVCache, type PagedModel } from "../models/paged.ts";
import { copyBlocks, pagedPools, swapBlocks } from "../ops/paged/mod.ts";
import { BlockAllocator } from "./block_allocator.ts";
import { StateSlots } from "./state_slots.ts";
import { packBatch, type PreemptionMode, type ScheduledSequence, Scheduler } from "./scheduler.ts";
import type { FinishReason, Sequence, SequenceGroup } from "./sequence.ts";
import {
  expandBeams,
  type ResolvedSampling,
  resolveSampling,
  Rng,
  sampleToken,
  type SamplingParams,
} from "./sampling.ts";

/** Options of an {@link LLMEngine}. */
export interface EngineOptions {
  /** Blocks in each layer's KV pool (the KV budget). */
  numBlocks: number;
  /** Tokens per block (default 16). */
  blockSize?: number;
  /** Most sequences per step (default 32, at most maxNumBatchedTokens); also the state slots of a model with state. */
  maxNumSeqs?: number;
  /** Most tokens fed per step (default 512). */
  maxNumBatchedTokens?: number;
  /** Longest sequence, prompt plus output (default: the whole cache, at most 2048). */
  maxModelLen?: number;
  /** How to preempt when blocks run out (default "auto": recompute single sequences, swap groups). */
  preemptionMode?: PreemptionMode;
  /** Host pool for swapping, in blocks (default 0: no swapping, preemption recomputes; refused > 0 with state). */
  swapBlocks?: number;
  /** Cache full prompt blocks by content and reuse them across requests (default false; refused with state). */
  enablePrefixCaching?: boolean;
  /** Fraction of blocks kept free when admitting (default 0.01). */
  watermark?: number;
  /** "paged" (default) allocates blocks as tokens arrive; "static-max" reserves maxModelLen per sequence. */
  reservation?: "paged" | "static-max";
}

/** One sample (or beam) of a request. */
export interface CompletionOutput {
  /** Index among the request's samples (beams: rank by score). */
  index: number;
  /** Generated token ids (a stop token is not included). */
  tokens: number[];
  /** Sum of the generated tokens' log probabilities (under the unmodified softmax). */
  cumulativeLogprob: number;
  /** Why it ended, or undefined while it runs. */
  finishReason: FinishReason | undefined;
}

/** A request's state as `step()` and `generate()` report it. */
export interface RequestOutput {
  /** The request id. */
  id: string;
  /** The prompt's token ids. */
  prompt: number[];
  /** The samples, or the best `n` beams once beam search ends. */
  outputs: CompletionOutput[];
  /** Whether the request ended (finished or aborted). */
  finished: boolean;
  /** Why the request was aborted, when it was. */
  abortReason?: string;
  /** Times the request was preempted (recomputed or swapped). */
  preemptions: number;
}

/** Per-step record (for calibrating the simulator's step-time model). */
export interface StepRecord {
  /** Tokens fed. */
  batchTokens: number;
  /** Context tokens attended to (sum of context lengths). */
  contextTokens: number;
  /** Sequences in the step. */
  sequences: number;
  /** Wall-clock seconds of the step, block operations and readback included. */
  seconds: number;
  /** Blocks in use after the step. */
  blocksUsed: number;
  /** Slots holding token states after the step (written keys and values). */
  tokenSlots: number;
  /** Blocks the running sequences' tables list (a block shared by k tables counted k times: no sharing). */
  logicalBlocks: number;
  /** Blocks set aside by static-max reservation for the admitted requests (0 when paged). */
  reservedBlocks: number;
  /** Requests waiting (queued, preempted or swapped) after the step. */
  waiting: number;
  /** Requests that ended (finished or aborted) in the step. */
  ended: number;
  /** Tokens generated in the step. */
  generated: number;
}

/** Engine counters. */
export interface EngineStats {
  /** Steps run. */
  steps: number;
  /** Prompt tokens fed (recomputation included). */
  promptTokens: number;
  /** Tokens generated. */
  generatedTokens: number;
  /** Preemptions by recomputation and by swapping. */
  preemptions: { recompute: number; swap: number };
  /** Blocks swapped out and in. */
  swappedBlocks: { out: number; in: number };
  /** Copy-on-write block copies. */
  copiedBlocks: number;
  /** Requests finished and aborted. */
  finished: number;
  /** Requests aborted (by the scheduler, the caller or a refusal). */
  aborted: number;
  /** The allocator's counters (prefix-cache hits among them). */
  blocks: ReturnType<BlockAllocator["stats"]>;
  /** State slots held by running sequences, of the cache's total (0 of 0 for a model without state). */
  stateSlots: { used: number; total: number };
}

/** An error of the engine's input (names the method and what was wrong). */
export class EngineError extends Error {
  /** An error with a message naming the method. */
  constructor(message: string) {
    super(message);
    this.name = "EngineError";
  }
}

interface Request {
  id: string;
  prompt: number[];
  params: ResolvedSampling;
  group: SequenceGroup | null;
  /** per sequence id: its random stream and cumulative logprob */
  rngs: Map<number, Rng>;
  cum: Map<number, number>;
  /** sample index per sequence id (parallel sampling) */
  index: Map<number, number>;
  /** beam search: hypotheses that ended on a stop token */
  done: { tokens: number[]; cum: number }[];
  beam: boolean;
  ended: boolean;
  abortReason?: string;
  reserved: number;
  result: RequestOutput | null;
}

/**
 * A serving engine over a paged model. Add requests, then call `step()` until `hasUnfinished()` is false
 * (or use `generate` / `run`). Free its cache with `dispose()`.
 *
 * @example
 * ```ts
 * import { LLMEngine, TransformerLM } from "seqlab";
 * const lm = new TransformerLM({ vocabSize: 11, dModel: 16, nLayer: 1, nHead: 2, seed: 1 });
 * const engine = new LLMEngine(lm, { numBlocks: 8, blockSize: 8 });
 * engine.addRequest([1, 2, 3], { maxTokens: 4, temperature: 0 });
 * const [out] = await engine.run();
 * console.log(out.outputs[0].tokens.length, out.outputs[0].finishReason); // 4 length
 * engine.dispose();
 * lm.dispose();
 * ```
 */
export class LLMEngine {
  /** The model served. */
  readonly model: PagedModel;
  /** The paged KV cache (device pools). */
  readonly cache: PagedKVCache;
  /** The scheduler (its allocator holds the block tables). */
  readonly scheduler: Scheduler;
  /** The resolved options. */
  readonly options: Readonly<Required<EngineOptions>>;
  /** Per-step records, for calibration and plots. */
  readonly records: StepRecord[] = [];
  #host: PagedKVCache | null = null;
  #slots: StateSlots | null = null;
  #requests = new Map<string, Request>();
  #held: Request[] = [];
  #reserved = 0;
  #ids = 0;
  #stats = {
    steps: 0,
    promptTokens: 0,
    generatedTokens: 0,
    swappedBlocks: { out: 0, in: 0 },
    copiedBlocks: 0,
    finished: 0,
    aborted: 0,
  };
  #disposed = false;

  /**
   * An engine over `model` with a fresh paged cache of `opts.numBlocks` blocks (and `maxNumSeqs` state slots
   * for a model with state, which refuses prefix caching and swapping: see the module comment).
   */
  constructor(model: PagedModel, opts: EngineOptions) {
    const op = "LLMEngine";
    const bs = opts.blockSize ?? 16;
    if (!Number.isInteger(opts.numBlocks) || opts.numBlocks < 1) {
      throw new EngineError(`${op}: numBlocks must be a positive integer, got ${opts.numBlocks}`);
    }
    const o: Required<EngineOptions> = {
      numBlocks: opts.numBlocks,
      blockSize: bs,
      maxNumSeqs: opts.maxNumSeqs ?? Math.min(32, opts.maxNumBatchedTokens ?? 512),
      maxNumBatchedTokens: opts.maxNumBatchedTokens ?? 512,
      maxModelLen: opts.maxModelLen ?? Math.min(2048, opts.numBlocks * bs),
      preemptionMode: opts.preemptionMode ?? "auto",
      swapBlocks: opts.swapBlocks ?? 0,
      enablePrefixCaching: opts.enablePrefixCaching ?? false,
      watermark: opts.watermark ?? 0.01,
      reservation: opts.reservation ?? "paged",
    };
    if (!Number.isInteger(o.maxModelLen) || o.maxModelLen < 2) {
      throw new EngineError(`${op}: maxModelLen must be an integer >= 2, got ${o.maxModelLen}`);
    }
    if (o.reservation !== "paged" && o.reservation !== "static-max") {
      throw new EngineError(
        `${op}: reservation must be "paged" or "static-max", got ${JSON.stringify(o.reservation)}`,
      );
    }
    if (!Number.isInteger(o.swapBlocks) || o.swapBlocks < 0) {
      throw new EngineError(`${op}: swapBlocks must be an integer >= 0, got ${o.swapBlocks}`);
    }
    this.options = o;
    this.model = model;
    const allocator = new BlockAllocator(o.numBlocks, bs, {
      watermark: o.watermark,
      enablePrefixCaching: o.enablePrefixCaching,
    });
    this.scheduler = new Scheduler(allocator, {
      maxNumSeqs: o.maxNumSeqs,
      maxNumBatchedTokens: o.maxNumBatchedTokens,
      preemptionMode: o.preemptionMode,
      swapBlocks: o.swapBlocks,
    });
    this.cache = model.initPagedCache({ numBlocks: o.numBlocks, blockSize: bs, maxSeqs: o.maxNumSeqs });
    if (this.cache.stateSlots > 0) {
      const refuse = o.enablePrefixCaching
        ? "prefix caching (enablePrefixCaching) would skip computing the cached tokens, but a recurrent state " +
          "cannot be rebuilt from cached blocks"
        : o.preemptionMode === "swap" || o.swapBlocks > 0
        ? `swapping (preemptionMode "${o.preemptionMode}", swapBlocks ${o.swapBlocks}) moves K/V blocks only, ` +
          `not the recurrent state: use preemptionMode "recompute" or "auto" with swapBlocks 0`
        : null;
      if (refuse !== null) {
        this.cache.dispose();
        throw new EngineError(`${op}: the model keeps per-sequence recurrent state; ${refuse}`);
      }
      this.#slots = new StateSlots(this.cache.stateSlots);
    }
  }

  #hostPools(): PagedKVCache {
    if (this.#host) return this.#host;
    const c = this.cache, [, Hkv, bs, D] = c.k[0].shape;
    const pools = c.k.map(() =>
      pagedPools(this.options.swapBlocks, Hkv, bs, D, { device: "cpu", dtype: c.k[0].dtype })
    );
    this.#host = new PagedKVCache(pools.map((p) => p.k), pools.map((p) => p.v), this.options.swapBlocks, bs);
    return this.#host;
  }

  /**
   * Queues a request and returns its id. Throws an {@link EngineError} (nothing queued) for bad sampling
   * options, tokens outside the vocabulary, an empty prompt, a prompt of maxModelLen tokens or more, or one
   * that needs more blocks than the whole cache.
   */
  addRequest(prompt: ArrayLike<number>, params: SamplingParams & { id?: string } = {}): string {
    const op = "LLMEngine.addRequest";
    this.#live(op);
    const id = params.id ?? `req-${this.#ids}`;
    if (this.#requests.has(id)) throw new EngineError(`${op}: a request with id "${id}" is already queued`);
    const p = resolveSampling(op, params, this.#ids++);
    const toks = Array.from(prompt);
    if (toks.length === 0) throw new EngineError(`${op}: the prompt of "${id}" is empty`);
    const V = this.model.vocabSize;
    toks.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= V) {
        throw new EngineError(
          `${op}: prompt token ${i} of "${id}" is ${t}, outside the vocabulary [0, ${V})`,
        );
      }
    });
    const o = this.options, bs = o.blockSize;
    if (toks.length >= o.maxModelLen) {
      throw new EngineError(
        `${op}: the prompt of "${id}" has ${toks.length} tokens; maxModelLen ${o.maxModelLen} leaves no room to generate`,
      );
    }
    const width = p.beamWidth > 1 ? p.beamWidth : p.n;
    const need = this.#reservation(width);
    const usable = o.numBlocks - Math.floor(o.watermark * o.numBlocks);
    if (Math.ceil((toks.length + 1) / bs) > usable || need > o.numBlocks) {
      throw new EngineError(
        `${op}: the prompt of "${id}" (${toks.length} tokens${
          o.reservation === "static-max" ? `, ${need} blocks reserved` : ""
        }) cannot fit the cache of ${o.numBlocks} blocks of ${bs} tokens`,
      );
    }
    if (width > o.maxNumSeqs) {
      throw new EngineError(`${op}: ${width} sequences for "${id}" exceed maxNumSeqs ${o.maxNumSeqs}`);
    }
    if (this.#slots && width > 1) {
      throw new EngineError(
        `${op}: ${
          p.beamWidth > 1 ? `beam search (beamWidth ${p.beamWidth})` : `parallel sampling (n ${p.n})`
        } for "${id}" forks sequences, and the model's recurrent state is not copied to forks: use n 1`,
      );
    }
    const r: Request = {
      id,
      prompt: toks,
      params: { ...p, maxTokens: Math.min(p.maxTokens, o.maxModelLen - toks.length) },
      group: null,
      rngs: new Map(),
      cum: new Map(),
      index: new Map(),
      done: [],
      beam: p.beamWidth > 1,
      ended: false,
      reserved: 0,
      result: null,
    };
    this.#requests.set(id, r);
    if (o.reservation === "static-max") this.#held.push(r);
    else this.#admit(r);
    return id;
  }

  /** Blocks static-max reserves for a request of `width` sequences (0 when paged). */
  #reservation(width: number): number {
    const o = this.options;
    return o.reservation === "static-max" ? width * Math.ceil(o.maxModelLen / o.blockSize) : 0;
  }

  #admit(r: Request): void {
    const width = r.beam ? r.params.beamWidth : r.params.n;
    r.reserved = this.#reservation(width);
    this.#reserved += r.reserved;
    const g = this.scheduler.addGroup(r.prompt, { id: r.id, maxSeqs: width });
    r.group = g;
    const s0 = g.seqs[0];
    r.rngs.set(s0.id, new Rng(r.params.seed, 0));
    r.cum.set(s0.id, 0);
    r.index.set(s0.id, 0);
  }

  /** Aborts a request (its sequences end with reason "abort"); false when no live request has that id. */
  abort(id: string, reason = "aborted by the caller"): boolean {
    const r = this.#requests.get(id);
    if (!r || r.ended) return false;
    const held = this.#held.indexOf(r);
    if (held >= 0) this.#held.splice(held, 1);
    else this.scheduler.abortGroup(id, reason);
    this.#slots?.releaseStopped();
    this.#end(r, reason);
    this.#requests.delete(id);
    return true;
  }

  /** Whether any request is queued or running. */
  hasUnfinished(): boolean {
    return this.#held.length > 0 || this.scheduler.hasUnfinished();
  }

  /**
   * One iteration: schedule, move blocks, run the model on every scheduled token, sample. Returns the
   * requests that changed (a new token, finished, aborted), in arrival order.
   */
  async step(): Promise<RequestOutput[]> {
    this.#live("LLMEngine.step");
    const t0 = performance.now(), gen0 = this.#stats.generatedTokens;
    // static-max: admit held requests while their whole reservation fits
    while (this.#held.length) {
      const r = this.#held[0], need = this.#reservation(r.beam ? r.params.beamWidth : r.params.n);
      if (this.#reserved + need > this.options.numBlocks) break;
      this.#held.shift();
      this.#admit(r);
    }
    const changed = new Set<Request>();
    const out = this.scheduler.schedule();
    for (const a of out.aborted) {
      const r = this.#requests.get(a.group.id);
      if (r && !r.ended) {
        this.#end(r, a.reason);
        changed.add(r);
      }
    }
    const c = this.cache;
    if (out.swapOut.length || out.swapIn.length) {
      const host = this.#hostPools();
      const moves: Promise<void>[] = [];
      for (let l = 0; l < c.k.length; l++) {
        if (out.swapOut.length) {
          moves.push(swapBlocks(c.k[l], host.k[l], out.swapOut), swapBlocks(c.v[l], host.v[l], out.swapOut));
        }
      }
      await Promise.all(moves);
      moves.length = 0;
      for (let l = 0; l < c.k.length; l++) {
        if (out.swapIn.length) {
          moves.push(swapBlocks(host.k[l], c.k[l], out.swapIn), swapBlocks(host.v[l], c.v[l], out.swapIn));
        }
      }
      await Promise.all(moves);
      this.#stats.swappedBlocks.out += out.swapOut.length;
      this.#stats.swappedBlocks.in += out.swapIn.length;
    }
    if (out.copies.length) {
      for (let l = 0; l < c.k.length; l++) copyBlocks(c.k[l], c.v[l], out.copies);
      this.#stats.copiedBlocks += out.copies.length;
    }
    const entries: ScheduledSequence[] = [...out.prefills, ...out.decodes];
    if (entries.length) {
      for (const e of out.prefills) this.#stats.promptTokens += e.numQuery;
      const rows = await this.#run(entries);
      // group the sampled rows by request (beam search decides per group)
      const byReq = new Map<Request, { seq: Sequence; row: Float32Array }[]>();
      entries.forEach((e, i) => {
        if (!e.sample) return;
        const r = this.#requests.get(e.seq.group.id)!;
        if (!byReq.has(r)) byReq.set(r, []);
        byReq.get(r)!.push({ seq: e.seq, row: rows[i] });
      });
      for (const [r, got] of byReq) {
        if (r.ended) continue;
        if (r.beam) this.#beamStep(r, got);
        else for (const { seq, row } of got) this.#sample(r, seq, row);
        changed.add(r);
      }
    }
    for (const r of changed) if (!r.ended && r.group!.isDone) this.#end(r);
    this.#slots?.releaseStopped();
    this.#stats.steps++;
    const a = this.scheduler.allocator;
    // slots holding token states, each physical block counted once (shared blocks are)
    const filled = new Map<number, number>(), bs = this.options.blockSize;
    let logicalBlocks = 0;
    for (const r of this.#requests.values()) {
      for (const s of r.group?.liveSeqs ?? []) {
        if (s.status !== "running") continue;
        logicalBlocks += s.blockTable.length;
        s.blockTable.forEach((blk, j) => {
          const n = Math.max(0, Math.min(bs, s.numComputed - j * bs));
          filled.set(blk, Math.max(filled.get(blk) ?? 0, n));
        });
      }
    }
    let tokenSlots = 0;
    for (const n of filled.values()) tokenSlots += n;
    this.records.push({
      batchTokens: out.numBatchedTokens,
      contextTokens: entries.reduce((n, e) => n + e.contextLength, 0),
      sequences: entries.length,
      seconds: (performance.now() - t0) / 1000,
      blocksUsed: a.numUsed,
      tokenSlots,
      logicalBlocks,
      reservedBlocks: this.#reserved,
      waiting: this.#held.length + this.scheduler.numWaiting + this.scheduler.numSwapped,
      ended: [...changed].filter((r) => r.ended).length,
      generated: this.#stats.generatedTokens - gen0,
    });
    const res = [...changed].sort((x, y) => (x.group?.arrival ?? 0) - (y.group?.arrival ?? 0)).map((r) =>
      this.#output(r)
    );
    for (const r of changed) if (r.ended) this.#requests.delete(r.id);
    return res;
  }

  /** Runs the model on the step's entries; returns each entry's logits row (sampled entries only). */
  async #run(entries: ScheduledSequence[]): Promise<Float32Array[]> {
    const b = packBatch(entries);
    if (this.#slots) b.stateSlots = this.#stateSlots(entries);
    const logits = this.model.forwardPaged(b, this.cache); // (S, V)
    try {
      const a = (await logits.toArray()) as Float32Array;
      const V = this.model.vocabSize;
      return entries.map((_, s) => Float32Array.from(a.subarray(s * V, (s + 1) * V)));
    } finally {
      logits.dispose();
    }
  }

  /**
   * Each entry's state slot: slots of sequences that stopped running (preempted, finished) are freed first,
   * then a sequence fed from position 0 takes a slot; one fed later must already hold one.
   */
  #stateSlots(entries: ScheduledSequence[]): Int32Array {
    const slots = this.#slots!;
    slots.releaseStopped();
    return Int32Array.from(entries, (e) => {
      const have = slots.slotOf(e.seq);
      if (have !== undefined) return have;
      if (e.positions[0] !== 0) {
        throw new EngineError(
          `LLMEngine.step: internal error: sequence ${e.seq.id} continues at position ${
            e.positions[0]
          } but holds no state slot`,
        );
      }
      return slots.acquire(e.seq);
    });
  }

  #sample(r: Request, seq: Sequence, row: Float32Array): void {
    const p = r.params, sch = this.scheduler;
    // the prompt's step: fork the other n - 1 samples, each with its own stream
    const seqs = [seq];
    if (seq.outputTokens.length === 0 && p.n > 1 && r.group!.seqs.length === 1) {
      for (let i = 1; i < p.n; i++) {
        const child = sch.fork(seq);
        r.rngs.set(child.id, new Rng(p.seed, i));
        r.cum.set(child.id, 0);
        r.index.set(child.id, i);
        seqs.push(child);
      }
    }
    for (const s of seqs) {
      const { token, logprob } = sampleToken(row, p, r.rngs.get(s.id)!);
      if (p.stop.includes(token)) {
        sch.finishSequence(s, "stop");
        continue;
      }
      sch.appendToken(s, token);
      r.cum.set(s.id, r.cum.get(s.id)! + logprob);
      this.#stats.generatedTokens++;
      if (s.outputTokens.length >= p.maxTokens) sch.finishSequence(s, "length");
    }
  }

  /** Beam search's step for one request: keep the best `beamWidth` continuations, fork and free beams. */
  #beamStep(r: Request, got: { seq: Sequence; row: Float32Array }[]): void {
    const p = r.params, W = p.beamWidth, sch = this.scheduler;
    const score = (cum: number, len: number) => cum / Math.max(1, len) ** p.lengthPenalty;
    const cands = expandBeams(got.map((g) => g.row), got.map((g) => r.cum.get(g.seq.id)!), W);
    const keep: { parent: number; token: number; cum: number }[] = [];
    for (const c of cands) {
      if (keep.length >= W) break;
      if (p.stop.includes(c.token)) {
        r.done.push({ tokens: got[c.parent].seq.outputTokens, cum: c.score });
        continue;
      }
      keep.push({ parent: c.parent, token: c.token, cum: c.score });
    }
    // children beyond each parent's first are forks; parents with no child are dropped
    const firsts = new Map<number, number>();
    const targets: Sequence[] = keep.map((k, i) => {
      if (!firsts.has(k.parent)) {
        firsts.set(k.parent, i);
        return got[k.parent].seq;
      }
      const child = sch.fork(got[k.parent].seq);
      return child;
    });
    keep.forEach((k, i) => {
      sch.appendToken(targets[i], k.token);
      r.cum.set(targets[i].id, k.cum);
      this.#stats.generatedTokens++;
    });
    got.forEach((g, i) => {
      if (!firsts.has(i)) sch.removeSequence(g.seq);
    });
    const live = r.group!.liveSeqs;
    const len = live.length ? live[0].outputTokens.length : 0;
    // stop when the finished hypotheses fill the width and none live can beat the worst of them
    const doneScores = r.done.map((d) => score(d.cum, d.tokens.length)).sort((a, b) => b - a);
    const bestLive = Math.max(...live.map((s) => score(r.cum.get(s.id)!, len)));
    const settled = doneScores.length >= W && bestLive < doneScores[W - 1] && p.lengthPenalty >= 0;
    if (len >= p.maxTokens || settled || live.length === 0) {
      for (const s of live) {
        r.done.push({ tokens: s.outputTokens, cum: r.cum.get(s.id)! });
        sch.finishSequence(s, len >= p.maxTokens ? "length" : "stop");
      }
    }
  }

  #end(r: Request, abortReason?: string): void {
    r.ended = true;
    if (abortReason !== undefined) r.abortReason = abortReason;
    else if (r.group?.status === "aborted") r.abortReason = r.group.abortReason ?? "aborted";
    this.#reserved -= r.reserved;
    r.reserved = 0;
    if (r.abortReason !== undefined) this.#stats.aborted++;
    else this.#stats.finished++;
    r.result = this.#snapshot(r);
  }

  #snapshot(r: Request): RequestOutput {
    const p = r.params;
    let outputs: CompletionOutput[];
    if (r.beam && r.ended && r.abortReason === undefined) {
      const score = (d: { tokens: number[]; cum: number }) =>
        d.cum / Math.max(1, d.tokens.length) ** p.lengthPenalty;
      outputs = [...r.done].sort((a, b) => score(b) - score(a)).slice(0, p.n).map((d, index) => ({
        index,
        tokens: d.tokens,
        cumulativeLogprob: d.cum,
        finishReason: d.tokens.length >= p.maxTokens ? "length" as const : "stop" as const,
      }));
    } else {
      const seqs = r.group ? r.group.seqs : [];
      outputs = seqs.map((s, i) => ({
        index: r.beam ? i : r.index.get(s.id) ?? i,
        tokens: s.outputTokens,
        cumulativeLogprob: r.cum.get(s.id) ?? 0,
        finishReason: s.finishReason,
      })).sort((a, b) => a.index - b.index);
    }
    return {
      id: r.id,
      prompt: r.prompt,
      outputs,
      finished: r.ended,
      ...(r.abortReason !== undefined ? { abortReason: r.abortReason } : {}),
      preemptions: r.group?.numPreemptions ?? 0,
    };
  }

  #output(r: Request): RequestOutput {
    return r.ended ? r.result! : this.#snapshot(r);
  }

  /**
   * Adds a request and yields its state after every step that changed it (streaming), ending with the
   * finished (or aborted) output. Other queued requests run in the same steps.
   */
  async *generate(
    prompt: ArrayLike<number>,
    params: SamplingParams & { id?: string } = {},
  ): AsyncGenerator<RequestOutput> {
    const id = this.addRequest(prompt, params);
    while (true) {
      const outs = await this.step();
      const mine = outs.find((o) => o.id === id);
      if (mine) yield mine;
      if (mine?.finished) return;
      if (!this.hasUnfinished()) return;
    }
  }

  /** Steps until every queued request has ended; returns their final outputs in the order they ended. */
  async run(): Promise<RequestOutput[]> {
    const done: RequestOutput[] = [];
    while (this.hasUnfinished()) for (const o of await this.step()) if (o.finished) done.push(o);
    return done;
  }

  /** Counters since the engine was made. */
  stats(): EngineStats {
    return {
      ...this.#stats,
      swappedBlocks: { ...this.#stats.swappedBlocks },
      preemptions: this.scheduler.preemptions,
      blocks: this.scheduler.allocator.stats(),
      stateSlots: { used: this.#slots?.numUsed ?? 0, total: this.cache.stateSlots },
    };
  }

  /** Frees the KV pools (device and host). Aborts nothing: call when idle. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.cache.dispose();
    this.#host?.dispose();
  }

  #live(op: string): void {
    if (this.#disposed) throw new EngineError(`${op}: the engine has been disposed`);
  }
}
