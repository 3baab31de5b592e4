import { describe, expect, test } from "vitest";
import { kvBytesPerToken, OPT_13B, ServingConfigError } from "./kv_math.ts";
import {
  calibrateStepTime,
  type KVPolicy,
  type SimulateOptions,
  simulateServing,
  sustainableRate,
  sweepRates,
} from "./simulator.ts";
import { poissonTrace, type TraceRequest } from "./traces.ts";

const POLICIES: KVPolicy[] = ["static-max", "static-pow2", "static-oracle", { paged: 16 }];
/** One second per iteration, whatever it batches: iteration counts become times. */
const UNIT = { base: 1, perToken: 0, perContextToken: 0 };
const req = (id: number, arrival: number, inputLen: number, outputLen: number): TraceRequest => ({
  id,
  arrival,
  inputLen,
  outputLen,
});
const sum = (m: Record<string, number>) => Object.values(m).reduce((a, b) => a + b, 0);

describe("simulateServing: hand-computed cases", () => {
  test("one request (prompt 4, output 3): three iterations; every policy's memory split", () => {
    const trace = [req(0, 0, 4, 3)];
    const expected: [KVPolicy, object][] = [
      // stored 5, 6, 7 of final 7; 8 slots allocated: reservation 2 + 1 + 0, internal 1 each
      ["static-max", { tokens: 18 / 24, reservation: 3 / 24, internal: 3 / 24, external: 0, free: 0 }],
      ["static-pow2", { tokens: 18 / 24, reservation: 3 / 24, internal: 3 / 24, external: 0, free: 0 }],
      ["static-oracle", { tokens: 18 / 24, reservation: 3 / 24, internal: 0, external: 0, free: 3 / 24 }],
      [{ paged: 4 }, { tokens: 18 / 24, reservation: 3 / 24, internal: 3 / 24, external: 0, free: 0 }],
      // blocks of 2: 6 slots after the prefill (reservation 1), 6 (0), 8 (internal 1)
      [{ paged: 2 }, { tokens: 18 / 24, reservation: 1 / 24, internal: 1 / 24, external: 0, free: 4 / 24 }],
    ];
    for (const [policy, memory] of expected) {
      const r = simulateServing(trace, { kvTokens: 8, maxLen: 8, policy, stepTime: UNIT });
      expect(r.iterations).toBe(3);
      expect(r.requests).toEqual([{
        id: 0,
        arrival: 0,
        firstToken: 1,
        finish: 3,
        outputLen: 3,
        preemptions: 0,
      }]);
      expect(r.normalizedLatency).toBe(1);
      expect(r.meanFirstTokenLatency).toBe(1);
      for (const [k, v] of Object.entries(memory)) {
        expect(r.memory[k as keyof typeof memory]).toBeCloseTo(v, 12);
      }
    }
  });
  test("static: a request refused for memory waits; the free slots meanwhile count as external", () => {
    // 6 slots; two requests of final length 4 arrive together: the second waits 3 iterations
    const r = simulateServing([req(0, 0, 1, 3), req(1, 0, 1, 3)], {
      kvTokens: 6,
      maxLen: 8,
      policy: "static-oracle",
      stepTime: UNIT,
    });
    expect(r.requests.map((q) => q.finish)).toEqual([3, 6]);
    expect(r.memory.external).toBeCloseTo((2 * 3) / 36, 12);
    expect(r.memory.free).toBeCloseTo((2 * 3) / 36, 12);
    expect(r.normalizedLatency).toBeCloseTo((1 + 2) / 2, 12);
  });
  test("first-fit leaves holes: enough free slots in total, none contiguous, is external fragmentation", () => {
    // 10 slots: A [0,3), B [3,5), C [5,8), E [8,10); B and E end first, leaving two holes of 2: D (4) waits
    const trace = [req(0, 0, 1, 2), req(1, 0, 1, 1), req(2, 0, 1, 2), req(3, 0, 1, 1), req(4, 0.5, 1, 3)];
    const r = simulateServing(trace, { kvTokens: 10, maxLen: 8, policy: "static-oracle", stepTime: UNIT });
    expect(r.requests.map((q) => q.finish)).toEqual([2, 1, 2, 1, 5]);
    expect(r.iterations).toBe(5);
    expect(r.memory.external).toBeCloseTo(4 / 50, 12);
  });
  test("paged: the latest request is preempted by recomputation, and everything finishes", () => {
    // 4 blocks of 2: two requests that each grow to 6 slots cannot both hold their blocks
    const r = simulateServing([req(0, 0, 2, 4), req(1, 0, 2, 4)], {
      kvTokens: 8,
      maxLen: 8,
      policy: { paged: 2 },
      stepTime: UNIT,
      watermark: 0,
    });
    expect(r.finished).toBe(2);
    expect(r.preemptions).toBeGreaterThan(0);
    expect(r.requests[0].preemptions).toBe(0);
    expect(r.requests[1].preemptions).toBeGreaterThan(0);
    expect(r.recomputedTokens).toBeGreaterThan(0);
    expect(sum({ ...r.memory })).toBeCloseTo(1, 12);
  });
  test("requests that can never run are refused with a reason, the rest served", () => {
    const trace = [req(0, 0, 10, 10), req(1, 0, 2, 2), req(2, 0, 30, 10)];
    const r = simulateServing(trace, { kvTokens: 16, maxLen: 32, policy: "static-oracle", stepTime: UNIT });
    expect(r.finished).toBe(1);
    expect(r.rejected).toEqual([
      { id: 0, reason: "reservation 20 > kvTokens 16" },
      { id: 2, reason: "prompt + output 40 > maxLen 32" },
    ]);
  });
  test("limits: no iteration batches more than maxNumSeqs", () => {
    const trace = poissonTrace({ rate: Infinity, count: 50, seed: 1, dataset: "alpaca" });
    const r = simulateServing(trace, { kvTokens: 100_000, policy: { paged: 16 }, maxNumSeqs: 7 });
    expect(r.batch.max).toBe(7);
    expect(r.finished).toBe(50);
  });
  test("the step-time model: base + perToken x batched + perContextToken x context", () => {
    // one request, prompt 4 output 2: prefill batches 4 tokens reading 4; the decode batches 1 reading 6
    const stepTime = { base: 1, perToken: 0.1, perContextToken: 0.01 };
    const r = simulateServing([req(0, 0, 4, 2)], {
      kvTokens: 8,
      maxLen: 8,
      policy: "static-oracle",
      stepTime,
    });
    expect(r.requests[0].firstToken).toBeCloseTo(1 + 0.4 + 0.04, 12);
    expect(r.requests[0].finish).toBeCloseTo(1.44 + 1 + 0.1 + 0.06, 12);
    const p = simulateServing([req(0, 0, 4, 2)], {
      kvTokens: 8,
      maxLen: 8,
      policy: { paged: 4 },
      stepTime,
      pagedReadFactor: 2,
    });
    expect(p.requests[0].finish).toBeCloseTo(1 + 0.4 + 0.08 + 1 + 0.1 + 0.12, 12);
  });
});

describe("simulateServing: a ShareGPT-like trace on OPT-13B's 12 GiB (Table 1)", () => {
  const base: Omit<SimulateOptions, "policy"> = {
    kvBytes: 12 * 2 ** 30,
    bytesPerToken: kvBytesPerToken(OPT_13B),
  };
  test("memory shares sum to 1; oracle has no internal fragmentation; paged holds almost only tokens", () => {
    const trace = poissonTrace({ rate: 3, count: 200, seed: 1, dataset: "sharegpt" });
    const res = POLICIES.map((policy) => simulateServing(trace, { ...base, policy }));
    for (const r of res) {
      expect(r.kvTokens).toBe(15_728);
      expect(r.finished).toBe(200);
      expect(sum({ ...r.memory })).toBeCloseTo(1, 9);
    }
    const [max, pow2, oracle, paged] = res;
    expect(oracle.memory.internal).toBe(0);
    expect(max.memory.internal).toBeGreaterThan(pow2.memory.internal);
    // reserved or fragmented, as a share of what is allocated
    const waste = (r: typeof max) =>
      (r.memory.reservation + r.memory.internal) /
      (r.memory.tokens + r.memory.reservation + r.memory.internal);
    expect(waste(paged)).toBeLessThan(0.04);
    expect(waste(oracle)).toBeGreaterThan(0.3);
    expect(paged.batch.mean).toBeGreaterThan(oracle.batch.mean);
  });
  test("deterministic: the same trace and options give the same result", () => {
    const trace = poissonTrace({ rate: 3, count: 100, seed: 4, dataset: "sharegpt" });
    for (const policy of POLICIES) {
      expect(simulateServing(trace, { ...base, policy })).toEqual(
        simulateServing(trace, { ...base, policy }),
      );
    }
  });
  test("policies order as the paper finds: paged > oracle > pow2 > max in rate sustained at 0.1 s/token", () => {
    const rates = [0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5];
    const sustained = POLICIES.map((policy) =>
      sustainableRate(
        sweepRates(rates, { count: 300, seed: 1, dataset: "sharegpt" }, { ...base, policy }),
        0.1,
      )
    );
    expect(sustained[0]).toBeGreaterThan(0);
    for (let i = 1; i < 4; i++) expect(sustained[i]).toBeGreaterThan(sustained[i - 1]);
  });
  test("kvBytes with bytesPerToken equals kvTokens", () => {
    const trace = poissonTrace({ rate: 2, count: 30, seed: 2, dataset: "sharegpt" });
    const a = simulateServing(trace, { ...base, policy: { paged: 16 } });
    const b = simulateServing(trace, { kvTokens: 15_728, policy: { paged: 16 } });
    expect(a).toEqual(b);
  });
});

describe("sweepRates and sustainableRate", () => {
  test("one point per rate, in order; throughput follows the offered rate at light load", () => {
    const pts = sweepRates([0.5, 1], { count: 200, seed: 1, dataset: "alpaca" }, {
      kvTokens: 15_728,
      policy: "static-oracle",
    });
    expect(pts.map((p) => p.rate)).toEqual([0.5, 1]);
    for (const p of pts) expect(Math.abs(p.requestsPerSecond / p.rate - 1)).toBeLessThan(0.2);
    expect("requests" in pts[0]).toBe(false);
  });
  test("sustainableRate stops at the first point over the bound", () => {
    const pts = [{ rate: 3, normalizedLatency: 0.05 }, { rate: 1, normalizedLatency: 0.1 }, {
      rate: 2,
      normalizedLatency: 0.5,
    }];
    expect(sustainableRate(pts, 0.2)).toBe(1);
    expect(sustainableRate(pts, 0.01)).toBe(0);
    expect(sustainableRate(pts, 1)).toBe(3);
  });
});

describe("calibrateStepTime", () => {
  test("recovers the coefficients of exact samples", () => {
    const truth = { base: 0.012, perToken: 3e-5, perContextToken: 4e-7 };
    const samples = [];
    for (const b of [1, 8, 64, 300]) {
      for (const c of [100, 5000, 40_000]) {
        samples.push({
          batchTokens: b,
          contextTokens: c,
          seconds: truth.base + truth.perToken * b + truth.perContextToken * c,
        });
      }
    }
    const m = calibrateStepTime(samples);
    expect(m.base).toBeCloseTo(truth.base, 12);
    expect(m.perToken).toBeCloseTo(truth.perToken, 14);
    expect(m.perContextToken).toBeCloseTo(truth.perContextToken, 16);
    expect(m.rmsError).toBeLessThan(1e-12);
  });
  test("collinear or too few samples throw a named error", () => {
    const line = [1, 2, 3, 4].map((b) => ({ batchTokens: b, contextTokens: 10 * b, seconds: b }));
    expect(() => calibrateStepTime(line)).toThrow(/calibrateStepTime: the samples do not determine/);
    expect(() => calibrateStepTime(line.slice(0, 2))).toThrow(/calibrateStepTime: needs at least 3/);
    expect(() => calibrateStepTime([...line, { batchTokens: -1, contextTokens: 1, seconds: 1 }])).toThrow(
      /samples\[4\]\.batchTokens/,
    );
  });
});

describe("bad options throw a named error", () => {
  const trace = [req(0, 0, 4, 4)];
  const ok: SimulateOptions = { kvTokens: 64, policy: { paged: 16 } };
  const cases: [string, () => unknown, RegExp][] = [
    ["unknown policy", () => simulateServing(trace, { ...ok, policy: "lru" as KVPolicy }), /policy must be/],
    ["block size 0", () => simulateServing(trace, { ...ok, policy: { paged: 0 } }), /policy.paged/],
    ["no capacity", () => simulateServing(trace, { policy: "static-max" }), /give kvTokens, or kvBytes/],
    ["both capacities", () => simulateServing(trace, { ...ok, kvBytes: 100, bytesPerToken: 1 }), /not both/],
    [
      "kvBytes without bytesPerToken",
      () => simulateServing(trace, { kvBytes: 1e6, policy: "static-max" }),
      /bytesPerToken/,
    ],
    ["kvTokens 0", () => simulateServing(trace, { ...ok, kvTokens: 0 }), /kvTokens must be an integer >= 1/],
    [
      "cache smaller than a block",
      () => simulateServing(trace, { ...ok, kvTokens: 8 }),
      /holds no block of 16/,
    ],
    ["maxNumSeqs 0", () => simulateServing(trace, { ...ok, maxNumSeqs: 0 }), /maxNumSeqs/],
    ["watermark 1", () => simulateServing(trace, { ...ok, watermark: 1 }), /watermark/],
    [
      "negative step time",
      () => simulateServing(trace, { ...ok, stepTime: { base: -1, perToken: 0, perContextToken: 0 } }),
      /stepTime.base/,
    ],
    [
      "out of arrival order",
      () => simulateServing([req(0, 1, 4, 4), req(1, 0, 4, 4)], ok),
      /trace must be in arrival order/,
    ],
    ["output 0", () => simulateServing([req(0, 0, 4, 0)], ok), /trace\[0\]\.outputLen/],
    ["too many iterations", () => simulateServing(trace, { ...ok, maxIterations: 2 }), /maxIterations/],
    ["sweep without rates", () => sweepRates([], { count: 1, seed: 1, dataset: "alpaca" }, ok), /sweepRates/],
    ["latency bound 0", () => sustainableRate([], 0), /sustainableRate/],
  ];
  for (const [name, f, msg] of cases) {
    test(name, () => {
      expect(f).toThrow(ServingConfigError);
      expect(f).toThrow(msg);
    });
  }
  test("messages name the function", () => {
    expect(() => simulateServing(trace, { ...ok, kvTokens: -3 })).toThrow(/^simulateServing: /);
  });
});
