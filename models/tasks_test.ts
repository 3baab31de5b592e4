import { describe, expect, test } from "vitest";
import { inductionHeads, selectiveCopying } from "./tasks.ts";

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
