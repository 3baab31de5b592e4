import { describe, expect, test } from "vitest";
import * as s from "../mod.ts";
import type { JambaLMConfig, PagedBatch, PagedKVCache } from "../mod.ts";
import { assertClose, leakCheck, requireDevice, scoped } from "../test/helpers.ts";
import { tinyJamba } from "../test/models.ts";

leakCheck();

const devices = ["cpu", "webgpu"] as const;

/** Token ids from a fixed pseudo-random stream. */
function ids(n: number, V: number, seed: number): number[] {
  let x = seed;
  return Array.from({ length: n }, () => (x = (x * 1103515245 + 12345) % 2147483648) % V);
}

/** The shared tiny Jamba (test/models.ts) with this file's vocabulary. */
const tiny = (mixer: "hybrid" | "attention" | "mamba", device: "cpu" | "webgpu"): JambaLMConfig =>
  tinyJamba({ vocabSize: 13, mixer, device });

/**
 * Runs sequences through forwardPaged in the given schedule: each iteration lists (sequence, new token
 * count) pairs; blocks are handed out in a scrambled order, and sequence i keeps state slot `slots[i]`.
 * Returns the logits of every new token per sequence, in order.
 */
async function runPaged(
  lm: s.JambaLM,
  cache: PagedKVCache,
  seqs: number[][],
  slots: number[],
  schedule: [number, number][][],
): Promise<number[][][]> {
  const bs = cache.blockSize, V = lm.vocabSize;
  const order = Array.from({ length: cache.numBlocks }, (_, i) => (i * 7 + 3) % cache.numBlocks);
  let next = 0;
  const tables = seqs.map(() => [] as number[]), done = seqs.map(() => 0);
  const out = seqs.map(() => [] as number[][]);
  for (const it of schedule) {
    const tokens: number[] = [], positions: number[] = [], sl: number[] = [], qs = [0], ctx: number[] = [];
    for (const [si, n] of it) {
      for (let i = 0; i < n; i++) {
        const p = done[si] + i;
        if (p % bs === 0) tables[si].push(order[next++]);
        tokens.push(seqs[si][p]);
        positions.push(p);
        sl.push(tables[si][Math.floor(p / bs)] * bs + (p % bs));
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
      slots: Int32Array.from(sl),
      queryStarts: Int32Array.from(qs),
      contextLens: Int32Array.from(ctx),
      blockTables: bt,
      maxBlocks,
      stateSlots: Int32Array.from(it.map(([si]) => slots[si])),
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

/** Logits (T, V) of `forward` over a sequence's first T tokens. */
async function forwardRows(lm: s.JambaLM, seq: number[], T: number): Promise<Float32Array | Float64Array> {
  const device = lm.embed.weight.device;
  const ref = lm.forward(s.tensor(seq.slice(0, T), { dtype: "i32", shape: [1, T], device }));
  const want = await ref.toArray();
  ref.dispose();
  return want as Float32Array;
}

// prompts in chunks (the later chunks continue a Mamba state), joined by other sequences' decode tokens;
// decode groups list sequences out of slot order, with slots in one run and in several
const schedule: [number, number][][] = [
  [[0, 11]],
  [[0, 5], [1, 6]],
  [[3, 1], [0, 1], [1, 1], [2, 9]],
  [[2, 8], [0, 1], [3, 1], [1, 1]],
  [[1, 1], [0, 1], [2, 1], [3, 1]],
  [[2, 1], [0, 1]],
  [[0, 1], [3, 4]],
  [[3, 1], [0, 1]],
];
const slots = [3, 0, 5, 1];

describe("JambaLM paged (attention K/V in pages, Mamba states in slots)", () => {
  for (const device of devices) {
    for (const mixer of ["hybrid", "attention", "mamba"] as const) {
      test(
        `${device} ${mixer} with MoE: ragged batches of prompt chunks and decode tokens equal forward`,
        scoped(async () => {
          requireDevice(device);
          const lm = new s.JambaLM(tiny(mixer, device));
          const cache = lm.initPagedCache({ numBlocks: 16, blockSize: 8, maxSeqs: 6 });
          expect(cache.k.length).toBe(lm.layout.mixers.filter((m) => m === "attention").length);
          expect(cache.stateSlots).toBe(mixer === "attention" ? 0 : 6);
          const seqs = [ids(24, 13, 1), ids(9, 13, 2), ids(19, 13, 3), ids(12, 13, 4)];
          const got = await runPaged(lm, cache, seqs, slots, schedule);
          for (let si = 0; si < seqs.length; si++) {
            const want = await forwardRows(lm, seqs[si], got[si].length);
            assertClose(Float64Array.from(got[si].flat()), want, { atol: 3e-4, rtol: 3e-4 });
          }
          cache.dispose();
          lm.dispose();
        }),
      );
    }
  }

  test(
    "webgpu hybrid without inner norms: equals forward",
    scoped(async () => {
      requireDevice("webgpu");
      const lm = new s.JambaLM({ ...tiny("hybrid", "webgpu"), mambaInnerNorm: false, dModel: 32, nHead: 4 });
      const cache = lm.initPagedCache({ numBlocks: 16, blockSize: 8, maxSeqs: 4 });
      const seqs = [ids(14, 13, 5), ids(10, 13, 6)];
      const sched: [number, number][][] = [[[0, 6], [1, 4]], [[0, 4], [1, 1]], [[1, 1], [0, 1]], [[0, 1], [
        1,
        1,
      ]]];
      const got = await runPaged(lm, cache, seqs, [0, 1], sched);
      for (let si = 0; si < seqs.length; si++) {
        const want = await forwardRows(lm, seqs[si], got[si].length);
        assertClose(Float64Array.from(got[si].flat()), want, { atol: 3e-4, rtol: 3e-4 });
      }
      cache.dispose();
      lm.dispose();
    }),
  );

  for (const device of devices) {
    test(
      `${device}: state slots are independent; a sequence starting at position 0 ignores what its slot held`,
      scoped(async () => {
        requireDevice(device);
        const lm = new s.JambaLM(tiny("hybrid", device));
        const cache = lm.initPagedCache({ numBlocks: 16, blockSize: 8, maxSeqs: 3 });
        const seqs = [ids(10, 13, 7), ids(7, 13, 8), ids(6, 13, 9)];
        // sequence 0 in slot 1 and sequence 1 in slot 2
        await runPaged(lm, cache, seqs.slice(0, 2), [1, 2], [[[0, 6], [1, 7]]]);
        const snap = () => Promise.all(cache.state.map(async (t) => Array.from(await t.toArray())));
        const before = await snap();
        const ED = cache.state[0].shape[1], per = (i: number) => cache.state[i].size / 3;
        // sequence 2 in slot 0: slots 1 and 2 are untouched, slot 0 changed
        await runPaged(lm, cache, [seqs[2]], [0], [[[0, 4]], [[0, 1]]]);
        const after = await snap();
        for (let i = 0; i < after.length; i++) {
          expect(after[i].slice(per(i))).toEqual(before[i].slice(per(i)));
          expect(after[i].slice(0, per(i))).not.toEqual(before[i].slice(0, per(i)));
        }
        expect(ED).toBe(32);
        // a new sequence in slot 1 (which holds sequence 0's state) starts from zero: equals forward
        const fresh = ids(9, 13, 10);
        const got = await runPaged(lm, cache, [fresh], [1], [[[0, 5]], [[0, 1]], [[0, 3]]]);
        assertClose(Float64Array.from(got[0].flat()), await forwardRows(lm, fresh, 9), {
          atol: 3e-4,
          rtol: 3e-4,
        });
        cache.dispose();
        lm.dispose();
      }),
    );
  }

  test(
    "bad input throws named errors: state slots, the cache, the configuration",
    scoped(() => {
      const lm = new s.JambaLM(tiny("hybrid", "cpu"));
      const cache = lm.initPagedCache({ numBlocks: 2, blockSize: 8, maxSeqs: 2 });
      const good = (): PagedBatch => ({
        tokens: new Int32Array([1, 2, 3]),
        positions: new Int32Array([0, 1, 0]),
        slots: new Int32Array([8, 9, 0]),
        queryStarts: new Int32Array([0, 2, 3]),
        contextLens: new Int32Array([2, 1]),
        blockTables: new Int32Array([1, 0]),
        maxBlocks: 1,
        stateSlots: new Int32Array([1, 0]),
      });
      const bad = (patch: Partial<PagedBatch>, msg: RegExp) => {
        expect(() => lm.forwardPaged({ ...good(), ...patch }, cache)).toThrow(msg);
        expect(() => lm.forwardPaged({ ...good(), ...patch }, cache)).toThrow(s.PagedBatchError);
      };
      bad({ stateSlots: undefined }, /JambaLM.forwardPaged: stateSlots is required.*2 slots/);
      bad(
        { stateSlots: new Int32Array([1, 2]) },
        /stateSlots\[1\] = 2 is outside the cache's state slots \[0, 2\)/,
      );
      bad({ stateSlots: new Int32Array([-1, 0]) }, /stateSlots\[0\] = -1 is outside/);
      bad({ stateSlots: new Int32Array([1]) }, /stateSlots must have one entry per sequence \(2\), got 1/);
      bad({ stateSlots: new Int32Array([0, 0]) }, /stateSlots\[1\] = 0 is named by two sequences/);
      bad({ tokens: new Int32Array([1, 2, 13]) }, /token 13 at row 2 is outside the vocabulary/);
      bad({ slots: new Int32Array([8, 99, 0]) }, /slots\[1\] = 99 is outside the pool/);
      const t = lm.forwardPaged(good(), cache);
      expect(t.shape).toEqual([2, 13]);
      t.dispose();
      expect(() => lm.initPagedCache({ numBlocks: 2 })).toThrow(
        /JambaLM.initPagedCache: maxSeqs \(state slots\) must be a positive integer for a model with 3 Mamba layers/,
      );
      // a cache from another configuration, from another model class, or disposed
      const other = new s.JambaLM({ ...tiny("hybrid", "cpu"), attnOffset: 0 });
      const oc = other.initPagedCache({ numBlocks: 2, blockSize: 8, maxSeqs: 2 });
      expect(() => lm.forwardPaged(good(), oc)).toThrow(
        /JambaLM.forwardPaged: the cache was made for another configuration/,
      );
      expect(() => lm.forwardPaged(good(), oc)).toThrow(s.PagedBatchError);
      const tl = new s.TransformerLM({ vocabSize: 13, dModel: 16, nLayer: 1, nHead: 4, device: "cpu" });
      const tc = tl.initPagedCache({ numBlocks: 2, blockSize: 8 });
      expect(() => lm.forwardPaged(good(), tc)).toThrow(/cache must come from JambaLM.initPagedCache/);
      tc.dispose();
      tl.dispose();
      oc.dispose();
      other.dispose();
      cache.dispose();
      expect(() => lm.forwardPaged(good(), cache)).toThrow(/disposed/);
      lm.dispose();
    }),
  );
});
