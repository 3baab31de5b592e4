import { describe, expect, test } from "vitest";
import { ServingConfigError } from "./kv_math.ts";
import { DATASETS, lengthDistribution, poissonTrace, traceStats } from "./traces.ts";

describe("poissonTrace", () => {
  test("deterministic under a seed; another seed differs", () => {
    const a = poissonTrace({ rate: 2, count: 200, seed: 5, dataset: "sharegpt" });
    expect(poissonTrace({ rate: 2, count: 200, seed: 5, dataset: "sharegpt" })).toEqual(a);
    expect(poissonTrace({ rate: 2, count: 200, seed: 6, dataset: "sharegpt" })).not.toEqual(a);
  });
  test("the lengths do not depend on the rate; arrival times scale as 1 / rate", () => {
    const a = poissonTrace({ rate: 1, count: 100, seed: 2, dataset: "alpaca" });
    const b = poissonTrace({ rate: 4, count: 100, seed: 2, dataset: "alpaca" });
    expect(b.map((r) => [r.inputLen, r.outputLen])).toEqual(a.map((r) => [r.inputLen, r.outputLen]));
    for (let i = 0; i < 100; i++) expect(b[i].arrival).toBeCloseTo(a[i].arrival / 4, 9);
    expect(b.map((r) => r.id)).toEqual([...Array(100).keys()]);
  });
  for (const ds of ["sharegpt", "alpaca"] as const) {
    test(`${ds}: means within 2% of the paper's (Figure 11), caps hold, lengths >= 1`, () => {
      const t = poissonTrace({ rate: 1, count: 20_000, seed: 1, dataset: ds });
      const s = traceStats(t);
      expect(Math.abs(s.meanInput / DATASETS[ds].inputMean - 1)).toBeLessThan(0.02);
      expect(Math.abs(s.meanOutput / DATASETS[ds].outputMean - 1)).toBeLessThan(0.02);
      for (const r of t) {
        expect(r.inputLen >= 1 && r.inputLen <= 1024 && r.outputLen >= 1).toBe(true);
        expect(r.inputLen + r.outputLen).toBeLessThanOrEqual(2048);
      }
    });
  }
  test("ShareGPT is long-tailed: some requests reach past 1500 tokens", () => {
    const s = traceStats(poissonTrace({ rate: 1, count: 5000, seed: 1, dataset: "sharegpt" }));
    expect(s.maxTotal).toBeGreaterThan(1500);
  });
  test("Poisson arrivals: mean gap 1 / rate, coefficient of variation near 1", () => {
    const t = poissonTrace({ rate: 3, count: 20_000, seed: 9, dataset: "alpaca" });
    const gaps = t.map((r, i) => r.arrival - (i ? t[i - 1].arrival : 0));
    const m = gaps.reduce((a, b) => a + b) / gaps.length;
    const sd = Math.sqrt(gaps.reduce((a, g) => a + (g - m) ** 2, 0) / gaps.length);
    expect(Math.abs(m * 3 - 1)).toBeLessThan(0.03);
    expect(Math.abs(sd / m - 1)).toBeLessThan(0.03);
  });
  test("rate Infinity puts every request at 0", () => {
    const t = poissonTrace({ rate: Infinity, count: 10, seed: 1, dataset: "alpaca" });
    expect(t.every((r) => r.arrival === 0)).toBe(true);
    expect(traceStats(t).rate).toBe(Infinity);
  });
  test("a custom length model and caps", () => {
    const m = { inputMean: 20, outputMean: 40, inputSigma: 0.5, outputSigma: 0.5 };
    const t = poissonTrace({ rate: 1, count: 5000, seed: 3, dataset: m, maxInput: 64, maxTotal: 128 });
    const s = traceStats(t);
    expect(s.maxTotal).toBeLessThanOrEqual(128);
    expect(Math.abs(s.meanInput / 20 - 1)).toBeLessThan(0.03);
    expect(Math.abs(s.meanOutput / 40 - 1)).toBeLessThan(0.03);
    const d = lengthDistribution(m, { maxInput: 64, maxTotal: 128 });
    expect([d.maxInput, d.maxTotal, d.inputSigma]).toEqual([64, 128, 0.5]);
  });
  test("count 0 gives an empty trace", () => {
    expect(poissonTrace({ rate: 1, count: 0, seed: 1, dataset: "alpaca" })).toEqual([]);
    expect(traceStats([]).count).toBe(0);
  });
});

describe("bad options throw a named error", () => {
  const base = { rate: 1, count: 3, seed: 1, dataset: "alpaca" as const };
  const cases: [string, object, RegExp][] = [
    ["rate 0", { rate: 0 }, /poissonTrace: rate must be/],
    ["count 1.5", { count: 1.5 }, /poissonTrace: count must be/],
    ["seed -1", { seed: -1 }, /poissonTrace: seed must be/],
    ["unknown dataset", { dataset: "lmsys" }, /poissonTrace: dataset must be/],
    ["maxInput >= maxTotal", { maxInput: 2048 }, /poissonTrace: maxInput/],
    ["maxTotal 1", { maxTotal: 1 }, /poissonTrace: maxTotal/],
    [
      "a mean the caps cannot reach",
      { dataset: { inputMean: 900, outputMean: 10, inputSigma: 1, outputSigma: 1 } },
      /poissonTrace: input mean must lie in/,
    ],
    [
      "sigma 0",
      { dataset: { inputMean: 9, outputMean: 10, inputSigma: 0, outputSigma: 1 } },
      /poissonTrace: inputSigma/,
    ],
  ];
  for (const [name, patch, msg] of cases) {
    test(name, () => {
      const f = () => poissonTrace({ ...base, ...patch } as Parameters<typeof poissonTrace>[0]);
      expect(f).toThrow(ServingConfigError);
      expect(f).toThrow(msg);
    });
  }
});
