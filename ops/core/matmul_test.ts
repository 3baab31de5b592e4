import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { gpu } from "../../runtime/device.ts";
import {
  assertClose,
  type InputSpec,
  leakCheck,
  requireGpu,
  scoped,
  testOp,
  TOL,
} from "../../test/helpers.ts";
import { type MatmulVersion, matmulWith } from "./matmul.ts";
import { matmulRef } from "./matmul_ref.ts";
import { TEX_TILES, texTile } from "./matmul_wgsl.ts";

leakCheck();

const VERSIONS: MatmulVersion[] = ["v1", "v2", "v3", "v4", "v5", "auto"];

/** f32 accumulation error grows with K; the reference accumulates in float64. */
const tolK = (K: number) => ({ atol: 2e-6 * Math.max(K, 1), rtol: 1e-5 });

/**
 * Whether v3 takes these operands (its vec4 loads need K, N and offsets divisible by 4, and f32); an empty
 * result needs no shader at all.
 */
const v3Takes = (K: number, N: number, dtype: string, empty: boolean) =>
  empty || (K % 4 === 0 && N % 4 === 0 && dtype === "f32");

/** A matmul operand: a shape (uniform in [-1, 1)) or a spec. */
type In = number[] | InputSpec;
type Mm = (x: Tensor, y: Tensor) => Tensor;

/**
 * Checks `f(a, b, mm)` with `mm` each version's matmul, on every backend against the float64 reference
 * (`matmul` on cpu). "auto" is `matmul` itself, so its gradients are checked too (matmulWith records no
 * backward). v3 must refuse what it cannot take, with its message, on both backends.
 */
async function everyVersion(
  f: (a: Tensor, b: Tensor, mm: Mm) => Tensor,
  a: In,
  b: In,
  opts: { M?: number; K: number; N: number; tol?: { atol: number; rtol: number }; seed?: number },
): Promise<void> {
  const spec = (x: In): InputSpec => (Array.isArray(x) ? { shape: x } : x as InputSpec);
  const [sa, sb] = [spec(a), spec(b)];
  const dtype = (sa.dtype ?? "f32") === (sb.dtype ?? "f32") ? sa.dtype ?? "f32" : "f32";
  const tol = opts.tol ?? tolK(opts.K);
  const common = { low: -1, high: 1, seed: opts.seed, atol: tol.atol, rtol: tol.rtol };
  const reference = (x: Tensor, y: Tensor) => f(x, y, s.matmul);
  for (const v of VERSIONS) {
    const empty = opts.M === 0 || opts.N === 0;
    if (v === "v3" && !v3Takes(opts.K, opts.N, dtype, empty)) {
      requireGpu();
      s.tidy(() => {
        for (const device of ["cpu", "webgpu"] as const) {
          const x = s.zeros(sa.shape!, { device, dtype: sa.dtype }),
            y = s.zeros(sb.shape!, { device, dtype: sb.dtype });
          expect(() => f(x, y, (p, q) => matmulWith(p, q, v)), device).toThrow(
            /^matmul v3: needs K, N and offsets divisible by 4 and f32/,
          );
        }
      });
      continue;
    }
    const mm: Mm = v === "auto" ? s.matmul : (x, y) => matmulWith(x, y, v);
    await testOp([a, b], (x, y) => f(x, y, mm), {
      ...common,
      reference,
      grad: v === "auto",
      name: `version ${v}`,
    });
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
    for (const [M, K, N] of GRID) await everyVersion((x, y, mm) => mm(x, y), [M, K], [K, N], { M, K, N });
  });

  test("v4's register tiles: 16x16, 16x8 and 8x8 each against the reference, with ragged edges", async () => {
    const CASES = [[1001, 9, 130, "16x16"], [1001, 9, 66, "16x8"], [41, 9, 66, "8x8"], [
      3,
      2,
      1001,
      "8x8",
    ]] as const;
    for (const [M, K, N, want] of CASES) {
      const t = texTile("v4", M, N);
      expect(`${t.R}x${t.C}`).toBe(want);
      await everyVersion((x, y, mm) => mm(x, y), [M, K], [K, N], { M, K, N, seed: 5 });
    }
    expect(texTile("v5", 4, 1000)).toBe(TEX_TILES.v5);
  });

  test("transposed A (a weight gradient's x^T) through the vec4 pack: ragged rows and k, batches", async () => {
    // A = X^T with X row-major: unit row stride and a column stride divisible by 4 take the vec4 pack
    const cases: [number[], (t: Tensor) => Tensor][] = [
      [[70, 36], (t) => t.transpose(0, 1)], // 36 x 70
      [[13, 40], (t) => t.slice([null, [0, 37]]).transpose(0, 1)], // 37 x 13, column stride 40
      [[2, 9, 36], (t) => t.transpose(1, 2)], // batches of 36 x 9
    ];
    for (const [xs, view] of cases) {
      const K = xs.at(-2)!;
      await everyVersion((x, y, mm) => mm(view(x), y), xs, [K, 6], { K, N: 6, seed: 4 });
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
      for (const [as, bs] of pairs) await everyVersion((x, y, mm) => mm(x, y), as, bs, { K, N, seed: 2 });
    }
  });

  test("1-D operands: row vector, column vector, dot product", async () => {
    const CASES = [[[9], [9, 5], 5], [[4, 9], [9], 1], [[9], [9], 1], [[2, 3, 8], [8], 1]] as const;
    for (const [as, bs, N] of CASES) {
      await everyVersion((x, y, mm) => mm(x, y), [...as], [...bs], { K: as.at(-1)!, N, seed: 3 });
    }
  });

  test("non-contiguous views: transposes, slices with odd offsets, expanded batches", async () => {
    // a^T is [33, 40], b^T is [40, 21]
    await everyVersion((x, y, mm) => mm(x.transpose(), y.transpose()), [40, 33], [21, 40], { K: 40, N: 21 });
    // a slice starting at an odd element offset, and B transposed (unit row stride)
    await everyVersion(
      (x, y, mm) =>
        mm(x.slice([null, [1, 64], [3, 67]]), y.slice([[3, 67]]).transpose().slice([null, [0, 48]])),
      [3, 64, 70],
      [70, 64],
      { K: 64, N: 48 },
    );
    // an expanded (stride 0) batch dim and a permuted batch
    await everyVersion(
      (x, y, mm) => mm(x.slice([[0, 1]]).expand([4, 64, 70]), y.reshape([1, 70, 64]).expand([4, 70, 64])),
      [3, 64, 70],
      [70, 64],
      { K: 70, N: 64 },
    );
  });

  test("large magnitudes, NaN and infinities propagate", async () => {
    const big = (shape: number[]) => ({ shape, low: -1e17, high: 1e17 });
    // products of size 1e34 that partly cancel: tolK's bound scaled by the products' size
    await everyVersion((x, y, mm) => mm(x, y), big([9, 7]), big([7, 6]), {
      K: 7,
      N: 6,
      tol: { atol: tolK(7).atol * 1e34, rtol: 1e-5 },
    });
    const c = { shape: [9, 12], specials: [NaN, Infinity, -Infinity] },
      d = { shape: [12, 8], specials: [NaN] };
    await everyVersion((x, y, mm) => mm(x, y), c, d, { K: 12, N: 8 });
    const r = await testOp([c, d], (x, y) => matmulWith(x, y, "v4"), {
      low: -1,
      high: 1,
      reference: s.matmul,
      grad: false,
      ...tolK(12),
    });
    const nan = [...r.outputs.webgpu!].filter(Number.isNaN).length;
    expect(nan).toBeGreaterThan(8); // a NaN in A fills a row of C, one in B a column
  });

  test("f16 (and f16 @ f32 promotion), looser tolerance", async () => {
    requireGpu();
    if (!gpu().hasF16) {
      // f16 needs shader-f16: without it the f16 case is a clear error, not a wrong answer
      expect(() => s.zeros([1], { dtype: "f16", device: "webgpu" })).toThrow(/f16 needs the adapter feature/);
      return;
    }
    for (const [M, K, N] of [[5, 7, 3], [33, 64, 40], [1, 30, 130]]) {
      const a = { shape: [M, K], dtype: "f16" } as const, b = { shape: [K, N], dtype: "f16" } as const;
      await everyVersion((x, y, mm) => mm(x, y), a, b, { K, N, tol: TOL.f16, seed: 4 });
      await everyVersion((x, y, mm) => mm(x, y), a, [K, N], { K, N, tol: tolK(K), seed: 4 });
    }
  });

  test("chunked texture passes: over 256 batches, more column blocks than layers, long A", async () => {
    const cases: [number[], number[]][] = [
      [[300, 2, 3], [300, 3, 2]],
      [[1, 8], [8, 40000]],
      [[9000, 4], [4, 8]],
    ];
    for (const [as, bs] of cases) {
      for (const v of ["v4", "v5"] as const) {
        await testOp([as, bs], (x, y) => matmulWith(x, y, v), {
          low: -1,
          high: 1,
          reference: s.matmul,
          grad: false,
          ...tolK(as.at(-1)!),
        });
      }
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
      requireGpu();
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

describe("matmul's texture passes on the one program model", () => {
  for (const v of ["v4", "v5"] as const) {
    test(
      `an error inside the ${v} pass throws at the next readback of another tensor, naming the op`,
      scoped(async () => {
        requireGpu();
        const ctx = gpu();
        const a = s.randn([v === "v5" ? 8 : 64, 96], { seed: 1 }), b = s.randn([96, 40], { seed: 2 });
        await a.toArray();
        ctx.injectFault(`matmul ${v}`);
        const c = matmulWith(a, b, v);
        const other = a.mul(2);
        await expect(other.toArray()).rejects.toThrow(new RegExp(`webgpu validation error in matmul ${v}: `));
        await expect(c.toArray()).rejects.toThrow(/computed by \(or from\) a failed pass/);
        // later work is unaffected
        assertClose(await matmulWith(a, b, v).toArray(), await matmulWith(a, b, "v2").toArray(), TOL.f32);
      }),
    );
  }

  test(
    "the ledger counts the packed textures while the call records; they go back to the pool after",
    scoped(() => {
      requireGpu();
      const a = s.randn([64, 96], { seed: 1 }), b = s.randn([96, 40], { seed: 2 });
      gpu().emptyCache();
      const m0 = s.memory();
      s.resetPeak();
      const c = matmulWith(a, b, "v4");
      const m1 = s.memory();
      // the output's buffer and the two packed operands (A: K/4 x 32 texels x 2 row blocks, B: 8 x K
      // texels x 1 column block at least), all held at once
      const textures = m1.pooledBytes;
      expect(textures).toBeGreaterThanOrEqual((24 * 32 * 2 + 8 * 96) * 16);
      expect(m1.peakBytes - m0.bytesInUse).toBe(c.storage.bytes + textures);
      expect(m1.bytesInUse - m0.bytesInUse).toBe(c.storage.bytes);
      gpu().emptyCache();
      expect(s.memory().pooledBytes).toBe(0);
    }),
  );
});
