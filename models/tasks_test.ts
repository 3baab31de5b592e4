import { describe, expect, test } from "vitest";
import { associativeRecall, fewShotLabels, inductionHeads, selectiveCopying } from "./tasks.ts";

const row = (a: Int32Array, b: number, L: number) => Array.from(a.subarray(b * L, (b + 1) * L));

describe("selectiveCopying", () => {
  for (const [B, L, M, V] of [[4, 64, 8, 16], [3, 256, 16, 16], [2, 8, 4, 3], [5, 33, 1, 10]]) {
    test(`B ${B} L ${L} nTokens ${M} vocab ${V}: layout and answers recoverable from the inputs`, () => {
      const t = selectiveCopying({ batch: B, length: L, nTokens: M, vocab: V, seed: 11 });
      expect(t.shape).toEqual([B, L]);
      expect(t.inputs.length).toBe(B * L);
      expect(t.targets.length).toBe(B * L);
      expect([t.scored, t.nTokens, t.noiseToken, t.markerToken, t.vocab, t.ignoreIndex]).toEqual([
        M,
        M,
        0,
        V - 1,
        V,
        -100,
      ]);
      expect(t.positions.length).toBe(B * M);
      for (let b = 0; b < B; b++) {
        const x = row(t.inputs, b, L), y = row(t.targets, b, L);
        // the tail is markers, scored; the head holds exactly M data tokens, never a marker
        expect(x.slice(L - M)).toEqual(new Array(M).fill(V - 1));
        expect(y.slice(0, L - M)).toEqual(new Array(L - M).fill(-100));
        const data = x.slice(0, L - M).filter((v) => v !== 0);
        expect(data.length).toBe(M);
        for (const v of data) expect(v >= 1 && v <= V - 2).toBe(true);
        expect(y.slice(L - M)).toEqual(data);
        // positions are increasing and point at the data tokens
        const pos = Array.from(t.positions.subarray(b * M, (b + 1) * M));
        for (let k = 1; k < M; k++) expect(pos[k]).toBeGreaterThan(pos[k - 1]);
        expect(pos.map((p) => x[p])).toEqual(data);
      }
    });
  }

  test("seeds reproduce; different seeds differ; rows differ", () => {
    const o = { batch: 8, length: 128, nTokens: 8, vocab: 16 };
    const a = selectiveCopying({ ...o, seed: 3 }), b = selectiveCopying({ ...o, seed: 3 });
    expect(Array.from(a.inputs)).toEqual(Array.from(b.inputs));
    expect(Array.from(a.targets)).toEqual(Array.from(b.targets));
    const c = selectiveCopying({ ...o, seed: 4 });
    expect(Array.from(a.inputs)).not.toEqual(Array.from(c.inputs));
    expect(row(a.inputs, 0, 128)).not.toEqual(row(a.inputs, 1, 128));
  });

  test("positions spread over the whole noise region and tokens over the data alphabet", () => {
    const t = selectiveCopying({ batch: 400, length: 64, nTokens: 8, vocab: 6, seed: 5 });
    const posHist = new Array(56).fill(0), tokHist = new Array(6).fill(0);
    for (const p of t.positions) posHist[p]++;
    for (let i = 0; i < t.targets.length; i++) if (t.targets[i] >= 0) tokHist[t.targets[i]]++;
    // 3200 draws over 56 slots: each expects ~57; over 4 data tokens: ~800 each
    expect(Math.min(...posHist)).toBeGreaterThan(25);
    expect(Math.max(...posHist)).toBeLessThan(95);
    expect(tokHist[0]).toBe(0);
    expect(tokHist[5]).toBe(0);
    for (const v of tokHist.slice(1, 5)) expect(Math.abs(v - 800)).toBeLessThan(120);
  });

  test("a custom ignoreIndex marks the unscored targets", () => {
    const t = selectiveCopying({ batch: 1, length: 10, nTokens: 2, vocab: 5, ignoreIndex: -1 });
    expect(Array.from(t.targets.slice(0, 8))).toEqual(new Array(8).fill(-1));
    expect(t.ignoreIndex).toBe(-1);
  });

  test("bad input throws naming the problem", () => {
    const ok = { batch: 2, length: 32, nTokens: 4, vocab: 8 };
    expect(() => selectiveCopying({ ...ok, length: 7 })).toThrow(
      /length 7 must be at least 2 \* nTokens = 8/,
    );
    expect(() => selectiveCopying({ ...ok, vocab: 2 })).toThrow(/vocab must be an integer >= 3, got 2/);
    expect(() => selectiveCopying({ ...ok, batch: 0 })).toThrow(/batch must be an integer >= 1, got 0/);
    expect(() => selectiveCopying({ ...ok, nTokens: 1.5 })).toThrow(/nTokens must be an integer >= 1/);
    expect(() => selectiveCopying({ ...ok, seed: -1 })).toThrow(/seed must be a non-negative integer/);
    expect(() => selectiveCopying({ ...ok, ignoreIndex: 3 })).toThrow(
      /ignoreIndex must be an integer outside/,
    );
  });
});

describe("inductionHeads", () => {
  for (const [B, L, V] of [[4, 256, 16], [3, 3, 3], [2, 1000, 5]]) {
    test(`B ${B} L ${L} vocab ${V}: one scored position whose answer follows the first special token`, () => {
      const t = inductionHeads({ batch: B, length: L, vocab: V, seed: 21 });
      expect(t.shape).toEqual([B, L]);
      expect([t.scored, t.specialToken, t.vocab, t.inputs.length, t.targets.length]).toEqual([
        1,
        V - 1,
        V,
        B * L,
        B * L,
      ]);
      for (let b = 0; b < B; b++) {
        const x = row(t.inputs, b, L), y = row(t.targets, b, L);
        const specials = x.flatMap((v, i) => (v === V - 1 ? [i] : []));
        expect(specials).toEqual([t.triggers[b], L - 1]);
        expect(t.triggers[b]).toBeLessThanOrEqual(L - 3);
        const ans = x[specials[0] + 1];
        expect(ans).toBeGreaterThanOrEqual(0);
        expect(ans).toBeLessThan(V - 1);
        expect(t.answers[b]).toBe(ans);
        expect(y[L - 1]).toBe(ans);
        expect(y.slice(0, L - 1)).toEqual(new Array(L - 1).fill(-100));
        for (const v of x) expect(v >= 0 && v < V).toBe(true);
      }
    });
  }

  test("seeds reproduce; trigger positions and answers are spread out", () => {
    const a = inductionHeads({ batch: 2000, length: 50, vocab: 9, seed: 8 });
    const b = inductionHeads({ batch: 2000, length: 50, vocab: 9, seed: 8 });
    expect(Array.from(a.inputs)).toEqual(Array.from(b.inputs));
    const c = inductionHeads({ batch: 2000, length: 50, vocab: 9, seed: 9 });
    expect(Array.from(a.inputs)).not.toEqual(Array.from(c.inputs));
    const trig = new Array(48).fill(0), ans = new Array(8).fill(0);
    for (const p of a.triggers) trig[p]++;
    for (const v of a.answers) ans[v]++;
    expect(Math.min(...trig)).toBeGreaterThan(15); // ~41.7 expected per position
    expect(Math.max(...trig)).toBeLessThan(75);
    for (const v of ans) expect(Math.abs(v - 250)).toBeLessThan(70);
  });

  test("bad input throws naming the problem", () => {
    expect(() => inductionHeads({ batch: 1, length: 2 })).toThrow(/length must be at least 3/);
    expect(() => inductionHeads({ batch: 1, length: 10, vocab: 1 })).toThrow(/vocab must be an integer >= 3/);
    expect(() => inductionHeads({ batch: -2, length: 10 })).toThrow(/batch must be an integer >= 1, got -2/);
    expect(() => inductionHeads(null as never)).toThrow(/options must be an object/);
  });
});

describe("associativeRecall", () => {
  for (const [B, L, n, V] of [[4, 64, 8, 32], [3, 17, 8, 16], [2, 3, 1, 4], [5, 40, 5, 11]]) {
    test(`B ${B} L ${L} nPairs ${n} vocab ${V}: every query's target is the value bound to its key`, () => {
      const t = associativeRecall({ batch: B, length: L, nPairs: n, vocab: V, seed: 31 });
      const nKeys = Math.floor(V / 2), Q = Math.ceil((L - 2 * n) / 2);
      expect(t.shape).toEqual([B, L]);
      expect([t.nPairs, t.nQueries, t.scored, t.nKeys, t.vocab]).toEqual([n, Q, Q, nKeys, V]);
      expect([t.inputs.length, t.targets.length, t.keys.length, t.values.length]).toEqual([
        B * L,
        B * L,
        B * n,
        B * n,
      ]);
      for (let b = 0; b < B; b++) {
        const x = row(t.inputs, b, L), y = row(t.targets, b, L);
        const bind = new Map<number, number>();
        for (let i = 0; i < n; i++) {
          const k = x[2 * i], v = x[2 * i + 1];
          expect(k >= 0 && k < nKeys).toBe(true);
          expect(v >= nKeys && v < V).toBe(true);
          expect(bind.has(k)).toBe(false); // keys distinct within a row
          bind.set(k, v);
          expect([t.keys[b * n + i], t.values[b * n + i]]).toEqual([k, v]);
        }
        expect(y.slice(0, 2 * n)).toEqual(new Array(2 * n).fill(-100));
        let scored = 0;
        for (let p = 2 * n; p < L; p++) {
          if ((p - 2 * n) % 2 === 0) { // a query: one of the row's keys, its value the target
            expect(bind.has(x[p])).toBe(true);
            expect(y[p]).toBe(bind.get(x[p]));
            scored++;
          } else { // the teacher-forced answer, unscored
            expect(x[p]).toBe(bind.get(x[p - 1]));
            expect(y[p]).toBe(-100);
          }
        }
        expect(scored).toBe(Q);
      }
    });
  }

  test("seeds reproduce; keys, values and queried pairs are spread out", () => {
    const o = { batch: 2000, length: 24, nPairs: 4, vocab: 12 };
    const a = associativeRecall({ ...o, seed: 2 }), b = associativeRecall({ ...o, seed: 2 });
    expect(Array.from(a.inputs)).toEqual(Array.from(b.inputs));
    expect(Array.from(a.targets)).toEqual(Array.from(b.targets));
    expect(Array.from(associativeRecall({ ...o, seed: 3 }).inputs)).not.toEqual(Array.from(a.inputs));
    const keyHist = new Array(6).fill(0), valHist = new Array(6).fill(0), slotHist = new Array(4).fill(0);
    for (let i = 0; i < a.keys.length; i++) {
      keyHist[a.keys[i]]++;
      valHist[a.values[i] - 6]++;
    }
    for (let r = 0; r < 2000; r++) {
      const x = row(a.inputs, r, 24);
      for (let p = 8; p < 24; p += 2) slotHist[x.slice(0, 8).indexOf(x[p]) / 2]++;
    }
    for (const h of [keyHist, valHist]) for (const v of h) expect(Math.abs(v - 8000 / 6)).toBeLessThan(150);
    for (const v of slotHist) expect(Math.abs(v - 4000)).toBeLessThan(300); // 16000 queries over 4 pairs
  });

  test("bad input throws naming the problem", () => {
    expect(() => associativeRecall({ batch: 1, length: 16, nPairs: 5, vocab: 8 })).toThrow(
      /nPairs 5 exceeds the 4 key tokens of vocab 8/,
    );
    expect(() => associativeRecall({ batch: 1, length: 16, nPairs: 8, vocab: 32 })).toThrow(
      /length 16 must be at least 2 \* nPairs \+ 1 = 17/,
    );
    expect(() => associativeRecall({ batch: 1, length: 16, nPairs: 0 })).toThrow(
      /nPairs must be an integer >= 1, got 0/,
    );
    expect(() => associativeRecall({ batch: 1, length: 16, vocab: 3 })).toThrow(
      /vocab must be an integer >= 4, got 3/,
    );
  });
});

describe("fewShotLabels", () => {
  for (const [B, L, m, nL, nW] of [[4, 64, 3, 8, 4], [3, 14, 1, 2, 1], [2, 50, 5, 4, 3], [6, 21, 3, 8, 4]]) {
    test(`B ${B} L ${L} m ${m} labels ${nL} words ${nW}: examples, query and label are consistent`, () => {
      const t = fewShotLabels({ batch: B, length: L, inputLength: m, nLabels: nL, nWords: nW, seed: 41 });
      const S = Math.floor((L + 1) / (m + 2)) - 1, V = 2 + nL + 2 * nW, start = L - ((S + 1) * (m + 2) - 1);
      expect(t.shape).toEqual([B, L]);
      expect([t.shots, t.scored, t.vocab, t.padToken, t.sepToken, t.firstLabel, t.firstWord]).toEqual([
        S,
        1,
        V,
        0,
        1,
        2,
        2 + nL,
      ]);
      const classOf = (w: number) => (w - t.firstWord < nW ? 0 : 1);
      for (let b = 0; b < B; b++) {
        const x = row(t.inputs, b, L), y = row(t.targets, b, L);
        const [l0, l1] = [t.labels[2 * b], t.labels[2 * b + 1]];
        expect(l0).not.toBe(l1);
        for (const l of [l0, l1]) expect(l >= 2 && l < 2 + nL).toBe(true);
        expect(x.slice(0, start)).toEqual(new Array(start).fill(0));
        const seen = new Set<number>();
        for (let s = 0; s <= S; s++) {
          const at = start + s * (m + 2), w = x.slice(at, at + m);
          for (const v of w) expect(v >= 2 + nL && v < V).toBe(true);
          const ones = w.filter((v) => classOf(v) === 1).length, c = 2 * ones > m ? 1 : 0;
          expect(x[at + m]).toBe(1);
          if (s < S) {
            expect(x[at + m + 1]).toBe(c === 0 ? l0 : l1); // the example's label names its majority class
            seen.add(c);
          } else {
            expect(t.queryClass[b]).toBe(c);
            expect(t.answers[b]).toBe(c === 0 ? l0 : l1);
          }
        }
        expect(seen.size).toBe(2); // both classes shown
        expect(y.slice(0, L - 1)).toEqual(new Array(L - 1).fill(-100));
        expect(y[L - 1]).toBe(t.answers[b]);
        expect(x[L - 1]).toBe(1);
      }
    });
  }

  test("scoreShots scores every example's label too", () => {
    const t = fewShotLabels({ batch: 3, length: 30, seed: 5, scoreShots: true });
    expect(t.scored).toBe(t.shots + 1);
    for (let b = 0; b < 3; b++) {
      const x = row(t.inputs, b, 30), y = row(t.targets, b, 30);
      const at = y.flatMap((v, i) => (v === -100 ? [] : [i]));
      expect(at.length).toBe(t.shots + 1);
      for (const p of at) expect(x[p]).toBe(1); // scored at the separators
      for (const p of at.slice(0, -1)) expect(y[p]).toBe(x[p + 1]);
    }
  });

  test("seeds reproduce; labels, query classes and majorities are spread out", () => {
    const o = { batch: 4000, length: 24, nLabels: 4 };
    const a = fewShotLabels({ ...o, seed: 6 }), b = fewShotLabels({ ...o, seed: 6 });
    expect(Array.from(a.inputs)).toEqual(Array.from(b.inputs));
    expect(Array.from(fewShotLabels({ ...o, seed: 7 }).inputs)).not.toEqual(Array.from(a.inputs));
    const lab = new Array(4).fill(0);
    let q1 = 0, unanimous = 0;
    for (let r = 0; r < 4000; r++) {
      lab[a.labels[2 * r] - 2]++;
      q1 += a.queryClass[r];
      const w = row(a.inputs, r, 24).slice(20, 23); // the query's 3 words (4 examples of 5 tokens before it)
      const ones = w.filter((v) => v - a.firstWord >= a.nWords).length;
      if (ones === 0 || ones === 3) unanimous++;
    }
    for (const v of lab) expect(Math.abs(v - 1000)).toBeLessThan(120);
    expect(Math.abs(q1 - 2000)).toBeLessThan(200);
    expect(Math.abs(unanimous - 2000)).toBeLessThan(200); // the majority is 2 or 3 of 3 words, evenly
  });

  test("bad input throws naming the problem", () => {
    expect(() => fewShotLabels({ batch: 1, length: 13, inputLength: 3 })).toThrow(
      /length 13 holds 1 examples of 5 tokens before the query; at least 2 are needed \(length >= 14\)/,
    );
    expect(() => fewShotLabels({ batch: 1, length: 30, inputLength: 4 })).toThrow(/inputLength must be odd/);
    expect(() => fewShotLabels({ batch: 1, length: 30, nLabels: 1 })).toThrow(
      /nLabels must be an integer >= 2, got 1/,
    );
    expect(() => fewShotLabels({ batch: 1, length: 30, vocab: 10 })).toThrow(
      /vocab must be an integer >= 18, got 10/,
    );
    expect(() => fewShotLabels({ batch: 1, length: 30, ignoreIndex: 3 })).toThrow(
      /ignoreIndex must be an integer outside/,
    );
  });
});
