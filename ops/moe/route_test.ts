import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import { leakCheck, requireGpu, scoped } from "../../test/helpers.ts";

leakCheck();

/** Seeded expert ids (T, K), distinct within a token, skewed toward low experts. */
function choices(T: number, K: number, E: number, seed: number): number[] {
  const out: number[] = [];
  let h = seed;
  for (let t = 0; t < T; t++) {
    const row: number[] = [];
    while (row.length < K) {
      h = (Math.imul(h, 1103515245) + 12345) >>> 0;
      const e = Math.floor(((h >>> 8) / 2 ** 24) ** 2 * E);
      if (!row.includes(e)) row.push(e);
    }
    out.push(...row);
  }
  return out;
}

describe("moeRoute", () => {
  test(
    "webgpu equals the reference (capacity slots and blocks): exact, dropping, windows past MAX_LOOP / 2",
    scoped(async () => {
      requireGpu();
      for (const [T, K, E, C] of [[1, 1, 1, 1], [13, 2, 5, 13], [13, 2, 5, 3], [9000, 2, 16, 1200]]) {
        const ids = choices(T, K, E, T + C);
        const got = [];
        for (const device of ["cpu", "webgpu"] as const) {
          const r = s.moeRoute(s.tensor(ids, { shape: [T, K], dtype: "i32", device }), E, C);
          got.push(
            [await r.tokenOf.toArray(), await r.choiceOf.toArray(), await r.counts.toArray()].map((a) =>
              Array.from(a)
            ),
          );
        }
        expect(got[1]).toEqual(got[0]);
        const counts = got[0][2];
        expect(counts.reduce((a, b) => a + b)).toBe(T * K);
        // the block-padded table, blocks of C rows
        const blocks = [];
        for (const device of ["cpu", "webgpu"] as const) {
          const r = s.moeRouteBlocks(s.tensor(ids, { shape: [T, K], dtype: "i32", device }), E, C);
          const all = [r.tokenOf, r.choiceOf, r.blockExpert, r.counts].map((t) => t.toArray());
          blocks.push((await Promise.all(all)).map((a) => Array.from(a)));
        }
        expect(blocks[1]).toEqual(blocks[0]);
        expect(blocks[0][3]).toEqual(counts);
        // every choice sits once in its expert's block, in order
        const [tok, cho, be] = blocks[0];
        const seen = cho.map((j, row) => [j, row]).filter(([j]) => j < T * K);
        expect(seen.map(([j]) => j).sort((a, b) => a - b)).toEqual(
          Array.from({ length: T * K }, (_, j) => j),
        );
        for (const [j, row] of seen) {
          expect(be[Math.floor(row / C)]).toBe(ids[j]);
          expect(tok[row]).toBe(Math.floor(j / K));
        }
      }
    }),
  );

  test(
    "a tiny case by hand; bad input throws",
    scoped(async () => {
      const r = s.moeRoute(s.tensor([[1, 0], [1, 2], [1, 0]], { dtype: "i32", device: "cpu" }), 3, 2);
      expect(Array.from(await r.tokenOf.toArray())).toEqual([0, 2, 0, 1, 1, 3]); // expert 1's third is dropped
      expect(Array.from(await r.choiceOf.toArray())).toEqual([1, 5, 0, 2, 3, 6]);
      expect(Array.from(await r.counts.toArray())).toEqual([2, 3, 1]);
      const f = s.zeros([3, 2], { device: "cpu" });
      expect(() => s.moeRoute(f, 3, 2)).toThrow(
        "moeRoute: indices must be (T, K) i32, got tensor [3, 2] f32",
      );
      const i = s.zeros([3, 2], { device: "cpu", dtype: "i32" });
      expect(() => s.moeRoute(i, 0, 2)).toThrow("moeRoute: experts must be a positive integer, got 0");
      expect(() => s.moeRoute(s.full([1, 1], 3, { dtype: "i32", device: "cpu" }), 3, 2)).toThrow(
        "moeRoute: expert 3 is out of range for 3 experts",
      );
    }),
  );
});
