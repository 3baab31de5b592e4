// FlashAttention (forward v1-v3 and backward) against the float64 reference, the paper's test criterion
// against standard float32 attention, gradients by finite differences, and the memory ledger.
// SEQLAB_FULL=1 runs the larger grid (more head widths per version and a 4096-long sequence).
import { beforeEach, describe, expect, test } from "vitest";
import * as s from "../../mod.ts";
import type { AttentionOptions, Tensor } from "../../mod.ts";
import { gpu } from "../../runtime/device.ts";
import { WebGPUError } from "../../runtime/webgpu.ts";
import { env } from "../../runtime/platform.ts";
import { data, leakCheck, requireGpu, scoped } from "../../test/helpers.ts";
import { TEX_WIDTH } from "./attention_wgsl.ts";
import { dkdvLimits } from "./flash.ts";

leakCheck();
beforeEach(requireGpu); // every test here runs on webgpu: without an adapter it fails with the notice
const FULL = env("SEQLAB_FULL") === "1";
/** Whether the adapter can hold f16 tensors (the f16 tests are skipped, by name, where it cannot). */
const F16 = s.adapterInfo().includes("shader-f16");

/** Deterministic float64 data on the cpu, in [-scale, scale]. */
const rnd = (shape: number[], seed: number, scale = 1) =>
  s.tensor(data(shape.reduce((a, b) => a * b, 1), seed, scale), { shape, device: "cpu", dtype: "f64" });

async function maxErr(a: Tensor, b: Tensor): Promise<number> {
  expect(a.shape).toEqual(b.shape);
  const x = await a.toArray(), y = await b.toArray();
  let m = 0;
  for (let i = 0; i < x.length; i++) {
    if (y[i] === -Infinity && x[i] === -Infinity) continue;
    const e = Math.abs(x[i] - y[i]);
    m = Number.isNaN(e) ? Infinity : Math.max(m, e);
  }
  return m;
}

const gpu32 = async (t: Tensor) => await s.cast(t, "f32").to("webgpu");

/** Moves option tensors (the padding mask) to the device. */
async function onDevice(o: AttentionOptions): Promise<AttentionOptions> {
  const kp = o.keyPadding;
  if (kp && !Array.isArray(kp) && (kp as Tensor).rank === 2) {
    return { ...o, keyPadding: await (kp as Tensor).to("webgpu") };
  }
  return o;
}

interface Case {
  name: string;
  q: number[];
  kv: number[];
  opts: () => AttentionOptions;
}

const pad = (B: number, S: number, seed: number) =>
  s.tensor(Array.from(data(B * S, seed), (x, i) => (x > -0.6 || i % S === 0 ? 1 : 0)), {
    shape: [B, S],
    device: "cpu",
    dtype: "u32",
  });

// T = 1, T not a multiple of any block, GQA ratios 1, 2 and 8, every mask kind; D per case below
const CASES = (D: number): Case[] => [
  { name: "T = 1", q: [1, 2, 1, D], kv: [1, 2, 9, D], opts: () => ({}) },
  { name: "T = 37 non-causal", q: [2, 2, 37, D], kv: [2, 2, 37, D], opts: () => ({}) },
  { name: "T = 70 causal", q: [1, 2, 70, D], kv: [1, 2, 70, D], opts: () => ({ causal: true }) },
  { name: "GQA 2, causal, T < S", q: [1, 4, 21, D], kv: [1, 2, 50, D], opts: () => ({ causal: true }) },
  { name: "MQA 8, lengths", q: [2, 8, 19, D], kv: [2, 1, 45, D], opts: () => ({ keyPadding: [45, 7] }) },
  {
    name: "padding mask + ALiBi",
    q: [2, 2, 33, D],
    kv: [2, 2, 33, D],
    opts: () => ({ keyPadding: pad(2, 33, 9), alibi: [0.5, 0.125] }),
  },
  {
    name: "window + global, causal",
    q: [1, 2, 90, D],
    kv: [1, 2, 90, D],
    opts: () => ({ window: 9, globalTokens: 3, causal: true }),
  },
  {
    name: "window [4, 6] + scale",
    q: [1, 1, 40, D],
    kv: [1, 1, 40, D],
    opts: () => ({ window: [4, 6], scale: 0.3 }),
  },
  {
    name: "block-sparse 32, per head",
    q: [1, 2, 64, D],
    kv: [1, 2, 64, D],
    opts: () => ({ blockMask: { mask: [1, 0, 0, 1, 0, 1, 1, 1], shape: [2, 2, 2], blockSize: 32 } }),
  },
  {
    name: "block-sparse 12 (unaligned), causal, fully masked rows",
    q: [1, 1, 30, D],
    kv: [1, 1, 30, D],
    opts: () => ({
      causal: true,
      blockMask: { mask: [0, 0, 0, 1, 1, 0, 0, 1, 1], shape: [1, 3, 3], blockSize: 12 },
    }),
  },
];

async function checkForward(c: Case, opts: AttentionOptions, tol: number): Promise<void> {
  await s.tidy(async () => {
    const [q, k, v] = [rnd(c.q, 1), rnd(c.kv, 2), rnd(c.kv, 3)];
    const o = c.opts();
    const ref = s.attentionRef(q, k, v, o);
    const res = s.flashAttention(await gpu32(q), await gpu32(k), await gpu32(v), {
      ...(await onDevice(o)),
      ...opts,
    });
    const eo = await maxErr(res.o, ref.o), el = await maxErr(res.lse, ref.lse);
    expect(eo, `${c.name} ${JSON.stringify(opts)}: O`).toBeLessThan(tol);
    expect(el, `${c.name} ${JSON.stringify(opts)}: L`).toBeLessThan(tol * 4);
  });
}

describe("flash forward against the float64 reference", () => {
  // every case at D = 64 for every version; the head widths 16, 32, 128 (and 12, not a multiple of 4) on v3
  for (const version of ["v3", "v1", "v2"] as const) {
    test(`${version}, D = 64, every mask`, async () => {
      for (const c of CASES(64)) await checkForward(c, { version }, 2e-6);
    });
  }
  test("v3, D = 16, 32, 128 and 12", async () => {
    for (const D of [16, 32, 128, 12]) {
      const cases = FULL ? CASES(D) : CASES(D).filter((_, i) => i % 3 === D % 3);
      for (const c of cases) await checkForward(c, {}, 2e-6);
    }
  });
  test("v3 block sizes: overrides and a sweep", async () => {
    const c = CASES(32)[6];
    for (const [blockQ, blockK] of [[8, 4], [24, 12], [64, 256]]) {
      await checkForward(c, { blockQ, blockK }, 2e-6);
    }
  });
  test(`a long sequence (T = ${FULL ? 4096 : 2048}, causal)`, async () => {
    const T = FULL ? 4096 : 2048;
    await checkForward(
      { name: "long", q: [1, 1, T, 64], kv: [1, 1, T, 64], opts: () => ({ causal: true }) },
      {},
      2e-6,
    );
  });
  test("K and V spanning two texture layers (2 x 70000 keys)", async () => {
    await checkForward(
      { name: "layers", q: [1, 2, 3, 64], kv: [1, 2, 70000, 64], opts: () => ({ causal: true }) },
      {},
      2e-6,
    );
  });
  test.skipIf(!F16)("f16 inputs (read into f32 registers)", async () => {
    await s.tidy(async () => {
      const q = rnd([1, 2, 20, 32], 4), k = rnd([1, 2, 20, 32], 5);
      const h = await s.cast(q, "f16").to("webgpu"), hk = await s.cast(k, "f16").to("webgpu");
      const kr = s.cast(s.cast(k, "f16"), "f64");
      const ref = s.attentionRef(s.cast(s.cast(q, "f16"), "f64"), kr, kr, { causal: true });
      const res = s.flashAttention(h, hk, hk, { causal: true });
      expect(res.o.dtype).toBe("f16");
      expect(await maxErr(res.o, ref.o)).toBeLessThan(2e-3);
    });
  });
  test(
    "views: q permuted from (B, T, H, D), k and v sliced",
    scoped(async () => {
      const qt = rnd([2, 25, 4, 16], 6), kv = rnd([2, 2, 40, 16], 7);
      const ref = s.attentionRef(
        qt.permute([0, 2, 1, 3]),
        kv.slice([null, null, [3, 28]]),
        kv.slice([null, null, [10, 35]]),
        {
          causal: true,
        },
      );
      const qg = (await gpu32(qt)).permute([0, 2, 1, 3]), kg = await gpu32(kv);
      const res = s.flashAttention(qg, kg.slice([null, null, [3, 28]]), kg.slice([null, null, [10, 35]]), {
        causal: true,
      });
      expect(await maxErr(res.o, ref.o)).toBeLessThan(2e-6);
    }),
  );
});

/** The reference repository's criterion: max |out - ref64| <= factor x max |standard32 - ref64|. */
describe("the FlashAttention criterion against standard float32 attention", () => {
  const configs: [string, number[], number[], AttentionOptions][] = [
    ["B 1, H 4, T 300, D 64", [1, 4, 300, 64], [1, 4, 300, 64], {}],
    ["causal, T 513, D 128", [1, 2, 513, 128], [1, 2, 513, 128], { causal: true }],
    ["GQA 4, D 32, scores spread x9", [1, 8, 200, 32], [1, 2, 200, 32], { causal: true, scale: 1.5 }],
  ];
  test("forward: O within 2x, every config", async () => {
    for (const [name, qs, ks, o] of configs) {
      await s.tidy(async () => {
        const [q, k, v] = [rnd(qs, 11, 2), rnd(ks, 12, 2), rnd(ks, 13)];
        const ref = s.attentionRef(q, k, v, o);
        const [qg, kg, vg] = [await gpu32(q), await gpu32(k), await gpu32(v)];
        const std = await maxErr(s.standardAttention(qg, kg, vg, o).o, ref.o);
        const flash = await maxErr(s.flashAttention(qg, kg, vg, o).o, ref.o);
        console.log(
          `criterion ${name}: flash ${flash.toExponential(2)}, standard f32 ${std.toExponential(2)}, ratio ${
            (flash / std).toFixed(2)
          }`,
        );
        expect(flash, name).toBeLessThanOrEqual(2 * std);
      });
    }
  });
  test("backward: dQ, dK, dV within 3x", async () => {
    for (const [name, qs, ks, o] of configs.slice(0, 2)) {
      await s.tidy(async () => {
        const [q, k, v, g] = [rnd(qs, 21, 2), rnd(ks, 22, 2), rnd(ks, 23), rnd(qs, 24)];
        const ref = s.attentionRefBackward(g, q, k, v, o);
        const errs = async (fn: typeof s.flashAttention) => {
          const leaves = [await gpu32(q), await gpu32(k), await gpu32(v)];
          for (const t of leaves) t.requiresGrad = true;
          fn(leaves[0], leaves[1], leaves[2], o).o.backward(await gpu32(g));
          const e = await Promise.all(leaves.map((t, i) => maxErr(t.grad!, ref[i])));
          for (const t of leaves) t.zeroGrad(); // gradients outlive tidy
          return e;
        };
        const std = await errs(s.standardAttention), flash = await errs(s.flashAttention);
        console.log(
          `criterion backward ${name}: flash ${flash.map((x) => x.toExponential(2))}, standard ${
            std.map((x) => x.toExponential(2))
          }`,
        );
        flash.forEach((e, i) => expect(e, `${name} grad ${"qkv"[i]}`).toBeLessThanOrEqual(3 * std[i]));
      });
    }
  });
});

describe("flash backward", () => {
  const small: [string, number[], number[], () => AttentionOptions][] = [
    ["causal GQA 2", [1, 2, 5, 4], [1, 1, 6, 4], () => ({ causal: true })],
    [
      "window + global + ALiBi",
      [1, 2, 7, 4],
      [1, 2, 7, 4],
      () => ({ window: 2, globalTokens: 1, alibi: [0.7, 0.2] }),
    ],
    ["padding mask, lengths in batch 2", [2, 1, 4, 5], [2, 1, 6, 5], () => ({ keyPadding: pad(2, 6, 3) })],
    [
      "block-sparse",
      [1, 1, 8, 4],
      [1, 1, 8, 4],
      () => ({ blockMask: { mask: [1, 0, 1, 1], shape: [1, 2, 2], blockSize: 4 } }),
    ],
  ];
  test("gradcheck on small sizes (finite differences in float64)", async () => {
    for (const [name, qs, ks, mk] of small) {
      await s.tidy(async () => {
        const o = mk();
        const od = await onDevice(o);
        const inputs = [await gpu32(rnd(qs, 31)), await gpu32(rnd(ks, 32)), await gpu32(rnd(ks, 33))];
        // the numeric side runs flashAttention on float64 cpu copies (the reference); the analytic side on webgpu
        const report = await s.gradcheck(
          (q, k, v) => s.flashAttention(q, k, v, q.device === "cpu" ? o : od).o,
          inputs,
          { atol: 2e-4, rtol: 5e-3 },
        );
        expect(report.maxError.length, name).toBe(3);
      });
    }
  });
  test("against the float64 reference backward on larger sizes, every mask", async () => {
    for (const c of CASES(32)) {
      await s.tidy(async () => {
        const [q, k, v] = [rnd(c.q, 41), rnd(c.kv, 42), rnd(c.kv, 43)];
        const g = rnd(c.q, 44);
        const o = c.opts();
        const ref = s.attentionRefBackward(g, q, k, v, o);
        const leaves = [await gpu32(q), await gpu32(k), await gpu32(v)];
        for (const t of leaves) t.requiresGrad = true;
        const res = s.flashAttention(leaves[0], leaves[1], leaves[2], await onDevice(o));
        res.o.backward(await gpu32(g));
        for (let i = 0; i < 3; i++) {
          expect(await maxErr(leaves[i].grad!, ref[i]), `${c.name} d${"qkv"[i]}`).toBeLessThan(5e-6);
        }
        expect(res.stats.backward?.flops).toBeGreaterThan(0);
        for (const t of leaves) t.zeroGrad();
      });
    }
  });
});

/** Runs flash forward + backward on webgpu copies of float64 inputs; returns the gradients and the stats. */
async function flashGrads(q: Tensor, k: Tensor, v: Tensor, g: Tensor, o: AttentionOptions, dtype = "f32") {
  const dev = async (t: Tensor) => await s.cast(t, dtype as "f32").to("webgpu");
  const leaves = [await dev(q), await dev(k), await dev(v)];
  for (const t of leaves) t.requiresGrad = true;
  const res = s.flashAttention(leaves[0], leaves[1], leaves[2], await onDevice(o));
  res.o.backward(await dev(g));
  const grads = leaves.map((t) => t.grad!.detach());
  for (const t of leaves) t.zeroGrad(); // gradients outlive tidy
  return { grads, stats: res.stats.backward! };
}

/** (B, H, T, D) -> a contiguous (B, T, H, D) copy. */
const toBthd = (t: Tensor) => t.transpose(1, 2).contiguous();

/**
 * Flash forward + backward in layout "bthd" on (B, T, H, D) copies and in "bhtd" on the originals (f32
 * webgpu copies of float64 inputs): O, L and dq, dk, dv must be the same numbers (the programs compute the
 * same sums; only the addresses differ). `strided` passes q, k, v as transposed views of (B, H, T, D)
 * tensors and backpropagates o.sum() (an expanded dO), instead of contiguous (B, T, H, D) tensors and g.
 */
async function checkLayout(c: Case, opts: AttentionOptions, strided = false): Promise<void> {
  await s.tidy(async () => {
    const o = { ...(await onDevice(c.opts())), ...opts };
    const base = [await gpu32(rnd(c.q, 51)), await gpu32(rnd(c.kv, 52)), await gpu32(rnd(c.kv, 53))];
    const g = await gpu32(rnd(c.q, 54));
    const run = (layout: "bhtd" | "bthd") => {
      const leaves = base.map((t) => (layout === "bhtd" || strided ? t.contiguous() : toBthd(t)));
      for (const t of leaves) t.requiresGrad = true;
      const ins = leaves.map((t) => (layout === "bthd" && strided ? t.transpose(1, 2) : t));
      const res = s.flashAttention(ins[0], ins[1], ins[2], { ...o, layout });
      if (strided) res.o.sum().backward();
      else res.o.backward(layout === "bhtd" ? g : toBthd(g));
      const out = [res.o, res.lse, ...leaves.map((t) => t.grad!.detach())];
      for (const t of leaves) t.zeroGrad();
      return out;
    };
    const a = run("bhtd"), b = run("bthd");
    expect(b[0].shape).toEqual([c.q[0], c.q[2], c.q[1], c.q[3]]);
    for (let i = 0; i < 5; i++) {
      const name = ["O", "L", "dq", "dk", "dv"][i];
      const bi = i === 1 || (strided && i > 1) ? b[i] : b[i].transpose(1, 2);
      expect(await maxErr(bi, a[i]), `${c.name} ${JSON.stringify(opts)}: ${name}`).toBe(0);
    }
  });
}

describe('layout "bthd": q, k, v, o and the gradients in (B, T, H, D)', () => {
  test("equals the (B, H, T, D) path on transposed copies: v3, every mask", async () => {
    for (const c of CASES(16)) await checkLayout(c, {});
  });
  test("equals the (B, H, T, D) path on transposed copies: v1 and v2", async () => {
    for (const version of ["v1", "v2"] as const) {
      for (const c of CASES(32).filter((_, i) => i % 3 === 1)) await checkLayout(c, { version });
    }
  });
  test("strided inputs (transposed views, as a K/V cache is read) and an expanded dO", async () => {
    for (const c of CASES(16).filter((_, i) => i % 2 === 0)) await checkLayout(c, {}, true);
  });
  test(
    "K contiguous and V a view of a fused projection (bthd): K copied, V packed in K's row order",
    scoped(async () => {
      requireGpu();
      const [B, T, H, D] = [2, 19, 2, 16];
      const q = rnd([B, T, H, D], 71), k = rnd([B, T, H, D], 72), g = rnd([B, T, H, D], 73);
      const fused = rnd([B, T, 3 * H, D], 74); // v is heads [H, 2H) of it: T stride 3 H D
      const v = fused.slice([null, null, [H, 2 * H]]);
      const o = { causal: true, layout: "bthd" as const };
      const ref = s.attentionRef(q, k, v, o).o;
      const refG = s.attentionRefBackward(g, q, k, v, o);
      const [qg, kg, g32] = await Promise.all([q, k, g].map((t) => s.cast(t, "f32").to("webgpu")));
      const vg = (await s.cast(fused, "f32").to("webgpu")).slice([null, null, [H, 2 * H]]);
      for (const t of [qg, kg]) t.requiresGrad = true;
      vg.requiresGrad = true;
      const ctx = gpu();
      const ops: string[] = [];
      const run = ctx.run.bind(ctx);
      ctx.run = (p) => (ops.push(String(p.key).split("|")[0]), run(p));
      let res: ReturnType<typeof s.flashAttention>;
      try {
        res = s.flashAttention(qg, kg, vg, o);
      } finally {
        ctx.run = run;
      }
      expect(ops.filter((x) => x === "attention pack")).toHaveLength(1); // V only
      expect(await maxErr(res.o, ref)).toBeLessThan(2e-6);
      res.o.backward(g32);
      const grads = [qg.grad!, kg.grad!, vg.grad!];
      for (let i = 0; i < 3; i++) expect(await maxErr(grads[i], refG[i]), `d${"qkv"[i]}`).toBeLessThan(5e-6);
      for (const t of [qg, kg, vg]) t.zeroGrad();
    }),
  );
  test("dK/dV over several query-row ranges", async () => {
    const saved = dkdvLimits.loopBudget;
    dkdvLimits.loopBudget = 24;
    try {
      for (const c of CASES(16).slice(3, 6)) await checkLayout(c, {});
    } finally {
      dkdvLimits.loopBudget = saved;
    }
  });
});

// lavapipe stops an invocation's loops after 65535 iterations in all; the dK/dV program loops over G x (its
// query rows), so the rows are split over dispatches that add to the partial sums
describe("dK/dV over query-row ranges (the software adapter's loop limit)", () => {
  test("a tiny loop budget: many ranges, not aligned with the query blocks, every mask", async () => {
    const saved = dkdvLimits.loopBudget;
    dkdvLimits.loopBudget = 24; // 24 rows per dispatch at G = 1, 12 at G = 2, 3 at G = 8
    try {
      for (const c of CASES(32).slice(1)) {
        await s.tidy(async () => {
          const [q, k, v, g] = [rnd(c.q, 61), rnd(c.kv, 62), rnd(c.kv, 63), rnd(c.q, 64)];
          const o = c.opts();
          const ref = s.attentionRefBackward(g, q, k, v, o);
          const { grads, stats } = await flashGrads(q, k, v, g, o);
          const G = c.q[1] / c.kv[1], n = Math.ceil(c.q[2] / Math.floor(24 / G));
          expect(stats.programs.map((p) => p.name)).toContain(`bwd-dkdv (${n} dispatches)`);
          for (let i = 0; i < 3; i++) {
            expect(await maxErr(grads[i], ref[i]), `${c.name} d${"qkv"[i]}`).toBeLessThan(5e-6);
          }
        });
      }
    } finally {
      dkdvLimits.loopBudget = saved;
    }
  });
  test.skipIf(!F16)("f16: partial sums carried in f32 across ranges, one rounding at the end", async () => {
    const saved = dkdvLimits.loopBudget;
    try {
      await s.tidy(async () => {
        const c = CASES(32)[3]; // GQA 2, causal
        const [q, k, v, g] = [rnd(c.q, 71), rnd(c.kv, 72), rnd(c.kv, 73), rnd(c.q, 74)];
        const h = (t: Tensor) => s.cast(s.cast(t, "f16"), "f64");
        const o = c.opts();
        const ref = s.attentionRefBackward(h(g), h(q), h(k), h(v), o);
        const one = await flashGrads(q, k, v, g, o, "f16");
        dkdvLimits.loopBudget = 8; // 4 rows per dispatch
        const split = await flashGrads(q, k, v, g, o, "f16");
        expect(split.grads[1].dtype).toBe("f16");
        expect(split.stats.programs.map((p) => p.name)).toContain("cast dK, dV");
        for (const i of [1, 2]) {
          const e1 = await maxErr(one.grads[i], ref[i]), e2 = await maxErr(split.grads[i], ref[i]);
          expect(e2, `d${"qkv"[i]} split ${e2} vs one dispatch ${e1}`).toBeLessThanOrEqual(
            Math.max(2 * e1, 2e-3),
          );
        }
      });
    } finally {
      dkdvLimits.loopBudget = saved;
    }
  });
  test("GQA 32 over T = 2100 rows: each key's loop runs G T = 67200 iterations, past the limit", async () => {
    // in one dispatch the invocations stop short (measured: dK and dV of the second key block all
    // missing); in ranges of 1024 rows they do not. 100 keys keep the float64 reference quick.
    const T = 2100, S = 100;
    await s.tidy(async () => {
      const [q, k, v, g] = [
        rnd([1, 32, T, 4], 81),
        rnd([1, 1, S, 4], 82),
        rnd([1, 1, S, 4], 83),
        rnd([1, 32, T, 4], 84),
      ];
      const ref = s.attentionRefBackward(g, q, k, v, {});
      const { grads, stats } = await flashGrads(q, k, v, g, {});
      expect(stats.programs.map((p) => p.name)).toContain("bwd-dkdv (3 dispatches)");
      for (let i = 0; i < 3; i++) {
        // sums of 67200 terms in f32: relative to the largest gradient
        const scale = Array.from(await ref[i].toArray()).reduce((a, x) => Math.max(a, Math.abs(x)), 0);
        expect(await maxErr(grads[i], ref[i]), `d${"qkv"[i]} (max |ref| ${scale})`).toBeLessThan(
          1e-5 * scale,
        );
      }
    });
  });
  test("T = 70000 query rows (a sliding window keeps the work small), checked on sub-problems", async () => {
    const T = 70000, w = 24, D = 8;
    await s.tidy(async () => {
      const [q, k, v, g] = [
        rnd([1, 2, T, D], 91),
        rnd([1, 1, T, D], 92),
        rnd([1, 1, T, D], 93),
        rnd([1, 2, T, D], 94),
      ];
      const o = { causal: true, window: w };
      const { grads, stats } = await flashGrads(q, k, v, g, o);
      expect(stats.programs.map((p) => p.name)).toContain("bwd-dkdv (5 dispatches)"); // 16384 rows each
      // queries [a, b) see keys [a - w, b): on that sub-problem dQ of every query row and dK, dV of keys
      // [a, b - w) are whole; around the first range boundary, the middle and the end
      for (const [a, b] of [[16384 - 40, 16384 + 40], [40000, 40100], [T - 80, T]]) {
        const rows = (t: Tensor, i0: number, i1: number) => t.slice([null, null, [i0, i1]]);
        const ref = s.attentionRefBackward(
          rows(g, a, b),
          rows(q, a, b),
          rows(k, a - w, b),
          rows(v, a - w, b),
          o,
        );
        expect(await maxErr(rows(grads[0], a, b), ref[0]), `dq [${a}, ${b})`).toBeLessThan(5e-6);
        for (const i of [1, 2]) {
          const e = await maxErr(rows(grads[i], a, b - w), rows(ref[i], w, b - a));
          expect(e, `d${"qkv"[i]} keys [${a}, ${b - w})`).toBeLessThan(5e-6);
        }
      }
    });
  });
});

describe("memory", () => {
  test("flash forward's peak grows linearly in T; standard's quadratically", async () => {
    const peak = async (T: number, fn: typeof s.flashAttention) =>
      await s.tidy(async () => {
        const q = await gpu32(rnd([1, 2, T, 64], 51)), k = await gpu32(rnd([1, 2, T, 64], 52));
        await q.toArray(); // settle
        const base = s.memory().bytesInUse;
        s.resetPeak();
        const r = fn(q, k, k, { causal: true });
        await r.lse.toArray();
        return s.memory().peakBytes - base;
      });
    const [f1, f2] = [await peak(512, s.flashAttention), await peak(1024, s.flashAttention)];
    const [s1, s2] = [await peak(512, s.standardAttention), await peak(1024, s.standardAttention)];
    console.log(
      `peak bytes: flash ${f1} -> ${f2} (x${(f2 / f1).toFixed(2)}), standard ${s1} -> ${s2} (x${
        (s2 / s1).toFixed(2)
      })`,
    );
    expect(f2 / f1).toBeGreaterThan(1.7);
    expect(f2 / f1).toBeLessThan(2.3);
    expect(s2 / s1).toBeGreaterThan(3.4);
    expect(s2).toBeGreaterThan(10 * f2);
  });
});

describe("one program model: errors and the ledger", () => {
  const inputs = async () => [
    await gpu32(rnd([1, 2, 40, 16], 101)),
    await gpu32(rnd([1, 1, 50, 16], 102)),
    await gpu32(rnd([1, 1, 50, 16], 103)),
  ];
  test(
    "an error inside the forward pass is thrown at the next readback of another tensor, naming the op; o throws too",
    scoped(async () => {
      const [q, k, v] = await inputs();
      const other = s.tensor([1, 2, 3], { device: "webgpu" });
      await other.toArray();
      gpu().injectFault("flashAttention");
      const { o } = s.flashAttention(q, k, v, { causal: true });
      const read = other.toArray();
      await expect(read).rejects.toThrow(WebGPUError);
      await expect(read).rejects.toThrow(/validation error in flashAttention:/);
      await expect(o.toArray()).rejects.toThrow(/failed pass: .*flashAttention/);
      expect(Array.from(await other.toArray())).toEqual([1, 2, 3]); // computed before: still good
    }),
  );
  test(
    "an error inside the backward pass is thrown at the next readback of another tensor, naming it; dq throws too",
    scoped(async () => {
      const leaves = await inputs();
      for (const t of leaves) t.requiresGrad = true;
      const { o } = s.flashAttention(leaves[0], leaves[1], leaves[2], { causal: true });
      const g = await gpu32(rnd([1, 2, 40, 16], 104));
      const other = s.tensor([1, 2, 3], { device: "webgpu" });
      await o.toArray(); // the forward is good
      gpu().injectFault("flashAttention backward");
      o.backward(g);
      const read = other.toArray();
      await expect(read).rejects.toThrow(WebGPUError);
      await expect(read).rejects.toThrow(/validation error in flashAttention backward/);
      await expect(leaves[0].grad!.toArray()).rejects.toThrow(/failed pass: .*flashAttention backward/);
      for (const t of leaves) t.zeroGrad(); // gradients outlive tidy
    }),
  );
  test(
    "the ledger counts a v3 call's textures while it holds them: the peak includes o, lse and packed K and V",
    scoped(async () => {
      const [B, H, Hkv, T, S, D] = [2, 4, 2, 70, 300, 24];
      const q = await gpu32(rnd([B, H, T, D], 111)), kv = await gpu32(rnd([B, Hkv, S, D], 112));
      await kv.toArray(); // settle the uploads
      const before = s.memory().bytesInUse;
      s.resetPeak();
      const { o, lse } = s.flashAttention(q, kv, kv, { version: "v3" });
      // the packing layout: rows of D / 4 texels, TEX_WIDTH / (D / 4) rows per texture row, 16 bytes a texel
      const D4 = Math.ceil(D / 4), kpr = Math.floor(TEX_WIDTH / D4);
      const texBytes = 2 * TEX_WIDTH * Math.ceil((B * Hkv * S) / kpr) * 16;
      const outBytes = 4 * o.size + 4 * lse.size;
      const after = s.memory();
      expect(after.peakBytes - before).toBeGreaterThanOrEqual(outBytes + texBytes);
      expect(after.bytesInUse - before).toBeLessThan(outBytes + texBytes); // released once recorded: pooled
      expect(after.pooledBytes).toBeGreaterThanOrEqual(texBytes);
      await o.toArray();
      o.dispose();
      lse.dispose();
      expect(s.memory().bytesInUse).toBe(before);
    }),
  );
});
