import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import type { PagedBatch, PagedKVCache, Tensor, TransformerConfig } from "../mod.ts";
import { assertClose, leakCheck, requireDevice, scoped } from "../test/helpers.ts";

leakCheck();

const devices = ["cpu", "webgpu"] as const;

/** Token ids from a fixed pseudo-random stream. */
function ids(n: number, V: number, seed: number): number[] {
  let x = seed;
  return Array.from({ length: n }, () => (x = (x * 1103515245 + 12345) % 2147483648) % V);
}

/**
 * Runs sequences through forwardPaged in the given schedule: each iteration lists (sequence, new token
 * count) pairs; blocks are handed out in a scrambled order so no sequence's pages are contiguous. Returns
 * the logits of every new token per sequence, in order.
 */
async function runPaged(
  lm: s.TransformerLM,
  cache: PagedKVCache,
  seqs: number[][],
  schedule: [number, number][][],
): Promise<number[][][]> {
  const bs = cache.blockSize, V = lm.vocabSize;
  const order = Array.from({ length: cache.numBlocks }, (_, i) => (i * 7 + 3) % cache.numBlocks);
  let next = 0;
  const tables = seqs.map(() => [] as number[]), done = seqs.map(() => 0);
  const out = seqs.map(() => [] as number[][]);
  for (const it of schedule) {
    const tokens: number[] = [], positions: number[] = [], slots: number[] = [], qs = [0], ctx: number[] = [];
    for (const [si, n] of it) {
      for (let i = 0; i < n; i++) {
        const p = done[si] + i;
        if (p % bs === 0) tables[si].push(order[next++]);
        tokens.push(seqs[si][p]);
        positions.push(p);
        slots.push(tables[si][Math.floor(p / bs)] * bs + (p % bs));
      }
      done[si] += n;
      qs.push(tokens.length);
      ctx.push(done[si]);
    }
    const maxBlocks = Math.max(...it.map(([si]) => tables[si].length));
    const bt = new Int32Array(it.length * maxBlocks).fill(-1);
    it.forEach(([si], r) => tables[si].forEach((b, j) => (bt[r * maxBlocks + j] = b)));
    const batch: PagedBatch = {
      tokens: Int32Array.from(tokens),
      positions: Int32Array.from(positions),
      slots: Int32Array.from(slots),
      queryStarts: Int32Array.from(qs),
      contextLens: Int32Array.from(ctx),
      blockTables: bt,
      maxBlocks,
    };
    const logits = lm.forwardPaged(batch, cache, { allRows: true });
    const a = await logits.toArray();
    logits.dispose();
    let row = 0;
    for (const [si, n] of it) {
      for (let i = 0; i < n; i++, row++) out[si].push(Array.from(a.subarray(row * V, (row + 1) * V)));
    }
  }
  return out;
}

describe("TransformerLM paged", () => {
  for (const device of devices) {
    for (const posenc of ["rope", "alibi", "learned"] as const) {
      test(
        `${device} ${posenc}: ragged batches of prompt chunks and decode tokens equal forward`,
        scoped(async () => {
          requireDevice(device);
          const cfg: TransformerConfig = {
            vocabSize: 13,
            dModel: 16,
            nLayer: 2,
            nHead: 4,
            nKvHead: 2,
            posenc,
            seed: 3,
            device,
          };
          const lm = new s.TransformerLM(cfg);
          const cache = lm.initPagedCache({ numBlocks: 12, blockSize: 8 });
          const seqs = [ids(21, 13, 1), ids(9, 13, 2), ids(18, 13, 3)];
          // prompts in chunks, joined later by other sequences' decode tokens
          const schedule: [number, number][][] = [
            [[0, 11]],
            [[0, 5], [1, 6]],
            [[0, 1], [1, 1], [2, 17]],
            [[0, 1], [1, 1], [2, 1]],
            [[0, 1], [1, 1]],
            [[0, 1]],
            [[0, 1]],
          ];
          const got = await runPaged(lm, cache, seqs, schedule);
          for (let si = 0; si < seqs.length; si++) {
            const T = got[si].length;
            const ref = lm.forward(s.tensor(seqs[si].slice(0, T), { dtype: "i32", shape: [1, T], device }));
            const want = await ref.toArray();
            ref.dispose();
            assertClose(Float64Array.from(got[si].flat()), want, { atol: 3e-4, rtol: 3e-4 });
          }
          cache.dispose();
          lm.dispose();
        }),
      );
    }
  }

  test(
    "bad batches throw naming the field",
    scoped(() => {
      const lm = new s.TransformerLM({ vocabSize: 7, dModel: 8, nLayer: 1, nHead: 2, device: "cpu" });
      const cache = lm.initPagedCache({ numBlocks: 2, blockSize: 8 });
      const good = (): PagedBatch => ({
        tokens: new Int32Array([1, 2]),
        positions: new Int32Array([0, 1]),
        slots: new Int32Array([8, 9]),
        queryStarts: new Int32Array([0, 2]),
        contextLens: new Int32Array([2]),
        blockTables: new Int32Array([1]),
        maxBlocks: 1,
      });
      const bad = (patch: Partial<PagedBatch>, msg: RegExp) =>
        expect(() => lm.forwardPaged({ ...good(), ...patch }, cache)).toThrow(msg);
      bad({ tokens: new Int32Array([1, 9]) }, /token 9 at row 1 is outside the vocabulary/);
      bad({ slots: new Int32Array([8, 99]) }, /slots\[1\] = 99 is outside the pool/);
      bad({ slots: new Int32Array([8, 2]) }, /block table puts position 1 at 9/);
      bad({ positions: new Int32Array([0, 2]) }, /positions\[1\] = 2/);
      bad({ contextLens: new Int32Array([9]) }, /contextLens\[0\] = 9/);
      bad({ queryStarts: new Int32Array([0, 1]) }, /queryStarts/);
      const t: Tensor = lm.forwardPaged(good(), cache);
      expect(t.shape).toEqual([1, 7]);
      t.dispose();
      cache.dispose();
      expect(() => lm.forwardPaged(good(), cache)).toThrow(/disposed/);
      lm.dispose();
    }),
  );
});
