/**
 * The experiments of notebooks/06_jamba.ipynb (Jamba, Lieber et al., arXiv 2403.19887) at toy scale, kept
 * out of the notebook's cells: equal-parameter ablation configs, one training loop over mixed batches
 * (Moby-Dick characters plus two in-context tasks), the held-out evaluation (text loss, associative recall,
 * few-shot accuracy and format adherence, expert load), decoding throughput against context, and the
 * closing table's verdicts as functions of the measured numbers.
 *
 * Vocabulary of every model here: the corpus's characters (0 .. C - 1), then the {@link associativeRecall}
 * tokens, then the {@link fewShotLabels} tokens, so one model reads all three kinds of rows.
 * @module
 */

import * as s from "../mod.ts";
import type { JambaCache, JambaLM, JambaLMConfig, JambaSpec, Tensor } from "../mod.ts";
import { median } from "./util.ts";

/** The {@link JambaSpec} (models/jamba_config.ts arithmetic) of a {@link JambaLMConfig}. */
export function specOf(cfg: JambaLMConfig): JambaSpec {
  const mixer = cfg.mixer ?? "hybrid";
  const ratio: [number, number] = mixer === "attention"
    ? [1, 0]
    : mixer === "mamba"
    ? [0, 1]
    : cfg.attnRatio ?? [1, 7];
  const e = cfg.moeEvery ?? 2;
  return {
    hidden: cfg.dModel,
    nLayer: cfg.nLayer,
    nHead: cfg.nHead,
    nKvHead: cfg.nKvHead,
    ffn: cfg.dFf ?? 4 * cfg.dModel,
    vocab: cfg.vocabSize,
    attnMamba: ratio,
    attnOffset: mixer === "hybrid" ? cfg.attnOffset : undefined,
    moeEvery: e,
    moeOffset: e > 0 ? e - 1 : 0,
    nExperts: e > 0 ? cfg.nExperts ?? 16 : 1,
    topK: e > 0 ? cfg.topK ?? 2 : 1,
    dState: cfg.dState,
    dConv: cfg.dConv,
    expand: cfg.expand,
    dtRank: cfg.dtRank,
    mambaNorms: cfg.mambaInnerNorm ?? true,
  };
}

/**
 * The MLP width dFf (an integer) that brings `cfg`'s parameter count closest to `target`: total parameters
 * for `by: "total"`, or those a token passes through for `by: "active"`.
 */
export function matchFfn(cfg: JambaLMConfig, target: number, by: "total" | "active" = "total"): number {
  const count = (F: number) => s.paramCount(specOf({ ...cfg, dFf: F }))[by];
  const c1 = count(1), slope = count(2) - c1; // linear in F
  const F = Math.max(1, Math.round(1 + (target - c1) / slope));
  return [F - 1, F, F + 1].filter((f) => f >= 1).sort((a, b) =>
    Math.abs(count(a) - target) - Math.abs(count(b) - target)
  )[0];
}

/** Rows of each kind in a training batch, and the tasks' settings. */
export interface MixOptions {
  /** Sequence length T of every row. */
  T: number;
  /** Moby-Dick rows per batch. */
  text: number;
  /** Associative-recall rows per batch. */
  recall: number;
  /** Few-shot rows per batch. */
  fewShot: number;
  /** Key-value pairs per recall row. */
  nPairs: number;
  /** Recall vocabulary (keys are its lower half). */
  recallVocab: number;
  /** Words per few-shot example (odd). */
  inputLength: number;
  /** Label tokens in the few-shot pool. */
  nLabels: number;
  /** Words per class in the few-shot lexicon. */
  nWords: number;
}

/** The corpus (as character ids) and the task generators behind every batch, on one shared vocabulary. */
export class MixedData {
  /** Vocabulary size: characters, recall tokens, few-shot tokens. */
  readonly vocab: number;
  /** First recall token. */
  readonly recallBase: number;
  /** First few-shot token. */
  readonly fewBase: number;
  /** The few-shot task's own vocabulary size. */
  readonly fewVocab: number;

  /** `chars`: the corpus's character count; `train` / `test`: the two splits as ids. */
  constructor(
    readonly chars: number,
    readonly train: Int32Array,
    readonly test: Int32Array,
    readonly o: MixOptions,
  ) {
    this.recallBase = chars;
    this.fewBase = chars + o.recallVocab;
    this.fewVocab = 2 + o.nLabels + 2 * o.nWords;
    this.vocab = this.fewBase + this.fewVocab;
  }

  /** A recall batch of `rows` rows, tokens shifted into the shared vocabulary. */
  recall(rows: number, seed: number) {
    const g = s.associativeRecall({
      batch: rows,
      length: this.o.T,
      nPairs: this.o.nPairs,
      vocab: this.o.recallVocab,
      seed,
    });
    return { g, ...this.#shift(g, this.recallBase) };
  }

  /** A few-shot batch (every example's label scored when `scoreShots`), shifted into the shared vocabulary. */
  fewShot(rows: number, seed: number, scoreShots = false) {
    const g = s.fewShotLabels({
      batch: rows,
      length: this.o.T,
      inputLength: this.o.inputLength,
      nLabels: this.o.nLabels,
      nWords: this.o.nWords,
      seed,
      scoreShots,
    });
    return { g, ...this.#shift(g, this.fewBase) };
  }

  #shift(g: { inputs: Int32Array; targets: Int32Array }, base: number) {
    return {
      x: g.inputs.map((v) => v + base),
      y: g.targets.map((v) => (v < 0 ? v : v + base)),
    };
  }

  /** `rows` random training windows (inputs and next characters), from a seeded LCG. */
  text(rows: number, seed: number) {
    const T = this.o.T, x = new Int32Array(rows * T), y = new Int32Array(rows * T);
    let r = (seed * 2654435761) >>> 0;
    for (let b = 0; b < rows; b++) {
      r = (Math.imul(r, 1664525) + 1013904223) >>> 0;
      const o = r % (this.train.length - T - 1);
      x.set(this.train.subarray(o, o + T), b * T);
      y.set(this.train.subarray(o + 1, o + T + 1), b * T);
    }
    return { x, y };
  }

  /** Training batch `step`: text rows, then recall rows, then few-shot rows (labels of every example scored). */
  batch(step: number) {
    const { text, recall, fewShot, T } = this.o;
    const t = this.text(text, step),
      r = this.recall(recall, 1_000_000 + step),
      f = this.fewShot(fewShot, 2_000_000 + step, true);
    const x = new Int32Array((text + recall + fewShot) * T);
    x.set(t.x, 0);
    x.set(r.x, text * T);
    x.set(f.x, (text + recall) * T);
    const yTask = new Int32Array((recall + fewShot) * T);
    yTask.set(r.y, 0);
    yTask.set(f.y, recall * T);
    return { x, yText: t.y, yTask };
  }
}

/** Training settings. */
export interface TrainOptions {
  /** Steps, one batch each. */
  steps: number;
  /** Peak learning rate (AdamW). */
  lr: number;
  /** Linear warmup steps. */
  warmup: number;
  /** Read the losses back every `logEvery` steps (a readback waits for the adapter). */
  logEvery: number;
  /** AdamW weight decay (default 0.01). */
  weightDecay?: number;
  /** Called after each logged step (progress output). */
  onLog?: (step: number, text: number, task: number) => void;
}

/** What {@link trainMixed} returns. */
export interface TrainResult {
  /** [step, text loss, task loss, aux loss] at each logged step (nats). */
  log: [number, number, number, number][];
  /** Wall time of the loop. */
  seconds: number;
  /** Steps run. */
  steps: number;
}

/**
 * Trains `model` on `data.batch(step)` for `o.steps` steps: loss = cross-entropy over the text rows + cross-
 * entropy over the task rows' scored positions + the MoE layers' aux loss (0 without MoE), AdamW with linear
 * warmup then cosine decay to lr / 10, gradients clipped at norm 1.
 */
export async function trainMixed(model: JambaLM, data: MixedData, o: TrainOptions): Promise<TrainResult> {
  const V = data.vocab, T = data.o.T, Bt = data.o.text, Bk = data.o.recall + data.o.fewShot;
  const opt = new s.AdamW(model.parameters(), {
    lr: s.cosineSchedule(o.lr, o.steps, { warmup: o.warmup, minLr: o.lr / 10 }),
    weightDecay: o.weightDecay ?? 0.01,
  });
  const log: TrainResult["log"] = [];
  const t0 = performance.now();
  for (let step = 1; step <= o.steps; step++) {
    const b = data.batch(step);
    const x = s.tensor(b.x, { shape: [Bt + Bk, T], dtype: "i32" });
    const yt = s.tensor(b.yText, { shape: [Bt * T], dtype: "i32" });
    const yk = s.tensor(b.yTask, { shape: [Bk * T], dtype: "i32" });
    const losses = s.tidy(() => {
      opt.zeroGrad();
      const r = model.forwardAux(x); // logits (B, T, V)
      const lt = s.crossEntropy(r.logits.slice([[0, Bt]]).reshape([Bt * T, V]), yt);
      const lk = s.crossEntropy(r.logits.slice([[Bt, Bt + Bk]]).reshape([Bk * T, V]), yk);
      lt.add(lk).add(r.auxLoss).backward();
      for (const l of r.loads) l.dispose();
      s.clipGradNorm(model.parameters(), 1);
      opt.step();
      return s.stack([lt, lk, r.auxLoss]);
    });
    for (const t of [x, yt, yk]) t.dispose();
    if (step % o.logEvery === 0 || step === o.steps) {
      const [a, k, aux] = await losses.toArray();
      log.push([step, a, k, aux]);
      o.onLog?.(step, a, k);
    }
    losses.dispose();
  }
  opt.zeroGrad();
  opt.dispose();
  return { log, seconds: (performance.now() - t0) / 1000, steps: o.steps };
}

/** Held-out results of one model. */
export interface EvalResult {
  /** Mean cross-entropy per character over held-out windows (nats). */
  textLoss: number;
  /** Share of recall queries answered with the bound value. */
  recallAcc: number;
  /** Share of few-shot queries answered with the right label. */
  fewAcc: number;
  /** Share of few-shot answers that are one of the row's two labels (the format). */
  fewInFormat: number;
  /** Share of few-shot answers that are any label token of the pool. */
  fewAnyLabel: number;
  /** Per MoE layer, the share of choices each expert received on the held-out text (empty without MoE). */
  loads: number[][];
}

/** Greedy predictions (rows, T) of a batch of rows, `chunk` rows per forward. */
async function predict(
  model: JambaLM,
  x: Int32Array,
  rows: number,
  T: number,
  chunk: number,
): Promise<Int32Array> {
  const out = new Int32Array(rows * T);
  for (let r0 = 0; r0 < rows; r0 += chunk) {
    const r = Math.min(chunk, rows - r0);
    const xt = s.tensor(x.subarray(r0 * T, (r0 + r) * T), { shape: [r, T], dtype: "i32" });
    const p = s.noGrad(() => s.tidy(() => s.argmax(model.forward(xt), -1))); // (r, T) i32
    out.set(await p.toArray() as Int32Array, r0 * T);
    xt.dispose();
    p.dispose();
  }
  return out;
}

/**
 * Evaluates `model` on held-out data: `windows` non-overlapping test windows of T characters (text loss and
 * the MoE layers' loads), and `rows` recall and few-shot rows from seeds no training batch uses.
 */
export async function evaluate(
  model: JambaLM,
  data: MixedData,
  o: { windows: number; rows: number; chunk: number },
): Promise<EvalResult> {
  const T = data.o.T, V = data.vocab;
  // text: windows from the start of the held-out split
  const n = Math.min(o.windows, Math.floor((data.test.length - 1) / T));
  let lossSum = 0;
  const loadSum: number[][] = [];
  for (let w0 = 0; w0 < n; w0 += o.chunk) {
    const r = Math.min(o.chunk, n - w0);
    const x = s.tensor(data.test.subarray(w0 * T, (w0 + r) * T), { shape: [r, T], dtype: "i32" });
    const y = s.tensor(data.test.subarray(w0 * T + 1, (w0 + r) * T + 1), { shape: [r * T], dtype: "i32" });
    const { loss, loads } = s.noGrad(() =>
      s.tidy(() => {
        const out = model.forwardAux(x);
        return { loss: s.crossEntropy(out.logits.reshape([r * T, V]), y), loads: out.loads };
      })
    );
    lossSum += (await loss.item()) * r;
    for (const [i, l] of loads.entries()) {
      const a = Array.from(await l.toArray());
      loadSum[i] = loadSum[i] ? loadSum[i].map((v, e) => v + a[e]) : a;
      l.dispose();
    }
    for (const t of [x, y, loss]) t.dispose();
  }
  const loads = loadSum.map((l) => {
    const tot = l.reduce((a, b) => a + b, 0);
    return l.map((v) => v / tot);
  });
  // recall: every query scored
  const rc = data.recall(o.rows, 77);
  const pr = await predict(model, rc.x, o.rows, T, o.chunk);
  let hit = 0, tot = 0;
  for (let i = 0; i < rc.y.length; i++) {
    if (rc.y[i] < 0) continue;
    tot++;
    if (pr[i] === rc.y[i]) hit++;
  }
  // few-shot: the query's label at T - 1
  const fs = data.fewShot(o.rows, 78);
  const pf = await predict(model, fs.x, o.rows, T, o.chunk);
  let right = 0, inFormat = 0, anyLabel = 0;
  const lo = data.fewBase + fs.g.firstLabel, hi = lo + fs.g.nLabels;
  for (let b = 0; b < o.rows; b++) {
    const p = pf[b * T + T - 1],
      l0 = fs.g.labels[2 * b] + data.fewBase,
      l1 = fs.g.labels[2 * b + 1] + data.fewBase;
    if (p === fs.y[b * T + T - 1]) right++;
    if (p === l0 || p === l1) inFormat++;
    if (p >= lo && p < hi) anyLabel++;
  }
  return {
    textLoss: lossSum / n,
    recallAcc: hit / tot,
    fewAcc: right / o.rows,
    fewInFormat: inFormat / o.rows,
    fewAnyLabel: anyLabel / o.rows,
    loads,
  };
}

/** max load / mean load of an expert-load vector (1 is perfectly balanced; E means one expert takes all). */
export function imbalance(shares: number[]): number {
  const mean = shares.reduce((a, b) => a + b, 0) / shares.length;
  return Math.max(...shares) / mean;
}

/** One decoding measurement. */
export interface DecodeRow {
  /** The model's name (its key in the models given). */
  model: string;
  /** Tokens prefilled before the timed steps. */
  context: number;
  /** Median ms per decode step (batch 1) over the trials. */
  msPerStep: number;
  /** 1000 / msPerStep (batch 1). */
  tokensPerSecond: number;
  /** The cache's bytes after the context (K/V for the attention layers plus the Mamba states). */
  cacheBytes: number;
  /** The prefill of the context, ms (not part of the throughput). */
  prefillMs: number;
}

/**
 * Decoding throughput at batch 1: for each context, every model gets `initCache(1, context + margin)` and a
 * `prefill` of the context (corpus characters), then `trials` rounds each run one timed loop of `steps`
 * greedy steps per model, the models taking turns so that a change in the host's load hits them alike (the
 * argmax stays on the device and feeds the next step; one readback ends each loop). Only the steps are
 * timed; the median loop is reported.
 */
export async function decodeSweep(
  models: Record<string, JambaLM>,
  contexts: number[],
  o: { steps: number; trials: number; corpus: Int32Array },
): Promise<DecodeRow[]> {
  const rows: DecodeRow[] = [];
  for (const ctx of contexts) {
    if (ctx > o.corpus.length) {
      throw new Error(`decodeSweep: context ${ctx} is longer than the corpus (${o.corpus.length})`);
    }
    const runs: {
      name: string;
      lm: JambaLM;
      cache: JambaCache;
      tok: Tensor;
      prefillMs: number;
      ms: number[];
    }[] = [];
    for (const [name, lm] of Object.entries(models)) {
      const cache = lm.initCache(1, ctx + (o.trials + 1) * o.steps + 1);
      const t0 = performance.now();
      const prompt = s.tensor(o.corpus.subarray(0, ctx), { shape: [1, ctx], dtype: "i32" });
      const logits = lm.prefill(prompt, cache); // (1, ctx, V)
      const tok = s.tidy(() => s.argmax(logits.slice([null, [ctx - 1, ctx]]).reshape([1, -1]), -1)); // (1)
      await tok.toArray();
      const prefillMs = performance.now() - t0;
      logits.dispose();
      prompt.dispose();
      runs.push({ name, lm, cache, tok, prefillMs, ms: [] });
    }
    const loop = async (r: (typeof runs)[number]) => {
      const t1 = performance.now();
      for (let i = 0; i < o.steps; i++) {
        const out = r.lm.step(r.tok, r.cache);
        const next = s.tidy(() => s.argmax(out.logits, -1));
        out.logits.dispose();
        r.tok.dispose();
        r.tok = next;
      }
      await r.tok.toArray();
      return (performance.now() - t1) / o.steps;
    };
    for (const r of runs) await loop(r); // warm: the first loop compiles the step's pipelines
    for (let t = 0; t < o.trials; t++) for (const r of runs) r.ms.push(await loop(r));
    for (const r of runs) {
      const ms = median(r.ms);
      rows.push({
        model: r.name,
        context: ctx,
        msPerStep: ms,
        tokensPerSecond: 1000 / ms,
        cacheBytes: r.cache.bytes,
        prefillMs: r.prefillMs,
      });
      r.tok.dispose();
      r.cache.dispose();
    }
  }
  return rows;
}

/** A verdict, or "quick mode: not judged" when `quick`. */
export function judge(quick: boolean, v: () => string): string {
  return quick ? "quick mode: not judged" : v();
}

/**
 * Ablation ordering by held-out text loss: the paper's hybrids beat both pure models. `margin` is the loss
 * difference (nats) below which two models count as tied at this scale.
 */
export function orderingVerdict(
  loss: Record<string, number>,
  hybrids: string[],
  pure: string[],
  margin: number,
): string {
  const best = Math.min(...hybrids.map((h) => loss[h]));
  const bestPure = Math.min(...pure.map((p) => loss[p]));
  if (best < bestPure - margin) return "reproduced: a hybrid has the lowest held-out loss";
  if (best <= bestPure + margin) return `tied at this scale (within ${margin} nats)`;
  return "not reproduced at this scale: a pure model has the lowest held-out loss";
}

/** Format adherence: the paper's pure Mamba answers outside the label set, the hybrid does not. */
export function formatVerdict(inFormat: { mamba: number; hybrid: number; attention: number }): string {
  const { mamba, hybrid } = inFormat;
  if (hybrid >= 0.95 && mamba <= hybrid - 0.1) {
    return "reproduced: Mamba breaks the format, the hybrid keeps it";
  }
  if (mamba >= 0.95 && hybrid >= 0.95) return "not shown at this scale: every model keeps the format";
  if (hybrid > mamba + 0.05) return "trend reproduced: the hybrid keeps the format more often than Mamba";
  return "not reproduced at this scale";
}
