/**
 * The synthetic tasks of the Mamba paper (Gu and Dao, arXiv 2312.00752, section 4.1; docs/papers.md, Mamba):
 * {@link selectiveCopying} (remember the data tokens scattered among noise, then recite them in order) and
 * {@link inductionHeads} (after `special x ... special`, answer `x`); and two in-context probes for the
 * Jamba ablations (Lieber et al., arXiv 2403.19887; docs/papers.md, Jamba): {@link associativeRecall}
 * (key-value pairs, then queries) and {@link fewShotLabels} (labelled examples, then a query that must be
 * answered with one of the two label tokens of its row). All return plain row-major `Int32Array`s (B, L) with
 * a shape, so they need no device: wrap them with `tensor(inputs, {shape, dtype: "i32"})`.
 * Targets hold the token the model must emit at each position, or `ignoreIndex` where nothing is scored; a
 * language model's logits at position t (having read inputs 0..t) are compared with targets[t].
 *
 * Randomness is Philox4x32-10 keyed by `seed` (the generator seqlab's `rand` uses), so a seed gives the
 * same batch on every machine.
 *
 * @example
 * ```ts
 * import { associativeRecall, fewShotLabels, inductionHeads, selectiveCopying } from "seqlab";
 * const c = selectiveCopying({ batch: 2, length: 32, nTokens: 4, vocab: 8, seed: 1 });
 * console.log(c.shape, c.scored); // [2, 32] 4
 * const h = inductionHeads({ batch: 2, length: 64, vocab: 16, seed: 1 });
 * console.log(h.inputs[63] === h.specialToken, h.targets[63] === h.answers[0]); // true true
 * const r = associativeRecall({ batch: 2, length: 24, nPairs: 4, vocab: 16, seed: 1 });
 * console.log(r.scored, r.nQueries); // 8 8
 * const f = fewShotLabels({ batch: 2, length: 48, seed: 1 });
 * console.log(f.shots, f.targets[47] === f.answers[0]); // 8 true
 * ```
 * @module
 */

import { philox } from "../ops/core/random_ref.ts";

/** What both task generators return: (B, L) inputs and targets, row-major. */
export interface TaskBatch {
  /** Input tokens (B, L), row-major. */
  inputs: Int32Array;
  /** The token expected at each position (B, L), or `ignoreIndex` where the position is not scored. */
  targets: Int32Array;
  /** [B, L]. */
  shape: [number, number];
  /** The value of unscored targets (default -100, crossEntropy's and accuracy's default). */
  ignoreIndex: number;
  /** Vocabulary size: every token is in [0, vocab). */
  vocab: number;
  /** Scored positions per row. */
  scored: number;
}

/** Options shared by the task generators. */
export interface TaskOptions {
  /** Rows B. */
  batch: number;
  /** Sequence length L (inputs and targets are (B, L)). */
  length: number;
  /** Vocabulary size, special tokens included (default 16, the paper's). */
  vocab?: number;
  /** Seed of the generator (default 0). */
  seed?: number;
  /** Target value at unscored positions (default -100). */
  ignoreIndex?: number;
}

/** Options of {@link selectiveCopying}. */
export interface SelectiveCopyingOptions extends TaskOptions {
  /** Data tokens to copy per row (default 16, the paper's). */
  nTokens?: number;
}

/** A {@link selectiveCopying} batch. */
export interface SelectiveCopyingBatch extends TaskBatch {
  /** Tokens to copy per row. */
  nTokens: number;
  /** The filler token (0). */
  noiseToken: number;
  /** The token that asks for the next data token (vocab - 1). */
  markerToken: number;
  /** Where each row's data tokens sit, increasing (B, nTokens), all before the markers. */
  positions: Int32Array;
}

/** An {@link inductionHeads} batch. */
export interface InductionHeadsBatch extends TaskBatch {
  /** The trigger token (vocab - 1); it occurs exactly twice per row: at `triggers[b]` and at L - 1. */
  specialToken: number;
  /** Position of each row's first special token (B); the answer follows it. */
  triggers: Int32Array;
  /** The token after the first special token, the target at L - 1 (B). */
  answers: Int32Array;
}

/** Uniform integers from Philox4x32-10, (seed, stream) keyed, counter-ordered. */
class IntStream {
  #k0: number;
  #k1: number;
  #stream: number;
  #block = 0;
  #words: Uint32Array = new Uint32Array(4);
  #used = 4;

  constructor(seed: number, stream: number) {
    this.#k0 = seed >>> 0;
    this.#k1 = Math.floor(seed / 2 ** 32) >>> 0;
    this.#stream = stream >>> 0;
  }

  /** An integer in [0, n): 53 random bits scaled, so the bias is below 2^-40 for n < 2^13. */
  below(n: number): number {
    const hi = this.#word() >>> 5, lo = this.#word() >>> 6; // 27 + 26 bits
    return Math.floor(((hi * 67108864 + lo) / 9007199254740992) * n);
  }

  #word(): number {
    if (this.#used === 4) {
      this.#words = philox(
        this.#block >>> 0,
        Math.floor(this.#block / 2 ** 32),
        this.#stream,
        0,
        this.#k0,
        this.#k1,
      );
      this.#block++;
      this.#used = 0;
    }
    return this.#words[this.#used++];
  }
}

function positiveInt(op: string, name: string, v: unknown, min = 1): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
    throw new Error(`${op}: ${name} must be an integer >= ${min}, got ${String(v)}`);
  }
  return v;
}

function common(op: string, o: TaskOptions, minVocab: number) {
  if (o === null || typeof o !== "object") throw new Error(`${op}: options must be an object`);
  const B = positiveInt(op, "batch", o.batch);
  const L = positiveInt(op, "length", o.length);
  const V = positiveInt(op, "vocab", o.vocab ?? 16, minVocab);
  const seed = o.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new Error(`${op}: seed must be a non-negative integer, got ${String(seed)}`);
  }
  const ignoreIndex = o.ignoreIndex ?? -100;
  if (!Number.isInteger(ignoreIndex) || (ignoreIndex >= 0 && ignoreIndex < V)) {
    throw new Error(
      `${op}: ignoreIndex must be an integer outside [0, ${V}) (the vocabulary), got ${ignoreIndex}`,
    );
  }
  if (B * L > 2 ** 28) throw new Error(`${op}: batch * length = ${B * L} is too large (at most 2^28)`);
  return { B, L, V, seed, ignoreIndex };
}

/**
 * Selective copying: each row holds `nTokens` data tokens (uniform over 1 .. vocab - 2) at random, sorted
 * positions among noise tokens (0) in its first L - nTokens positions, then `nTokens` marker tokens
 * (vocab - 1). At the k-th marker the target is the k-th data token; every other position is `ignoreIndex`.
 * The spacing varies from row to row, so a time-invariant (LTI) model cannot solve it by a fixed delay:
 * it has to pick the tokens by content. The paper's setting is L = 4096, vocab 16, 16 tokens.
 *
 * @example
 * ```ts
 * import { selectiveCopying } from "seqlab";
 * const t = selectiveCopying({ batch: 1, length: 12, nTokens: 3, vocab: 6, seed: 7 });
 * // data tokens among zeros, then three markers (5); the targets of the markers are the data tokens
 * const data = Array.from(t.inputs).filter((x) => x !== 0 && x !== 5);
 * console.log(Array.from(t.targets.slice(9)).join() === data.join()); // true
 * console.log(Array.from(t.inputs.slice(9))); // [5, 5, 5]
 * ```
 */
export function selectiveCopying(o: SelectiveCopyingOptions): SelectiveCopyingBatch {
  const op = "selectiveCopying";
  const { B, L, V, seed, ignoreIndex } = common(op, o, 3);
  const M = positiveInt(op, "nTokens", o.nTokens ?? 16);
  if (L < 2 * M) {
    throw new Error(`${op}: length ${L} must be at least 2 * nTokens = ${2 * M} (data tokens plus markers)`);
  }
  const P = L - M, marker = V - 1;
  const inputs = new Int32Array(B * L), targets = new Int32Array(B * L).fill(ignoreIndex);
  const positions = new Int32Array(B * M);
  const rng = new IntStream(seed, 0x5c0f);
  const slots = new Int32Array(P);
  for (let b = 0; b < B; b++) {
    // M distinct positions out of P: a partial Fisher-Yates shuffle, then sorted
    for (let i = 0; i < P; i++) slots[i] = i;
    for (let i = 0; i < M; i++) {
      const j = i + rng.below(P - i);
      const s = slots[i];
      slots[i] = slots[j];
      slots[j] = s;
    }
    const pos = positions.subarray(b * M, (b + 1) * M);
    pos.set(slots.subarray(0, M));
    pos.sort();
    const row = b * L;
    for (let k = 0; k < M; k++) {
      const tok = 1 + rng.below(V - 2);
      inputs[row + pos[k]] = tok;
      inputs[row + P + k] = marker;
      targets[row + P + k] = tok;
    }
  }
  return {
    inputs,
    targets,
    shape: [B, L],
    ignoreIndex,
    vocab: V,
    scored: M,
    nTokens: M,
    noiseToken: 0,
    markerToken: marker,
    positions,
  };
}

/**
 * Induction heads (associative recall with one key): each row is uniform tokens from 0 .. vocab - 2 with
 * the special token (vocab - 1) at a random position p in [0, L - 3] followed by the answer, and the special
 * token again at L - 1, where the target is the answer; only that last position is scored. The paper trains
 * at L = 256 with vocab 16 and tests up to 2^20.
 *
 * @example
 * ```ts
 * import { inductionHeads } from "seqlab";
 * const t = inductionHeads({ batch: 3, length: 20, vocab: 8, seed: 2 });
 * const b = 1, row = t.inputs.subarray(20 * b, 20 * (b + 1));
 * const p = row.indexOf(7); // the first special token
 * console.log(p === t.triggers[b], row[19]); // true 7
 * console.log(t.targets[20 * b + 19] === row[p + 1]); // true: the token after the first special
 * ```
 */
export function inductionHeads(o: TaskOptions): InductionHeadsBatch {
  const op = "inductionHeads";
  const { B, L, V, seed, ignoreIndex } = common(op, o, 3);
  if (L < 3) throw new Error(`${op}: length must be at least 3 (special, answer, special), got ${L}`);
  const special = V - 1;
  const inputs = new Int32Array(B * L), targets = new Int32Array(B * L).fill(ignoreIndex);
  const triggers = new Int32Array(B), answers = new Int32Array(B);
  const rng = new IntStream(seed, 0x1d4c);
  for (let b = 0; b < B; b++) {
    const row = b * L;
    for (let t = 0; t < L - 1; t++) inputs[row + t] = rng.below(V - 1);
    const p = rng.below(L - 2);
    inputs[row + p] = special;
    inputs[row + L - 1] = special;
    const ans = inputs[row + p + 1]; // a uniform non-special token, drawn above
    triggers[b] = p;
    answers[b] = ans;
    targets[row + L - 1] = ans;
  }
  return {
    inputs,
    targets,
    shape: [B, L],
    ignoreIndex,
    vocab: V,
    scored: 1,
    specialToken: special,
    triggers,
    answers,
  };
}

/** Options of {@link associativeRecall}. */
export interface AssociativeRecallOptions extends TaskOptions {
  /** Key-value pairs per row (default 8); at most the number of key tokens, floor(vocab / 2). */
  nPairs?: number;
}

/** An {@link associativeRecall} batch. */
export interface AssociativeRecallBatch extends TaskBatch {
  /** Pairs per row. */
  nPairs: number;
  /** Queries per row (ceil((L - 2 nPairs) / 2)); each is scored. */
  nQueries: number;
  /** Keys are tokens 0 .. nKeys - 1, values nKeys .. vocab - 1 (nKeys = floor(vocab / 2)). */
  nKeys: number;
  /** Each row's keys in order (B, nPairs), distinct within a row. */
  keys: Int32Array;
  /** Each row's values (B, nPairs), values[b, i] bound to keys[b, i]. */
  values: Int32Array;
}

/**
 * Multi-query associative recall (the in-context retrieval behind induction heads, with many keys): each row
 * starts with `nPairs` pairs `k v` (distinct keys from 0 .. nKeys - 1, values uniform over nKeys .. vocab - 1,
 * nKeys = floor(vocab / 2)), then alternates a query key (one of the row's keys, uniform) and its value. The
 * target at every query position is the value bound to that key; the value that follows as input is the
 * teacher-forced answer (unscored), so a language model is scored on recall alone. When L - 2 nPairs is odd
 * the row ends with a query. The pairs differ per row, so the bindings can only be read from the context.
 *
 * @example
 * ```ts
 * import { associativeRecall } from "seqlab";
 * const t = associativeRecall({ batch: 1, length: 11, nPairs: 3, vocab: 10, seed: 4 });
 * const x = Array.from(t.inputs), bind = new Map([[x[0], x[1]], [x[2], x[3]], [x[4], x[5]]]);
 * console.log(t.nQueries, t.targets[6] === bind.get(x[6]), t.targets[10] === bind.get(x[10])); // 3 true true
 * ```
 */
export function associativeRecall(o: AssociativeRecallOptions): AssociativeRecallBatch {
  const op = "associativeRecall";
  const { B, L, V, seed, ignoreIndex } = common(op, o, 4);
  const nKeys = Math.floor(V / 2);
  const n = positiveInt(op, "nPairs", o.nPairs ?? 8);
  if (n > nKeys) {
    throw new Error(
      `${op}: nPairs ${n} exceeds the ${nKeys} key tokens of vocab ${V} (keys are the lower half)`,
    );
  }
  if (L < 2 * n + 1) {
    throw new Error(
      `${op}: length ${L} must be at least 2 * nPairs + 1 = ${2 * n + 1} (the pairs and a query)`,
    );
  }
  const Q = Math.ceil((L - 2 * n) / 2);
  const inputs = new Int32Array(B * L), targets = new Int32Array(B * L).fill(ignoreIndex);
  const keys = new Int32Array(B * n), values = new Int32Array(B * n);
  const rng = new IntStream(seed, 0xa55c);
  const pool = new Int32Array(nKeys);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < nKeys; i++) pool[i] = i;
    const row = b * L;
    for (let i = 0; i < n; i++) {
      const j = i + rng.below(nKeys - i); // distinct keys: a partial Fisher-Yates shuffle
      const k = pool[j];
      pool[j] = pool[i];
      pool[i] = k;
      const v = nKeys + rng.below(V - nKeys);
      keys[b * n + i] = k;
      values[b * n + i] = v;
      inputs[row + 2 * i] = k;
      inputs[row + 2 * i + 1] = v;
    }
    for (let q = 0; q < Q; q++) {
      const i = rng.below(n), t = row + 2 * n + 2 * q;
      inputs[t] = keys[b * n + i];
      targets[t] = values[b * n + i];
      if (2 * n + 2 * q + 1 < L) inputs[t + 1] = values[b * n + i];
    }
  }
  return {
    inputs,
    targets,
    shape: [B, L],
    ignoreIndex,
    vocab: V,
    scored: Q,
    nPairs: n,
    nQueries: Q,
    nKeys,
    keys,
    values,
  };
}

/** Options of {@link fewShotLabels}. */
export interface FewShotLabelsOptions extends Omit<TaskOptions, "vocab"> {
  /** Words per example m, odd so that the majority is defined (default 3). */
  inputLength?: number;
  /** Label tokens in the pool (default 8); each row uses two of them. */
  nLabels?: number;
  /** Words of each class (default 4): 2 nWords word tokens. */
  nWords?: number;
  /** Vocabulary size (default and minimum 2 + nLabels + 2 nWords; tokens past that minimum are unused). */
  vocab?: number;
  /** Also score the label of every example, not only the query's (default false). */
  scoreShots?: boolean;
}

/** A {@link fewShotLabels} batch. */
export interface FewShotLabelsBatch extends TaskBatch {
  /** Labelled examples before the query: floor((L + 1) / (m + 2)) - 1. */
  shots: number;
  /** Words per example m. */
  inputLength: number;
  /** The padding token (0), filling the start of a row. */
  padToken: number;
  /** The separator (1) between an example's words and its label; the query ends with it. */
  sepToken: number;
  /** The first label token (2); the pool is firstLabel .. firstLabel + nLabels - 1. */
  firstLabel: number;
  /** Label tokens in the pool. */
  nLabels: number;
  /** Words of class 0 are firstWord .. firstWord + nWords - 1, class 1 the next nWords. */
  firstWord: number;
  /** Words per class. */
  nWords: number;
  /** Per row (B, 2): the label token of class 0 and of class 1, distinct. */
  labels: Int32Array;
  /** Per row: the query's class (B), 0 or 1. */
  queryClass: Int32Array;
  /** Per row: the query's label token (B), the target at L - 1. */
  answers: Int32Array;
}

/**
 * A few-shot classification probe in the spirit of Jamba's IMDB few-shot test: each row holds labelled
 * examples `w_1 .. w_m SEP label`, then a query `w_1 .. w_m SEP` whose label is the target at L - 1. A word
 * belongs to class 0 or 1 (a fixed lexicon, the same in every row, like sentiment words); an example's class
 * is the majority class of its words. The two label tokens are drawn per row from a pool of `nLabels`
 * (distinct, in random order), so which token names which class, and which two tokens are valid answers at
 * all, can only be read from the row's examples; every row shows both classes at least once. An answer
 * outside the row's two labels breaks the format, as the paper's pure Mamba model often did. Rows are
 * left-padded with the pad token to length L.
 *
 * @example
 * ```ts
 * import { fewShotLabels } from "seqlab";
 * const t = fewShotLabels({ batch: 1, length: 20, inputLength: 3, seed: 3 });
 * console.log(t.shots, t.inputs[19] === t.sepToken, t.targets[19] === t.labels[t.queryClass[0]]); // 3 true true
 * ```
 */
export function fewShotLabels(o: FewShotLabelsOptions): FewShotLabelsBatch {
  const op = "fewShotLabels";
  if (o === null || typeof o !== "object") throw new Error(`${op}: options must be an object`);
  const m = positiveInt(op, "inputLength", o.inputLength ?? 3);
  if (m % 2 === 0) throw new Error(`${op}: inputLength must be odd (a majority of the words), got ${m}`);
  const nLabels = positiveInt(op, "nLabels", o.nLabels ?? 8, 2);
  const nWords = positiveInt(op, "nWords", o.nWords ?? 4);
  const minVocab = 2 + nLabels + 2 * nWords;
  const { B, L, V, seed, ignoreIndex } = common(op, { ...o, vocab: o.vocab ?? minVocab }, minVocab);
  const S = Math.floor((L + 1) / (m + 2)) - 1;
  if (S < 2) {
    throw new Error(
      `${op}: length ${L} holds ${Math.max(S, 0)} examples of ${
        m + 2
      } tokens before the query; at least 2 are needed ` +
        `(length >= ${3 * (m + 2) - 1})`,
    );
  }
  const pad = 0, sep = 1, firstLabel = 2, firstWord = 2 + nLabels;
  const start = L - ((S + 1) * (m + 2) - 1); // left padding
  const inputs = new Int32Array(B * L), targets = new Int32Array(B * L).fill(ignoreIndex);
  const labels = new Int32Array(B * 2), queryClass = new Int32Array(B), answers = new Int32Array(B);
  const rng = new IntStream(seed, 0xf5b1);
  const cls = new Int32Array(S + 1), words = new Int32Array(m);
  for (let b = 0; b < B; b++) {
    const row = b * L;
    const l0 = rng.below(nLabels), l1 = (l0 + 1 + rng.below(nLabels - 1)) % nLabels;
    labels[2 * b] = firstLabel + l0;
    labels[2 * b + 1] = firstLabel + l1;
    for (let s = 0; s <= S; s++) cls[s] = rng.below(2);
    let ones = 0;
    for (let s = 0; s < S; s++) ones += cls[s];
    if (ones === 0 || ones === S) cls[rng.below(S)] ^= 1; // both classes among the examples
    inputs.fill(pad, row, row + start);
    for (let s = 0; s <= S; s++) {
      const c = cls[s], at = row + start + s * (m + 2);
      // c's words in the majority: (m + 1) / 2 .. m of them, in random positions
      const own = (m + 1) / 2 + rng.below(m - (m + 1) / 2 + 1);
      for (let i = 0; i < m; i++) {
        const cw = i < own ? c : 1 - c;
        words[i] = firstWord + cw * nWords + rng.below(nWords);
      }
      for (let i = m - 1; i > 0; i--) {
        const j = rng.below(i + 1), w = words[i];
        words[i] = words[j];
        words[j] = w;
      }
      inputs.set(words, at);
      inputs[at + m] = sep;
      const label = labels[2 * b + c];
      if (s < S) {
        inputs[at + m + 1] = label;
        if (o.scoreShots) targets[at + m] = label;
      } else {
        targets[at + m] = label;
        queryClass[b] = c;
        answers[b] = label;
      }
    }
  }
  return {
    inputs,
    targets,
    shape: [B, L],
    ignoreIndex,
    vocab: V,
    scored: o.scoreShots ? S + 1 : 1,
    shots: S,
    inputLength: m,
    padToken: pad,
    sepToken: sep,
    firstLabel,
    nLabels,
    firstWord,
    nWords,
    labels,
    queryClass,
    answers,
  };
}
