// The float64 reference (hand-computed cases, its backward by finite differences), standard attention,
// the decode path, the dispatcher, IO/FLOP stats and bad input. FlashAttention: flash_test.ts.
import { beforeEach, describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { AttentionOptions, Tensor } from "../../mod.ts";
import { assertClose, data, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";

leakCheck();

const rnd = (shape: number[], seed: number, scale = 1) =>
  s.tensor(data(shape.reduce((a, b) => a * b, 1), seed, scale), { shape, device: "cpu", dtype: "f64" });
const gpu32 = async (t: Tensor) => await s.cast(t, "f32").to("webgpu");
const arr = async (t: Tensor) => Array.from(await t.toArray());

describe("attentionRef", () => {
  test(
    "a hand-computed case: causal, 2 x 2",
    scoped(async () => {
      const q = s.tensor([[[[1, 0], [0, 1]]]], { device: "cpu", dtype: "f64" });
      const { o, lse } = s.attentionRef(q, q, q, { causal: true, scale: 1 });
      const e = Math.E;
      assertClose(await o.toArray(), [1, 0, 1 / (1 + e), e / (1 + e)], { atol: 1e-15, rtol: 0 });
      assertClose(await lse.toArray(), [1, Math.log(1 + e)], { atol: 1e-15, rtol: 0 });
    }),
  );

  test(
    "bottom-right causal alignment, ALiBi and a fully masked row",
    scoped(async () => {
      // T = 2 queries after S - T = 1 cached key; query 0 sits at position 1 and sees keys 0, 1
      const q = s.zeros([1, 1, 2, 1], { device: "cpu", dtype: "f64" });
      const k = s.zeros([1, 1, 3, 1], { device: "cpu", dtype: "f64" });
      const v = s.tensor([[[[1], [2], [4]]]], { device: "cpu", dtype: "f64" });
      const { o } = s.attentionRef(q, k, v, { causal: true });
      assertClose(await o.toArray(), [1.5, 7 / 3], { atol: 1e-15, rtol: 0 });
      // ALiBi slope ln 2: weights 2^-(p - j)
      const { o: oa } = s.attentionRef(q, k, v, { causal: true, alibi: [Math.LN2] });
      assertClose(await oa.toArray(), [(1 * 0.5 + 2) / 1.5, (1 * 0.25 + 2 * 0.5 + 4) / 1.75], {
        atol: 1e-14,
        rtol: 0,
      });
      // no visible key: zeros and -inf, not NaN
      const { o: oz, lse } = s.attentionRef(q, k, v, { keyPadding: [0] });
      expect(await arr(oz)).toEqual([0, 0]);
      expect(await arr(lse)).toEqual([-Infinity, -Infinity]);
    }),
  );

  test(
    "GQA equals MHA with repeated kv heads; masks compose",
    scoped(async () => {
      const q = rnd([2, 4, 6, 3], 1), k = rnd([2, 2, 6, 3], 2), v = rnd([2, 2, 6, 3], 3);
      const rep = (t: Tensor) => t.unsqueeze(2).expand([2, 2, 2, 6, 3]).reshape([2, 4, 6, 3]);
      const o: AttentionOptions = {
        causal: true,
        window: 2,
        keyPadding: [6, 4],
        alibi: [0.1, 0.2, 0.3, 0.4],
      };
      assertClose(
        await s.attentionRef(q, k, v, o).o.toArray(),
        await s.attentionRef(q, rep(k), rep(v), o).o.toArray(),
        {
          atol: 1e-14,
          rtol: 0,
        },
      );
      // a block mask of ones changes nothing; global tokens only widen the window
      const ones = {
        mask: new Array(4 * 3 * 3).fill(1),
        shape: [4, 3, 3] as [number, number, number],
        blockSize: 2,
      };
      assertClose(
        await s.attentionRef(q, k, v, { ...o, blockMask: ones }).o.toArray(),
        await s.attentionRef(q, k, v, o).o.toArray(),
        { atol: 0, rtol: 0 },
      );
    }),
  );

  test("its backward against finite differences (float64)", async () => {
    const cases: [number[], number[], () => AttentionOptions][] = [
      [[1, 2, 4, 3], [1, 1, 5, 3], () => ({ causal: true, alibi: [0.3, 0.6] })],
      [[2, 1, 5, 2], [2, 1, 5, 2], () => ({ window: [1, 1], globalTokens: 1, keyPadding: [5, 3] })],
      [[1, 1, 6, 2], [1, 1, 6, 2], () => ({
        keyPadding: s.tensor([[1, 1, 0, 1, 1, 1]], { device: "cpu" }),
        blockMask: { mask: [1, 0, 1, 1], shape: [1, 2, 2], blockSize: 3 },
      })],
    ];
    for (const [qs, ks, mk] of cases) {
      await s.tidy(async () => {
        const o = mk();
        const r = await s.gradcheck((q, k, v) => s.attentionRef(q, k, v, o).o, [
          rnd(qs, 4),
          rnd(ks, 5),
          rnd(ks, 6),
        ]);
        expect(Math.max(...r.maxError)).toBeLessThan(1e-7);
      });
    }
  });
});

describe("standard attention on WebGPU", () => {
  beforeEach(requireGpu);
  const cases: [string, number[], number[], () => AttentionOptions][] = [
    ["T = 1", [1, 2, 1, 16], [1, 2, 9, 16], () => ({})],
    ["causal, T = 70, D = 64", [1, 2, 70, 64], [1, 2, 70, 64], () => ({ causal: true })],
    [
      "GQA 8, lengths, ALiBi",
      [2, 8, 19, 32],
      [2, 1, 25, 32],
      () => ({ keyPadding: [25, 6], alibi: new Array(8).fill(0.2) }),
    ],
    ["padding mask, window + global", [2, 2, 33, 16], [2, 2, 33, 16], () => ({
      keyPadding: s.tensor(Array.from({ length: 66 }, (_, i) => (i % 5 ? 1 : 0)), {
        shape: [2, 33],
        device: "cpu",
      }),
      window: 5,
      globalTokens: 2,
    })],
    ["block-sparse", [1, 2, 20, 16], [1, 2, 20, 16], () => ({
      causal: true,
      blockMask: { mask: [1, 0, 1, 1, 0, 0, 1, 1], shape: [2, 2, 2], blockSize: 10 },
    })],
  ];
  test("forward and backward against the reference", async () => {
    for (const [name, qs, ks, mk] of cases) {
      await s.tidy(async () => {
        const o = mk();
        const [q, k, v, g] = [rnd(qs, 1), rnd(ks, 2), rnd(ks, 3), rnd(qs, 4)];
        const ref = s.attentionRef(q, k, v, o);
        const dref = s.attentionRefBackward(g, q, k, v, o);
        const kp = o.keyPadding as Tensor | undefined;
        const od = kp && kp.rank === 2 ? { ...o, keyPadding: await kp.to("webgpu") } : o;
        const leaves = [await gpu32(q), await gpu32(k), await gpu32(v)];
        for (const t of leaves) t.requiresGrad = true;
        const res = s.standardAttention(leaves[0], leaves[1], leaves[2], od);
        assertClose(await res.o.toArray(), await ref.o.toArray(), { atol: 2e-6, rtol: 0 });
        assertClose(await res.lse.toArray(), await ref.lse.toArray(), { atol: 4e-6, rtol: 0 });
        res.o.backward(await gpu32(g));
        for (let i = 0; i < 3; i++) {
          assertClose(await leaves[i].grad!.toArray(), await dref[i].toArray(), { atol: 5e-6, rtol: 0 });
        }
        for (const t of leaves) t.zeroGrad(); // gradients outlive tidy
        expect(res.stats.impl, name).toBe("standard");
      });
    }
  });

  test(
    "one head's scores over the buffer limit is a clear error",
    scoped(() => {
      const T = 8192; // 8192 x 8192 x 4 bytes = 256 MiB per head
      const q = s.zeros([1, 1, T, 4]);
      expect(() => s.standardAttention(q, q, q)).toThrow(
        /standardAttention: the scores of one head \(T x S = 8192 x 8192\) need 256 MiB, over the adapter's maxStorageBufferBindingSize/,
      );
    }),
  );
});

describe("decode", () => {
  beforeEach(requireGpu);
  test("one query against a cache with per-batch lengths, window, ALiBi", async () => {
    for (
      const o of [{}, { window: 5 }, {
        alibi: [0.5, 0.1, 0.3, 0.2],
        window: 3,
        globalTokens: 2,
      }] as AttentionOptions[]
    ) {
      await s.tidy(async () => {
        const q = rnd([2, 4, 1, 16], 1), cache = rnd([2, 2, 40, 16], 2), vc = rnd([2, 2, 40, 16], 3);
        const lens = [17, 40];
        const opts = { length: lens, ...o } as s.DecodeOptions;
        const ref = s.attentionDecode(q, cache, vc, opts); // on the cpu: the reference per batch
        const res = s.attentionDecode(await gpu32(q), await gpu32(cache), await gpu32(vc), opts);
        assertClose(await res.o.toArray(), await ref.o.toArray(), { atol: 2e-6, rtol: 0 });
        assertClose(await res.lse.toArray(), await ref.lse.toArray(), { atol: 4e-6, rtol: 0 });
        // the query at position len - 1 is what flash attention computes on the first len keys
        const first = s.attentionRef(
          q.slice([[0, 1]]),
          cache.slice([[0, 1], null, [0, 17]]),
          vc.slice([[0, 1], null, [0, 17]]),
          {
            ...o,
            causal: true,
          } as AttentionOptions,
        );
        assertClose((await res.o.toArray()).slice(0, 64), await first.o.toArray(), { atol: 2e-6, rtol: 0 });
      });
    }
  });

  test(
    "D = 128, a zero length, a strided cache",
    scoped(async () => {
      const q = rnd([1, 2, 1, 128], 5), big = rnd([1, 2, 30, 256], 6);
      const kc = big.slice([null, null, null, [0, 128]]), vc = big.slice([null, null, null, [128, 256]]);
      const ref = s.attentionDecode(q, kc, vc, { length: 11 });
      const g = await gpu32(big);
      const res = s.attentionDecode(
        await gpu32(q),
        g.slice([null, null, null, [0, 128]]),
        g.slice([null, null, null, [128, 256]]),
        {
          length: 11,
        },
      );
      assertClose(await res.o.toArray(), await ref.o.toArray(), { atol: 2e-6, rtol: 0 });
      const z = s.attentionDecode(
        await gpu32(q),
        g.slice([null, null, null, [0, 128]]),
        g.slice([null, null, null, [128, 256]]),
        {
          length: 0,
        },
      );
      expect((await arr(z.o)).every((x) => x === 0)).toBe(true);
      expect(await arr(z.lse)).toEqual([-Infinity, -Infinity]);
    }),
  );
});

describe("attention picks an implementation", () => {
  beforeEach(requireGpu);
  test(
    "cpu -> reference, webgpu -> flash, a single query -> decode, impl forces",
    scoped(async () => {
      const q = rnd([1, 2, 8, 16], 1), k = rnd([1, 2, 8, 16], 2);
      expect(s.attention(q, k, k).stats.impl).toBe("reference");
      const [qg, kg] = [await gpu32(q), await gpu32(k)];
      const flash = s.attention(qg, kg, kg, { causal: true });
      expect(flash.stats.impl).toBe("flash v3");
      const q1 = qg.slice([null, null, [7, 8]]);
      expect(s.attentionImpl(q1, kg, kg)).toBe("decode");
      const dec = s.attention(q1, kg, kg, { causal: true });
      expect(dec.stats.impl).toBe("decode v1");
      assertClose(
        await dec.o.toArray(),
        (await flash.o.toArray()).filter((_, i) => Math.floor(i / 16) % 8 === 7),
        {
          atol: 2e-6,
          rtol: 0,
        },
      );
      q1.requiresGrad = true;
      expect(s.attentionImpl(q1, kg, kg)).toBe("flash"); // gradients need the recorded path
      expect(s.attention(qg, kg, kg, { impl: "standard" }).stats.impl).toBe("standard");
      expect(() => s.attention(qg, kg, kg, { impl: "reference" })).toThrow(
        /impl "reference" needs cpu tensors/,
      );
    }),
  );
});

describe('layout "bthd"', () => {
  /** o and the gradients of attention in "bthd" on (B, T, H, D) inputs, transposed back to (B, H, T, D). */
  async function bthdRun(
    fn: typeof s.attention,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    o: AttentionOptions,
  ) {
    const leaves = [q, k, v].map((t) => t.transpose(1, 2).contiguous());
    for (const t of leaves) t.requiresGrad = true;
    const res = fn(leaves[0], leaves[1], leaves[2], { ...o, layout: "bthd" });
    res.o.backward(g.transpose(1, 2).contiguous());
    const out = await Promise.all([res.o, ...leaves.map((t) => t.grad!)].map((t) => arr(t.transpose(1, 2))));
    for (const t of leaves) t.zeroGrad();
    return out;
  }
  async function bhtdRun(
    fn: typeof s.attention,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    o: AttentionOptions,
  ) {
    const leaves = [q, k, v].map((t) => t.contiguous());
    for (const t of leaves) t.requiresGrad = true;
    const res = fn(leaves[0], leaves[1], leaves[2], o);
    res.o.backward(g);
    const out = await Promise.all([res.o, ...leaves.map((t) => t.grad!)].map(arr));
    for (const t of leaves) t.zeroGrad();
    return out;
  }
  const opts: AttentionOptions = { causal: true, keyPadding: [11, 6], alibi: [0.5, 0.25, 0.125, 0.0625] };
  test(
    "the reference (and attention on the cpu): values and gradients equal the transposed (B, H, T, D) path",
    scoped(async () => {
      const q = rnd([2, 4, 9, 6], 1),
        k = rnd([2, 2, 11, 6], 2),
        v = rnd([2, 2, 11, 6], 3),
        g = rnd([2, 4, 9, 6], 4);
      for (const fn of [s.attentionRef, s.attention, s.flashAttention, s.standardAttention]) {
        const a = await bthdRun(fn, q, k, v, g, opts), b = await bhtdRun(fn, q, k, v, g, opts);
        for (let i = 0; i < 4; i++) assertClose(a[i], b[i], { atol: 0, rtol: 0 });
      }
      const [dq] = s.attentionRefBackward(
        g.transpose(1, 2).contiguous(),
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        { ...opts, layout: "bthd" },
      );
      expect(dq.shape).toEqual([2, 9, 4, 6]);
    }),
  );
  test(
    "standard attention and decode on webgpu",
    scoped(async () => {
      requireGpu();
      const q = await gpu32(rnd([2, 4, 9, 8], 5)), k = await gpu32(rnd([2, 2, 11, 8], 6));
      const v = await gpu32(rnd([2, 2, 11, 8], 7)), g = await gpu32(rnd([2, 4, 9, 8], 8));
      const a = await bthdRun(s.standardAttention, q, k, v, g, opts);
      const b = await bhtdRun(s.standardAttention, q, k, v, g, opts);
      for (let i = 0; i < 4; i++) assertClose(a[i], b[i], { atol: 0, rtol: 0 });
      // a single query in (B, 1, H, D) goes to decode, as (B, H, 1, D) does
      const q1 = q.slice([null, null, [8, 9]]).transpose(1, 2);
      expect(s.attentionImpl(q1, k.transpose(1, 2), v.transpose(1, 2), { layout: "bthd" })).toBe("decode");
      const dec = s.attention(q1, k.transpose(1, 2), v.transpose(1, 2), {
        keyPadding: [11, 6],
        layout: "bthd",
      });
      expect(dec.o.shape).toEqual([2, 1, 4, 8]);
      const ref = s.attention(q.slice([null, null, [8, 9]]), k, v, { keyPadding: [11, 6] });
      assertClose(await arr(dec.o), await arr(ref.o.transpose(1, 2)), { atol: 0, rtol: 0 });
    }),
  );
  test(
    "bad layouts and shapes name the layout",
    scoped(() => {
      const q = s.zeros([1, 8, 4, 16], { device: "cpu" }), k = s.zeros([1, 8, 2, 16], { device: "cpu" });
      for (const fn of [s.attentionRef, s.flashAttention, s.standardAttention, s.attention]) {
        expect(() => fn(q, k, k, { layout: "bhdt" as "bthd" })).toThrow(
          'layout must be "bhtd" or "bthd", got "bhdt"',
        );
        expect(() => fn(q, k.slice([null, [0, 4]]), k, { layout: "bthd" })).toThrow(
          "k and v shapes differ: q [1, 8, 4, 16], k [1, 4, 2, 16], v [1, 8, 2, 16] (layout bthd)",
        );
        expect(() => fn(q.reshape([8, 4, 16]), k, k, { layout: "bthd" })).toThrow(
          "q must be 4-D, (B, T, H, D) for q and (B, S, Hkv, D) for k and v (layout bthd); got q [8, 4, 16]",
        );
      }
      expect(s.attentionRef(q, k, k, { layout: "bthd" }).o.shape).toEqual([1, 8, 4, 16]);
    }),
  );
});

describe("IO and FLOP accounting", () => {
  beforeEach(requireGpu);
  test(
    "flash skips the causal upper triangle and zero sparse blocks; moves less than standard",
    scoped(() => {
      const T = 256, D = 16;
      const q = s.zeros([1, 2, T, D]);
      const full = s.flashAttention(q, q, q, { blockQ: 32, blockK: 32 }).stats;
      const causal = s.flashAttention(q, q, q, { causal: true, blockQ: 32, blockK: 32 }).stats;
      expect(full.block).toEqual([32, 32]);
      expect(full.tilesVisited).toBe(2 * 8 * 8);
      expect(full.tilesSkipped).toBe(0);
      expect(causal.tilesVisited).toBe(2 * 36); // the 8 x 8 lower triangle with its diagonal
      expect(full.flops).toBe(4 * D * 2 * T * T + 6 * 2 * T * T);
      // block-sparse: a diagonal of 64 x 64 blocks keeps 1 in 4; the kernel runs only those tiles
      const mask = Array.from({ length: 16 }, (_, i) => (i % 5 === 0 ? 1 : 0));
      const sparse =
        s.flashAttention(q, q, q, { blockMask: { mask, shape: [1, 4, 4], blockSize: 64 } }).stats;
      expect(sparse.tilesSkipped / (sparse.tilesSkipped + sparse.tilesVisited)).toBeCloseTo(0.75, 5);
      // Theorem 2: standard moves Theta(T D + T^2), flash Theta(T^2 D^2 / M)
      const std = s.standardAttention(q, q, q).stats;
      expect(std.bytesRead + std.bytesWritten).toBeGreaterThan(full.bytesRead + full.bytesWritten);
      expect(std.programs.map((p) => p.name)).toEqual(["S = scale q k^T", "P = softmax(S)", "O = P v"]);
      // larger query blocks read K and V fewer times
      const big = s.flashAttention(q, q, q, { blockQ: 64, blockK: 32 }).stats;
      expect(big.bytesRead).toBeLessThan(full.bytesRead);
    }),
  );
});

describe("bad input", () => {
  test(
    "errors name what was wrong and the shapes",
    scoped(() => {
      const q = s.zeros([1, 4, 8, 16], { device: "cpu" }), k = s.zeros([1, 2, 8, 16], { device: "cpu" });
      const k3 = s.zeros([1, 3, 8, 16], { device: "cpu" }), kd = s.zeros([1, 2, 8, 8], { device: "cpu" });
      for (const fn of [s.attentionRef, s.flashAttention, s.standardAttention, s.attention]) {
        expect(() => fn(q, kd, kd)).toThrow(
          "head dims differ: q [1, 4, 8, 16], k [1, 2, 8, 8], v [1, 2, 8, 8]",
        );
        expect(() => fn(q, k3, k3)).toThrow(
          "kv heads (3) must divide query heads (4): q [1, 4, 8, 16], k [1, 3, 8, 16]",
        );
        expect(() => fn(q, k, k, { keyPadding: s.zeros([2, 8], { device: "cpu" }) })).toThrow(
          /keyPadding must be a \(B, S\) = \[1, 8\] 0\/1 mask or \(B\) = \[1\] integer lengths; got tensor \[2, 8\]/,
        );
        expect(() => fn(q, k, k, { blockMask: { mask: [1], shape: [1, 1, 1], blockSize: 4 } })).toThrow(
          "blockMask must have shape [H or 1, ceil(T / 4), ceil(S / 4)] = [4 or 1, 2, 2], got [1, 1, 1]",
        );
      }
      expect(() => s.attentionRef(q.reshape([4, 8, 16]), k, k)).toThrow(/q must be 4-D.*got q \[4, 8, 16\]/);
      expect(() => s.attentionRef(q, k, k, { alibi: [1, 2] })).toThrow(
        "alibi needs one slope per query head (H = 4), got 2",
      );
      expect(() => s.attentionRef(q, k, k, { window: -1 })).toThrow(
        "window left must be an integer >= 0, got -1",
      );
      expect(() => s.attentionRef(q, k, k, { globalTokens: 2 })).toThrow(/globalTokens needs a window/);
      expect(() => s.attentionDecode(q, k, k)).toThrow(/q must be \(B, H, 1, D\)/);
      expect(() => s.attentionDecode(q.slice([null, null, [0, 1]]), k, k, { length: 9 })).toThrow(
        "attentionDecode: length must be B = 1 integers in [0, 8] (the cache length), got 9",
      );
    }),
  );
  test(
    "flash options: the same bad option gives the same message on cpu and webgpu",
    scoped(async () => {
      requireGpu();
      const cases: [AttentionOptions, string, number[]?][] = [
        [{ blockQ: 12 }, "flashAttention: blockQ for v3 must be a multiple of 8 in [8, 256], got 12"],
        [
          { blockQ: 512, version: "v2" },
          "flashAttention: blockQ for v2 must be a multiple of 8 in [8, 256], got 512",
        ],
        [{ blockK: 6 }, "flashAttention: blockK must be a multiple of 4 in [4, 4096], got 6"],
        [{ version: 3 as unknown as "v3" }, "flashAttention: version must be one of auto, v1, v2, v3, got 3"],
        [{ version: "v4" as "v3" }, 'flashAttention: version must be one of auto, v1, v2, v3, got "v4"'],
        [{ version: "v1" }, "flashAttention: v1 needs D divisible by 4, got D = 6; use v3", [1, 1, 8, 6]],
        // v2's K and V tiles in workgroup memory: 2 x 4096 keys x 64 floats is over any adapter's limit
        [
          { version: "v2", blockK: 4096 },
          "flashAttention: v2's K and V tiles of 4096 keys x 8 need 262144 bytes",
        ],
      ];
      for (const [opts, msg, shape = [1, 1, 8, 8]] of cases) {
        const q = s.zeros(shape, { device: "cpu", dtype: "f32" });
        const qg = await q.to("webgpu");
        for (const fn of [s.flashAttention, s.attention]) {
          const errOf = (x: Tensor) => {
            try {
              fn(x, x, x, opts);
            } catch (e) {
              return (e as Error).message;
            }
            return "no error";
          };
          const [cpu, webgpu] = [errOf(q), errOf(qg)];
          expect(cpu, `${fn.name} ${JSON.stringify(opts)} on cpu`).toContain(msg);
          expect(webgpu, `${fn.name} ${JSON.stringify(opts)}`).toBe(cpu);
        }
      }
      // v1 and v2 need f32: an f64 reference input is refused as an f16 one would be on webgpu
      const q64 = s.zeros([1, 1, 8, 8], { device: "cpu", dtype: "f64" });
      expect(() => s.flashAttention(q64, q64, q64, { version: "v1" })).toThrow(
        "flashAttention: v1 needs f32, got f64; use v3",
      );
      // valid options on the cpu: the reference
      const q32 = s.zeros([1, 1, 8, 8], { device: "cpu", dtype: "f32" });
      expect(s.flashAttention(q32, q32, q32, { version: "v2", blockQ: 16, blockK: 8 }).stats.impl).toBe(
        "reference (flashAttention on cpu)",
      );
    }),
  );
});
