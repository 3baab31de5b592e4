import { describe, expect, test } from "vitest";
import {
  kvBytesPerRequest,
  kvBytesPerToken,
  kvTokenSlots,
  LLAMA_13B,
  OPT_13B,
  OPT_175B,
  OPT_66B,
  PAPER_SERVERS,
  ServingConfigError,
} from "./kv_math.ts";

describe("kvBytesPerToken", () => {
  test("OPT-13B: 2 x 40 layers x 5120 x 2 bytes = 819,200 bytes = 800 KiB (paper, Section 3)", () => {
    expect(kvBytesPerToken(OPT_13B)).toBe(819_200);
    expect(kvBytesPerToken(OPT_13B)).toBe(800 * 1024);
  });
  test("a 2048-token OPT-13B request: 1,677,721,600 bytes = 1.5625 GiB (the paper's 1.6 GB)", () => {
    expect(kvBytesPerRequest(OPT_13B, 2048)).toBe(1_677_721_600);
    expect(kvBytesPerRequest(OPT_13B, 2048) / 2 ** 30).toBe(1.5625);
  });
  test("the other models", () => {
    expect(kvBytesPerToken(LLAMA_13B)).toBe(819_200);
    expect(kvBytesPerToken(OPT_66B)).toBe(2 * 64 * 9216 * 2);
    expect(kvBytesPerToken(OPT_175B)).toBe(2 * 96 * 12288 * 2);
  });
  test("grouped-query heads and other ways to give the shape", () => {
    expect(kvBytesPerToken({ layers: 2, heads: 8, kvHeads: 2, headDim: 64, bytesPerValue: 4 })).toBe(2048);
    expect(kvBytesPerToken({ layers: 2, hidden: 512, heads: 8, kvHeads: 2, bytesPerValue: 4 })).toBe(2048);
    expect(kvBytesPerToken({ layers: 1, hidden: 64, bytesPerValue: 2 })).toBe(256);
    expect(kvBytesPerToken({ layers: 1, hidden: 64, headDim: 16, kvHeads: 1, bytesPerValue: 1 })).toBe(32);
  });
  test("Table 1's KV slots from its KV memory (GiB) and 800 KiB-style per-token bytes", () => {
    const slots = PAPER_SERVERS.map((s) => kvTokenSlots(s.models[0], s.kvCacheGB * 2 ** 30));
    expect(slots).toEqual([15_728, 9_557, 60_074]);
    // 13B and 175B round to the printed 15.7K and 60.1K; 66B's printed 9.7K implies ~21.3 GiB, not 21
    for (const [i, s] of PAPER_SERVERS.entries()) {
      expect(Math.abs(slots[i] - s.maxKvSlots) / s.maxKvSlots).toBeLessThan(0.02);
    }
    expect(Math.round(slots[0] / 100) * 100).toBe(15_700);
    expect(Math.round(slots[2] / 100) * 100).toBe(60_100);
  });
});

describe("bad input throws a named error", () => {
  const cases: [string, () => unknown, RegExp][] = [
    [
      "layers 0",
      () => kvBytesPerToken({ layers: 0, hidden: 8, bytesPerValue: 2 }),
      /layers must be an integer/,
    ],
    ["no width", () => kvBytesPerToken({ layers: 1, bytesPerValue: 2 }), /give hidden or headDim/],
    ["bytes 0", () => kvBytesPerToken({ layers: 1, hidden: 8, bytesPerValue: 0 }), /bytesPerValue/],
    [
      "hidden % heads",
      () => kvBytesPerToken({ layers: 1, hidden: 10, heads: 3, bytesPerValue: 2 }),
      /multiple/,
    ],
    [
      "heads % kvHeads",
      () => kvBytesPerToken({ layers: 1, hidden: 12, heads: 6, kvHeads: 4, bytesPerValue: 2 }),
      /heads 6 is not a multiple of kvHeads 4/,
    ],
    [
      "heads x headDim != hidden",
      () => kvBytesPerToken({ layers: 1, hidden: 12, heads: 2, headDim: 4, bytesPerValue: 2 }),
      /!= hidden 12/,
    ],
    ["tokens -1", () => kvBytesPerRequest(OPT_13B, -1), /kvBytesPerRequest: tokens/],
    ["kvBytes NaN", () => kvTokenSlots(OPT_13B, NaN), /kvTokenSlots: kvBytes/],
  ];
  for (const [name, f, msg] of cases) {
    test(name, () => {
      expect(f).toThrow(ServingConfigError);
      expect(f).toThrow(msg);
    });
  }
});
