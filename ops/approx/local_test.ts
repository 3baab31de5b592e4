import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { Tensor } from "../../mod.ts";
import { assertClose, gpu32, leakCheck, scoped } from "../../test/helpers.ts";

leakCheck();

const rn = (shape: number[], seed: number, std = 1) =>
  s.randn(shape, { seed, device: "cpu", dtype: "f64", std });
const arr = async (t: Tensor) => Array.from(await t.toArray());
const TOL32 = { atol: 2e-5, rtol: 1e-4 };

/** Exact softmax attention in float64 from core ops, with an optional causal mask. */
function exact(q: Tensor, k: Tensor, v: Tensor, causal = false): Tensor {
  return s.tidy(() => {
    const T = q.shape[2];
    let sc = q.matmul(k.transpose()).mul(1 / Math.sqrt(q.shape[3]));
    if (causal) {
      const m = s.tensor(
        Array.from({ length: T * T }, (_, n) => (n % T > Math.floor(n / T) ? -Infinity : 0)),
        {
          shape: [T, T],
          device: q.device,
          dtype: q.dtype,
        },
      );
      sc = sc.add(m);
    }
    return sc.softmax(-1).matmul(v);
  });
}

describe("local attention reference", () => {
  test(
    "one block covering T is exact attention (causal and not); blocks of 1 return v",
    scoped(async () => {
      const q = rn([1, 2, 7, 4], 1), k = rn([1, 2, 7, 4], 2), v = rn([1, 2, 7, 3], 3);
      for (const causal of [false, true]) {
        for (const blockSize of [7, 100]) {
          assertClose(
            await arr(s.localAttentionRef(q, k, v, { blockSize, causal })),
            await arr(exact(q, k, v, causal)),
            {
              atol: 1e-14,
              rtol: 1e-13,
            },
          );
        }
      }
      assertClose(await arr(s.localAttentionRef(q, k, v, { blockSize: 1 })), await arr(v), {
        atol: 1e-15,
        rtol: 0,
      });
    }),
  );

  test(
    "blocks do not see each other: each block equals exact attention on its slice",
    scoped(async () => {
      const q = rn([1, 1, 10, 4], 4), k = rn([1, 1, 10, 4], 5), v = rn([1, 1, 10, 2], 6);
      const out = await arr(s.localAttentionRef(q, k, v, { blockSize: 4 }));
      for (const [a, b] of [[0, 4], [4, 8], [8, 10]]) {
        const sl = (t: Tensor) => t.slice([null, null, [a, b]]);
        assertClose(out.slice(a * 2, b * 2), await arr(exact(sl(q), sl(k), sl(v))), {
          atol: 1e-14,
          rtol: 1e-13,
        });
      }
    }),
  );
});

describe("localAttention against the reference", () => {
  // [B, H, T, D, Dv, blockSize]
  const grid: number[][] = [
    [1, 1, 1, 4, 3, 4], // T = 1, block larger than T
    [2, 3, 37, 8, 5, 8], // T not a multiple of the block: padded last block
    [1, 2, 64, 16, 16, 16], // aligned
    [1, 2, 9, 5, 3, 1], // blocks of one
  ];
  for (const [B, H, T, D, Dv, blockSize] of grid) {
    for (const causal of [false, true]) {
      test(
        `B ${B} H ${H} T ${T} D ${D} Dv ${Dv} block ${blockSize}${causal ? " causal" : ""}`,
        scoped(async () => {
          const q = rn([B, H, T, D], 7), k = rn([B, H, T, D], 8), v = rn([B, H, T, Dv], 9);
          const opts = { blockSize, causal };
          const ref = await arr(s.localAttentionRef(q, k, v, opts));
          assertClose(await arr(s.localAttention(q, k, v, opts)), ref, { atol: 1e-13, rtol: 1e-12 });
          const g = await gpu32([q, k, v]);
          assertClose(await arr(s.localAttention(g[0], g[1], g[2], opts)), ref, TOL32);
        }),
      );
    }
  }

  test(
    "gradients against float64 finite differences (padded blocks, causal and not)",
    scoped(async () => {
      const inputs = [rn([1, 2, 5, 3], 10), rn([1, 2, 5, 3], 11), rn([1, 2, 5, 2], 12)];
      for (const causal of [false, true]) {
        const f = (q: Tensor, k: Tensor, v: Tensor) => s.localAttention(q, k, v, { blockSize: 2, causal });
        const r = await s.gradcheck(f, inputs, { atol: 1e-8, rtol: 1e-6 });
        for (const e of r.maxError) expect(e).toBeLessThan(1e-7);
        const g = await gpu32(inputs);
        await s.gradcheck(f, g, { atol: 2e-4, rtol: 2e-3 });
      }
    }),
  );

  test(
    "bad inputs throw clear errors",
    scoped(() => {
      const q = s.zeros([1, 2, 4, 8], { device: "cpu" }), v = s.zeros([1, 2, 4, 3], { device: "cpu" });
      expect(() => s.localAttention(q, q, v, { blockSize: 0 })).toThrow(
        "localAttention: blockSize must be a positive integer, got 0",
      );
      // deno-lint-ignore no-explicit-any
      expect(() => s.localAttention(q, q, v, {} as any)).toThrow(
        "localAttention: blockSize must be a positive integer",
      );
      const k = s.zeros([1, 2, 5, 8], { device: "cpu" }), v5 = s.zeros([1, 2, 5, 3], { device: "cpu" });
      expect(() => s.localAttention(q, k, v5, { blockSize: 2 })).toThrow("localAttention: needs Tq = Tk");
    }),
  );
});

test("localAttention leaves nothing allocated (forward and backward, both devices)", () => {
  for (const device of ["cpu", "webgpu"] as const) {
    const [q, k, v] = [1, 2, 3].map((seed) => s.randn([1, 2, 9, 4], { seed, device }));
    for (const causal of [false, true]) {
      s.localAttention(q, k, v, { blockSize: 4, causal }).dispose();
      for (const t of [q, k, v]) t.requiresGrad = true;
      const out = s.localAttention(q, k, v, { blockSize: 4, causal }), loss = out.sum();
      loss.backward();
      for (const t of [loss, out]) t.dispose();
      for (const t of [q, k, v]) t.zeroGrad();
    }
    for (const t of [q, k, v]) t.dispose();
  }
});
