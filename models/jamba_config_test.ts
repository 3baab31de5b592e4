import { describe, expect, test } from "vitest";
import {
  JAMBA_PRESETS as P,
  JambaSpecError,
  kvCacheBytes,
  layerKinds,
  paramCount,
  stateBytes,
} from "../mod.ts";
import type { JambaSpec } from "../mod.ts";

const GiB = 2 ** 30, T = 262144; // Table 1: 256K tokens, 16-bit; its "GB" are GiB (the sums are exact in 2^30)
const within = (got: number, want: number, rel: number) => expect(Math.abs(got / want - 1)).toBeLessThan(rel);

describe("jamba_config", () => {
  test("Jamba's layout: attention at i % 8 == 4, MoE at i % 2 == 1", () => {
    const kinds = layerKinds(P["jamba-v0.1"]);
    expect(kinds.flatMap((k, i) => k.mixer === "attention" ? [i] : [])).toEqual([4, 12, 20, 28]);
    expect(kinds.flatMap((k, i) => k.mlp === "moe" ? [i] : [])).toEqual(
      Array.from({ length: 16 }, (_, i) => 2 * i + 1),
    );
    expect(
      layerKinds({ ...P["jamba-v0.1"], attnMamba: [1, 3], attnOffset: undefined }).filter((k) =>
        k.mixer === "attention"
      ).length,
    ).toBe(8);
    expect(layerKinds({ ...P["jamba-v0.1"], attnMamba: [0, 1] }).every((k) => k.mixer === "mamba")).toBe(
      true,
    );
    expect(layerKinds(P["llama2-7b"]).every((k) => k.mixer === "attention" && k.mlp === "dense")).toBe(true);
  });

  test("Table 1 exactly: KV cache at 256K tokens, 16-bit", () => {
    expect(kvCacheBytes(P["llama2-7b"], T)).toBe(128 * GiB);
    expect(kvCacheBytes(P["mistral-7b"], T)).toBe(32 * GiB);
    expect(kvCacheBytes(P["mixtral-8x7b"], T)).toBe(32 * GiB);
    expect(kvCacheBytes(P["jamba-v0.1"], T)).toBe(4 * GiB);
    expect(kvCacheBytes(P["jamba-v0.1"], T, 1)).toBe(2 * GiB);
    expect(kvCacheBytes(P["jamba-v0.1"], 0)).toBe(0);
    expect(kvCacheBytes({ ...P["jamba-v0.1"], attnMamba: [0, 1] }, T)).toBe(0);
  });

  test("Mamba state: constant per sequence, (dConv - 1 + dState) x E*hidden per Mamba layer", () => {
    expect(stateBytes(P["jamba-v0.1"])).toBe(28 * 8192 * (3 + 16) * 2); // 8.3125 MiB, about 530 tokens of KV
    expect(stateBytes(P["jamba-v0.1"], 4)).toBe(28 * 8192 * 19 * 4);
    expect(stateBytes(P["mixtral-8x7b"])).toBe(0);
  });

  test("parameters: Jamba 52B / 12B within 1%, Mixtral 46.7B / 12.9B, Llama-2 6.7B, Mistral 7.2B", () => {
    const jamba = paramCount(P["jamba-v0.1"]);
    within(jamba.total, 52e9, 0.01), within(jamba.active, 12e9, 0.01);
    const mixtral = paramCount(P["mixtral-8x7b"]);
    within(mixtral.total, 46.7e9, 0.01), within(mixtral.active, 12.9e9, 0.01);
    within(paramCount(P["llama2-7b"]).total, 6.7e9, 0.01);
    within(paramCount(P["mistral-7b"]).total, 7.2e9, 0.01);
    expect(paramCount(P["llama2-7b"]).active).toBe(paramCount(P["llama2-7b"]).total);
    // exact sums, so that a changed term shows: Llama-2 7B is 6,738,415,616 (the Hugging Face count)
    expect(paramCount(P["llama2-7b"]).total).toBe(6738415616);
  });

  test("a tiny spec counted by hand", () => {
    // D 4, 1 attention + 1 Mamba layer (a:m 1:1, offset 0), one MoE (n 2, K 1) on layer 1, vocab 10, tied
    const tiny: JambaSpec = {
      hidden: 4,
      nLayer: 2,
      nHead: 2,
      nKvHead: 1,
      ffn: 3,
      vocab: 10,
      tiedEmbeddings: true,
      attnMamba: [1, 1],
      attnOffset: 0,
      moeEvery: 2,
      nExperts: 2,
      topK: 1,
      dState: 2,
      dConv: 3,
      expand: 2,
      dtRank: 1,
      mambaNorms: true,
    };
    const emb = 40, finalNorm = 4, norms = 2 * 2 * 4;
    const attn = 16 + 2 * 8 + 16; // q (4x4), k and v (4x2), o (4x4)
    // in_proj 4x16, conv 8x3 + 8, x_proj 8x(1 + 4), dt_proj 1x8 + 8, A_log 8x2, D 8, out_proj 8x4, norms 1 + 2 + 2
    const mamba = 64 + 24 + 8 + 40 + 8 + 8 + 16 + 8 + 32 + 5;
    const mlp = 3 * 4 * 3, router = 4 * 2;
    expect(paramCount(tiny)).toEqual({
      total: emb + finalNorm + norms + attn + mamba + mlp + router + 2 * mlp,
      active: emb + finalNorm + norms + attn + mamba + mlp + router + mlp,
    });
    expect(kvCacheBytes(tiny, 5, 4)).toBe(2 * 1 * 1 * 2 * 5 * 4);
    expect(stateBytes(tiny, 4)).toBe(1 * 8 * (2 + 2) * 4);
  });

  test("bad specs throw JambaSpecError", () => {
    const j = P["jamba-v0.1"];
    const bad = (s: JambaSpec, msg: RegExp) => {
      expect(() => paramCount(s)).toThrow(JambaSpecError);
      expect(() => layerKinds(s)).toThrow(msg);
    };
    bad({ ...j, attnMamba: [1, 4] }, /attention:Mamba 1:4 does not divide nLayer 32/);
    bad({ ...j, topK: 17 }, /topK 17 exceeds nExperts 16/);
    bad({ ...j, nKvHead: 5 }, /nHead 32 is not a multiple of nKvHead 5/);
    bad({ ...j, attnOffset: 8 }, /attnOffset 8 \+ 1 attention layers overflows a period of 8/);
    bad({ ...j, moeOffset: 2 }, /moeOffset 2 must be below moeEvery 2/);
    bad({ ...j, attnMamba: [0, 0] }, /no layers of either kind/);
    bad({ ...j, hidden: 4095 }, /hidden 4095 is not a multiple of nHead 32/);
    bad({ ...j, dState: 0 }, /dState must be an integer >= 1, got 0/);
    expect(() => kvCacheBytes(j, 1.5)).toThrow(/tokens must be an integer >= 0, got 1.5/);
    expect(new JambaSpecError("x").name).toBe("JambaSpecError");
  });
});
