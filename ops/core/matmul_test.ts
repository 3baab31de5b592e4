import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { gpu } from "../../runtime/device.ts";
import { assertClose, compareBackends, data, leakCheck, scoped, TOL } from "../../test/helpers.ts";
import { type MatmulVersion, matmulWith } from "./matmul.ts";
import { matmulRef } from "./matmul_ref.ts";

leakCheck();

const VERSIONS: MatmulVersion[] = ["v1", "v2", "v3", "v4", "v5", "auto"];

const cpu = (shape: number[], seed = 1, scale = 1, specials: number[] = []) =>
  s.tensor(data(shape.reduce((a, b) => a * b, 1), seed, scale, specials), { shape, device: "cpu" });

/** f32 accumulation error grows with K; the reference accumulates in float64. */
const tolK = (K: number) => ({ atol: 2e-6 * Math.max(K, 1), rtol: 1e-5 });

/**
 * Whether v3 takes these operands (its vec4 loads need K, N and offsets divisible by 4, and f32); an empty
 * result needs no shader at all.
 */
const v3Takes = (K: number, N: number, dtype: string, empty: boolean) =>
  empty || (K % 4 === 0 && N % 4 === 0 && dtype === "f32");

/**
 * Checks `f(a, b)` built with every version against the cpu reference (the same `f` on cpu tensors).
 * v3 must refuse what it cannot take, with its message.
 */
async function everyVersion(
  f: (a: Tensor, b: Tensor, v: MatmulVersion) => Tensor,
  a: Tensor,
  b: Tensor,
  opts: { M?: number; K: number; N: number; tol?: { atol: number; rtol: number } },
): Promise<void> {
  for (const v of VERSIONS) {
    const empty = opts.M === 0 || opts.N === 0;
    if (v === "v3" && !v3Takes(opts.K, opts.N, a.dtype === b.dtype ? a.dtype : "f32", empty)) {
      await s.tidy(async () => {
        const ga = await a.to("webgpu"), gb = await b.to("webgpu");
        expect(() => f(ga, gb, v)).toThrow(/^matmul v3: needs K, N and offsets divisible by 4 and f32/);
      });
      continue;
    }
    try {
      await compareBackends((x, y) => f(x, y, v), [a, b], opts.tol ?? tolK(opts.K));
    } catch (e) {
      throw new Error(`version ${v}: ${(e as Error).message}`);
    }
  }
}

describe("matmul reference", () => {
  test("a hand-computed case", () => {
    // [[1, 2], [3, 4]] @ [[5, 6], [7, 8]] = [[19, 22], [43, 50]]; batch 2 shares B (stride 0)
    const A = new Float32Array([1, 2, 3, 4, 0, 1, 1, 0]), B = new Float32Array([5, 6, 7, 8]);
    const C = new Float32Array(8);
    matmulRef(A, 0, 4, B, 0, 0, C, 2, 2, 2, 2);
    expect([...C]).toEqual([19, 22, 43, 50, 7, 8, 5, 6]);
  });
});

describe("matmul: every shader version against the cpu reference", () => {
  // [M, K, N]: sizes 1, odd, not multiples of any tile (v2/v3 32x32, v4 32x128, v5 8x128), aligned ones
  // (v3, row copies into textures), skinny A (v5's case), empty dims (K = 0 gives zeros).
  const GRID = [
    [1, 1, 1],
    [1, 7, 1],
    [5, 7, 3],
    [33, 65, 17],
    [32, 64, 128],
    [130, 64, 300],
    [70, 256, 68],
    [1, 300, 257],
    [9, 33, 129],
    [17, 0, 5],
    [0, 5, 3],
    [4, 5, 0],
  ];

  test("2-D grid", async () => {
    for (const [M, K, N] of GRID) {
      const a = cpu([M, K], M + K), b = cpu([K, N], K + N + 1);
      await everyVersion((x, y, v) => matmulWith(x, y, v), a, b, { M, K, N });
      a.dispose();
      b.dispose();
    }
  });

  test("batch broadcasting: [2, 1, M, K] @ [3, K, N], shared operands, batch of one", async () => {
    for (const [M, K, N] of [[5, 7, 3], [33, 64, 40], [1, 16, 8]]) {
      const pairs: [number[], number[]][] = [
        [[2, 1, M, K], [3, K, N]],
        [[M, K], [4, K, N]], // A shared by every batch
        [[3, M, K], [K, N]], // B shared
        [[1, M, K], [1, K, N]],
        [[2, 1, 3, 1, M, K], [1, 2, 1, 2, K, N]], // more interleaved broadcast dims
      ];
      for (const [as, bs] of pairs) {
        const a = cpu(as, 2), b = cpu(bs, 3);
        await everyVersion((x, y, v) => matmulWith(x, y, v), a, b, { K, N });
        a.dispose();
        b.dispose();
      }
    }
  });

  test("1-D operands: row vector, column vector, dot product", async () => {
    for (
      const [as, bs, N] of [[[9], [9, 5], 5], [[4, 9], [9], 1], [[9], [9], 1], [[2, 3, 8], [8], 1]] as const
    ) {
      const a = cpu([...as], 4), b = cpu([...bs], 5);
      await everyVersion((x, y, v) => matmulWith(x, y, v), a, b, { K: as.at(-1)!, N });
      a.dispose();
      b.dispose();
    }
  });

  test("non-contiguous views: transposes, slices with odd offsets, expanded batches", async () => {
    const a = cpu([40, 33], 6), b = cpu([21, 40], 7); // a^T is [33, 40], b^T is [40, 21]
    await everyVersion((x, y, v) => matmulWith(x.transpose(), y.transpose(), v), a, b, { K: 40, N: 21 });
    const c = cpu([3, 64, 70], 8), d = cpu([70, 64], 9);
    // a slice starting at an odd element offset, and B transposed (unit row stride)
    await everyVersion(
      (x, y, v) =>
        matmulWith(
          x.slice([null, [1, 64], [3, 67]]),
          y.slice([[3, 67]]).transpose().slice([null, [0, 48]]),
          v,
        ),
      c,
      d,
      { K: 64, N: 48 },
    );
    // an expanded (stride 0) batch dim and a permuted batch
    await everyVersion(
      (x, y, v) =>
        matmulWith(x.slice([[0, 1]]).expand([4, 64, 70]), y.reshape([1, 70, 64]).expand([4, 70, 64]), v),
      c,
      d,
      { K: 70, N: 64 },
    );
    for (const t of [a, b, c, d]) t.dispose();
  });

  test("large magnitudes, NaN and infinities propagate", async () => {
    const a = cpu([9, 7], 10, 1e17), b = cpu([7, 6], 11, 1e17);
    await everyVersion((x, y, v) => matmulWith(x, y, v), a, b, { K: 7, N: 6, tol: { atol: 0, rtol: 1e-5 } });
    const c = cpu([9, 12], 12, 1, [NaN, Infinity, -Infinity]), d = cpu([12, 8], 13, 1, [NaN]);
    await everyVersion((x, y, v) => matmulWith(x, y, v), c, d, { K: 12, N: 8 });
    const gc = await c.to("webgpu"), gd = await d.to("webgpu"), out = matmulWith(gc, gd, "v4");
    const nan = [...await out.toArray()].filter(Number.isNaN).length;
    expect(nan).toBeGreaterThan(8); // a NaN in A fills a row of C, one in B a column
    for (const t of [a, b, c, d, gc, gd, out]) t.dispose();
  });

  test("f16 (and f16 @ f32 promotion), looser tolerance", async () => {
    if (!gpu().hasF16) {
      // f16 needs shader-f16; without it creating the tensor throws, as the tensor tests show
      return;
    }
    for (const [M, K, N] of [[5, 7, 3], [33, 64, 40], [1, 30, 130]]) {
      const a32 = cpu([M, K], 14), b32 = cpu([K, N], 15);
      const a = a32.cast("f16"), b = b32.cast("f16");
      await everyVersion((x, y, v) => matmulWith(x, y, v), a, b, { K, N, tol: TOL.f16 });
      await everyVersion((x, y, v) => matmulWith(x, y, v), a, b32, { K, N, tol: tolK(K) });
      for (const t of [a, b, a32, b32]) t.dispose();
    }
  });

  test("chunked texture passes: over 256 batches, more column blocks than layers, long A", async () => {
    const cases: [number[], number[]][] = [[[300, 2, 3], [300, 3, 2]], [[1, 8], [8, 40000]], [[9000, 4], [
      4,
      8,
    ]]];
    for (const [as, bs] of cases) {
      const a = cpu(as, 16), b = cpu(bs, 17);
      for (const v of ["v4", "v5"] as const) {
        await compareBackends((x, y) => matmulWith(x, y, v), [a, b], tolK(as.at(-1)!));
      }
      a.dispose();
      b.dispose();
    }
  });
});

describe("matmul: input checks", () => {
  test(
    "bad shapes and dtypes throw naming the op, shapes and dtypes",
    scoped(() => {
      const a = s.zeros([2, 3, 4], { device: "cpu" }), b = s.zeros([5, 6], { device: "cpu" });
      expect(() => s.matmul(a, b)).toThrow("matmul: inner dimensions differ: a is [2, 3, 4], b is [5, 6]");
      const c = s.zeros([2, 4, 5]), d = s.zeros([3, 5, 6]);
      expect(() => s.matmul(c, d)).toThrow(
        "matmul: batch dimensions cannot be broadcast: a is [2, 4, 5], b is [3, 5, 6]",
      );
      const i = s.zeros([4, 4], { dtype: "i32" });
      expect(() => s.matmul(i, i)).toThrow("matmul: needs float tensors: a is [4, 4] i32, b is [4, 4] i32");
      expect(() => s.matmul(s.tensor(3), i)).toThrow(/^matmul: operands must have at least 1 dimension/);
    }),
  );

  test(
    "K past the texture limit: v4/v5 refuse it, auto falls back",
    scoped(async () => {
      const K = 4 * gpu().limits.maxTextureDimension2D + 4;
      const a = s.ones([8, K]), b = s.ones([K, 8]);
      expect(() => matmulWith(a, b, "v4")).toThrow(
        /^matmul v4: K = \d+ is over the packed texture's height limit/,
      );
      const c = s.matmul(a, b);
      assertClose(await c.toArray(), new Float32Array(64).fill(K));
    }),
  );
});
