// The paged K/V cache ops against their float64 references: attention v1 and v2 and prefill on webgpu at
// odd context lengths, partially filled last pages, block sizes 8/16/128, GQA and MQA, ALiBi and windows;
// the references against contiguous attention; writeKV, copyBlocks and swapBlocks; every bad input throws
// its named error on both backends (on webgpu at the readback).
import { describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { PagedAttentionOptions, Tensor } from "../../mod.ts";
import { assertClose, data, leakCheck, requireGpu } from "../../test/helpers.ts";
import type { DeviceName } from "../../runtime/device.ts";

leakCheck();

const TOL = { atol: 3e-5, rtol: 1e-4 };
const i32 = (x: ArrayLike<number>, shape: number[], device: DeviceName = "cpu") =>
  s.tensor(Array.from(x), { dtype: "i32", shape, device });
const f32 = (n: number, shape: number[], seed: number) =>
  s.tensor(data(n, seed, 1), { shape, device: "cpu", dtype: "f32" });

interface Case {
  lens: number[];
  H: number;
  Hkv: number;
  D: number;
  bs: number;
  /** New query rows per sequence (prefill); decode when absent. */
  nq?: number[];
}

/** Inputs on the cpu: pools filled at random, blocks handed out in a shuffled order, tables padded with -1. */
function build(c: Case, seed = 1) {
  const S = c.lens.length;
  const need = c.lens.map((l) => Math.ceil(l / c.bs));
  const maxBlocks = Math.max(1, ...need) + 1;
  const numBlocks = need.reduce((a, b) => a + b, 0) + 3;
  const order = Array.from({ length: numBlocks }, (_, i) => i);
  for (let i = numBlocks - 1; i > 0; i--) {
    const j = (i * 7919 + seed * 31) % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  const tab = new Int32Array(S * maxBlocks).fill(-1);
  let next = 0;
  for (let q = 0; q < S; q++) for (let b = 0; b < need[q]; b++) tab[q * maxBlocks + b] = order[next++];
  const poolShape = [numBlocks, c.Hkv, c.bs, c.D];
  const poolN = poolShape.reduce((a, b) => a * b, 1);
  const N = c.nq ? c.nq.reduce((a, b) => a + b, 0) : S;
  const qs = c.nq ? [0, ...c.nq.map((_, i) => c.nq!.slice(0, i + 1).reduce((a, b) => a + b, 0))] : null;
  return {
    q: f32(N * c.H * c.D, [N, c.H, c.D], seed),
    k: f32(poolN, poolShape, seed + 1),
    v: f32(poolN, poolShape, seed + 2),
    tables: i32(tab, [S, maxBlocks]),
    lens: i32(c.lens, [S]),
    qs: qs ? i32(qs, [S + 1]) : null,
    tab,
    maxBlocks,
    numBlocks,
  };
}

type Inputs = ReturnType<typeof build>;

function run(x: Inputs, opts: PagedAttentionOptions) {
  return x.qs
    ? s.pagedPrefill(x.q, x.k, x.v, x.tables, x.lens, x.qs, opts)
    : s.pagedAttention(x.q, x.k, x.v, x.tables, x.lens, opts);
}

async function toGpu(x: Inputs): Promise<Inputs> {
  const m = async (t: Tensor | null) => t && await t.to("webgpu");
  return {
    ...x,
    q: (await m(x.q))!,
    k: (await m(x.k))!,
    v: (await m(x.v))!,
    tables: (await m(x.tables))!,
    lens: (await m(x.lens))!,
    qs: await m(x.qs),
  };
}

function free(x: Inputs) {
  for (const t of [x.q, x.k, x.v, x.tables, x.lens, x.qs]) t?.dispose();
}

/** Webgpu (each version) against the cpu reference on one case. */
async function checkCase(
  c: Case,
  opts: Omit<PagedAttentionOptions, "version"> = {},
  versions = ["v1", "v2"],
) {
  const x = build(c);
  const g = await toGpu(x);
  try {
    const ref = run(x, opts);
    const eo = await ref.o.toArray(), el = await ref.lse.toArray();
    ref.o.dispose();
    ref.lse.dispose();
    for (const version of versions) {
      const r = run(g, { ...opts, version: version as "v1" | "v2", partitionSize: 64 });
      try {
        expect(r.version).toBe(version);
        assertClose(await r.o.toArray(), eo, TOL);
        assertClose(await r.lse.toArray(), el, TOL);
      } finally {
        r.o.dispose();
        r.lse.dispose();
      }
    }
  } finally {
    free(x);
    free(g);
  }
}

describe("pagedAttention", () => {
  test("the reference equals contiguous attentionDecode on the same keys (GQA, ALiBi, window)", async () => {
    const c: Case = { lens: [1, 17, 40], H: 4, Hkv: 2, D: 8, bs: 8 };
    const x = build(c);
    const Smax = 40;
    // lay the pages out contiguously: (B, Hkv, Smax, D), zeros past each length
    const kd = await x.k.toArray(), vd = await x.v.toArray();
    const kc = new Float32Array(3 * c.Hkv * Smax * c.D), vc = new Float32Array(kc.length);
    for (let b = 0; b < 3; b++) {
      for (let p = 0; p < c.lens[b]; p++) {
        const blk = x.tab[b * x.maxBlocks + Math.floor(p / c.bs)];
        for (let h = 0; h < c.Hkv; h++) {
          const src = ((blk * c.Hkv + h) * c.bs + (p % c.bs)) * c.D, dst = ((b * c.Hkv + h) * Smax + p) * c.D;
          kc.set(kd.subarray(src, src + c.D), dst);
          vc.set(vd.subarray(src, src + c.D), dst);
        }
      }
    }
    const shape = [3, c.Hkv, Smax, c.D];
    for (const opts of [{}, { alibi: [0.5, 0.25, 0.125, 0.0625] }, { window: 5 }]) {
      s.tidy(() => {
        const K = s.tensor(kc, { shape, device: "cpu" }), V = s.tensor(vc, { shape, device: "cpu" });
        const want = s.attentionDecode(x.q.reshape([3, c.H, 1, c.D]), K, V, { length: c.lens, ...opts });
        const got = s.pagedAttention(x.q, x.k, x.v, x.tables, x.lens, opts);
        assertClose(got.o.storage.data!, want.o.storage.data!, { atol: 1e-6, rtol: 1e-6 });
        assertClose(got.lse.storage.data!, want.lse.storage.data!, { atol: 1e-5, rtol: 1e-6 });
      });
    }
    free(x);
  });

  test("v1 and v2 equal the reference at odd context lengths and partial last pages (bs 16, D 64)", async () => {
    requireGpu();
    await checkCase({ lens: [1, 15, 17, 513, 1100], H: 4, Hkv: 2, D: 64, bs: 16 });
  });

  test("block sizes 8 and 128, MQA, scalar rows (D 12)", async () => {
    requireGpu();
    await checkCase({ lens: [1, 17, 300], H: 4, Hkv: 1, D: 12, bs: 8 });
    await checkCase({ lens: [15, 129, 513], H: 4, Hkv: 4, D: 64, bs: 128 });
  });

  test("ALiBi, windows and a custom scale", async () => {
    requireGpu();
    await checkCase({ lens: [17, 513], H: 4, Hkv: 2, D: 64, bs: 16 }, {
      alibi: [0.5, 0.25, 0.125, 0.0625],
      window: 100,
      scale: 0.3,
    });
    await checkCase({ lens: [1, 40], H: 2, Hkv: 1, D: 16, bs: 8 }, { window: 0 });
  });

  test("auto: v1 where its loops fit, v2 past them (a table of 76800 tokens); v1 refused there", async () => {
    requireGpu();
    const x = build({ lens: [300], H: 2, Hkv: 1, D: 64, bs: 128 });
    const wide = new Int32Array(600).fill(-1);
    wide.set(x.tab.subarray(0, x.maxBlocks));
    const g = await toGpu(x);
    await s.tidy(async () => {
      const t = i32(wide, [1, 600], "webgpu");
      expect(() => s.pagedAttention(g.q, g.k, g.v, t, g.lens, { version: "v1" })).toThrow(
        /pagedAttention v1: a context of up to 76800 tokens \(maxBlocks x blockSize\) loops past MAX_LOOP/,
      );
      const far = s.pagedAttention(g.q, g.k, g.v, t, g.lens);
      const near = s.pagedAttention(g.q, g.k, g.v, g.tables, g.lens);
      expect([far.version, near.version]).toEqual(["v2", "v1"]);
      assertClose(await far.o.toArray(), await near.o.toArray(), TOL);
    });
    free(x);
    free(g);
  });

  test("paged decode on webgpu equals attentionDecode on webgpu with the pages laid out contiguously", async () => {
    requireGpu();
    const c: Case = { lens: [33, 200], H: 8, Hkv: 2, D: 64, bs: 16 };
    const x = build(c);
    const g = await toGpu(x);
    const Smax = 200;
    const kd = await x.k.toArray(), vd = await x.v.toArray();
    const kc = new Float32Array(2 * c.Hkv * Smax * c.D), vc = new Float32Array(kc.length);
    for (let b = 0; b < 2; b++) {
      for (let p = 0; p < c.lens[b]; p++) {
        const blk = x.tab[b * x.maxBlocks + Math.floor(p / c.bs)];
        for (let h = 0; h < c.Hkv; h++) {
          const src = ((blk * c.Hkv + h) * c.bs + (p % c.bs)) * c.D, dst = ((b * c.Hkv + h) * Smax + p) * c.D;
          kc.set(kd.subarray(src, src + c.D), dst);
          vc.set(vd.subarray(src, src + c.D), dst);
        }
      }
    }
    await s.tidy(async () => {
      const shape = [2, c.Hkv, Smax, c.D];
      const K = s.tensor(kc, { shape, device: "webgpu" }), V = s.tensor(vc, { shape, device: "webgpu" });
      const want = s.attentionDecode(g.q.reshape([2, c.H, 1, c.D]), K, V, { length: c.lens });
      const got = s.pagedAttention(g.q, g.k, g.v, g.tables, g.lens);
      assertClose(await got.o.toArray(), await want.o.toArray(), TOL);
      assertClose(await got.lse.toArray(), await want.lse.toArray(), TOL);
    });
    free(x);
    free(g);
  });
});

describe("pagedPrefill", () => {
  test("the reference equals decode row by row (ragged rows, window, ALiBi)", () => {
    const c: Case = { lens: [5, 20], H: 2, Hkv: 1, D: 8, bs: 8, nq: [3, 20] };
    const x = build(c);
    const opts = { window: 6, alibi: [0.5, 0.25] };
    s.tidy(() => {
      const got = s.pagedPrefill(x.q, x.k, x.v, x.tables, x.lens, x.qs!, opts);
      const o = got.o.storage.data!;
      let row = 0;
      for (let q = 0; q < 2; q++) {
        for (let i = 0; i < c.nq![q]; i++, row++) {
          const ctx = c.lens[q] - c.nq![q] + i + 1;
          const one = s.pagedAttention(
            x.q.slice([[row, row + 1]]),
            x.k,
            x.v,
            x.tables.slice([[q, q + 1]]),
            i32([ctx], [1]),
            opts,
          );
          assertClose(o.subarray(row * 16, row * 16 + 16), one.o.storage.data!, { atol: 1e-7, rtol: 1e-6 });
        }
      }
    });
    free(x);
  });

  test("v1 and v2 equal the reference: chunks at odd lengths, GQA, block sizes 8/16", async () => {
    requireGpu();
    await checkCase({ lens: [1, 17, 40, 300], H: 4, Hkv: 2, D: 64, bs: 16, nq: [1, 17, 5, 40] });
    await checkCase({ lens: [15, 9], H: 4, Hkv: 1, D: 12, bs: 8, nq: [15, 2] }, {
      alibi: [0.5, 0.25, 0.125, 0.0625],
      window: 4,
    });
  });
});

describe("writeKV, copyBlocks, swapBlocks", () => {
  for (const device of ["cpu", "webgpu"] as const) {
    test(`writeKV places rows in their slots, skipping padding (${device})`, async () => {
      if (device === "webgpu") requireGpu();
      for (const D of [8, 6]) {
        await s.tidy(async () => {
          const { k, v } = s.pagedPools(4, 2, 4, D, { device });
          const N = 3;
          const kx = s.tensor(data(N * 2 * D, 1, 1), { shape: [N, 2, D], device });
          const vx = s.tensor(data(N * 2 * D, 2, 1), { shape: [N, 2, D], device });
          s.writeKV(k, v, kx, vx, i32([13, -1, 2], [N], device));
          const kd = await k.toArray(),
            vd = await v.toArray(),
            ks = await kx.toArray(),
            vs = await vx.toArray();
          const at = (blk: number, h: number, off: number) => ((blk * 2 + h) * 4 + off) * D;
          for (const [n, slot] of [[0, 13], [2, 2]]) {
            for (let h = 0; h < 2; h++) {
              const dst = at(Math.floor(slot / 4), h, slot % 4);
              expect(Array.from(kd.subarray(dst, dst + D))).toEqual(
                Array.from(ks.subarray((n * 2 + h) * D, (n * 2 + h + 1) * D)),
              );
              expect(Array.from(vd.subarray(dst, dst + D))).toEqual(
                Array.from(vs.subarray((n * 2 + h) * D, (n * 2 + h + 1) * D)),
              );
            }
          }
          // nothing else was written
          const written = kd.reduce((a, x) => a + (x !== 0 ? 1 : 0), 0);
          expect(written).toBe(2 * 2 * D);
        });
      }
    });

    test(`copyBlocks copies whole blocks of both pools (${device})`, async () => {
      if (device === "webgpu") requireGpu();
      await s.tidy(async () => {
        const shape = [5, 2, 4, 8];
        const k = s.tensor(data(320, 3, 1), { shape, device }),
          v = s.tensor(data(320, 4, 1), { shape, device });
        const k0 = await k.toArray(), v0 = await v.toArray();
        s.copyBlocks(k, v, [[0, 3], [1, 4]]);
        const k1 = await k.toArray(), v1 = await v.toArray();
        const E = 64;
        for (const [a, b] of [[0, 3], [1, 4]]) {
          expect(Array.from(k1.subarray(b * E, (b + 1) * E))).toEqual(
            Array.from(k0.subarray(a * E, (a + 1) * E)),
          );
          expect(Array.from(v1.subarray(b * E, (b + 1) * E))).toEqual(
            Array.from(v0.subarray(a * E, (a + 1) * E)),
          );
        }
        expect(Array.from(k1.subarray(0, 3 * E))).toEqual(Array.from(k0.subarray(0, 3 * E)));
      });
    });
  }

  test("swapBlocks: webgpu -> cpu -> webgpu round trip is bit-exact", async () => {
    requireGpu();
    await s.tidy(async () => {
      const shape = [6, 2, 8, 4];
      const dev = s.tensor(data(384, 5, 1), { shape, device: "webgpu" });
      const orig = await dev.toArray();
      const host = s.pagedPools(3, 2, 8, 4, { device: "cpu" }).k;
      await s.swapBlocks(dev, host, [[4, 0], [1, 2]]);
      const E = 64, h = await host.toArray();
      expect(Array.from(h.subarray(0, E))).toEqual(Array.from(orig.subarray(4 * E, 5 * E)));
      expect(Array.from(h.subarray(2 * E, 3 * E))).toEqual(Array.from(orig.subarray(E, 2 * E)));
      const back = s.pagedPools(6, 2, 8, 4, { device: "webgpu" }).k;
      await s.swapBlocks(host, back, [[0, 4], [2, 1]]);
      const b = await back.toArray();
      expect(Array.from(b.subarray(4 * E, 5 * E))).toEqual(Array.from(orig.subarray(4 * E, 5 * E)));
      expect(Array.from(b.subarray(E, 2 * E))).toEqual(Array.from(orig.subarray(E, 2 * E)));
      expect(Array.from(b.subarray(0, E))).toEqual(new Array(E).fill(0));
    });
  });
});

describe("bad input throws a named error on both backends", () => {
  /** Runs `fn` on the cpu (throws at the call) and on webgpu (throws at the readback). */
  async function bothThrow(
    c: Case,
    edit: (x: Inputs) => void,
    msg: RegExp,
    opts: (x: Inputs) => PagedAttentionOptions = () => ({}),
  ) {
    const x = build(c);
    edit(x);
    const oc = opts(x);
    expect(() => run(x, oc)).toThrow(msg);
    oc.inUse?.dispose();
    requireGpu();
    const g = await toGpu(x);
    const o = opts(g);
    const r = run(g, o);
    await expect(r.o.toArray()).rejects.toThrow(msg);
    r.o.dispose();
    r.lse.dispose();
    o.inUse?.dispose();
    free(x);
    free(g);
  }
  const dec: Case = { lens: [20, 9], H: 2, Hkv: 1, D: 8, bs: 8 };
  const pre: Case = { lens: [20, 9], H: 2, Hkv: 1, D: 8, bs: 8, nq: [4, 2] };
  const setTab = (x: Inputs, i: number, v: number) => {
    const t = new Int32Array(x.tab);
    t[i] = v;
    x.tables.dispose();
    x.tables = i32(t, x.tables.shape as number[]);
  };
  const setLens = (x: Inputs, lens: number[]) => {
    x.lens.dispose();
    x.lens = i32(lens, [lens.length]);
  };

  for (
    const [name, c, op] of [["decode", dec, "pagedAttention"], ["prefill", pre, "pagedPrefill"]] as const
  ) {
    test(`${name}: a block table entry out of range or negative`, async () => {
      await bothThrow(
        c,
        (x) => setTab(x, 1, x.numBlocks),
        new RegExp(`${op}: block table entry \\d+ is out of range for a pool of \\d+ blocks`),
      );
      await bothThrow(
        c,
        (x) => setTab(x, x.maxBlocks, -1),
        new RegExp(`${op}: block table entry -1 is out of range`),
      );
    });

    test(`${name}: a context length beyond the table`, async () => {
      await bothThrow(c, (x) => setLens(x, [20, 9999]), new RegExp(`${op}: context length 9999 is outside`));
    });

    test(`${name}: an entry pointing at a free block (inUse)`, async () => {
      await bothThrow(
        c,
        () => {},
        new RegExp(`${op}: block table entry \\d+ points at a free block`),
        (x) => {
          const used = new Int32Array(x.numBlocks).fill(1);
          used[x.tab[x.maxBlocks]] = 0; // the first block of sequence 1
          return { inUse: i32(used, [x.numBlocks], x.q.device) };
        },
      );
    });
  }

  test("prefill: queryStarts that do not rise to N, more queries than context", async () => {
    const setQs = (x: Inputs, qs: number[]) => {
      x.qs!.dispose();
      x.qs = i32(qs, [3]);
    };
    await bothThrow(pre, (x) => setQs(x, [0, 5, 4]), /pagedPrefill: queryStarts must rise from 0 to N = 6/);
    await bothThrow(
      { ...pre, lens: [20, 1] },
      () => {},
      /pagedPrefill: a sequence has 2 new queries but a context length of 1/,
    );
  });

  test("writeKV: a slot out of range or in a free block", async () => {
    for (const device of ["cpu", "webgpu"] as const) {
      if (device === "webgpu") requireGpu();
      await s.tidy(async () => {
        const { k, v } = s.pagedPools(2, 1, 4, 4, { device });
        const x = s.zeros([1, 1, 4], { device });
        const check = async (fn: () => void, msg: RegExp) => {
          if (device === "cpu") expect(fn).toThrow(msg);
          else {
            fn();
            await expect(k.toArray()).rejects.toThrow(msg);
          }
        };
        await check(
          () => s.writeKV(k, v, x, x, i32([8], [1], device)),
          /writeKV: slot 8 is out of range for a pool of 8 slots/,
        );
        const inUse = i32([1, 0], [2], device);
        await check(
          () => s.writeKV(k, v, x, x, i32([5], [1], device), { inUse }),
          /writeKV: slot 5 lies in a free block/,
        );
      });
    }
  });

  test("shapes, dtypes, heads, options and pairs: checked at the call, before any work, on any device", () => {
    const x = build(dec);
    const cases: [() => unknown, RegExp][] = [
      [
        () => s.pagedAttention(x.q.reshape([2, 1, 16]), x.k, x.v, x.tables, x.lens),
        /D = 16 differs from the pools' D = 8/,
      ],
      [
        () => s.pagedAttention(x.q, x.k, x.v.slice([[0, 2]]), x.tables, x.lens),
        /pagedAttention: vPool .* must match kPool/,
      ],
      [
        () => s.pagedAttention(x.q, x.k, x.v, x.tables, x.lens, { version: "v9" as "v1" }),
        /version must be one of/,
      ],
      [
        () => s.pagedAttention(x.q, x.k, x.v, x.tables, x.lens, { alibi: [1] }),
        /alibi must be H = 2 finite slopes/,
      ],
      [() => s.pagedAttention(x.q, x.k, x.v, x.tables, x.lens.cast("f32")), /contextLens must be i32/],
      [
        () => s.copyBlocks(x.k, x.v, [[0, 99]]),
        /copyBlocks: block 99 is out of range for a pool of \d+ blocks/,
      ],
      [
        () => s.copyBlocks(x.k, x.v, [[0, 1], [1, 2]]),
        /copyBlocks: block 1 is both a source and a destination/,
      ],
    ];
    s.tidy(() => {
      for (const [fn, msg] of cases) expect(fn).toThrow(msg);
    });
    s.tidy(() => {
      const q3 = s.zeros([2, 3, 8], { device: "cpu" }), pools = s.pagedPools(4, 2, 8, 8, { device: "cpu" });
      expect(() => s.pagedAttention(q3, pools.k, pools.v, x.tables, x.lens)).toThrow(
        /pagedAttention: H = 3 query heads must be a multiple of the pools' Hkv = 2/,
      );
    });
    free(x);
  });
});
